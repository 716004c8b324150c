"""The real pipeline (Prefect, DVC, MLflow, Pyserini) on a small SciFact subset."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from components.data.judgements import AUDIT_ENV, read_judgements
from components.evaluation.metrics import per_query_metrics
from components.runs import read_run_topics, read_trec_run
from components.settings import REPO_ROOT
from tests.e2e.conftest import MINI, run

pytestmark = pytest.mark.slow
STAGES = list(yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"])


def _digest(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pipeline_result(repo_copy):
    # Every qrels read of every stage is logged (components/data/judgements.py).
    audit = repo_copy / "qrels_reads.jsonl"
    audit.unlink(missing_ok=True)
    result = run(["python", "-m", "flows.pipeline"], repo_copy,
                 extra_env={AUDIT_ENV: str(audit)})
    return repo_copy, result


def test_test_judgements_reach_evaluate_only(pipeline_result):
    """Only `validate` (file checks, topic ids) and `evaluate` open the test qrels; the
    training stages never see a held-out dev query."""
    root, _ = pipeline_result
    reads = [json.loads(line) for line in (root / "qrels_reads.jsonl").read_text().splitlines()]
    test_file = str((root / "data/raw" / MINI / "qrels/test.tsv").resolve())
    readers = {read["stage"] for read in reads if read["file"] == test_file}
    assert readers == {"validate", "evaluate"}, reads
    # rank_lists reads the dev queries' judgements to choose `first_stage_weight: auto`.
    assert {read["stage"] for read in reads} <= {"validate", "teacher", "rank_lists", "dgr",
                                                  "evaluate", "promote"}, reads
    out = root / "outputs" / MINI
    splits = json.loads((out / "splits.json").read_text())
    heldout = set(splits["heldout"])
    assert len(heldout) == 15 and not heldout & set(splits["train"])  # 25% of 60
    trained_on = set(pd.read_parquet(out / "rank_lists/pairs.parquet")
                     .query("split == 'train'")["query_id"])
    assert trained_on and not trained_on & heldout
    promoted_on = {d["split"] for d in json.loads((out / "promotion/decisions.json").read_text())}
    assert promoted_on == {f"{MINI}/heldout"}


def test_fresh_clone_gets_bundled_data_from_dvc(repo_copy):
    assert (repo_copy / "data/raw/scifact/corpus.jsonl").stat().st_size > 7_000_000


def test_pipeline_produces_outputs_and_metrics(pipeline_result):
    root, result = pipeline_result
    out = root / "outputs" / MINI
    for path in ["validation/report.json", "validation/report.md", "bm25/index",
                 "runs/bm25/test.trec", "runs/bm25/train.trec", "runs/bm25/cost.json",
                 "runs/dense/test.trec", "runs/dense/cost.json", "eval/metrics.json",
                 "eval/results.md", "eval/results.csv", "eval/plot.csv",
                 "eval/plots/metrics_test_all.png", "promotion/decisions.json"]:
        assert (out / path).exists(), path
    metrics = json.loads((out / "eval/metrics.json").read_text())
    bm25 = metrics["test"]["all"]["BM25"]
    assert bm25["queries"] == 40
    assert metrics["test"]["all"]["Dense (MiniLM-L6)"]["queries"] == 40
    assert 0.5 < bm25["ndcg_cut_10"] <= 1.0  # a 500-doc corpus is easier than the full one
    shown = run(["dvc", "metrics", "show", "--json"], root).stdout
    assert "ndcg_cut_10" in shown
    ran = ", ".join(f"{stage}=ran" for stage in STAGES)
    assert f"stages: {ran}" in result.stdout + result.stderr
    subset = next(k for k in metrics["test"] if k.startswith("subset-10-"))
    assert {"BM25", "BM25 → teacher", "BM25 → Rabtriever", "GR (no distillation)",
            "DGR"} <= set(metrics["test"][subset])
    # 4 queries decoded one at a time (timed), the other 6 in batches: all 10 in the run.
    assert metrics["test"][subset]["DGR"]["queries"] == 10
    assert json.loads((out / "runs/dgr/cost.json").read_text())["latency"]["queries"] == 4
    # Every system is also scored on the held-out dev queries (all 15).
    assert {"BM25", "BM25 → teacher", "BM25 → Rabtriever", "DGR"} <= set(
        metrics["heldout"]["all"])
    # The student reranks BM25's top-K (rabtriever.corpus: none): every candidate was scored by
    # the teacher in rank_lists, which kept its states, so the student encoded none itself.
    kept = json.loads((out / "rank_lists/documents/meta.json").read_text())["count"]
    student = json.loads((out / "rabtriever/summary.json").read_text())
    assert kept >= student["corpus_docs"] > 0
    assert student["docs_encoded"] < student["corpus_docs"] / 10
    # One on-policy round: the student ranked BM25's top 8 of each of the 6 distillation queries
    # (more than the 4 the teacher scored in rank_lists); the teacher answered at most 4 asks.
    [record] = student["rounds"]
    assert record["candidates"] > 6 * 4 and record["asked"] <= 4
    assert student["teacher_pairs"] == 6 * 4 + record["asked"]
    assert not (out / "runs/rabtriever_full/test.trec").exists()


def test_mlflow_groups_stage_runs_under_the_pipeline_run(pipeline_result):
    root, _ = pipeline_result
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("rerank-distill")
    assert experiment.artifact_location.startswith((root / "mlruns").as_uri())
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("stage") == "pipeline")
    children = {r.data.tags["stage"]: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == set(STAGES)
    losses = client.get_metric_history(children["teacher"].info.run_id, "loss")
    assert [m.step for m in losses] == [1, 2, 3]
    # The dev curve (teacher.curve_every 2 of 3 steps, and after the last), also a DVC plot.
    dev = client.get_metric_history(children["teacher"].info.run_id, "dev_ndcg_cut_10")
    assert [m.step for m in dev] == [2, 3] and all(0 <= m.value <= 1 for m in dev)
    curve = pd.read_csv(root / "outputs" / MINI / "teacher/curve.csv")
    assert curve["step"].tolist() == [1, 2, 3] and curve["dev_ndcg_cut_10"].notna().tolist() == [
        False, True, True]
    for child in children.values():
        assert child.info.status == "FINISHED"
        assert len(child.data.tags["git_commit"]) == 40
        assert child.data.tags["dataset"] == MINI
        # The data folder is the run's MLflow input dataset, its digest DVC's md5.
        [logged] = [i.dataset for i in child.inputs.dataset_inputs]
        assert (logged.name, logged.digest) == (MINI, child.data.tags["data_dvc_md5"][:36])
    assert children["bm25"].data.params["bm25.k1"] == "0.9"
    # Every stage that loads a model says where it ran (the test profile: device cpu).
    for stage in ("dense", "teacher", "rank_lists", "rabtriever", "dgr"):
        assert children[stage].data.params["device"] == "cpu", stage
        assert children[stage].data.tags["bf16_native"] in ("true", "false")
    assert "device" not in children["bm25"].data.params
    assert children["evaluate"].data.metrics["test.all.bm25.ndcg_cut_10"] > 0.5
    artifacts = [a.path for a in client.list_artifacts(children["evaluate"].info.run_id, "eval")]
    assert "eval/results.md" in artifacts and "eval/metrics.json" in artifacts


def test_models_are_registered_promoted_and_load(pipeline_result):
    import mlflow
    import pandas as pd

    root, _ = pipeline_result
    decisions = json.loads((root / "outputs" / MINI / "promotion/decisions.json").read_text())
    # Registered per dataset: <dataset>.<model>.
    names = [f"{MINI}.{model}" for model in ("teacher-reranker", "rabtriever", "dgr")]
    assert {d["model"]: (d["verdict"], d["dataset"]) for d in decisions} == {
        name: ("promoted", MINI) for name in names}
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    try:
        client = MlflowClient()
        for name in names:
            assert str(client.get_model_version_by_alias(name, "challenger").version) == "1"
            # The first version wins by default: champion after the pipeline's promote stage.
            assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
        for name in names[1:]:
            assert mlflow.pyfunc.load_model(f"models:/{name}@champion") is not None
        promotion = mlflow.search_runs(experiment_names=["promotion"], output_format="list")
        assert {(r.data.tags["model"], r.data.tags["dataset"]) for r in promotion} == {
            (name, MINI) for name in names}
        teacher = mlflow.pyfunc.load_model(f"models:/{MINI}.teacher-reranker@champion")
        ranked = teacher.predict(pd.DataFrame({"query": ["a claim"], "candidates": [["a", "b"]],
                                               "documents": [["one text", "another text"]]}))
        assert sorted(ranked["docid"]) == ["a", "b"] and ranked["score"].notna().all()
    finally:
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])


def test_a_second_machine_rebuilds_the_registry_from_the_outputs(pipeline_result, tmp_path):
    """`flows.register` on the pulled outputs, with an empty MLflow store: every model gets a
    challenger and, after the replayed decisions, a champion that loads and answers."""
    import mlflow

    root, _ = pipeline_result
    decisions_file = root / "outputs" / MINI / "promotion/decisions.json"
    kept = decisions_file.read_bytes()
    store = f"sqlite:///{tmp_path / 'second-machine.db'}"
    try:
        result = run(["python", "-m", "flows.register"], root,
                     extra_env={"MLFLOW_TRACKING_URI": store})
        assert f"registered {MINI}.rabtriever v1 as challenger" in result.stdout + result.stderr
        decisions = json.loads(decisions_file.read_text())
        assert {d["model"]: d["verdict"] for d in decisions} == {
            f"{MINI}.{m}": "promoted" for m in ("teacher-reranker", "rabtriever", "dgr")}
        mlflow.set_tracking_uri(store)
        model = mlflow.pyfunc.load_model(f"models:/{MINI}.rabtriever@champion")
        assert len(model.predict(pd.DataFrame({"query": ["a claim"]}), params={"k": 3})) == 3
    finally:
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        decisions_file.write_bytes(kept)  # the workspace's own decisions, as DVC recorded them


def test_dev_sweep_scores_values_on_heldout_queries_without_touching_the_workspace(
        pipeline_result):
    root, _ = pipeline_result
    student = root / "outputs" / MINI / "runs/rabtriever_rerank/heldout.trec"
    before = (_digest(root / "params.yaml"), _digest(student))
    result = run(["python", "scripts/dev_sweep.py", "--key", "rabtriever.rkl_weight",
                  "--values", "0", "0.5", "--stages", "rabtriever",
                  "--systems", "rabtriever_rerank", "--reference", "current"], root)
    rows = [line for line in result.stdout.splitlines() if line.startswith("| rabtriever")]
    # The reference row is the workspace's own run, read as it is, then each value rerun.
    assert [row.split("|")[2].strip() for row in rows] == ["current", "0", "0.5"]
    qrels = read_judgements(root / "data/raw" / MINI, "train", None)
    run_, _ = read_trec_run(student)
    qids = read_run_topics(student)
    own = per_query_metrics(run_, qrels, ["ndcg_cut_10"], qids)["ndcg_cut_10"]
    assert float(rows[0].split("|")[3]) == pytest.approx(sum(own.values()) / len(own), abs=1e-4)
    assert "held-out dev queries (15 queries" in result.stdout
    assert "test" not in result.stdout.lower().replace("paired t-test", "")
    assert (_digest(root / "params.yaml"), _digest(student)) == before

def test_first_stage_weight_sweep_reads_dev_and_matches_the_teacher_run(pipeline_result):
    """`first_stage_weight: auto` chose on dev what the sweep script chooses, and at that weight
    the sweep's dev figure is the teacher's dev run as evaluated."""
    root, _ = pipeline_result
    assert yaml.safe_load((root / "params.yaml").read_text())["rank_lists"][
        "first_stage_weight"] == "auto"
    record = json.loads((root / "outputs" / MINI / "rank_lists/first_stage_weight.json")
                        .read_text())
    assert (record["setting"], record["chosen_on"]) == ("auto", "dev") and len(record["dev"]) == 11
    weight = record["weight"]
    result = run(["python", "scripts/first_stage_weight.py"], root)
    rows = {float(line.split("|")[1].split()[0]): float(line.split("|")[2])
            for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line
            and "first_stage_weight" not in line}
    teacher = root / "outputs" / MINI / "runs/teacher/heldout.trec"
    qrels = read_judgements(root / "data/raw" / MINI, "train", None)
    own = per_query_metrics(read_trec_run(teacher)[0], qrels, ["ndcg_cut_10"],
                            read_run_topics(teacher))["ndcg_cut_10"]
    assert rows[weight] == pytest.approx(sum(own.values()) / len(own), abs=1e-4)
    assert f"chosen on dev: rank_lists.first_stage_weight = {weight:g}" in result.stdout
    assert "test" not in result.stdout.lower().replace("paired", "")


def test_second_repro_is_a_fast_no_op(pipeline_result):
    root, _ = pipeline_result
    started = time.perf_counter()
    result = run(["dvc", "repro"], root)
    assert time.perf_counter() - started < 15
    assert "Data and pipelines are up to date" in result.stdout


def test_metrics_and_plots_diff_across_commits_and_experiments(pipeline_result):
    """The run is committed; an experiment that adds a metric shows up in `dvc metrics diff`
    against that commit and beside it in `dvc exp show` (metrics are cached outputs)."""
    root, _ = pipeline_result
    run(["git", "add", "dvc.lock", "params.yaml"], root)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "pipeline run"],
        root)
    metrics = yaml.safe_load((root / "params.yaml").read_text())["evaluate"]["metrics"]
    try:
        run(["dvc", "exp", "run", "-n", "with-p5", "-S",
             f"evaluate.metrics=[{','.join([*metrics, 'P_5'])}]"], root)
        diff = json.loads(run(["dvc", "metrics", "diff", "HEAD", "--json"], root).stdout)
        changed = diff[f"outputs/{MINI}/eval/metrics.json"]
        assert any(key.endswith("BM25.P_5") for key in changed), changed
        plots = run(["dvc", "plots", "diff", "HEAD", "--json"], root)
        assert f"outputs/{MINI}/eval/plot.csv" in plots.stdout
        shown = run(["dvc", "exp", "show", "--json"], root).stdout
        assert "with-p5" in shown and "P_5" in shown
    finally:
        run(["git", "checkout", "--", "params.yaml", "dvc.lock"], root)
        run(["dvc", "checkout", "--force", "evaluate"], root)
    assert json.loads(run(["dvc", "status", "--json"], root).stdout) == {}


def test_changing_a_bm25_param_invalidates_only_bm25(pipeline_result):
    """DVC sees only `bm25` as changed; it reruns it and whatever consumes its runs."""
    root, _ = pipeline_result
    params_file = root / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["bm25"]["k1"] = 1.2
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        changed = json.loads(run(["dvc", "status", "--json"], root).stdout)
        assert set(changed) == {"bm25"}, changed
    finally:
        params_file.write_text(original)
    assert json.loads(run(["dvc", "status", "--json"], root).stdout) == {}


def _corrupt_and_validate(root, corpus_edit=None, qrels_edit=None):
    data = root / "data/raw" / MINI
    saved = {p: p.read_bytes() for p in [data / "corpus.jsonl", data / "qrels/test.tsv"]}
    downstream = root / "outputs" / MINI / "runs/bm25/test.trec"
    before = _digest(downstream)
    try:
        if corpus_edit:
            (data / "corpus.jsonl").write_text(corpus_edit((data / "corpus.jsonl").read_text()))
        if qrels_edit:
            (data / "qrels/test.tsv").write_text(qrels_edit((data / "qrels/test.tsv").read_text()))
        result = run(["dvc", "repro"], root, check=False)
    finally:
        for path, content in saved.items():
            path.write_bytes(content)
    assert result.returncode != 0
    assert "Running stage 'bm25'" not in result.stdout
    assert _digest(downstream) == before
    return result.stdout + result.stderr


def test_corrupted_data_fails_validation_naming_rule_file_and_line(pipeline_result):
    root, _ = pipeline_result

    def duplicate_first_doc(text):
        lines = text.splitlines()
        return "\n".join(lines + [lines[0]]) + "\n"

    def point_to_missing_doc(text):
        return text + text.splitlines()[1].split("\t")[0] + "\tno-such-doc\t1\n"

    output = _corrupt_and_validate(root, duplicate_first_doc, point_to_missing_doc)
    assert "corpus.id_unique" in output and "corpus.jsonl:1," in output
    assert "qrels.test.doc_exists" in output and "qrels/test.tsv:" in output
    assert "no-such-doc" in output


def test_broken_json_line_is_reported_as_file_and_line(pipeline_result):
    root, _ = pipeline_result

    def break_line_three(text):
        lines = text.splitlines()
        lines[2] = lines[2][:40]
        return "\n".join(lines) + "\n"

    output = _corrupt_and_validate(root, break_line_three)
    assert "corpus.jsonl:3" in output and "malformed JSON" in output
    assert "Traceback" not in output


"""Champion/challenger promotion against a real MLflow registry (the tests' tmp sqlite store)."""

import json

import mlflow
import pytest
from mlflow import MlflowClient

from components.layout import Layout
from components.promotion import (
    EXPERIMENT,
    PromotionSplit,
    decide,
    promote,
    request,
)
from components.registry import registered_name, set_alias, version_of
from flows.promote import skipped_on_this_dataset
from tests.promotion.toy_rankers import log_toy

N = 30
QUERIES = {f"q{i}": f"query text {i}" for i in range(N)}
QRELS = {f"q{i}": {f"rel-{i}": 1} for i in range(N)}
CANDIDATES = {f"q{i}": [f"rel-{i}"] + [f"d{i}-{j}" for j in range(9)] for i in range(N)}
SPLIT = PromotionSplit(QUERIES, QRELS, CANDIDATES,
                       {d: f"text of {d}" for ids in CANDIDATES.values() for d in ids})
RELEVANT = {QUERIES[q]: sorted(QRELS[q]) for q in QUERIES}
METRICS = ["ndcg_cut_10", "recall_10", "recip_rank_10"]


def _register(name: str, rank_of_relevant: int) -> str:
    """Log and register a toy ranker; point `challenger` at it, as a training stage does."""
    version = log_toy(name, "fixed-rank",
                      {"relevant": RELEVANT, "rank_of_relevant": rank_of_relevant})
    set_alias(name, version, "challenger")
    return version


def _promote(name: str, **kwargs):
    return promote(name, SPLIT, "ndcg_cut_10", METRICS, alpha=0.05, **kwargs)


def test_first_version_wins_weaker_is_kept_out_and_stronger_is_promoted():
    name = "toy-ranker"
    first = _register(name, rank_of_relevant=3)
    decision = _promote(name)
    assert decision.promoted and "first version" in decision.reason
    assert version_of(name, "champion") == first

    weaker = _register(name, rank_of_relevant=6)
    decision = _promote(name)
    assert not decision.promoted
    assert decision.challenger_version == weaker and decision.champion_version == first
    assert decision.challenger_metrics["ndcg_cut_10"] < decision.champion_metrics["ndcg_cut_10"]
    assert version_of(name, "champion") == first

    stronger = _register(name, rank_of_relevant=1)
    decision = _promote(name)
    assert decision.promoted, decision.reason
    assert decision.p_values["ndcg_cut_10"] < 0.05
    assert version_of(name, "champion") == stronger

    # Every decision is a tagged run in the promotion experiment, with both sides' metrics.
    runs = mlflow.search_runs(experiment_names=[EXPERIMENT],
                              filter_string=f"tags.model = '{name}'", output_format="list")
    by_version = {r.data.tags["challenger_version"]: r for r in runs}
    assert set(by_version) == {first, weaker, stronger}
    kept = by_version[weaker].data
    assert kept.tags["verdict"] == "kept champion" and kept.tags["champion_version"] == first
    assert kept.metrics["champion_ndcg_cut_10"] > kept.metrics["challenger_ndcg_cut_10"]
    assert by_version[stronger].data.tags["verdict"] == "promoted"


def test_each_dataset_has_its_own_champion():
    """A strong model of one dataset is promoted; the next dataset's weaker first version is
    its own champion and never the other's challenger."""
    first, second = registered_name("toy", "set-a"), registered_name("toy", "set-b")
    assert first == "set-a.toy"
    strong = _register(first, rank_of_relevant=1)
    assert _promote(first, dataset="set-a").promoted
    weak = _register(second, rank_of_relevant=8)
    decision = _promote(second, dataset="set-b")
    assert decision.promoted and decision.champion_version is None  # its own first version
    assert version_of(first, "champion") == strong and version_of(second, "champion") == weak
    runs = mlflow.search_runs(experiment_names=[EXPERIMENT],
                              filter_string=f"tags.model = '{second}'", output_format="list")
    assert [(r.data.tags["dataset"], r.data.tags["split_queries"]) for r in runs] == [
        ("set-b", str(N))]


def test_champion_evaluation_is_cached_per_split_and_version():
    name = "toy-cached"
    first = _register(name, rank_of_relevant=2)
    _promote(name)
    tags = MlflowClient().get_model_version(name, first).tags
    assert any(key.startswith("promotion_eval.") for key in tags)
    second = _register(name, rank_of_relevant=2)
    decision = _promote(name)
    assert decision.champion_version == first
    assert decision.promoted  # equal quality: ties promote
    runs = mlflow.search_runs(experiment_names=[EXPERIMENT],
                              filter_string=f"tags.model = '{name}'", output_format="list")
    latest = max(runs, key=lambda r: r.info.start_time)
    artifacts = [a.path for a in MlflowClient().list_artifacts(latest.info.run_id, "eval")]
    # Only the challenger was evaluated afresh; the champion's metrics came from the cache.
    assert artifacts == [f"eval/v{second}.json"]


def test_equal_primary_but_significantly_worse_secondary_is_not_promoted():
    champion = {"ndcg_cut_10": {f"q{i}": 0.5 for i in range(20)},
                "recall_10": {f"q{i}": 1.0 for i in range(20)}}
    challenger = {"ndcg_cut_10": {f"q{i}": 0.5 for i in range(20)},
                  "recall_10": {f"q{i}": 0.0 if i % 2 else 1.0 for i in range(20)}}
    promoted, reason, p_values = decide(challenger, champion, "ndcg_cut_10",
                                        ["ndcg_cut_10", "recall_10"], 0.05, "t-test")
    assert not promoted and "recall_10" in reason and p_values["recall_10"] < 0.05


def test_a_missing_challenger_is_explained():
    with pytest.raises(LookupError, match="no 'challenger' alias"):
        _promote("never-registered")


def test_the_request_holds_each_query_with_its_candidates_and_their_texts():
    frame = request(SPLIT)
    assert list(frame.columns) == ["qid", "query", "candidates", "documents"]
    assert frame["qid"].tolist() == sorted(QUERIES)
    row = frame[frame.qid == "q7"].iloc[0]
    assert row["query"] == QUERIES["q7"] and row["candidates"] == CANDIDATES["q7"]
    assert row["documents"] == [f"text of {d}" for d in CANDIDATES["q7"]]


def test_a_text_reading_model_is_judged_on_the_split_texts():
    """Like the teacher, the toy ranks by the texts the request carries: the relevant text
    (`text of rel-...`) first gives a perfect score only if each text reaches its candidate."""
    name = "toy-reader"
    set_alias(name, log_toy(name, "text", {"marker": "rel-"}), "challenger")
    decision = _promote(name)
    assert decision.promoted
    assert decision.challenger_metrics["ndcg_cut_10"] == pytest.approx(1.0)
    assert decision.challenger_metrics["recip_rank_10"] == pytest.approx(1.0)


def test_a_model_whose_stage_skipped_the_dataset_is_not_judged(tmp_path):
    """GR/DGR skip a dataset trained on another one's queries: promote must not judge the
    registry's (other dataset's) version there, and says why."""
    layout = Layout("trec-like", root=tmp_path)
    (layout.root / "dgr").mkdir(parents=True)
    (layout.root / "dgr" / "summary.json").write_text(json.dumps({"skipped": "no queries"}))
    (layout.root / "rabtriever").mkdir()
    (layout.root / "rabtriever" / "summary.json").write_text(json.dumps({"corpus_docs": 8}))
    assert skipped_on_this_dataset(layout, "dgr") == "no queries"
    assert skipped_on_this_dataset(layout, "rabtriever") is None
    assert skipped_on_this_dataset(layout, "teacher-reranker") is None  # no summary.json


def test_a_retriever_judged_by_search_gets_the_queries_alone():
    name = "toy-retriever"
    version = log_toy(name, "search-only", {"relevant": RELEVANT, "rank_of_relevant": 2})
    set_alias(name, version, "challenger")
    assert "candidates" not in request(SPLIT, by_search=True).columns
    decision = _promote(name, by_search=True)
    assert decision.promoted
    assert decision.challenger_metrics["recip_rank_10"] == pytest.approx(0.5)
    with pytest.raises(Exception, match="judge it by search"):
        _promote(name, version=version)  # as a reranker it refuses: the path is the search


def test_a_champion_that_no_longer_loads_is_replaced_by_the_challenger(tmp_path, monkeypatch):
    """A champion logged by code this repository no longer has (an older pyfunc format): its
    wrapper's module exists while it is logged, and is gone when promotion loads it."""
    import sys

    name = "toy-stale"
    (tmp_path / "gone_wrapper.py").write_text(
        "import mlflow\n\nclass Gone(mlflow.pyfunc.PythonModel):\n"
        "    def predict(self, context, model_input, params=None):\n        return model_input\n")
    script = tmp_path / "gone_model.py"
    script.write_text("import mlflow\nfrom gone_wrapper import Gone\n"
                      "mlflow.models.set_model(Gone())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with mlflow.start_run():
        mlflow.pyfunc.log_model(name="model", python_model=str(script),
                                registered_model_name=name)
    monkeypatch.undo()
    (tmp_path / "gone_wrapper.py").unlink()
    sys.modules.pop("gone_wrapper", None)
    set_alias(name, "1", "champion")
    challenger = _register(name, rank_of_relevant=3)
    decision = _promote(name)
    assert decision.promoted and "no longer loads" in decision.reason, decision.reason
    assert version_of(name, "champion") == challenger


def test_a_champion_that_cannot_rank_the_gate_candidates_is_replaced():
    """A reranker whose document index was built for other queries (the dev split changed
    since it was logged) cannot answer the gate: the challenger, which can, replaces it."""
    name = "toy-indexed"
    half = sorted({d for ids in CANDIDATES.values() for d in ids})[: 5 * N]
    champion = log_toy(name, "indexed", {"relevant": RELEVANT, "rank_of_relevant": 1,
                                         "indexed": half})
    set_alias(name, champion, "champion")
    challenger = _register(name, rank_of_relevant=3)
    decision = _promote(name)
    assert decision.promoted and "cannot rank the gate's candidates" in decision.reason
    assert "not in the index" in decision.reason
    assert version_of(name, "champion") == challenger

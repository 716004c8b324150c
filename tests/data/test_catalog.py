"""Per-dataset defaults: `null` in params.yaml resolves from components/data/catalog.py."""

import pytest

from components.config import ParamsError, load_params
from components.data import catalog
from components.evaluation.metrics import per_query_metrics
from components.layout import Layout
from components.llm.prompts import PromptTemplate
from components.settings import REPO_ROOT


@pytest.mark.parametrize("name", sorted(catalog.CATALOG))
def test_each_dataset_resolves_its_splits_prompt_and_training_data(name):
    params = load_params(REPO_ROOT / "params.yaml", overrides={"data.name": name})
    spec = catalog.spec(name)
    assert params.data.train_split == spec.train_split
    assert params.data.test_split == spec.test_split
    assert params.data.train_name == (spec.train_name or name)
    assert params.teacher.task == spec.prompt_task
    assert PromptTemplate.load(params.teacher.task).task == spec.prompt_task


def test_trec_dl19_trains_on_scifact_and_esconv_on_dev():
    trec = load_params(REPO_ROOT / "params.yaml", overrides={"data.name": "trec-dl19-subset"})
    assert trec.data.trains_elsewhere and trec.data.train_name == "scifact"
    assert trec.data.train_dataset_dir().name == "scifact"
    esconv = load_params(REPO_ROOT / "params.yaml", overrides={"data.name": "esconv-strategy"})
    assert (esconv.data.train_split, esconv.data.test_split) == ("dev", "test")
    assert not esconv.data.trains_elsewhere


def test_explicit_values_win_and_unknown_datasets_get_defaults():
    params = load_params(REPO_ROOT / "params.yaml", overrides={
        "data.name": "esconv-reply", "data.train_split": "test", "data.test_split": "dev",
        "teacher.task": "default"})
    assert (params.data.train_split, params.data.test_split) == ("test", "dev")
    assert params.teacher.task == "default"
    mine = load_params(REPO_ROOT / "params.yaml", overrides={"data.name": "my-data"})
    assert (mine.data.train_name, mine.data.train_split, mine.teacher.task) == (
        "my-data", "train", "default")


def test_same_train_and_test_split_is_refused():
    with pytest.raises(ParamsError, match="train_split and test_split"):
        load_params(REPO_ROOT / "params.yaml", overrides={"data.test_split": "train"})


def test_eval_metrics_add_the_task_measures():
    metrics = catalog.eval_metrics("esconv-strategy", ["ndcg_cut_10", "recall_10"])
    assert metrics == ["ndcg_cut_10", "recall_10", "recall_1", "recall_3"]
    assert catalog.eval_metrics("scifact", ["ndcg_cut_10"]) == ["ndcg_cut_10"]


def test_recall_at_1_and_3_and_p_at_1_from_trec_eval():
    run = {"q1": [("a", 3.0), ("b", 2.0), ("c", 1.0)], "q2": [("a", 3.0), ("b", 2.0)]}
    qrels = {"q1": {"c": 1}, "q2": {"a": 1}}
    scores = per_query_metrics(run, qrels, ["recall_1", "recall_3", "P_1"], ["q1", "q2"])
    assert scores["recall_1"] == {"q1": 0.0, "q2": 1.0}
    assert scores["recall_3"] == {"q1": 1.0, "q2": 1.0}
    assert scores["P_1"] == {"q1": 0.0, "q2": 1.0}


def test_training_bm25_run_of_another_dataset_stays_out_of_runs(tmp_path):
    layout = Layout("trec-dl19-subset", root=tmp_path)
    assert layout.train_bm25_run("trec-dl19-subset", "train") == layout.run_dir("bm25") / (
        "train.trec")
    elsewhere = layout.train_bm25_run("scifact", "train")
    assert layout.runs_dir not in elsewhere.parents and layout.root in elsewhere.parents

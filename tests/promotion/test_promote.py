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
)
from components.registry import set_alias, version_of
from flows.promote import skipped_on_this_dataset
from tests.promotion.toy_rankers import FixedRankRanker

N = 30
QUERIES = {f"q{i}": f"query text {i}" for i in range(N)}
QRELS = {f"q{i}": {f"rel-{i}": 1} for i in range(N)}
CANDIDATES = {f"q{i}": [f"rel-{i}"] + [f"d{i}-{j}" for j in range(9)] for i in range(N)}
SPLIT = PromotionSplit(QUERIES, QRELS, CANDIDATES,
                       {d: f"text of {d}" for ids in CANDIDATES.values() for d in ids})
RELEVANT = {QUERIES[q]: set(QRELS[q]) for q in QUERIES}
METRICS = ["ndcg_cut_10", "recall_10", "recip_rank_10"]


def _register(name: str, rank_of_relevant: int) -> str:
    """Log and register a toy ranker; point `challenger` at it, as a training stage does."""
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model",
                                       python_model=FixedRankRanker(RELEVANT, rank_of_relevant),
                                       registered_model_name=name)
    set_alias(name, info.registered_model_version, "challenger")
    return str(info.registered_model_version)


def _promote(name: str, **kwargs):
    return promote(name, SPLIT, "ndcg_cut_10", METRICS, alpha=0.05, interface="candidates",
                   **kwargs)


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


def test_missing_challenger_and_unknown_interface_are_explained():
    with pytest.raises(LookupError, match="no 'challenger' alias"):
        _promote("never-registered")
    with pytest.raises(ValueError, match="no pyfunc interface"):
        promote("some-model", SPLIT, "ndcg_cut_10", METRICS)


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

import math

import pytest

from components.evaluation.metrics import mean_metrics, per_query_metrics
from components.evaluation.report import evaluate_runs, query_set_label
from components.evaluation.table import metrics_json
from components.runs import read_run_topics, read_trec_run, write_trec_run

QRELS = {"q1": {"a": 1, "b": 2}, "q2": {"c": 1}, "q3": {"d": 1}}


def test_metrics_match_hand_computation():
    run = {"q1": [("x", 3.0), ("a", 2.0), ("b", 1.0)], "q2": [("c", 1.0)]}
    scores = mean_metrics(per_query_metrics(run, QRELS, ["ndcg_cut_10", "recip_rank_10",
                                                         "recall_100", "map"], ["q1", "q2"]))
    # trec_eval's nDCG uses the grade itself as gain: q1 has grade 1 at rank 2, grade 2 at 3.
    dcg = 1 / math.log2(3) + 2 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert scores["ndcg_cut_10"] == pytest.approx((dcg / idcg + 1.0) / 2, abs=1e-4)
    assert scores["recip_rank_10"] == pytest.approx((0.5 + 1.0) / 2)
    assert scores["recall_100"] == pytest.approx(1.0)
    assert scores["map"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1.0) / 2)


def test_mrr_is_cut_at_ten_and_missing_queries_score_zero():
    run = {"q1": [(f"n{i}", 100.0 - i) for i in range(10)] + [("a", 1.0)]}
    scores = per_query_metrics(run, QRELS, ["recip_rank_10", "ndcg_cut_10"], ["q1", "q2"])
    assert scores["recip_rank_10"] == {"q1": 0.0, "q2": 0.0}
    assert scores["ndcg_cut_10"]["q2"] == 0.0


def test_query_set_labels():
    assert query_set_label(["q2", "q1"], ["q1", "q2"]) == "all"
    label = query_set_label(["q1"], ["q1", "q2"])
    assert label.startswith("subset-1-") and label == query_set_label(["q1"], ["q2", "q1"])


def test_subset_runs_get_a_baseline_row_on_the_same_queries(tmp_path):
    runs = tmp_path / "runs"
    write_trec_run(runs / "bm25" / "test.trec",
                   {"q1": [("a", 2.0)], "q2": [("x", 1.0)], "q3": [("d", 1.0)]}, "BM25")
    write_trec_run(runs / "teacher" / "test.trec", {"q1": [("b", 2.0)], "q2": [("c", 1.0)]},
                   "teacher")
    rows = evaluate_runs(runs, {"test": QRELS}, ["ndcg_cut_10"])
    by_key = {(r.system, r.query_set): r for r in rows}
    subset = query_set_label(["q1", "q2"], list(QRELS))
    assert set(by_key) == {("bm25", "all"), ("teacher", subset), ("bm25", subset)}
    assert by_key[("bm25", subset)].n_queries == 2
    assert by_key[("bm25", "all")].n_queries == 3
    summary = metrics_json(rows)
    assert summary["test"][subset]["BM25 → teacher"]["queries"] == 2
    assert summary["test"][subset]["BM25"]["queries"] == 2


def _write(path, run, topics=None):
    """A run file, and its `.topics` sidecar listing `topics`, or no sidecar for None."""
    write_trec_run(path, run, path.parent.name)
    sidecar = path.with_suffix(".topics")
    sidecar.unlink(missing_ok=True)
    if topics is not None:
        sidecar.write_text("".join(f"{q}\n" for q in topics))


ALL_METRICS = ["ndcg_cut_10", "recall_100", "recip_rank_10", "map"]


def test_an_empty_ranking_counts_as_zero_on_every_metric_and_in_the_query_count(tmp_path):
    runs = tmp_path / "runs"
    # Asked q1 and q2, answered only q1 (perfectly); q3 is judged but was not asked.
    _write(runs / "sys" / "test.trec", {"q1": [("b", 2.0), ("a", 1.0)]}, ["q1", "q2"])
    (row,) = evaluate_runs(runs, {"test": QRELS}, ALL_METRICS)
    assert row.n_queries == 2 and row.query_set == query_set_label(["q1", "q2"], list(QRELS))
    for metric in ALL_METRICS:
        assert row.per_query[metric] == {"q1": pytest.approx(1.0), "q2": 0.0}, metric
        assert row.metrics[metric] == pytest.approx(0.5), metric


def test_a_run_without_topics_is_scored_on_the_judged_queries_it_answered(tmp_path):
    runs = tmp_path / "runs"
    _write(runs / "old" / "test.trec", {"q1": [("b", 2.0), ("a", 1.0)], "x": [("a", 1.0)]})
    assert read_run_topics(runs / "old" / "test.trec") is None
    (row,) = evaluate_runs(runs, {"test": QRELS}, ALL_METRICS)
    assert row.n_queries == 1 and row.metrics["map"] == pytest.approx(1.0)


def test_topics_reader_skips_blank_lines(tmp_path):
    (tmp_path / "r.topics").write_text("q1\n\n  q2 \nq3")
    assert read_run_topics(tmp_path / "r.trec") == ["q1", "q2", "q3"]


def test_a_reference_covers_a_subset_with_queries_it_answered_with_nothing(tmp_path):
    runs = tmp_path / "runs"
    # BM25 was asked everything but found nothing for q2; the teacher was asked q1 and q2.
    _write(runs / "bm25" / "test.trec", {"q1": [("a", 1.0)], "q3": [("d", 1.0)]}, list(QRELS))
    _write(runs / "teacher" / "test.trec", {"q1": [("b", 2.0)], "q2": [("c", 1.0)]},
           ["q1", "q2"])
    rows = evaluate_runs(runs, {"test": QRELS}, ["ndcg_cut_10"])
    subset = query_set_label(["q1", "q2"], list(QRELS))
    by_key = {(r.system, r.query_set): r for r in rows}
    assert by_key[("bm25", "all")].n_queries == 3
    assert by_key[("bm25", subset)].per_query["ndcg_cut_10"]["q2"] == 0.0


def test_the_dense_baseline_is_scored_on_a_students_subset_too(tmp_path):
    runs = tmp_path / "runs"
    everything = {q: [("a", 1.0)] for q in QRELS}
    for system in ("bm25", "dense"):
        _write(runs / system / "test.trec", everything, list(QRELS))
    _write(runs / "student" / "test.trec", {"q1": [("a", 1.0)]}, ["q1", "q2"])
    rows = evaluate_runs(runs, {"test": QRELS}, ["ndcg_cut_10"])
    subset = query_set_label(["q1", "q2"], list(QRELS))
    assert {r.system for r in rows if r.query_set == subset} == {"bm25", "dense", "student"}


def test_run_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "r.trec"
    write_trec_run(path, {"q": [("b", 1.0), ("a", 1.0), ("c", 3.0)]}, "sys")
    run, tag = read_trec_run(path)
    assert tag == "sys" and [d for d, _ in run["q"]] == ["c", "a", "b"]
    with pytest.raises(ValueError, match="spaces"):
        write_trec_run(path, {}, "two words")
    path.write_text("q Q0 d 1 notanumber t\n")
    with pytest.raises(ValueError, match=r"r.trec:1: score"):
        read_trec_run(path)

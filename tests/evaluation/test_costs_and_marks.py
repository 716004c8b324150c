"""Per-query costs beside each run, significance marks and p-values, and the metric plots."""

import json

import pandas as pd
import pytest

from components.evaluation.costs import (
    folder_bytes,
    latency_summary,
    read_cost,
    time_each,
    write_cost,
)
from components.evaluation.plots import metric_bars, plot_name
from components.evaluation.report import evaluate_runs
from components.evaluation.table import results_frame, results_markdown, significance_marks
from components.runs import write_trec_run

METRICS = ["ndcg_cut_10", "recall_10"]
N = 40
# Every query has one relevant document "rel-<i>".
QRELS = {f"q{i}": {f"rel-{i}": 1} for i in range(N)}


def _run(rank_of_relevant):
    """A run that puts each query's relevant document at rank `rank_of_relevant(i)`."""
    run = {}
    for i in range(N):
        hits = [f"other-{i}-{j}" for j in range(10)]
        hits.insert(rank_of_relevant(i) - 1, f"rel-{i}")
        run[f"q{i}"] = [(d, float(100 - r)) for r, d in enumerate(hits)]
    return run


def test_latency_summary_and_cost_file_round_trip(tmp_path):
    summary = latency_summary([0.010] * 19 + [0.200])
    assert summary["median_ms"] == pytest.approx(10.0)
    assert summary["p95_ms"] == pytest.approx(10.0 + 0.05 * 190.0)  # numpy linear interpolation
    assert summary["queries"] == 20
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "a.bin").write_bytes(b"x" * 1000)
    (tmp_path / "b.bin").write_bytes(b"y" * 24)
    assert folder_bytes(tmp_path / "index", tmp_path / "b.bin") == 1024
    write_cost(tmp_path / "runs" / "sys", [0.01, 0.02], 1024, "a test index")
    assert read_cost(tmp_path / "runs" / "sys")["index_bytes"] == 1024
    assert read_cost(tmp_path / "runs" / "missing") is None
    with pytest.raises(ValueError, match="no latencies"):
        latency_summary([])


def test_time_each_keeps_answers_in_order():
    answers, seconds = time_each([3, 1, 2], lambda x: x * 10)
    assert answers == [30, 10, 20] and len(seconds) == 3 and min(seconds) >= 0


@pytest.fixture
def runs(tmp_path):
    runs = tmp_path / "runs"
    # BM25 finds the relevant document at rank 2 or 3; the teacher lifts it to rank 1 on
    # most queries; a "noisy" system is like BM25 with small changes; a "broken" one at 11.
    write_trec_run(runs / "bm25" / "test.trec", _run(lambda i: 2 + i % 2), "BM25")
    write_trec_run(runs / "teacher" / "test.trec", _run(lambda i: 1 if i % 8 else 2), "T")
    write_trec_run(runs / "noisy" / "test.trec", _run(lambda i: 2 + (i % 3 == 0)), "N")
    write_trec_run(runs / "broken" / "test.trec", _run(lambda i: 11), "X")
    write_cost(runs / "bm25", [0.002, 0.003, 0.004], 5_000_000, "Lucene")
    return runs


def test_rows_carry_costs_and_significance_against_both_references(runs):
    rows = {r.system: r for r in evaluate_runs(runs, {"test": QRELS}, METRICS)}
    assert rows["bm25"].cost["latency"]["median_ms"] == pytest.approx(3.0)
    assert rows["teacher"].cost is None
    assert set(rows["broken"].tests["ndcg_cut_10"]) == {"bm25", "teacher"}
    assert significance_marks(rows["teacher"], "ndcg_cut_10", 0.05) == "▲B"
    assert significance_marks(rows["broken"], "ndcg_cut_10", 0.05) == "▼B▼T"
    # A reference is never tested against itself.
    assert "bm25" not in rows["bm25"].tests.get("ndcg_cut_10", {})
    # The noisy system's p-value against BM25 is large: no mark.
    assert rows["noisy"].tests["ndcg_cut_10"]["bm25"].p > 0.05
    assert "B" not in significance_marks(rows["noisy"], "ndcg_cut_10", 0.05)


def test_table_has_cost_columns_p_values_and_marks(runs):
    rows = evaluate_runs(runs, {"test": QRELS}, METRICS)
    frame = results_frame(rows, METRICS)
    bm25 = frame.set_index("system").loc["BM25"]
    assert bm25["latency median (ms)"] == pytest.approx(3.0)
    assert bm25["index (MB)"] == pytest.approx(5.0)
    assert pd.isna(bm25["p vs BM25 (nDCG@10)"]) and pd.isna(bm25["p Holm vs BM25 (nDCG@10)"])
    broken = frame.set_index("system").loc["broken"]
    assert broken["p vs BM25 → teacher (nDCG@10)"] < 0.05
    # Holm never lowers a p-value.
    assert broken["p Holm vs BM25 → teacher (nDCG@10)"] >= broken["p vs BM25 → teacher (nDCG@10)"]
    markdown = results_markdown(rows, METRICS, "toy", 0.05, "t-test")
    assert "▼B▼T" in markdown and "3.0 / 3.9" in markdown and "5.0 MB" in markdown
    assert "paired t-test, Holm-adjusted p < 0.05" in markdown


def test_metric_bars_write_one_png_per_query_set(runs, tmp_path):
    rows = evaluate_runs(runs, {"test": QRELS}, METRICS)
    paths = metric_bars(rows, METRICS, tmp_path / "plots", n_resamples=200)
    assert [p.name for p in paths] == [plot_name("test", "all")]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.dumps([p.name for p in (tmp_path / "plots").iterdir()]) == json.dumps(
        [plot_name("test", "all")])  # no temporary files left behind

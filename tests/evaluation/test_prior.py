"""The training-frequency prior: fitted on training judgements, tested against like BM25."""

import pytest

from components.evaluation.prior import label_frequencies, prior_run
from components.evaluation.report import evaluate_runs
from components.evaluation.table import results_frame, results_markdown, significance_marks
from components.runs import write_trec_run

LABELS = ["questions", "reflection", "suggestions"]
METRICS = ["recall_1", "ndcg_cut_10"]
N = 60
# Test queries: most want "questions" (what the prior ranks first), every third "suggestions".
TEST = {f"t{i}": {("suggestions" if i % 3 == 0 else "questions"): 1} for i in range(N)}


def test_frequencies_count_relevant_judgements_only():
    train = {"a": {"questions": 1, "reflection": 0}, "b": {"questions": 2}, "c": {"reflection": 1}}
    assert label_frequencies(train) == {"questions": 2, "reflection": 1}
    run = prior_run(train, ["x", "y"])
    assert run["x"] == run["y"] == [("questions", 2.0), ("reflection", 1.0)]
    with pytest.raises(ValueError, match="no relevant document"):
        prior_run({"a": {"questions": 0}}, ["x"])


@pytest.fixture
def label_runs(tmp_path):
    runs = tmp_path / "runs"
    # BM25 reads words and gets the label right half the time; the teacher reads the
    # conversation and is always right; "prior-like" copies the prior.
    bm25 = {q: [(LABELS[i % 2], 2.0), (LABELS[1 - i % 2], 1.0), ("suggestions", 0.5)]
            for i, q in enumerate(TEST)}
    teacher = {q: [(next(iter(TEST[q])), 3.0)] + [(d, 1.0) for d in LABELS
                                                  if d not in TEST[q]] for q in TEST}
    write_trec_run(runs / "bm25" / "test.trec", bm25, "BM25")
    write_trec_run(runs / "teacher" / "test.trec", teacher, "T")
    return runs


def test_the_prior_is_a_reference_every_row_is_tested_against(label_runs):
    train = {f"tr{i}": {("questions" if i % 4 else "reflection"): 1} for i in range(40)}
    extra = {("prior", "test"): prior_run(train, list(TEST))}
    rows = {r.system: r for r in evaluate_runs(label_runs, {"test": TEST}, METRICS,
                                              extra_runs=extra)}
    # The prior ranks "questions" first: right on two thirds of the queries.
    assert rows["prior"].metrics["recall_1"] == pytest.approx(2 / 3)
    assert set(rows["teacher"].tests["recall_1"]) == {"bm25", "prior"}
    assert significance_marks(rows["teacher"], "recall_1", 0.05) == "▲B▲P"
    assert significance_marks(rows["prior"], "recall_1", 0.05) == "▲B▼T"
    frame = results_frame(list(rows.values()), METRICS)
    assert "W/T/L vs prior (R@1)" in frame.columns
    markdown = results_markdown(list(rows.values()), METRICS, "labels", 0.05, "t-test")
    assert "▲P / ▼P" in markdown and "Prior (training frequency)" in markdown


def test_tables_without_a_prior_keep_their_columns(label_runs):
    rows = evaluate_runs(label_runs, {"test": TEST}, METRICS)
    assert not any("prior" in column for column in results_frame(rows, METRICS).columns)
    assert "▲P" not in results_markdown(rows, METRICS, "labels", 0.05, "t-test")

"""Gain kept, win/tie/loss and the Holm family of the results table."""

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest

from components.evaluation.headline import GainKept, gain_kept, win_tie_loss
from components.evaluation.report import (
    UNDEFINED_GAIN,
    PairedTest,
    Row,
    add_headline,
    evaluate_runs,
    query_set_label,
)
from components.evaluation.significance import holm
from components.evaluation.table import metrics_json, results_frame, results_markdown
from components.runs import write_trec_run

N = 40
QRELS = {f"q{i}": {f"rel-{i}": 1} for i in range(N)}
METRICS = ["ndcg_cut_10", "recall_10"]


def _as_map(values):
    return {f"q{i}": float(v) for i, v in enumerate(values)}


def test_gain_kept_by_hand_and_interval_equal_to_the_exact_bootstrap():
    b = np.array([0.2, 0.5, 0.1, 0.4, 0.3])
    t = np.array([0.6, 0.7, 0.5, 0.9, 0.4])
    s = np.array([0.5, 0.5, 0.2, 0.8, 0.4])
    gain = gain_kept(_as_map(s), _as_map(b), _as_map(t))
    # Student gains 0.3, 0, 0.1, 0.4, 0.1 (sum 0.9); teacher gains 0.4, 0.2, 0.4, 0.5, 0.1
    # (sum 1.6): the student keeps 0.9 / 1.6.
    assert gain.value == pytest.approx(0.5625)
    # Five queries have 5^5 equally likely resamples: the exact bootstrap distribution. The
    # 10,000 seeded draws land on the same order statistics.
    idx = np.array(list(itertools.product(range(5), repeat=5)))
    exact = (s - b)[idx].mean(axis=1) / (t - b)[idx].mean(axis=1)
    low, high = np.percentile(exact, [2.5, 97.5])
    assert (gain.low, gain.high) == pytest.approx((low, high), abs=1e-9)
    assert gain.low < gain.value < gain.high
    assert gain_kept(_as_map(s), _as_map(b), _as_map(t)) == gain  # seeded


def test_gain_kept_of_a_constant_share_has_no_spread_and_no_gain_has_a_note():
    b = np.linspace(0.1, 0.5, 7)
    gain = gain_kept(_as_map(b + 0.1), _as_map(b), _as_map(b + 0.4))
    assert (gain.value, gain.low, gain.high) == pytest.approx((0.25, 0.25, 0.25))
    flat = gain_kept(_as_map(b + 0.1), _as_map(b), _as_map(b))
    assert not flat.defined and "undefined" in flat.note
    with pytest.raises(ValueError, match="identical query sets"):
        gain_kept(_as_map(b), _as_map(b), _as_map(b[:-1]))


def test_resamples_without_teacher_gain_widen_the_interval_to_infinity():
    # One query carries the whole teacher gain: about a third of the resamples miss it and
    # have no teacher gain at all. Dropping them would give a finite, flattering interval.
    b = np.zeros(3)
    gain = gain_kept(_as_map([0.5, 0.1, -0.1]), _as_map(b), _as_map([1.0, 0.0, 0.0]))
    assert gain.value == pytest.approx(0.5)
    assert math.isinf(gain.high) and gain.high > 0


def test_win_tie_loss_counts_exact_ties_only():
    system = _as_map([0.5, 0.5, 0.2, 0.7, 0.1 + 0.2])
    other = _as_map([0.4, 0.5, 0.3, 0.7, 0.3])
    # 0.1 + 0.2 != 0.3 in floating point: a win, as trec_eval's own numbers would say.
    assert win_tie_loss(system, other) == (2, 2, 1)


def _ndcg(rank):
    return 1 / math.log2(rank + 1)  # one relevant document of grade 1


def _run(rank_of):
    run = {}
    for i in range(N):
        hits = [f"other-{i}-{j}" for j in range(10)]
        hits.insert(rank_of(i) - 1, f"rel-{i}")
        run[f"q{i}"] = [(d, float(100 - r)) for r, d in enumerate(hits)]
    return run


RANKS = {
    "bm25": lambda i: 2 + i % 2,
    "teacher": lambda i: 1 if i % 8 else 2,
    "rabtriever_rerank": lambda i: 1 if i % 4 == 0 else 2 + i % 2,
}


@pytest.fixture
def runs(tmp_path):
    runs = tmp_path / "runs"
    for system, rank_of in RANKS.items():
        write_trec_run(runs / system / "test.trec", _run(rank_of), system)
        # The held-out split: the teacher there is BM25 but for one query (no real gain).
        held_out = rank_of if system != "teacher" else lambda i: 1 if i == 0 else 2 + i % 2
        write_trec_run(runs / system / "heldout.trec", _run(held_out), system)
    # DGR was asked only the first 20 queries: a subset with BM25 and the teacher on it.
    subset = {q: hits for q, hits in _run(lambda i: 1 if i % 2 else 3).items()
              if int(q[1:]) < 20}
    write_trec_run(runs / "dgr" / "test.trec", subset, "dgr")
    return runs


def test_gain_kept_and_win_tie_loss_on_every_split_and_query_set(runs):
    rows = evaluate_runs(runs, {"test": QRELS, "heldout": QRELS}, METRICS, n_resamples=2000)
    by = {(r.split, r.query_set, r.system): r for r in rows}
    per = {s: [_ndcg(RANKS[s](i)) for i in range(N)] for s in RANKS}
    b, t, s = (np.array(per[k]) for k in ("bm25", "teacher", "rabtriever_rerank"))
    student = by[("test", "all", "rabtriever_rerank")]
    assert student.gain.value == pytest.approx((s.mean() - b.mean()) / (t.mean() - b.mean()))
    assert student.gain.low < student.gain.value < student.gain.high
    # Queries 0 mod 4 move to rank 1 (wins over BM25); the rest keep BM25's rank (ties).
    assert student.wtl["bm25"] == (10, 30, 0)
    assert student.wtl["teacher"] == (
        int(np.sum(s > t)), int(np.sum(s == t)), int(np.sum(s < t)))
    # References: the teacher has W/T/L against BM25 and no gain; BM25 is never vs itself.
    assert by[("test", "all", "teacher")].gain is None
    assert "bm25" not in by[("test", "all", "bm25")].wtl
    # The subset DGR was asked has its own references, and its gain is taken from them.
    subset = query_set_label([f"q{i}" for i in range(20)], list(QRELS))
    dgr = by[("test", subset, "dgr")]
    d = np.array([_ndcg(1 if i % 2 else 3) for i in range(20)])
    assert dgr.gain.value == pytest.approx((d.mean() - b[:20].mean()) / (t[:20].mean()
                                                                         - b[:20].mean()))
    # The held-out split is treated alike: the teacher is not significantly above BM25 there.
    held_out = by[("heldout", "all", "rabtriever_rerank")]
    assert not held_out.gain.defined and held_out.gain.note == UNDEFINED_GAIN
    assert held_out.wtl["bm25"] == (10, 30, 0)


def test_table_shows_gain_kept_its_undefined_case_and_win_tie_loss(runs):
    rows = evaluate_runs(runs, {"test": QRELS, "heldout": QRELS}, METRICS, n_resamples=2000)
    markdown = results_markdown(rows, METRICS, "toy", 0.05, "t-test", "ndcg_cut_10")
    student = next(r for r in rows if r.split == "test" and r.system == "rabtriever_rerank")
    assert f"{student.gain.value:.0%} [{student.gain.low:.0%}, {student.gain.high:.0%}]" in markdown
    header = next(line for line in markdown.splitlines() if line.startswith("| system"))
    assert [c.strip() for c in header.split("|")[4:7]] == [
        "gain kept (nDCG@10) [95% CI]", "W/T/L vs BM25", "W/T/L vs teacher"]
    assert "10/30/0" in markdown and UNDEFINED_GAIN in markdown
    frame = results_frame(rows, METRICS, "ndcg_cut_10")
    frame = frame[frame["query set"] == "all"].set_index(["split", "system"])
    assert frame.loc[("test", "BM25 → Rabtriever"), "gain kept (nDCG@10)"] == pytest.approx(
        student.gain.value, abs=1e-4)
    assert frame.loc[("heldout", "BM25 → Rabtriever"), "gain kept note"] == UNDEFINED_GAIN
    assert frame.loc[("test", "BM25 → Rabtriever"), "W/T/L vs BM25 (nDCG@10)"] == "10/30/0"
    assert pd.isna(frame.loc[("test", "BM25"), "gain kept (nDCG@10)"])
    summary = json.loads(json.dumps(metrics_json(rows)))  # plain JSON: no infinities
    entry = summary["test"]["all"]["BM25 → Rabtriever"]
    assert entry["wtl_vs_bm25"] == {"wins": 10, "ties": 30, "losses": 0}
    assert entry["gain_kept"] == pytest.approx(student.gain.value, abs=1e-4)
    held_out = summary["heldout"]["all"]["BM25 → Rabtriever"]
    assert held_out["gain_kept"] is None and held_out["gain_kept_note"] == UNDEFINED_GAIN


def _rows_with_teacher_test(p_raw, p_holm):
    values = {f"q{i}": 0.1 * i for i in range(6)}
    bm25 = Row("test", "bm25", "all", 6, {}, {"ndcg_cut_10": values})
    teacher = Row("test", "teacher", "all", 6, {},
                  {"ndcg_cut_10": {q: v + 0.3 for q, v in values.items()}})
    student = Row("test", "dgr", "all", 6, {},
                  {"ndcg_cut_10": {q: v + 0.1 for q, v in values.items()}})
    teacher.tests = {"ndcg_cut_10": {"bm25": PairedTest(p_raw, 0.3, p_holm)}}
    return bm25, teacher, student


def test_gain_kept_reads_the_holm_adjusted_p_not_the_raw_one():
    rows = _rows_with_teacher_test(p_raw=0.01, p_holm=0.09)
    add_headline(list(rows), "ndcg_cut_10", alpha=0.05, n_resamples=100)
    assert rows[2].gain == GainKept(None, note=UNDEFINED_GAIN)
    rows = _rows_with_teacher_test(p_raw=0.01, p_holm=0.03)
    add_headline(list(rows), "ndcg_cut_10", alpha=0.05, n_resamples=100)
    assert rows[2].gain.value == pytest.approx(1 / 3)


def test_holm_family_is_one_metric_on_one_split_and_query_set_with_each_pair_once(runs):
    rows = evaluate_runs(runs, {"test": QRELS, "heldout": QRELS}, METRICS, n_resamples=200)
    for split in ("test", "heldout"):
        group = [r for r in rows if r.split == split and r.query_set == "all"]
        distinct = {(frozenset((r.system, ref)), metric): result
                    for r in group for metric, by_ref in r.tests.items()
                    for ref, result in by_ref.items()}
        # 3 systems: BM25-teacher, student-BM25, student-teacher, on 2 metrics.
        assert len(distinct) == 3 * len(METRICS)
        for metric in METRICS:
            family = [result for (_, m), result in distinct.items() if m == metric]
            expected = holm([result.p for result in family])
            for result, adjusted in zip(family, expected, strict=True):
                assert result.p_holm == pytest.approx(adjusted)
        bm25, teacher = (next(r for r in group if r.system == s) for s in ("bm25", "teacher"))
        for metric in METRICS:
            there, back = teacher.tests[metric]["bm25"], bm25.tests[metric]["teacher"]
            assert (there.p, there.p_holm) == (back.p, back.p_holm)
            assert there.diff == -back.diff

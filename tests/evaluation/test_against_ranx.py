"""Our metrics (trec_eval through pytrec_eval, plus our own cut for MRR@10 and our query set)
pinned per query and in mean to ranx, an independent numba implementation.

Tie handling, which the two libraries do differently:
- trec_eval ignores the rank column and re-sorts each query by score, breaking ties by doc id
  *descending* (`comp_sim_docno` in form_res_rels.c); pytrec_eval inherits that.
- ranx sorts by score with numba's `np.argsort` (quicksort): insertion order survives for
  short lists, but not past ~15 documents, so its tie order is not a convention to compare.
Our convention is trec_eval's, also for the depth-10 cut behind MRR@10 (the cut must keep the
documents trec_eval ranks first, or MRR@10 and nDCG@10 would read different rankings). So the
test hands ranx the ranking in that convention with distinct scores (n - rank): ranx's own
tie handling plays no part, and any disagreement is a metric or query-set bug of ours. The
fixture has many ties (integer scores), a 12-way tie across the MRR@10 cut, graded and
zero-graded judgments, a query judged but not asked, one asked with an empty ranking, a judged
query without relevant documents, and a run query nobody judged.
"""

import warnings

import numpy as np
import pytest

from components.evaluation.metrics import per_query_metrics
from components.evaluation.report import evaluate_runs
from components.runs import write_trec_run

ranx = pytest.importorskip("ranx")

METRICS = {"ndcg_cut_10": "ndcg@10", "recall_100": "recall@100", "recip_rank_10": "mrr@10",
           "map": "map"}


def _fixture():
    rng = np.random.default_rng(42)
    qrels = {
        # A judged-non-relevant document on top, then a three-way tie holding the relevant b.
        "tie-top": {"b": 1, "z": 0},
        # Twelve documents tied: trec_eval ranks d11 first, d00 twelfth, past the MRR@10 cut.
        "tie-cut": {"d11": 2, "d00": 1},
        # Relevant documents at ranks 6, 51 and 111: R@100 = 2/3.
        "deep": {"p005": 1, "p050": 2, "p110": 1},
        "empty": {"x": 1},  # asked, answered with nothing: 0 on every metric
        "not-asked": {"y": 1},  # judged but not in the topics: not in the query set
        "no-relevant": {"n": 0, "m": 0},
    }
    run = {
        "tie-top": [("z", 6.0), ("a", 5.0), ("b", 5.0), ("c", 5.0), ("e", 1.0)],
        "tie-cut": [(f"d{i:02d}", 1.0) for i in range(12)],
        "deep": [(f"p{i:03d}", 200.0 - i) for i in range(120)],
        "no-relevant": [("n", 2.0), ("o", 1.0)],
        "unjudged": [("a", 1.0)],
    }
    pool = [f"doc{i}" for i in range(50)]
    for q in range(30):
        qid = f"q{q:02d}"
        judged = rng.choice(pool, size=8, replace=False)
        qrels[qid] = {str(d): int(g) for d, g in zip(judged, rng.integers(0, 4, size=8),
                                                      strict=True)}
        hits = rng.choice(pool, size=int(rng.integers(15, 41)), replace=False)
        # Integer scores in 0..4: every query has many ties, some across rank 10.
        run[qid] = [(str(d), float(s)) for d, s in zip(hits, rng.integers(0, 5, hits.size),
                                                        strict=True)]
    topics = sorted(set(run) | {"empty"})  # "not-asked" is judged but was not asked
    return qrels, run, topics


def _trec_eval_order(hits):
    """Score descending, ties by doc id descending: the ranking trec_eval evaluates."""
    return sorted(hits, key=lambda pair: (pair[1], pair[0]), reverse=True)


def _ranx_scores(qrels, run, query_ids):
    q = ranx.Qrels({qid: qrels[qid] for qid in query_ids})
    r = ranx.Run({qid: {doc: float(len(run[qid]) - rank)
                        for rank, (doc, _) in enumerate(_trec_eval_order(run[qid]))}
                  for qid in query_ids if run.get(qid)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba's uint64 -> int64 cast of hashed doc ids
        per_query = ranx.evaluate(q, r, list(METRICS.values()), return_mean=False,
                                  make_comparable=True)
    # ranx orders queries by id, as its Qrels sorts them.
    return {ours: dict(zip(sorted(query_ids), per_query[theirs], strict=True))
            for ours, theirs in METRICS.items()}


@pytest.fixture(scope="module")
def fixture():
    return _fixture()


def test_row_matches_ranx_per_query_and_in_mean(fixture, tmp_path):
    qrels, run, topics = fixture
    path = tmp_path / "runs" / "sys" / "test.trec"
    write_trec_run(path, run, "sys")
    path.with_suffix(".topics").write_text("".join(f"{q}\n" for q in topics))
    (row,) = evaluate_runs(tmp_path / "runs", {"test": qrels}, list(METRICS))
    expected_queries = sorted(set(topics) & set(qrels))
    assert "empty" in expected_queries and "not-asked" not in expected_queries
    assert row.n_queries == len(expected_queries)
    theirs = _ranx_scores(qrels, run, expected_queries)
    for metric in METRICS:
        assert sorted(row.per_query[metric]) == expected_queries
        for qid in expected_queries:
            assert row.per_query[metric][qid] == pytest.approx(theirs[metric][qid], abs=1e-6), (
                metric, qid)
        assert row.metrics[metric] == pytest.approx(np.mean(list(theirs[metric].values())),
                                                    abs=1e-6)


def test_ties_follow_trec_eval_also_across_the_mrr_cut(fixture):
    qrels, run, _ = fixture
    scores = per_query_metrics(run, qrels, list(METRICS), ["tie-top", "tie-cut", "deep"])
    # z, c, b, a: the relevant b is third of the tie.
    assert scores["recip_rank_10"]["tie-top"] == pytest.approx(1 / 3)
    # d11 (grade 2) first, d00 (grade 1) twelfth: MRR@10 sees d11 exactly as nDCG@10 does.
    assert scores["recip_rank_10"]["tie-cut"] == 1.0
    assert scores["ndcg_cut_10"]["tie-cut"] == pytest.approx(2 / (2 + 1 / np.log2(3)))
    assert scores["recall_100"]["deep"] == pytest.approx(2 / 3)

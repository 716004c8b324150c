"""IR metrics from trec_eval (through pytrec_eval), never hand-written.

Metric names follow trec_eval's output keys (`ndcg_cut_10`, `recall_100`, `map`, ...).
`recip_rank_10` is MRR@10: trec_eval's `recip_rank` on the run cut at depth 10, the
way MS MARCO defines it.

Ties: trec_eval ignores a run's rank column and sorts each query by score, ties broken by doc
id descending. Every metric here reads that ranking, the depth-10 cut included: a cut that
broke ties the other way (as run files list them, doc id ascending) would keep documents
trec_eval ranks below 10 and drop ones it ranks above, so MRR@10 and nDCG@10 would disagree
on the same tied run. tests/evaluation/test_against_ranx.py pins this.
"""

from __future__ import annotations

from statistics import fmean

import pytrec_eval

from components.config import trec_measure
from components.runs import Run

METRIC_LABELS = {
    "ndcg_cut_10": "nDCG@10",
    "recall_1": "R@1",
    "recall_3": "R@3",
    "P_1": "P@1",
    "recall_10": "R@10",
    "recall_100": "R@100",
    "recip_rank_10": "MRR@10",
    "map": "MAP",
}


def _as_trec(run: Run, depth: int | None = None) -> dict[str, dict[str, float]]:
    result = {}
    for qid, hits in run.items():
        # trec_eval's order (score, then doc id, both descending), so the cut keeps its top.
        ranked = sorted(hits, key=lambda pair: (pair[1], pair[0]), reverse=True)
        result[qid] = {docid: float(score) for docid, score in ranked[:depth]}
    return result


def per_query_metrics(run: Run, qrels: dict[str, dict[str, int]], metrics: list[str],
                      query_ids: list[str]) -> dict[str, dict[str, float]]:
    """metric -> {qid: value} over exactly `query_ids` (a query with no hits scores 0)."""
    qrels = {qid: qrels[qid] for qid in query_ids}
    full = _as_trec({qid: run.get(qid, []) for qid in query_ids})
    scores: dict[str, dict[str, float]] = {}
    for metric in metrics:
        depth = 10 if metric == "recip_rank_10" else None
        measure = trec_measure(metric)
        evaluator = pytrec_eval.RelevanceEvaluator(qrels, {measure})
        trec_run = full if depth is None else _as_trec(run, depth)
        # pytrec_eval skips queries absent from the run; give them an empty ranking instead.
        trec_run = {qid: trec_run.get(qid) or {"__none__": 0.0} for qid in query_ids}
        result = evaluator.evaluate(trec_run)
        key = measure.replace(".", "_")
        scores[metric] = {qid: float(result[qid][key]) for qid in query_ids}
    return scores


def mean_metrics(per_query: dict[str, dict[str, float]]) -> dict[str, float]:
    return {metric: fmean(values.values()) for metric, values in per_query.items()}

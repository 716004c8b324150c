"""Interpolating a reranker's scores with its first stage's.

`score = w · minmax(first stage) + (1 − w) · minmax(reranker)`, both min-max normalised per query
over the candidates the reranker scored, the convex combination ranx calls `wsum` with
`min-max` normalisation (tests/test_fusion.py pins it against ranx). `w = 0` is the reranker
alone, as the papers rank; `rank_lists.first_stage_weight` sets `w` for the teacher and for
Rabtriever's reranking alike, so the student is read against a teacher ranked the same way.
`auto` lets `rank_lists` choose `w` on the held-out dev queries (`choose_weight`) and record it
(`WEIGHT_FILE`), where the later stages read it (`read_weight`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from components.runs import Run

GRID = tuple(round(0.1 * i, 1) for i in range(11))
WEIGHT_FILE = "first_stage_weight.json"


def _min_max(hits: list[tuple[str, float]]) -> dict[str, float]:
    scores = [score for _, score in hits]
    low, high = min(scores), max(scores)
    # One candidate, or all tied: every candidate is equally good, as ranx normalises them.
    span = high - low
    return {docid: (score - low) / span if span else 0.0 for docid, score in hits}


def interpolate(first_stage: Run, reranked: Run, weight: float) -> Run:
    """`reranked` with each score mixed with the first stage's score of the same candidate.

    Only the reranked candidates are scored; a candidate the first stage did not return (never
    the case when the reranker reorders the first stage's top K) gets its lowest normalised
    score, 0.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"first-stage weight must be in [0, 1], got {weight}")
    if weight == 0.0:
        return reranked
    fused: Run = {}
    for qid, hits in reranked.items():
        if not hits:
            fused[qid] = []
            continue
        mine = _min_max(hits)
        candidates = {docid for docid, _ in hits}
        known = [hit for hit in first_stage.get(qid, []) if hit[0] in candidates]
        theirs = _min_max(known) if known else {}
        fused[qid] = [(docid, weight * theirs.get(docid, 0.0) + (1 - weight) * mine[docid])
                      for docid, _ in hits]
    return fused


def choose_weight(first_stage: Run, reranked: Run, qrels: Mapping[str, Mapping[str, int]],
                  metric: str, query_ids: list[str]) -> tuple[float, dict[float, float]]:
    """The `w` of `GRID` whose mixed ranking has the best mean `metric` over `query_ids` (dev
    queries: never test), and every `w`'s mean. A tie goes to the smaller `w`, the nearer the
    papers' reranker-alone ranking."""
    from components.evaluation.metrics import per_query_metrics

    if not query_ids:
        raise ValueError("choosing the first-stage weight needs held-out dev queries with "
                         "judgements (data.dev_queries > 0)")
    means = {}
    for weight in GRID:
        scores = per_query_metrics(interpolate(first_stage, reranked, weight), dict(qrels),
                                   [metric], query_ids)[metric]
        means[weight] = sum(scores.values()) / len(query_ids)
    best = max(GRID, key=lambda w: (round(means[w], 12), -w))
    return best, means


def write_weight(folder: Path, setting: float | str, weight: float,
                 dev: Mapping[float, float] | None = None, metric: str | None = None) -> Path:
    """Record the weight the stage used (and, when chosen, what it was chosen on)."""
    from components.atomic import write_text_atomic

    record = {"setting": setting, "weight": weight}
    if dev is not None:
        record.update(chosen_on="dev", metric=metric, dev={str(w): m for w, m in dev.items()})
    path = Path(folder) / WEIGHT_FILE
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")
    return path


def read_weight(folder: Path) -> float:
    """The weight `rank_lists` used (its `WEIGHT_FILE` in `folder`)."""
    path = Path(folder) / WEIGHT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no first-stage weight; run the rank_lists stage")
    return float(json.loads(path.read_text())["weight"])

"""Interpolating a reranker's scores with its first stage's.

`score = w · minmax(first stage) + (1 − w) · minmax(reranker)`, both min-max normalised per query
over the candidates the reranker scored, the convex combination ranx calls `wsum` with
`min-max` normalisation (tests/test_fusion.py pins it against ranx). `w = 0` is the reranker
alone, as the papers rank; `rank_lists.first_stage_weight` sets `w` for the teacher and for
Rabtriever's reranking alike, so the student is read against a teacher ranked the same way.
"""

from __future__ import annotations

from components.runs import Run


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

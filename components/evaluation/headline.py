"""The distillation headline per student: how much of the teacher's gain it keeps, and per query.

Gain kept = (student - first stage) / (teacher - first stage) on the primary metric, over one
query set. A student that matches the teacher keeps 100%, one no better than BM25 keeps 0%.
Its 95% interval is a paired bootstrap: queries are resampled jointly (one draw of query
indices serves the student, the first stage and the teacher, so their correlation is kept),
and each resample gives the ratio of its two mean differences; the interval is the 2.5 and
97.5 percentiles of those ratios. The ratio is only read when the teacher is significantly
above the first stage: otherwise its denominator is noise and the ratio can be anything, so
the caller reports it as undefined (components.evaluation.report decides, with the
Holm-adjusted p-value of teacher vs first stage on that query set).

Win/tie/loss counts queries where a system's per-query score is above, exactly equal to, or
below another system's: the shape behind a mean (a small mean gain can be a few big wins).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

GAIN_RESAMPLES = 10_000
# Rows of query indices drawn at once: bounds memory (10,000 resamples x 3,000 queries of
# int64 would be 240 MB) without changing the draws, which depend only on the seed.
_CHUNK = 1_000


@dataclass(frozen=True)
class GainKept:
    """Gain kept on one query set: the point ratio and its bootstrap interval, or `note`
    saying why there is none (then `value`, `low` and `high` are None)."""

    value: float | None
    low: float | None = None
    high: float | None = None
    note: str | None = None

    @property
    def defined(self) -> bool:
        return self.value is not None


def _aligned(*per_query: Mapping[str, float]) -> list[np.ndarray]:
    qids = sorted(per_query[0])
    for other in per_query[1:]:
        if set(other) != set(qids):
            raise ValueError("gain kept needs the three systems on identical query sets")
    if not qids:
        raise ValueError("no queries")
    return [np.array([values[q] for q in qids], dtype=float) for values in per_query]


def _ratios(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, where a resample whose teacher gain is <= 0 gives +-inf (the
    student kept an unbounded share of no gain): it widens the interval instead of being
    dropped, which would flatter the student. 0 / 0 is nan and left out by the caller."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = numerator / denominator
    bad = denominator <= 0
    ratio[bad] = np.sign(numerator[bad]) * np.inf
    ratio[bad & (numerator == 0)] = np.nan
    return ratio


def gain_kept(student: Mapping[str, float], first_stage: Mapping[str, float],
              teacher: Mapping[str, float], n_resamples: int = GAIN_RESAMPLES, seed: int = 0,
              confidence: float = 0.95) -> GainKept:
    """Point ratio of mean gains and its paired percentile bootstrap interval.

    With no teacher gain at all (mean teacher - first stage <= 0) the ratio is meaningless:
    `note` says so. Whether the gain is *significant* is the caller's call (it needs the
    corrected test of the whole table).
    """
    s, b, t = _aligned(student, first_stage, teacher)
    student_gain, teacher_gain = s - b, t - b
    if teacher_gain.mean() <= 0:
        return GainKept(None, note="undefined: teacher not above BM25")
    value = float(student_gain.mean() / teacher_gain.mean())
    rng = np.random.default_rng(seed)
    ratios = []
    for start in range(0, n_resamples, _CHUNK):
        idx = rng.integers(0, s.size, size=(min(_CHUNK, n_resamples - start), s.size))
        ratios.append(_ratios(student_gain[idx].mean(axis=1), teacher_gain[idx].mean(axis=1)))
    ratio = np.concatenate(ratios)
    tail = (1 - confidence) / 2 * 100
    # Order statistics, not interpolation: between a finite ratio and an infinite one numpy's
    # linear interpolation can answer nan, and the outer order statistic is the safe side.
    low = np.nanpercentile(ratio, tail, method="lower")
    high = np.nanpercentile(ratio, 100 - tail, method="higher")
    return GainKept(value, float(low), float(high))


def win_tie_loss(system: Mapping[str, float], other: Mapping[str, float]) -> tuple[int, int, int]:
    """Queries where `system` scores above, exactly equal to, or below `other`."""
    a, b = _aligned(system, other)
    return int(np.sum(a > b)), int(np.sum(a == b)), int(np.sum(a < b))

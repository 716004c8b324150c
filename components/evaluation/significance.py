"""Paired significance tests and bootstrap confidence intervals over per-query scores.

Two systems are compared on the same queries, so the tests are paired: each query
contributes the difference of its two scores. Two tests are offered:

- `"t-test"`: Student's paired t-test (`scipy.stats.ttest_rel`), the usual IR choice and
  robust for the few hundred queries of a BEIR split.
- `"permutation"`: the paired randomisation test (Smucker, Allan & Carterette, CIKM 2007,
  "A comparison of statistical significance tests for IR evaluation"): under the null
  hypothesis the two labels of each query are exchangeable, so the signs of the
  differences are flipped at random (`scipy.stats.permutation_test` with
  `permutation_type="samples"`). Exact when 2^n is small, Monte Carlo otherwise, with a
  fixed seed so reruns give the same p-value.

Both are two-sided. `bootstrap_ci` gives a bootstrap 95% confidence interval of a mean
(bias-corrected and accelerated, scipy's default), for error bars on plots.

`holm` corrects a family of p-values for multiple comparisons (Holm 1979, step-down,
controls the family-wise error rate with no assumption on how the tests depend on each
other, which suits a table whose tests share queries and systems). It calls statsmodels'
`multipletests(method="holm")` rather than a hand-written step-down: statsmodels is the
reference implementation most papers cite, and it costs the lock five pure or wheel-only
packages (statsmodels, patsy, formulaic, interface-meta, wrapt).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

Method = Literal["t-test", "permutation"]
METHODS: tuple[str, ...] = ("t-test", "permutation")


class QuerySetMismatchError(ValueError):
    """The two systems were not scored on the same queries: a paired test is meaningless."""


def paired_arrays(
    per_query_a: Mapping[str, float], per_query_b: Mapping[str, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Align two per-query score maps on their (identical) query ids, in sorted id order.

    Raises `QuerySetMismatchError` naming a few ids missing on each side: silently
    intersecting would compare systems on different queries (e.g. one run lost queries).
    """
    only_a = sorted(set(per_query_a) - set(per_query_b))
    only_b = sorted(set(per_query_b) - set(per_query_a))
    if only_a or only_b:
        raise QuerySetMismatchError(
            "paired test needs identical query sets: "
            f"{len(only_a)} only in A (e.g. {only_a[:5]}), "
            f"{len(only_b)} only in B (e.g. {only_b[:5]})"
        )
    if not per_query_a:
        raise ValueError("no queries to compare")
    qids = sorted(per_query_a)
    a = np.array([per_query_a[q] for q in qids], dtype=float)
    b = np.array([per_query_b[q] for q in qids], dtype=float)
    return a, b


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a - b, axis=axis)


def compare(
    per_query_a: Mapping[str, float],
    per_query_b: Mapping[str, float],
    method: Method = "t-test",
    n_resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Two-sided paired test of system A against baseline B on one metric.

    Returns `(p_value, mean_diff)` with `mean_diff = mean(A - B)`; a positive difference
    means A scores higher. When every query has the same score in both systems there is
    no evidence of a difference: p-value 1.0 (scipy's t-test would return nan from a zero
    variance). `n_resamples` and `seed` apply to the permutation test only.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    a, b = paired_arrays(per_query_a, per_query_b)
    diffs = a - b
    mean_diff = float(np.mean(diffs))
    if np.all(diffs == 0):
        return 1.0, mean_diff
    if method == "t-test":
        # Constant non-zero differences have zero variance: scipy answers p = 0 (1.17) or
        # nan (older releases), with a precision warning. Pin the meaning here: the same
        # effect on every query is certain.
        if np.all(diffs == diffs[0]):
            return 0.0, mean_diff
        p_value = float(stats.ttest_rel(a, b).pvalue)
    else:
        result = stats.permutation_test(
            (a, b),
            _mean_difference,
            permutation_type="samples",
            vectorized=True,
            n_resamples=n_resamples,
            alternative="two-sided",
            random_state=np.random.default_rng(seed),
        )
        p_value = float(result.pvalue)
    return p_value, mean_diff


def holm(p_values: list[float] | np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values, in the order given: reject where adjusted p < alpha.

    Adjusted p of the i-th smallest of m raw p-values: max over j <= i of (m - j + 1) p_(j),
    capped at 1. An empty family gives an empty array.
    """
    p_values = np.asarray(p_values, dtype=float)
    if p_values.size == 0:
        return p_values
    if np.any(np.isnan(p_values)):
        raise ValueError("a p-value is nan: every test in a Holm family needs one")
    return multipletests(p_values, method="holm")[1]


def bootstrap_ci(
    values: Mapping[str, float] | np.ndarray | list[float],
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
    method: Literal["BCa", "percentile", "basic"] = "BCa",
) -> tuple[float, float, float]:
    """Mean of per-query `values` and its bootstrap confidence interval: (mean, low, high).

    `method` is passed to `scipy.stats.bootstrap` (BCa, its default, corrects the skew
    that bounded metrics like nDCG show near 0 or 1). Seeded for reproducible plots. With
    a single value or no spread the interval collapses onto the mean instead of being nan.
    """
    data = np.asarray(list(values.values()) if isinstance(values, Mapping) else values, float)
    if data.size == 0:
        raise ValueError("no values to bootstrap")
    mean = float(np.mean(data))
    if data.size == 1 or np.all(data == data[0]):
        return mean, mean, mean
    result = stats.bootstrap(
        (data,),
        np.mean,
        confidence_level=confidence,
        n_resamples=n_resamples,
        vectorized=True,
        method=method,
        random_state=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    return mean, float(low), float(high)

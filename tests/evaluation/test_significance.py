"""Paired significance tests and bootstrap intervals, checked against independent computations."""

import itertools

import numpy as np
import pytest
from scipy import stats

from components.evaluation.significance import (
    QuerySetMismatchError,
    bootstrap_ci,
    compare,
    holm,
    paired_arrays,
)


def _scores(seed: int, n: int, shift: float = 0.0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    return {f"q{i}": float(v) for i, v in enumerate(np.clip(rng.random(n) + shift, 0, 1))}


def test_ttest_matches_scipy_on_aligned_queries():
    a, b = _scores(1, 50, shift=0.1), _scores(2, 50)
    # Insertion order must not matter: pairing is by query id.
    b_shuffled = dict(reversed(list(b.items())))
    p_value, mean_diff = compare(a, b_shuffled, method="t-test")
    qids = sorted(a)
    expected = stats.ttest_rel([a[q] for q in qids], [b[q] for q in qids]).pvalue
    assert p_value == pytest.approx(expected, rel=1e-12)
    assert mean_diff == pytest.approx(np.mean([a[q] - b[q] for q in qids]))


def test_permutation_matches_brute_force_sign_flips():
    # With 10 queries scipy enumerates all 2^10 sign flips (exact test); recompute them here.
    a, b = _scores(3, 10, shift=0.15), _scores(4, 10)
    p_value, mean_diff = compare(a, b, method="permutation")
    diffs = np.array([a[q] - b[q] for q in sorted(a)])
    observed = abs(diffs.mean())
    flips = np.array(list(itertools.product([1, -1], repeat=len(diffs))))
    null = np.abs((flips * diffs).mean(axis=1))
    expected = np.mean(null >= observed - 1e-12)
    assert p_value == pytest.approx(expected)
    assert mean_diff == pytest.approx(diffs.mean())


def test_permutation_monte_carlo_is_seeded_and_agrees_with_ttest_on_a_clear_effect():
    a, b = _scores(5, 300, shift=0.2), _scores(6, 300)
    first = compare(a, b, method="permutation", seed=7)
    assert compare(a, b, method="permutation", seed=7) == first
    assert first[0] < 0.01 and compare(a, b, method="t-test")[0] < 0.01


@pytest.mark.parametrize("method", ["t-test", "permutation"])
def test_identical_systems_give_p_one(method):
    a = _scores(8, 20)
    assert compare(a, dict(a), method=method) == (1.0, 0.0)


def test_constant_nonzero_difference_is_significant_not_nan():
    a = {f"q{i}": 0.5 for i in range(10)}
    b = {q: 0.25 for q in a}
    p_value, mean_diff = compare(a, b, method="t-test")
    assert p_value == 0.0 and mean_diff == 0.25


@pytest.mark.parametrize("method", ["t-test", "permutation"])
def test_differing_query_sets_raise(method):
    a = _scores(9, 5)
    b = {**_scores(10, 4), "extra": 0.3}
    with pytest.raises(QuerySetMismatchError, match="q4"):
        compare(a, b, method=method)


def test_unknown_method_and_empty_input_raise():
    with pytest.raises(ValueError, match="unknown method"):
        compare({"q": 1.0}, {"q": 0.0}, method="wilcoxon")
    with pytest.raises(ValueError, match="no queries"):
        paired_arrays({}, {})


def test_bootstrap_ci_brackets_the_mean_and_matches_scipy():
    values = _scores(11, 200)
    mean, low, high = bootstrap_ci(values, seed=3)
    data = np.array(list(values.values()))
    assert mean == pytest.approx(data.mean())
    assert low < mean < high
    reference = stats.bootstrap(
        (data,), np.mean, n_resamples=10_000, random_state=np.random.default_rng(3)
    ).confidence_interval
    assert (low, high) == pytest.approx((reference.low, reference.high))
    # Roughly mean +- 1.96 standard errors for a sample this size.
    half_width = 1.96 * data.std(ddof=1) / np.sqrt(data.size)
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.15)


def test_bootstrap_ci_degenerate_inputs_collapse_onto_the_mean():
    assert bootstrap_ci([0.4]) == (0.4, 0.4, 0.4)
    assert bootstrap_ci(np.full(10, 0.7)) == (0.7, 0.7, 0.7)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_holm_on_the_textbook_example():
    # Wikipedia's Holm-Bonferroni example: m = 4, alpha = 0.05. Sorted, 0.005 < 0.05/4 and
    # 0.01 < 0.05/3 are rejected; 0.03 > 0.05/2 stops the step-down, so 0.04 is kept too.
    # Adjusted by hand: 4 x 0.005, 3 x 0.01, max(0.03, 2 x 0.03), max(0.06, 1 x 0.04).
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert list(adjusted < 0.05) == [True, False, False, True]


def test_holm_is_monotone_capped_and_handles_edge_cases():
    # R's p.adjust(c(0.01, 0.02, 0.03, 0.04, 0.05), "holm") = 0.05 0.08 0.09 0.09 0.09
    assert holm([0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx([0.05, 0.08, 0.09, 0.09, 0.09])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([0.02]) == pytest.approx([0.02])  # a family of one is not corrected
    assert holm([]).size == 0
    with pytest.raises(ValueError, match="nan"):
        holm([0.01, float("nan")])

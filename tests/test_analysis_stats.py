"""The report's statistics against scipy's own tests and intervals on the same counts, and
against published worked examples where scipy has no implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.stats.contingency import relative_risk

from flagwire._analysis.sequential import Sequential
from flagwire._analysis.srm import srm_check
from flagwire._analysis.stats import (
    compare_means,
    compare_poisson_rates,
    compare_proportions,
    rate_interval,
    wilson_interval,
)
from flagwire._errors import ConfigError

COUNTS = [(100, 1000, 130, 1000), (3, 250, 11, 260), (4812, 50000, 5120, 49800), (0, 40, 2, 45)]


@pytest.mark.parametrize(("xc", "nc", "xt", "nt"), COUNTS)
def test_proportion_p_value_is_scipy_chi2_contingency(xc: int, nc: int, xt: int, nt: int) -> None:
    result = compare_proportions(xc, nc, xt, nt)

    table = [[xt, nt - xt], [xc, nc - xc]]
    expected = stats.chi2_contingency(table, correction=False).pvalue
    assert result.p_value == pytest.approx(expected, rel=1e-12)
    assert result.difference == pytest.approx(xt / nt - xc / nc)


@pytest.mark.parametrize(("x", "n"), [(0, 10), (1, 10), (130, 1000), (999, 1000), (10, 10)])
def test_wilson_interval_is_scipys(x: int, n: int) -> None:
    ours = wilson_interval(x, n, 0.05)

    theirs = stats.binomtest(x, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert ours.low == pytest.approx(theirs.low, abs=1e-12)
    assert ours.high == pytest.approx(theirs.high, abs=1e-12)


def test_difference_interval_is_newcombes_worked_example() -> None:
    # Newcombe (1998), Statistics in Medicine 17:873, table II, example (a): 56/70 vs 48/80,
    # method 10 (score interval hybrid): 0.0524 to 0.3339.
    result = compare_proportions(48, 80, 56, 70)

    assert result.difference == pytest.approx(0.2)
    assert result.difference_ci.low == pytest.approx(0.0524, abs=5e-5)
    assert result.difference_ci.high == pytest.approx(0.3339, abs=5e-5)


@pytest.mark.parametrize(("xc", "nc", "xt", "nt"), COUNTS[:3])
def test_relative_interval_is_scipys_relative_risk(xc: int, nc: int, xt: int, nt: int) -> None:
    result = compare_proportions(xc, nc, xt, nt)

    rr = relative_risk(xt, nt, xc, nc)
    ci = rr.confidence_interval(confidence_level=0.95)
    assert result.relative == pytest.approx(rr.relative_risk - 1, rel=1e-12)
    assert result.relative_ci is not None
    assert result.relative_ci.low == pytest.approx(ci.low - 1, rel=1e-12)
    assert result.relative_ci.high == pytest.approx(ci.high - 1, rel=1e-12)


def test_proportions_without_any_success_have_p_value_one_and_no_relative() -> None:
    result = compare_proportions(0, 100, 0, 120)

    assert result.p_value == 1.0
    assert result.relative is None
    assert result.relative_ci is None


def test_poisson_p_value_is_scipys_conditional_binomial_test() -> None:
    result = compare_poisson_rates(1500, 1000, 1700, 1050)

    expected = stats.binomtest(1700, 3200, 1050 / 2050).pvalue
    assert result.p_value == pytest.approx(expected, rel=1e-12)
    assert result.control == 1.5
    assert result.relative == pytest.approx((1700 / 1050) / 1.5 - 1)
    se = math.sqrt(1500 / 1000**2 + 1700 / 1050**2)
    assert result.difference_ci.high - result.difference == pytest.approx(1.959963984540054 * se)


def test_poisson_rate_interval_is_garwoods() -> None:
    interval = rate_interval("poisson", 30, 100)

    assert interval.low == pytest.approx(stats.chi2.ppf(0.025, 60) / 2 / 100, rel=1e-10)
    assert interval.high == pytest.approx(stats.chi2.ppf(0.975, 62) / 2 / 100, rel=1e-10)
    assert rate_interval("poisson", 0, 100).low == 0.0


def _sums(values: np.ndarray) -> tuple[float, float, float]:
    return (float(len(values)), float(values.sum()), float((values**2).sum()))


def test_means_match_scipys_welch_test_and_interval_on_the_raw_values() -> None:
    rng = np.random.default_rng(7)
    control = rng.lognormal(3.0, 0.8, size=400)
    variant = rng.lognormal(3.1, 1.0, size=350)

    result = compare_means(_sums(control), _sums(variant))

    assert result is not None
    welch = stats.ttest_ind(variant, control, equal_var=False)
    ci = welch.confidence_interval(confidence_level=0.95)
    assert result.p_value == pytest.approx(welch.pvalue, rel=1e-9)
    assert result.difference == pytest.approx(variant.mean() - control.mean(), rel=1e-9)
    assert result.difference_ci.low == pytest.approx(ci.low, rel=1e-9)
    assert result.difference_ci.high == pytest.approx(ci.high, rel=1e-9)
    from_stats = stats.ttest_ind_from_stats(
        variant.mean(), variant.std(ddof=1), 350, control.mean(), control.std(ddof=1), 400,
        equal_var=False,
    )  # fmt: skip
    assert result.p_value == pytest.approx(from_stats.pvalue, rel=1e-9)


def test_means_need_two_values_per_arm() -> None:
    assert compare_means((1, 5.0, 25.0), (10, 50.0, 260.0)) is None
    assert compare_means((3, 6.0, 12.0), (3, 6.0, 12.0)) is None  # no variance at all


def test_srm_matches_scipy_chisquare_and_fails_a_skewed_split() -> None:
    fair = srm_check({"on": 5060, "off": 4940}, {"on": 50, "off": 50})
    skewed = srm_check({"on": 5300, "off": 4700}, {"on": 50, "off": 50})

    assert fair.p_value == pytest.approx(stats.chisquare([5060, 4940]).pvalue, rel=1e-12)
    assert not fair.mismatch
    assert skewed.p_value == pytest.approx(stats.chisquare([5300, 4700]).pvalue, rel=1e-12)
    assert skewed.mismatch
    assert "MISMATCH" in skewed.message


def test_srm_uses_the_weights_as_given() -> None:
    check = srm_check({"a": 1000, "b": 3000, "c": 0}, {"a": 25, "b": 75, "c": 0})

    assert check.expected == {"a": 1000.0, "b": 3000.0, "c": 0.0}
    assert check.p_value == pytest.approx(1.0)
    uneven = srm_check({"a": 1000, "b": 1000}, {"a": 10, "b": 90})
    assert uneven.mismatch


def test_srm_fails_when_a_zero_weight_variant_was_served() -> None:
    check = srm_check({"on": 500, "off": 500, "legacy": 3}, {"on": 1, "off": 1})

    assert check.mismatch
    assert "legacy" in check.message


@pytest.mark.parametrize("weights", [{"on": -1, "off": 2}, {"on": 0, "off": 0}, {"on": math.nan}])
def test_srm_rejects_bad_weights(weights: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="weights"):
        srm_check({"on": 1}, weights)


def test_sequential_interval_is_wider_than_fixed_and_agrees_with_its_p_value() -> None:
    sequential = Sequential(tuning_samples=5000)
    for xc, nc, xt, nt in [*COUNTS[:3], (500, 5000, 580, 5000), (500, 5000, 545, 5000)]:
        fixed = compare_proportions(xc, nc, xt, nt)
        always = compare_proportions(xc, nc, xt, nt, sequential=sequential)

        assert always.difference == fixed.difference
        assert always.difference_ci.low < fixed.difference_ci.low
        assert always.difference_ci.high > fixed.difference_ci.high
        assert always.p_value >= fixed.p_value
        # The p-value is below alpha exactly when the sequence excludes 0.
        assert (always.p_value < 0.05) == (not always.difference_ci.contains(0.0))


def test_sequential_is_tightest_at_its_tuning_size() -> None:
    n = 20_000
    tuned = Sequential(tuning_samples=n).multiplier(n, 0.05)

    assert tuned < Sequential(tuning_samples=n / 4).multiplier(n, 0.05)
    assert tuned < Sequential(tuning_samples=n * 4).multiplier(n, 0.05)
    # About 1.55 fixed-horizon widths at the tuning size, as documented.
    assert tuned / 1.959963984540054 == pytest.approx(1.5486, abs=1e-3)


@pytest.mark.parametrize("size", [0, -5, math.inf, math.nan])
def test_sequential_rejects_a_tuning_size_that_is_not_positive(size: float) -> None:
    with pytest.raises(ValueError, match="tuning_samples"):
        Sequential(tuning_samples=size)


def test_alpha_outside_zero_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="alpha"):
        compare_proportions(1, 10, 2, 10, alpha=1.5)

"""Simulated experiments: peeking at an A/A test every hour with the always-valid interval
keeps the error rate; peeking with the fixed-horizon test does not; a real +20% effect is
found with an interval that covers it.

Every experiment is checked at each of ``LOOKS`` looks, through the same
``compare_proportions`` / ``compare_means`` the report uses. Seeds are fixed, so the rates
below are deterministic; the tolerance is three binomial standard errors of the simulated
rate, which a correct method exceeds with probability about 0.001.
"""

from __future__ import annotations

import math

import numpy as np

from flagwire._analysis.sequential import Sequential
from flagwire._analysis.stats import compare_means, compare_proportions

ALPHA = 0.05
LOOKS = 24  # a day of hourly looks
PER_LOOK = 400  # requests per arm between looks
SEQUENTIAL = Sequential(tuning_samples=PER_LOOK * LOOKS)


def _tolerance(rate: float, runs: int) -> float:
    return 3 * math.sqrt(rate * (1 - rate) / runs)


def _cumulative_conversions(rng: np.random.Generator, p: float, runs: int) -> np.ndarray:
    return rng.binomial(PER_LOOK, p, size=(runs, LOOKS)).cumsum(axis=1)


def _ever_rejects(control: np.ndarray, variant: np.ndarray, sequential: Sequential | None) -> float:
    """The share of experiments with p < alpha at one look or more."""
    rejected = 0
    for xc_row, xt_row in zip(control.tolist(), variant.tolist(), strict=True):
        for look, (xc, xt) in enumerate(zip(xc_row, xt_row, strict=True), start=1):
            n = PER_LOOK * look
            if compare_proportions(xc, n, xt, n, sequential=sequential).p_value < ALPHA:
                rejected += 1
                break
    return rejected / len(control)


def test_a_a_checked_every_hour_stays_within_alpha_with_the_sequential_interval() -> None:
    runs = 2000
    rng = np.random.default_rng(20240601)
    control = _cumulative_conversions(rng, 0.10, runs)
    variant = _cumulative_conversions(rng, 0.10, runs)

    rate = _ever_rejects(control, variant, SEQUENTIAL)

    # 2000 runs: alpha + 3 SE = 0.05 + 0.0146. The mixture is conservative in practice.
    assert rate <= ALPHA + _tolerance(ALPHA, runs), rate


def test_a_a_checked_every_hour_with_the_fixed_test_inflates_false_positives() -> None:
    runs = 600
    rng = np.random.default_rng(20240602)
    control = _cumulative_conversions(rng, 0.10, runs)
    variant = _cumulative_conversions(rng, 0.10, runs)

    rate = _ever_rejects(control, variant, None)
    n = PER_LOOK * LOOKS
    once = sum(
        compare_proportions(int(c[-1]), n, int(v[-1]), n).p_value < ALPHA
        for c, v in zip(control, variant, strict=True)
    )

    # 24 looks at a 5% test reject an A/A far more often than 5% (theory: about 0.25) ...
    assert rate > ALPHA + _tolerance(ALPHA, runs) + 0.05, rate
    # ... while the same test looked at once, at the planned size, is right.
    assert abs(once / runs - ALPHA) <= _tolerance(ALPHA, runs), once / runs


def test_a_plus_20_percent_effect_is_found_and_covered() -> None:
    runs = 300
    truth = 0.20
    rng = np.random.default_rng(20240603)
    control = _cumulative_conversions(rng, 0.10, runs)
    variant = _cumulative_conversions(rng, 0.10 * (1 + truth), runs)
    n = PER_LOOK * LOOKS

    finals = [
        compare_proportions(int(c[-1]), n, int(v[-1]), n, sequential=SEQUENTIAL)
        for c, v in zip(control, variant, strict=True)
    ]

    detected = sum(f.p_value < ALPHA for f in finals) / runs
    covered = sum(f.relative_ci is not None and f.relative_ci.contains(truth) for f in finals)
    # ~9600 requests per arm at 10% vs 12%: the sequential test's power is about 0.9.
    assert detected >= 0.8, detected
    assert covered / runs >= 1 - ALPHA - _tolerance(ALPHA, runs), covered / runs
    assert all(f.relative is not None and f.relative > 0 for f in finals[:10])


def test_the_sequence_covers_the_truth_at_every_look_at_once() -> None:
    runs = 500
    rng = np.random.default_rng(20240604)
    control = _cumulative_conversions(rng, 0.10, runs)
    variant = _cumulative_conversions(rng, 0.12, runs)

    ever_missed = 0
    for xc_row, xt_row in zip(control.tolist(), variant.tolist(), strict=True):
        for look, (xc, xt) in enumerate(zip(xc_row, xt_row, strict=True), start=1):
            n = PER_LOOK * look
            ci = compare_proportions(xc, n, xt, n, sequential=SEQUENTIAL).difference_ci
            if not ci.contains(0.02):
                ever_missed += 1
                break

    assert ever_missed / runs <= ALPHA + _tolerance(ALPHA, runs), ever_missed / runs


def test_a_a_on_skewed_values_keeps_the_error_rate_for_the_mean() -> None:
    runs, looks, per_look = 400, 20, 200
    rng = np.random.default_rng(20240605)
    sequential = Sequential(tuning_samples=per_look * looks)

    def sums(values: np.ndarray) -> np.ndarray:
        # Per look, the cumulative (count, sum, sum of squares), as the counters hold them.
        per = np.stack([np.full(values.shape[:2], per_look), values.sum(2), (values**2).sum(2)])
        return per.cumsum(axis=2)

    control = sums(rng.lognormal(3.0, 0.7, size=(runs, looks, per_look)))
    variant = sums(rng.lognormal(3.0, 0.7, size=(runs, looks, per_look)))
    rejected = 0
    for run in range(runs):
        for look in range(looks):
            c = tuple(float(x) for x in control[:, run, look])
            v = tuple(float(x) for x in variant[:, run, look])
            result = compare_means(c, v, sequential=sequential)  # type: ignore[arg-type]
            if result is not None and result.p_value < ALPHA:
                rejected += 1
                break

    assert rejected / runs <= ALPHA + _tolerance(ALPHA, runs), rejected / runs

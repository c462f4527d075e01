"""Latency quantiles from histogram buckets, by PromQL's rules (``promql/quantile.go``).

That they agree with a real Prometheus's ``histogram_quantile`` on the same buckets is
checked in ``test_analysis_e2e.py``.
"""

from __future__ import annotations

import math

import pytest

from flagwire._analysis.figures import EventFigures, VariantFigures, bucket_quantile

INF = math.inf
BUCKETS = [(0.1, 50.0), (0.25, 80.0), (0.5, 95.0), (INF, 100.0)]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.5, 0.1),  # rank 50 is the top of the first bucket
        (0.25, 0.05),  # rank 25: halfway into [0, 0.1]
        (0.65, 0.175),  # rank 65: halfway into (0.1, 0.25]
        (0.9, 0.25 + 0.25 * (10 / 15)),  # rank 90 in (0.25, 0.5]
        (0.99, 0.5),  # rank in the +Inf bucket: the highest finite bound
        (1.0, 0.5),
    ],
)
def test_linear_interpolation_inside_the_bucket(q: float, expected: float) -> None:
    assert bucket_quantile(q, BUCKETS) == pytest.approx(expected, rel=1e-12)


def test_order_of_the_buckets_does_not_matter() -> None:
    assert bucket_quantile(0.9, list(reversed(BUCKETS))) == bucket_quantile(0.9, BUCKETS)


def test_out_of_range_quantiles_are_infinite_like_promql() -> None:
    assert bucket_quantile(-0.1, BUCKETS) == -INF
    assert bucket_quantile(1.1, BUCKETS) == INF
    assert math.isnan(bucket_quantile(math.nan, BUCKETS))


@pytest.mark.parametrize(
    "buckets",
    [
        [],
        [(INF, 10.0)],  # one bucket
        [(0.1, 5.0), (0.5, 10.0)],  # no +Inf bucket
        [(0.1, 0.0), (INF, 0.0)],  # no observations
    ],
)
def test_unusable_buckets_give_nan(buckets: list[tuple[float, float]]) -> None:
    assert math.isnan(bucket_quantile(0.5, buckets))


def test_a_first_bucket_at_or_below_zero_returns_its_bound() -> None:
    assert bucket_quantile(0.1, [(0.0, 20.0), (1.0, 50.0), (INF, 50.0)]) == 0.0


def test_non_monotonic_counts_are_flattened_not_negative() -> None:
    # Scrape skew can make a higher bucket read lower; PromQL carries the maximum forward.
    skewed = [(0.1, 50.0), (0.25, 48.0), (0.5, 95.0), (INF, 100.0)]

    assert bucket_quantile(0.49, skewed) == pytest.approx(0.098)
    assert bucket_quantile(0.6, skewed) == pytest.approx(0.25 + 0.25 * (10 / 45))


def test_duplicate_bounds_are_merged() -> None:
    # Two series with the same le (e.g. from a relabelling) count together.
    split = [(0.1, 20.0), (0.1, 30.0), (0.25, 80.0), (0.5, 95.0), (INF, 100.0)]

    assert bucket_quantile(0.25, split) == pytest.approx(0.05)


def test_variant_figures_latency_quantile_is_none_without_buckets() -> None:
    assert VariantFigures("on", 10).latency_quantile(0.95) is None
    assert VariantFigures("on", 100, latency_buckets=BUCKETS).latency_quantile(0.5) == 0.1


def test_an_event_has_values_only_if_they_were_tracked() -> None:
    assert not EventFigures(10).has_values
    assert EventFigures(10, 50.0, 300.0).has_values
    assert EventFigures(10, 0.0, 4.0).has_values  # values that sum to zero

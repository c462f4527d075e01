"""What an experiment report is computed from: per-variant counts read from Prometheus.

A :class:`VariantFigures` holds, for one variant of one flag over one window, the numbers
the statistics need and nothing else: requests, 5xx responses, the latency histogram's
cumulative buckets and, per tracked event, its count, sum of values and sum of squared
values. :func:`bucket_quantile` estimates a latency quantile from the buckets exactly as
PromQL's ``histogram_quantile`` does, so the report and a Grafana panel agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["EventFigures", "VariantFigures", "bucket_quantile"]


@dataclass(frozen=True, slots=True)
class EventFigures:
    """One tracked event's totals for one variant.

    Attributes:
        count: How many times the event was tracked.
        value_sum: The sum of the values tracked with it (0 for an event without values).
        value_sq_sum: The sum of the squared values, for the variance of the mean value.
    """

    count: float
    value_sum: float = 0.0
    value_sq_sum: float = 0.0

    @property
    def has_values(self) -> bool:
        """Whether the event carried values (otherwise it has a rate but no mean)."""
        return self.value_sum != 0.0 or self.value_sq_sum != 0.0


@dataclass(frozen=True, slots=True)
class VariantFigures:
    """One variant's totals over the report's window.

    Attributes:
        variant: The variant's name.
        requests: Requests that decided the flag and were served this variant.
        errors_5xx: Those of them answered with a 5xx status.
        latency_buckets: The request-duration histogram as ``(le, cumulative count)``
            pairs in seconds, sorted by ``le``, the last one ``le=+Inf``; empty if unknown.
        events: Tracked events by name.
    """

    variant: str
    requests: float
    errors_5xx: float = 0.0
    latency_buckets: Sequence[tuple[float, float]] = ()
    events: Mapping[str, EventFigures] = field(default_factory=dict)

    def latency_quantile(self, q: float) -> float | None:
        """The ``q`` quantile of latency in seconds, or None without usable buckets."""
        value = bucket_quantile(q, self.latency_buckets)
        return None if math.isnan(value) else value


def bucket_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Estimate a quantile from cumulative histogram buckets, as PromQL does.

    This is Prometheus's ``bucketQuantile`` (``promql/quantile.go``): linear interpolation
    inside the bucket the rank falls in, the lowest bucket starting at 0 (or returning its
    bound if that is not positive), and a rank in the ``+Inf`` bucket answered with the
    highest finite bound. Buckets made non-monotonic by scrape timing are flattened first,
    and duplicate bounds are merged, as Prometheus does.

    Args:
        q: The quantile, 0 to 1.
        buckets: ``(le, cumulative count)`` pairs in any order.

    Returns:
        The estimate; ``nan`` with fewer than two buckets, no ``+Inf`` bucket or no
        observations; ``-inf``/``+inf`` for ``q`` below 0 / above 1, like PromQL.
    """
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    merged: list[list[float]] = []
    for le, count in sorted(buckets):
        if merged and merged[-1][0] == le:
            merged[-1][1] += count
        else:
            merged.append([le, count])
    if len(merged) < 2 or not math.isinf(merged[-1][0]):
        return math.nan
    # A cumulative count can dip when the buckets come from different scrapes; PromQL
    # carries the running maximum forward instead of producing a negative bucket.
    for i in range(1, len(merged)):
        merged[i][1] = max(merged[i][1], merged[i - 1][1])
    observations = merged[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = next((i for i, (_, count) in enumerate(merged[:-1]) if count >= rank), len(merged) - 1)
    if b == len(merged) - 1:
        return merged[-2][0]
    if b == 0 and merged[0][0] <= 0:
        return merged[0][0]
    start, end, count = 0.0, merged[b][0], merged[b][1]
    if b > 0:
        start = merged[b - 1][0]
        count -= merged[b - 1][1]
        rank -= merged[b - 1][1]
    if count == 0:
        # Only q=0 on an empty first bucket gets here; Go's 0/0 makes PromQL answer NaN.
        return math.nan
    return start + (end - start) * (rank / count)

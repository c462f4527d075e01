"""The experiment report's data model and its JSON form.

:meth:`Report.to_json` gives the documented, stable object ``flagwire report --json`` prints
(schema ``flagwire.report/v1``, described in the README). Building a report is in
``report``; drawing it in ``table`` and ``chart``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .figures import EventFigures, VariantFigures
from .sequential import Sequential
from .srm import SrmCheck
from .stats import Comparison, Interval

__all__ = ["SCHEMA", "EventSummary", "MetricComparison", "Report", "VariantSummary"]


SCHEMA = "flagwire.report/v1"
"""The ``schema`` field of :meth:`Report.to_json`; bumped on any incompatible change."""


@dataclass(frozen=True, slots=True)
class EventSummary:
    """One event for one variant.

    Attributes:
        figures: The totals it was computed from.
        model: ``"proportion"`` (at most once per request) or ``"poisson"``.
        rate: Events per request.
        rate_ci: The variant's own interval for ``rate``.
        mean_value: The mean tracked value, None for an event without values.
    """

    figures: EventFigures
    model: str
    rate: float
    rate_ci: Interval
    mean_value: float | None


@dataclass(frozen=True, slots=True)
class VariantSummary:
    """One variant's figures and the rates derived from them.

    Attributes:
        figures: The totals read from Prometheus.
        error_rate: 5xx responses per request.
        error_rate_ci: The variant's own (Wilson, or sequential) interval for it.
        latency_p50: Median latency in seconds, None without histogram data.
        latency_p95: 95th percentile latency in seconds, None without histogram data.
        events: Per tracked event.
    """

    figures: VariantFigures
    error_rate: float
    error_rate_ci: Interval
    latency_p50: float | None
    latency_p95: float | None
    events: Mapping[str, EventSummary]

    @property
    def variant(self) -> str:
        """The variant's name."""
        return self.figures.variant


@dataclass(frozen=True, slots=True)
class MetricComparison:
    """A variant against the control on one metric.

    Attributes:
        metric: ``"error_rate"``, ``"event_rate"`` or ``"event_mean_value"``.
        event: The event, for the event metrics.
        variant: The variant compared with the control.
        model: ``"proportion"``, ``"poisson"`` or ``"mean"``.
        comparison: The numbers.
        significant: ``p_value < alpha``.
    """

    metric: str
    event: str | None
    variant: str
    model: str
    comparison: Comparison
    significant: bool


@dataclass(frozen=True, slots=True)
class Report:
    """An experiment report for one flag over one window.

    Attributes:
        flag: The flag key.
        control: The control variant.
        since: The window (a PromQL duration).
        alpha: One minus the confidence level (0.05: 95% intervals).
        sequential: The always-valid settings, None for fixed-horizon statistics.
        variants: Per variant, the control first.
        comparisons: Every non-control variant against the control, per metric.
        srm: The sample-ratio-mismatch check, None without weights.
        warnings: What makes the report less trustworthy, the SRM failure first.
    """

    flag: str
    control: str
    since: str
    alpha: float
    sequential: Sequential | None
    variants: tuple[VariantSummary, ...]
    comparisons: tuple[MetricComparison, ...]
    srm: SrmCheck | None
    warnings: tuple[str, ...]

    @property
    def events(self) -> list[str]:
        """The tracked events, in report order."""
        return list(self.variants[0].events) if self.variants else []

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict (schema ``flagwire.report/v1``).

        Non-finite numbers (an undefined ratio, an infinite chi-square) become null, so the
        output is strict JSON.
        """
        srm = None
        if self.srm is not None:
            srm = {
                "mismatch": self.srm.mismatch,
                "p_value": _num(self.srm.p_value),
                "statistic": _num(self.srm.statistic),
                "threshold": self.srm.threshold,
                "observed": dict(self.srm.observed),
                "expected": dict(self.srm.expected),
                "message": self.srm.message,
            }
        return {
            "schema": SCHEMA,
            "flag": self.flag,
            "control": self.control,
            "since": self.since,
            "alpha": self.alpha,
            "mode": "fixed" if self.sequential is None else "sequential",
            "tuning_samples": None if self.sequential is None else self.sequential.tuning_samples,
            "unit": "request",
            "srm": srm,
            "variants": [_variant_json(v, self.control) for v in self.variants],
            "comparisons": [_comparison_json(c, self.control) for c in self.comparisons],
            "warnings": list(self.warnings),
        }


def _num(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _le(bound: float) -> float | str:
    """A bucket bound for JSON: Prometheus's own spelling for the infinite one."""
    return bound if math.isfinite(bound) else "+Inf"


def _interval_json(estimate: float | None, ci: Interval | None) -> dict[str, Any] | None:
    if estimate is None:
        return None
    return {
        "estimate": _num(estimate),
        "low": None if ci is None else _num(ci.low),
        "high": None if ci is None else _num(ci.high),
    }


def _variant_json(v: VariantSummary, control: str) -> dict[str, Any]:
    f = v.figures
    return {
        "variant": f.variant,
        "is_control": f.variant == control,
        "requests": f.requests,
        "errors_5xx": f.errors_5xx,
        "error_rate": _interval_json(v.error_rate, v.error_rate_ci),
        "latency_seconds": {"p50": _num(v.latency_p50), "p95": _num(v.latency_p95)},
        "latency_buckets": [[_le(le), count] for le, count in f.latency_buckets],
        "events": {
            name: {
                "model": e.model,
                "count": e.figures.count,
                "value_sum": e.figures.value_sum,
                "value_sq_sum": e.figures.value_sq_sum,
                "rate_per_request": _interval_json(e.rate, e.rate_ci),
                "mean_value": _num(e.mean_value),
            }
            for name, e in v.events.items()
        },
    }


def _comparison_json(m: MetricComparison, control: str) -> dict[str, Any]:
    c = m.comparison
    return {
        "metric": m.metric,
        "event": m.event,
        "variant": m.variant,
        "control": control,
        "model": m.model,
        "control_value": _num(c.control),
        "variant_value": _num(c.variant),
        "difference": _interval_json(c.difference, c.difference_ci),
        "relative": _interval_json(c.relative, c.relative_ci),
        "p_value": _num(c.p_value),
        "significant": m.significant,
        "test": c.test,
        "interval": c.interval,
    }

"""Building the experiment report: every variant against the control, SRM, warnings.

:func:`build_report` turns :class:`~flagwire._analysis.figures.VariantFigures` (from
Prometheus, or from anywhere) into a :class:`~flagwire._analysis.model.Report`. Which
comparison each metric gets is decided here; the statistics are in ``stats``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from flagwire._errors import ConfigError

from .figures import EventFigures, VariantFigures
from .model import EventSummary, MetricComparison, Report, VariantSummary
from .sequential import Sequential
from .srm import SrmCheck, srm_check
from .stats import (
    Interval,
    compare_means,
    compare_poisson_rates,
    compare_proportions,
    rate_interval,
)

__all__ = ["build_report"]


def build_report(
    figures: Sequence[VariantFigures],
    *,
    flag: str,
    control: str,
    weights: Mapping[str, float] | None,
    since: str,
    sequential: bool | Sequential = False,
    alpha: float = 0.05,
    min_requests: float = 100,
    min_events: float = 10,
    srm_threshold: float = 0.001,
) -> Report:
    """Compare every variant with the control.

    Args:
        figures: One entry per variant.
        flag: The flag key (for the report's title).
        control: The control variant's name.
        weights: The assignment weights per variant, for the SRM check (None skips it,
            with a warning).
        since: The window the figures cover.
        sequential: Always-valid intervals and p-values (True for the default
            :class:`Sequential`), safe to check every hour; fixed-horizon if False.
        alpha: One minus the confidence level.
        min_requests: Warn about a variant with fewer requests.
        min_events: Warn about a comparison with fewer events (or non-events, for a
            proportion) in either arm: the normal approximations need them.
        srm_threshold: The SRM check fails below this p-value.

    Returns:
        The report.

    Raises:
        ConfigError: No figures, duplicate variants, or ``control`` is not among them.
    """
    by_name = {f.variant: f for f in figures}
    if not by_name:
        msg = f"no requests for flag {flag!r} in the last {since}: is it decided and scraped?"
        raise ConfigError(msg)
    if len(by_name) != len(figures):
        raise ConfigError(f"duplicate variants in the figures for flag {flag!r}")
    if control not in by_name:
        msg = f"control variant {control!r} has no requests; variants: {', '.join(by_name)}"
        raise ConfigError(msg)
    settings = Sequential() if sequential is True else sequential or None
    warnings: list[str] = []
    srm = None
    if weights is None:
        warnings.append("no weights given: the sample-ratio-mismatch check was skipped")
    else:
        requests = {n: f.requests for n, f in by_name.items()}
        srm = srm_check(requests, weights, threshold=srm_threshold)
        if srm.mismatch:
            warnings.insert(0, _srm_warning(srm))
    ordered = [by_name[control], *(f for n, f in sorted(by_name.items()) if n != control)]
    names = sorted({e for f in ordered for e in f.events})
    models = {e: _event_model(ordered, e) for e in names}
    summaries = tuple(_summarise(f, names, models, alpha, settings) for f in ordered)
    warnings.extend(
        f"variant {f.variant}: {f.requests:,.0f} requests (< {min_requests:,.0f})"
        for f in ordered
        if f.requests < min_requests
    )
    for e, model in models.items():
        if model == "poisson":
            warnings.append(
                f"event {e} happens more than once per request: compared as a Poisson rate, "
                "whose interval is too narrow if a few users produce most events"
            )
    comparisons: list[MetricComparison] = []
    for f in ordered[1:]:
        if f.requests > 0:
            _compare(ordered[0], f, models, alpha, settings, min_events, comparisons, warnings)
    return Report(
        flag=flag,
        control=control,
        since=since,
        alpha=alpha,
        sequential=settings,
        variants=summaries,
        comparisons=tuple(comparisons),
        srm=srm,
        warnings=tuple(warnings),
    )


def _compare(
    ctl: VariantFigures,
    f: VariantFigures,
    models: Mapping[str, str],
    alpha: float,
    sequential: Sequential | None,
    min_events: float,
    comparisons: list[MetricComparison],
    warnings: list[str],
) -> None:
    """Append ``f`` against the control on every metric, and what makes that shaky."""
    pair = f"{f.variant} vs {ctl.variant}"
    rates: list[tuple[str, str | None, str, float, float]] = [
        ("error_rate", None, "proportion", ctl.errors_5xx, f.errors_5xx)
    ]
    rates += [("event_rate", e, m, _count(ctl, e), _count(f, e)) for e, m in models.items()]
    for metric, event, model, xc, xt in rates:
        compare = compare_proportions if model == "proportion" else compare_poisson_rates
        result = compare(xc, ctl.requests, xt, f.requests, alpha=alpha, sequential=sequential)
        comparisons.append(
            MetricComparison(metric, event, f.variant, model, result, result.p_value < alpha)
        )
        label = "5xx errors" if event is None else f"event {event}"
        if min(xc, xt) < min_events:
            warnings.append(
                f"{label}, {pair}: only {min(xc, xt):,.0f} in an arm (< {min_events:,.0f}); "
                "the interval is unreliable"
            )
        elif model == "proportion" and min(ctl.requests - xc, f.requests - xt) < min_events:
            warnings.append(f"{label}, {pair}: nearly every request has it; unreliable")
    for e in models:
        ec, et = ctl.events.get(e, EventFigures(0)), f.events.get(e, EventFigures(0))
        if not (ec.has_values or et.has_values):
            continue
        mean = compare_means(_sums(ec), _sums(et), alpha=alpha, sequential=sequential)
        if mean is None:
            warnings.append(f"event {e}, {pair}: too few values to compare the means")
            continue
        comparisons.append(
            MetricComparison("event_mean_value", e, f.variant, "mean", mean, mean.p_value < alpha)
        )


def _srm_warning(srm: SrmCheck) -> str:
    return (
        f"SAMPLE RATIO MISMATCH (p = {srm.p_value:.2g} < {srm.threshold:g}): the variants were "
        f"not served in the configured ratio ({srm.message}). Every comparison in this report "
        "is suspect; find the cause (bucketing, a variant failing before it is counted, "
        "bots, a changed rollout) before reading them."
    )


def _event_model(figures: Sequence[VariantFigures], event: str) -> str:
    """Proportion if no variant saw the event more often than it had requests."""
    if all(_count(f, event) <= f.requests for f in figures):
        return "proportion"
    return "poisson"


def _summarise(
    f: VariantFigures,
    events: Sequence[str],
    models: Mapping[str, str],
    alpha: float,
    sequential: Sequential | None,
) -> VariantSummary:
    n = f.requests

    def interval(model: str, count: float) -> Interval:
        if n <= 0:
            return Interval(math.nan, math.nan)
        return rate_interval(model, count, n, alpha=alpha, sequential=sequential)

    summaries = {}
    for e in events:
        figures = f.events.get(e, EventFigures(0))
        mean = figures.value_sum / figures.count if figures.has_values and figures.count else None
        summaries[e] = EventSummary(
            figures, models[e], _ratio(figures.count, n), interval(models[e], figures.count), mean
        )
    return VariantSummary(
        f,
        _ratio(f.errors_5xx, n),
        interval("proportion", f.errors_5xx),
        f.latency_quantile(0.5),
        f.latency_quantile(0.95),
        summaries,
    )


def _count(f: VariantFigures, event: str) -> float:
    figures = f.events.get(event)
    return 0.0 if figures is None else figures.count


def _sums(e: EventFigures) -> tuple[float, float, float]:
    return (e.count, e.value_sum, e.value_sq_sum)


def _ratio(count: float, requests: float) -> float:
    return count / requests if requests > 0 else math.nan

"""The report as plain text for a terminal: aligned columns, at most 100 characters wide.

A failed sample-ratio check comes first, boxed, before any number: when the assignment is
skewed nothing below it should be read as an effect.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

from .model import MetricComparison, Report
from .stats import Interval

__all__ = ["render_table"]

_METHODS = {
    "pearson-chi2": "chi-square test, Newcombe interval",
    "poisson-conditional-exact": "exact conditional test, Wald interval",
    "welch-t": "Welch t-test and interval",
    "always-valid-mixture": "always-valid p-value, normal-mixture sequence",
}


def render_table(report: Report, *, width: int = 100) -> str:
    """Render a report as aligned plain text.

    Args:
        report: The report.
        width: The widest a line may be (warnings are wrapped to it).

    Returns:
        The text, ending with a newline.
    """
    level = f"{1 - report.alpha:.0%}"
    mode = (
        f"fixed-horizon {level} intervals (valid for one look at a planned size; "
        "use the sequential option to check repeatedly)"
        if report.sequential is None
        else f"always-valid {level} confidence sequences (safe to check at any time)"
    )
    lines = [f"flagwire report: flag {report.flag}, last {report.since}, control {report.control}"]
    lines += textwrap.wrap(f"statistics: {mode}", width)
    if report.srm is not None and report.srm.mismatch:
        # The warning was put first by build_report; it goes in the box, not the list.
        boxed = ["SAMPLE RATIO MISMATCH: DO NOT TRUST THE COMPARISONS BELOW", ""]
        boxed += textwrap.wrap(report.warnings[0], width - 6)
        bar = "#" * width
        lines += ["", bar, *(f"#  {text}".ljust(width - 1) + "#" for text in boxed), bar]
    lines += ["", *_variants(report, width)]
    metrics: list[tuple[str, str | None]] = []
    for m in report.comparisons:
        if (m.metric, m.event) not in metrics:
            metrics.append((m.metric, m.event))
    for metric, event in metrics:
        rows = [m for m in report.comparisons if (m.metric, m.event) == (metric, event)]
        lines += ["", *_comparisons(report, rows)]
    failed = report.srm is not None and report.srm.mismatch
    rest = report.warnings[1:] if failed else report.warnings
    if rest:
        lines += ["", "warnings:"]
        for text in rest:
            lines += textwrap.wrap(text, width, initial_indent="  - ", subsequent_indent="    ")
    if report.comparisons:
        lines += ["", f"* p < {report.alpha:g}; pp = percentage points; intervals are {level}"]
    return "\n".join(lines) + "\n"


def _variants(report: Report, width: int) -> list[str]:
    total = sum(v.figures.requests for v in report.variants)
    header = ["variant", "requests", "share", "expected", "5xx rate", "p50 ms", "p95 ms"]
    rows = [header]
    for v in report.variants:
        expected = None if report.srm is None else report.srm.expected.get(v.variant)
        rows.append([
            _name(v.variant, report.control),
            f"{v.figures.requests:,.0f}",
            _percent(v.figures.requests / total if total else math.nan),
            "" if expected is None else _percent(expected / total if total else math.nan),
            _percent(v.error_rate),
            _millis(v.latency_p50),
            _millis(v.latency_p95),
        ])  # fmt: skip
    lines = _align(rows, left=1)
    if report.srm is not None:
        lines += textwrap.wrap(f"sample ratio: {report.srm.message}", width, subsequent_indent="  ")
    return lines


def _comparisons(report: Report, rows: Sequence[MetricComparison]) -> list[str]:
    first = rows[0]
    what = {
        "error_rate": "5xx responses per request",
        "event_rate": f"{first.event} per request",
        "event_mean_value": f"{first.event}: mean value",
    }[first.metric]
    title = f"{what} ({first.model}; {_METHODS.get(first.comparison.test, first.comparison.test)})"
    table = [["variant", "value", "difference [CI]", "relative [CI]", "p"]]
    control = [_name(report.control, report.control), _value(first, first.comparison.control)]
    table.append([*control, "", "", ""])
    scale = 100.0 if first.model == "proportion" else 1.0
    unit = " pp" if first.model == "proportion" else ""
    for m in rows:
        c = m.comparison
        diff = _with_ci(c.difference, c.difference_ci, scale, "", 0) + unit
        rel = "n/a" if c.relative is None else _with_ci(c.relative, c.relative_ci, 100.0, "%", 1)
        p = _p(c.p_value) + ("*" if m.significant else " ")
        table.append([_name(m.variant, report.control), _value(m, c.variant), diff, rel, p])
    return [title, *_align(table, left=1, indent="  ", gap="  ")]


def _align(
    rows: Sequence[Sequence[str]], *, left: int, indent: str = "", gap: str = "   "
) -> list[str]:
    """Columns padded to their widest cell; the first ``left`` left-aligned, the rest right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [
            cell.ljust(w) if i < left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append((indent + gap.join(cells)).rstrip())
    return out


def _name(variant: str, control: str) -> str:
    name = variant if len(variant) <= 20 else variant[:19] + "…"
    return f"{name} (control)" if variant == control else name


def _value(m: MetricComparison, value: float) -> str:
    return _percent(value) if m.model == "proportion" else _short(value)


def _with_ci(
    estimate: float, ci: Interval | None, scale: float, suffix: str, min_decimals: int
) -> str:
    """``+1.23 [+0.45, +2.01]``: decimals enough for three significant digits of the
    interval's width, so the estimate and both bounds read at the same precision."""
    if not math.isfinite(estimate):
        return "n/a"
    if ci is None or not (math.isfinite(ci.low) and math.isfinite(ci.high)):
        return f"{estimate * scale:+.3g}{suffix}"
    width = (ci.high - ci.low) * scale
    decimals = 2 - math.floor(math.log10(width)) if width > 0 else 3
    decimals = min(max(decimals, min_decimals), 8)

    def fmt(value: float) -> str:
        return f"{value * scale:+.{decimals}f}{suffix}"

    return f"{fmt(estimate)} [{fmt(ci.low)}, {fmt(ci.high)}]"


def _percent(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.2%}" if value >= 0.01 or value == 0 else f"{value * 100:#.3g}%"


def _short(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else "n/a"


def _millis(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.1f}"


def _p(value: float) -> str:
    return "<1e-12" if value < 1e-12 else f"{value:.2g}"

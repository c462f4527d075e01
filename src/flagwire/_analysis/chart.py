"""The report as a picture (PNG) and as a self-contained HTML page.

The chart shows each variant's p95 latency over time and, per metric, each variant's rate
with its interval as error bars. matplotlib is imported here, lazily, through its
object-oriented API and the Agg canvas (no pyplot, no global backend, no display): the
rest of flagwire never imports it, and a missing install says which extra to add.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from flagwire._errors import ConfigError, missing_extra

from .model import Report
from .table import render_table

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["LatencySeries", "render_html", "render_png", "render_png_bytes"]

LatencySeries = Mapping[str, Sequence[tuple[float, float]]]
"""``variant -> [(unix time, seconds), ...]``, as ``read_latency_series`` returns."""

_PER_ROW = 3


def render_png_bytes(report: Report, *, latency: LatencySeries | None = None) -> bytes:
    """Draw the report's chart.

    Args:
        report: The report.
        latency: p95 latency per variant over time; the panel says so when absent.

    Returns:
        The PNG file's bytes.

    Raises:
        ConfigError: matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.layout_engine import ConstrainedLayoutEngine
    except ImportError as exc:
        raise ConfigError(
            str(missing_extra(exc, "flagwire's chart", "matplotlib", "report"))
        ) from exc
    panels = _rate_panels(report)
    rows = 1 + math.ceil(len(panels) / _PER_ROW)
    # Room at the bottom for the note on what the error bars and labels mean.
    layout = ConstrainedLayoutEngine(rect=(0, 0.03, 1, 0.97))
    figure = Figure(figsize=(12, 3.9 * rows), dpi=100, layout=layout)
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(rows, _PER_ROW)
    colours = {v.variant: f"C{i % 10}" for i, v in enumerate(report.variants)}
    _latency_panel(figure.add_subplot(grid[0, :]), report, latency or {}, colours)
    for i, (title, ylabel, points) in enumerate(panels):
        axes = figure.add_subplot(grid[1 + i // _PER_ROW, i % _PER_ROW])
        _rate_panel(axes, title, ylabel, points, colours, report.control)
    title = f"flagwire report: flag {report.flag}, last {report.since}, control {report.control}"
    if report.srm is not None and report.srm.mismatch:
        figure.suptitle(
            f"{title}\nSAMPLE RATIO MISMATCH (p = {report.srm.p_value:.2g}): "
            "do not trust these comparisons",
            color="#b00000",
            fontweight="bold",
        )
    else:
        figure.suptitle(title, fontweight="bold")
    figure.text(
        0.5, 0.0, "error bars: each variant's own interval; labels: difference relative to "
        "the control and its p-value", ha="center", va="bottom", fontsize="small", color="#555",
    )  # fmt: skip
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def render_png(report: Report, path: str | Path, *, latency: LatencySeries | None = None) -> None:
    """Write the report's chart to ``path`` as a PNG (see :func:`render_png_bytes`)."""
    Path(path).write_bytes(render_png_bytes(report, latency=latency))


def render_html(report: Report, path: str | Path, *, latency: LatencySeries | None = None) -> None:
    """Write a self-contained HTML page: the table, the chart (embedded) and the JSON.

    Args:
        report: The report.
        path: Where to write the page.
        latency: p95 latency per variant over time, for the chart.

    Raises:
        ConfigError: matplotlib is not installed.
    """
    png = base64.b64encode(render_png_bytes(report, latency=latency)).decode("ascii")
    title = html.escape(f"flagwire report: {report.flag} (last {report.since})")
    banner = ""
    if report.srm is not None and report.srm.mismatch:
        banner = f'<p class="srm">{html.escape(report.warnings[0])}</p>'
    # "</" cannot end the script element early once its slash is escaped.
    data = json.dumps(report.to_json(), indent=2).replace("</", "<\\/")
    Path(path).write_text(
        f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
pre {{ font-size: 13px; background: #f6f6f6; padding: 1em; overflow-x: auto; }}
.srm {{ background: #b00000; color: #fff; padding: 1em; font-weight: bold; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{title}</h1>
{banner}
<img alt="p95 latency over time and rates per variant with intervals"
     src="data:image/png;base64,{png}">
<pre>{html.escape(render_table(report))}</pre>
<script type="application/json" id="flagwire-report">{data}</script>
</body></html>
""",
        encoding="utf-8",
    )


_Points = list[tuple[str, float, float, float, str]]
"""``(variant, estimate, low, high, annotation)`` per variant, as plotted."""


def _rate_panels(report: Report) -> list[tuple[str, str, _Points]]:
    level = f"{1 - report.alpha:.0%} {'CS' if report.sequential else 'CI'}"
    notes = {
        (m.metric, m.event, m.variant): (
            "" if m.comparison.relative is None else f"{m.comparison.relative:+.1%}\n"
        )
        + f"p = {m.comparison.p_value:.2g}"
        for m in report.comparisons
    }
    panels: list[tuple[str, str, _Points]] = []
    errors: _Points = [
        (v.variant, v.error_rate, v.error_rate_ci.low, v.error_rate_ci.high,
         notes.get(("error_rate", None, v.variant), ""))
        for v in report.variants
    ]  # fmt: skip
    panels.append((f"5xx rate ({level})", "5xx responses per request (%)", _scaled(errors, 100)))
    for event in report.events:
        model = report.variants[0].events[event].model
        points: _Points = []
        for v in report.variants:
            e = v.events[event]
            note = notes.get(("event_rate", event, v.variant), "")
            points.append((v.variant, e.rate, e.rate_ci.low, e.rate_ci.high, note))
        if model == "proportion":
            points, ylabel = _scaled(points, 100), f"{event} per request (%)"
        else:
            ylabel = f"{event} events per request"
        panels.append((f"{event} rate ({level})", ylabel, points))
    return panels


def _scaled(points: _Points, factor: float) -> _Points:
    return [(n, e * factor, lo * factor, hi * factor, note) for n, e, lo, hi, note in points]


def _latency_panel(
    axes: Axes, report: Report, latency: LatencySeries, colours: Mapping[str, str]
) -> None:
    axes.set_title("p95 latency per variant over time")
    axes.set_ylabel("p95 latency (ms)")
    ends = [points[-1][0] for points in latency.values() if points]
    if not ends:
        axes.set_xticks([])
        axes.set_yticks([])
        axes.text(0.5, 0.5, "no latency series", ha="center", va="center", transform=axes.transAxes)
        return
    # Hours before the window's end read better than timestamps over a "last 24h" window,
    # and the end itself is in the label for lining up with deploys.
    end = max(ends)
    stamp = datetime.fromtimestamp(end, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    axes.set_xlabel(f"hours before {stamp}")
    for v in report.variants:
        points = latency.get(v.variant, ())
        if points:
            label = f"{v.variant} (control)" if v.variant == report.control else v.variant
            hours = [(t - end) / 3600 for t, _ in points]
            millis = [s * 1000 for _, s in points]
            axes.plot(hours, millis, label=label, color=colours[v.variant], linewidth=1.8)
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(title="variant", loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")


def _rate_panel(
    axes: Axes,
    title: str,
    ylabel: str,
    points: _Points,
    colours: Mapping[str, str],
    control: str,
) -> None:
    axes.set_title(title, fontsize="medium")
    axes.set_ylabel(ylabel)
    for x, (name, estimate, low, high, note) in enumerate(points):
        if not math.isfinite(estimate):
            continue
        below = [max(0.0, estimate - low)] if math.isfinite(low) else [0.0]
        above = [max(0.0, high - estimate)] if math.isfinite(high) else [0.0]
        axes.errorbar(
            [x], [estimate], yerr=[below, above], fmt="o", capsize=6, markersize=7,
            color=colours.get(name, "C0"), elinewidth=2,
        )  # fmt: skip
        if note:
            axes.annotate(
                note, (x, high if math.isfinite(high) else estimate), xytext=(0, 6),
                textcoords="offset points", ha="center", fontsize="small",
            )  # fmt: skip
    ticks = [_tick(p[0]) + ("\n(control)" if p[0] == control else "") for p in points]
    axes.set_xticks(range(len(points)), ticks)
    axes.set_xlim(-0.6, len(points) - 0.4)
    axes.margins(y=0.3)
    low, high = axes.get_ylim()
    axes.set_ylim(max(0.0, low), high)
    axes.grid(axis="y", alpha=0.3)


def _tick(name: str) -> str:
    return name if len(name) <= 14 else name[:13] + "…"

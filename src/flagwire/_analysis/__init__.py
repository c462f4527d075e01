"""Experiment analysis: per-variant figures from Prometheus, statistics, report, chart.

Needs the ``report`` extra (scipy; matplotlib for the chart, imported only when drawing).
``flagwire/__init__`` never imports this package, so the core stays free of scipy.

Modules, in import order: ``figures`` (the data model and PromQL's bucket quantile),
``reader`` (Prometheus's HTTP API), ``sequential`` (always-valid intervals), ``stats`` and
``srm`` (the tests), ``model`` and ``report`` (the report and its JSON), ``table`` and
``chart`` (text, PNG, HTML).
"""

from __future__ import annotations

from .chart import LatencySeries, render_html, render_png, render_png_bytes
from .figures import EventFigures, VariantFigures, bucket_quantile
from .model import SCHEMA, EventSummary, MetricComparison, Report, VariantSummary
from .reader import (
    PrometheusClient,
    PrometheusError,
    Sample,
    Series,
    parse_duration,
    read_figures,
    read_latency_series,
)
from .report import build_report
from .sequential import Sequential
from .srm import SrmCheck, srm_check
from .stats import (
    Comparison,
    Interval,
    compare_means,
    compare_poisson_rates,
    compare_proportions,
    rate_interval,
    wilson_interval,
)
from .table import render_table

__all__ = [
    "SCHEMA",
    "Comparison",
    "EventFigures",
    "EventSummary",
    "Interval",
    "LatencySeries",
    "MetricComparison",
    "PrometheusClient",
    "PrometheusError",
    "Report",
    "Sample",
    "Sequential",
    "Series",
    "SrmCheck",
    "VariantFigures",
    "VariantSummary",
    "bucket_quantile",
    "build_report",
    "compare_means",
    "compare_poisson_rates",
    "compare_proportions",
    "parse_duration",
    "rate_interval",
    "read_figures",
    "read_latency_series",
    "render_html",
    "render_png",
    "render_png_bytes",
    "render_table",
    "srm_check",
    "wilson_interval",
]

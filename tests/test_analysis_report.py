"""The report: which comparison each metric gets, the JSON object, warnings, the table."""

from __future__ import annotations

import json
import math

import pytest
from scipy import stats

from flagwire._analysis.figures import EventFigures, VariantFigures
from flagwire._analysis.model import SCHEMA, Report
from flagwire._analysis.report import build_report
from flagwire._analysis.sequential import Sequential
from flagwire._analysis.table import render_table
from flagwire._errors import ConfigError

BUCKETS = ((0.05, 0.4), (0.1, 0.8), (0.25, 0.95), (math.inf, 1.0))


def _variant(
    name: str, requests: int, errors: int, checkouts: int, clicks: int, revenue: float = 50.0
) -> VariantFigures:
    return VariantFigures(
        variant=name,
        requests=requests,
        errors_5xx=errors,
        latency_buckets=tuple((le, share * requests) for le, share in BUCKETS),
        events={
            # Checkout values with a mean of ``revenue`` and a standard deviation of 20.
            "checkout": EventFigures(
                checkouts, revenue * checkouts, (revenue**2 + 400) * checkouts
            ),
            "click": EventFigures(clicks),
        },
    )


FIGURES = [
    _variant("on", 10_100, 20, 1212, 15_500, revenue=52.0),
    _variant("off", 10_000, 12, 1000, 15_000),
]


def _report(**kwargs: object) -> Report:
    options: dict[str, object] = {
        "flag": "checkout-v2", "control": "off", "weights": {"on": 50, "off": 50}, "since": "24h",
    }  # fmt: skip
    options.update(kwargs)
    figures = options.pop("figures", FIGURES)
    return build_report(figures, **options)  # type: ignore[arg-type]


def _comparison(report: Report, metric: str, event: str | None = None) -> dict[str, object]:
    found = [
        c for c in report.to_json()["comparisons"] if (c["metric"], c["event"]) == (metric, event)
    ]
    assert len(found) == 1, found
    result: dict[str, object] = found[0]
    return result


def test_the_json_figures_are_scipys_on_the_same_counts() -> None:
    report = _report()

    checkout = _comparison(report, "event_rate", "checkout")
    chi2 = stats.chi2_contingency([[1212, 10_100 - 1212], [1000, 9000]], correction=False)
    assert checkout["model"] == "proportion"
    assert checkout["p_value"] == pytest.approx(chi2.pvalue, rel=1e-12)
    errors = _comparison(report, "error_rate")
    chi2 = stats.chi2_contingency([[20, 10_080], [12, 9988]], correction=False)
    assert errors["p_value"] == pytest.approx(chi2.pvalue, rel=1e-12)
    clicks = _comparison(report, "event_rate", "click")
    assert clicks["model"] == "poisson"
    binom = stats.binomtest(15_500, 30_500, 10_100 / 20_100)
    assert clicks["p_value"] == pytest.approx(binom.pvalue, rel=1e-12)
    mean = _comparison(report, "event_mean_value", "checkout")
    sd = 20 * math.sqrt(1212 / 1211), 20 * math.sqrt(1000 / 999)
    welch = stats.ttest_ind_from_stats(52.0, sd[0], 1212, 50.0, sd[1], 1000, equal_var=False)
    assert mean["p_value"] == pytest.approx(welch.pvalue, rel=1e-9)
    srm = report.to_json()["srm"]
    assert srm["p_value"] == pytest.approx(stats.chisquare([10_100, 10_000]).pvalue, rel=1e-12)


def test_json_is_strict_and_has_the_documented_shape() -> None:
    figures = [*FIGURES, VariantFigures("empty", 200, 0, (), {"checkout": EventFigures(0)})]
    report = _report(figures=figures, weights={"on": 50, "off": 50, "empty": 1})

    data = report.to_json()
    text = json.dumps(data, allow_nan=False)  # NaN or Infinity anywhere would raise

    assert json.loads(text) == data
    assert data["schema"] == SCHEMA
    assert set(data) == {
        "schema", "flag", "control", "since", "alpha", "mode", "tuning_samples", "unit",
        "srm", "variants", "comparisons", "warnings",
    }  # fmt: skip
    assert [v["variant"] for v in data["variants"]] == ["off", "empty", "on"]
    off = data["variants"][0]
    assert off["is_control"] is True
    assert off["latency_seconds"] == {"p50": pytest.approx(0.0625), "p95": 0.25}
    assert off["latency_buckets"][-1] == ["+Inf", 10_000.0]
    assert off["events"]["checkout"]["rate_per_request"]["estimate"] == 0.1
    assert off["events"]["checkout"]["mean_value"] == 50.0
    assert off["events"]["click"]["mean_value"] is None
    empty = data["variants"][1]
    assert empty["latency_seconds"] == {"p50": None, "p95": None}
    relative = [c["relative"] for c in data["comparisons"] if c["variant"] == "empty"]
    assert {"estimate": -1.0, "low": None, "high": None} in relative  # no checkouts at all


def test_the_control_comes_first_and_every_variant_is_compared_with_it() -> None:
    figures = [*FIGURES, _variant("blue", 9_900, 10, 1000, 15_000)]
    report = _report(figures=figures, weights={"on": 1, "off": 1, "blue": 1})

    assert [v.variant for v in report.variants] == ["off", "blue", "on"]
    pairs = {(c.metric, c.event, c.variant) for c in report.comparisons}
    for variant in ("blue", "on"):
        assert ("error_rate", None, variant) in pairs
        assert ("event_rate", "checkout", variant) in pairs
        assert ("event_rate", "click", variant) in pairs
        assert ("event_mean_value", "checkout", variant) in pairs
    assert not any(c.variant == "off" for c in report.comparisons)


def test_a_skewed_split_puts_a_loud_warning_first() -> None:
    skewed = [_variant("on", 10_600, 20, 1212, 15_500), _variant("off", 9_400, 12, 1000, 15_000)]

    report = _report(figures=skewed)
    table = render_table(report)

    assert report.srm is not None
    assert report.srm.mismatch
    assert report.warnings[0].startswith("SAMPLE RATIO MISMATCH")
    assert report.to_json()["srm"]["mismatch"] is True
    lines = table.splitlines()
    box = next(i for i, line in enumerate(lines) if "SAMPLE RATIO MISMATCH" in line)
    variants = next(i for i, line in enumerate(lines) if line.startswith("variant"))
    assert box < variants
    assert lines[box - 1] == "#" * 100


def test_little_data_and_missing_weights_are_warned_about() -> None:
    small = [_variant("on", 80, 1, 4, 100), _variant("off", 90, 0, 9, 100)]

    report = _report(figures=small, weights=None)

    assert report.srm is None
    text = "\n".join(report.warnings)
    assert "sample-ratio-mismatch check was skipped" in text
    assert "variant on: 80 requests (< 100)" in text
    assert "5xx errors, on vs off: only 0 in an arm" in text
    assert "event checkout, on vs off: only 4 in an arm" in text
    assert "compared as a Poisson rate" in text


def test_sequential_reports_say_so_and_widen_every_interval() -> None:
    fixed = _report()
    sequential = _report(sequential=True)

    assert sequential.to_json()["mode"] == "sequential"
    assert sequential.to_json()["tuning_samples"] == Sequential().tuning_samples
    assert fixed.to_json()["mode"] == "fixed"
    for a, b in zip(fixed.comparisons, sequential.comparisons, strict=True):
        assert b.comparison.test == "always-valid-mixture"
        assert b.comparison.difference == a.comparison.difference
        assert b.comparison.difference_ci.low < a.comparison.difference_ci.low
        assert b.comparison.difference_ci.high > a.comparison.difference_ci.high
    assert "always-valid" in render_table(sequential)
    tuned = _report(sequential=Sequential(tuning_samples=500))
    assert tuned.sequential == Sequential(tuning_samples=500)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"control": "green"}, "control variant 'green' has no requests; variants: on, off"),
        ({"figures": []}, "no requests for flag 'checkout-v2'"),
        ({"figures": [FIGURES[1], FIGURES[1]]}, "duplicate variants"),
    ],
)
def test_bad_inputs_are_config_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _report(**kwargs)


def test_the_table_fits_100_columns_and_lines_up() -> None:
    long_name = "a-variant-with-a-rather-long-name-indeed"
    figures = [*FIGURES, _variant(long_name, 9_950, 9, 990, 14_900)]
    report = _report(figures=figures, weights=None)

    table = render_table(report)

    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 100
    header = next(line for line in lines if line.startswith("variant"))
    rows = lines[lines.index(header) + 1 : lines.index(header) + 4]
    # Right-aligned numeric columns end where their header ends.
    assert {len(row) for row in rows} == {len(header)}
    assert "off (control)" in rows[0]
    assert "a-variant-with-a-ra…" in table
    checkout = next(line for line in lines if line.startswith("checkout per request"))
    assert "chi-square test, Newcombe interval" in checkout
    start = lines.index(checkout)
    on_row = next(line for line in lines[start:] if line.strip().startswith("on "))
    # +20% conversion at 10k per arm is significant; the difference reads in points.
    assert on_row.rstrip().endswith("*")
    assert "+2.00 [+1.14, +2.86] pp" in on_row

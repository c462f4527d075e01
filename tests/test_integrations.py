"""The assets in ``integrations/``: the Grafana dashboard, the Prometheus rules, the
OpenTelemetry Collector config.

- The dashboard's structure, and every PromQL expression in it naming only metrics that
  flagwire exports (taken from a real :class:`~flagwire.prometheus.PrometheusTelemetry`
  registry, not from a list kept here).
- ``promtool check rules`` on the shipped rules, and on the dashboard's expressions (so
  their syntax is checked without a server); ``promtool test rules`` on the alerts with
  synthetic series (what fires, what does not, the margins).
- End to end (``e2e``): a real Prometheus scraping a real FastAPI app under uvicorn
  (``tests/e2e_apps/metrics_fastapi.py``) with the shipped rules loaded; the dashboard's
  own queries and Prometheus' alerts must show the slow variant and the expired flag.

promtool and prometheus come from ``.ci/install-services.sh`` (``.ci/run`` calls it):
a missing binary fails these tests, it does not skip them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry

from flagwire import FlagSet, StaticSource
from flagwire._control.guard_metrics import GuardMetrics
from flagwire._telemetry import RequestRecord
from flagwire.prometheus import PrometheusTelemetry
from test_e2e import HOST, TEST_APPS, _free_port, _Launcher, _stop

REPO = Path(__file__).resolve().parents[1]
INTEGRATIONS = REPO / "integrations"
DASHBOARD = INTEGRATIONS / "grafana" / "flagwire-dashboard.json"
RULES = INTEGRATIONS / "prometheus" / "flagwire-rules.yml"
COLLECTOR = INTEGRATIONS / "otel-collector" / "config.yaml"
INSTALL_HINT = (
    "is not on PATH: .ci/run installs prometheus and promtool with "
    "`bash .ci/install-services.sh` (Debian's `prometheus` package); run it, then the tests"
)

Json = dict[str, Any]


def _binary(name: str) -> str:
    """The path of ``prometheus`` or ``promtool``; fails (never skips) without it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} {INSTALL_HINT}", pytrace=False)
    return path


# -- what flagwire exports ---------------------------------------------------------------------


def _exported_metric_names() -> frozenset[str]:
    """Every series name a PrometheusTelemetry registry exposes, with a source and a
    request that decided a flag with and without an error (so each family has samples)."""
    flagset = FlagSet.from_mapping(
        {
            "flags": {
                "checkout": {
                    "state": "ENABLED",
                    "variants": {"control": "a", "treatment": "b"},
                    "defaultVariant": "control",
                    "metadata": {"owner": "web", "expires": "2020-01-31"},
                }
            }
        },
        source="flags.json",
    )
    registry = CollectorRegistry()
    telemetry = PrometheusTelemetry(registry=registry, sources=[StaticSource(flagset)])
    decided = flagset.evaluate("checkout", {"targetingKey": "u1"}, "a")
    failed = flagset.evaluate("missing", {"targetingKey": "u1"}, "a")
    assert failed.error_code is not None
    telemetry.record(
        RequestRecord(
            decisions={"checkout": decided, "missing": failed},
            method="GET",
            route="/",
            status=500,
            duration=0.01,
            flagset_version=flagset.version_label,
        )
    )
    names = {sample.name for family in registry.collect() for sample in family.samples}
    return frozenset(names | _guard_metric_names())


def _guard_metric_names() -> set[str]:
    """Every series name ``flagwire guard``'s /metrics exposes."""
    metrics = GuardMetrics()
    for family in (metrics.step, metrics.paused, metrics.last_judgement, metrics.last_alpha):
        family.labels("f").set(1)
    metrics.actions.labels("f", "rollback").inc()
    metrics.judgements.labels("f", "healthy").inc()
    metrics.errors.labels("prometheus").inc()
    metrics.alerts.labels("ignore").inc()
    return {s.name for family in metrics.registry.collect() for s in family.samples}


EXPORTED = _exported_metric_names()


# -- metric names in PromQL --------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
      (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<number>(?:0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)(?:ms|[smhdwy])*)
    | (?P<variable>\$\{?\w+\}?)
    | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<symbol>\S)
    """,
    re.VERBOSE,
)
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"bool", "and", "or", "unless", "offset", "atan2", "inf", "nan"}
# Aggregations may put their `by (...)` before their argument: `sum by (le) (rate(x[5m]))`.
_AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<expr>.*),\s*\w+\s*\)\s*$", re.DOTALL)


def metric_names(expr: str) -> set[str]:
    """The metric (and recorded) names a PromQL expression selects: every bare name that is
    not a function, a keyword, a label in ``{...}`` or in a ``by (...)``-style list.
    Grafana's ``label_values(<selector>, <label>)`` counts for its selector."""
    found = _LABEL_VALUES.match(expr)
    if found is not None:
        expr = found.group("expr")
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr)]
    names: set[str] = set()
    braces = 0
    skip_list = False  # inside the parenthesised label list of by/on/...
    for index, (kind, text) in enumerate(tokens):
        following = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        if kind == "symbol":
            if text == "{":
                braces += 1
            elif text == "}":
                braces -= 1
            elif text == ")" and skip_list:
                skip_list = False
            continue
        if kind != "name" or braces or skip_list:
            continue
        if text in _LABEL_LISTS:
            skip_list = following == "("
        elif text in _AGGREGATIONS and following in {"(", "by", "without"}:
            continue
        elif following != "(" and text.lower() not in _KEYWORDS:
            names.add(text)
    return names


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("up", {"up"}),
        (
            'histogram_quantile(0.95, sum by (le, variant) (rate(a_bucket{flag="$flag", '
            'x=~"b|c"}[$__rate_interval])))',
            {"a_bucket"},
        ),
        ("(a or 0 * b) / ignoring (variant) group_left sum(c) > bool 1e3", {"a", "b", "c"}),
        (
            "time() - max without (instance) (x_seconds offset 5m) < time() + 14 * 86400",
            {"x_seconds"},
        ),
        ("rec:rule:p95 unless on (flag, variant) other:rule", {"rec:rule:p95", "other:rule"}),
        ('label_values(m_total{job=~"$job", flag!="_other"}, flag)', {"m_total"}),
        ('count by (job) (count by (job, version) (info{a="by (x)"}))', {"info"}),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


# -- (a) the dashboard ---------------------------------------------------------------------------


def _dashboard() -> Json:
    document: Json = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return document


def _panels(dashboard: Mapping[str, Any]) -> list[Json]:
    """Every panel, rows' nested panels included."""
    found: list[Json] = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def _expressions(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target, annotation and query variable."""
    found = [
        (f"panel {panel['title']!r} target {target['refId']}", target["expr"])
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
    ]
    found += [
        (f"annotation {item['name']!r}", item["expr"])
        for item in dashboard["annotations"]["list"]
        if "expr" in item
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query if isinstance(query, str) else query["query"]
            found.append((f"variable ${variable['name']}", text))
    return found


def _panel(dashboard: Mapping[str, Any], title: str) -> Json:
    matches = [p for p in _panels(dashboard) if p.get("title") == title]
    assert len(matches) == 1, f"expected one panel titled {title!r}, found {len(matches)}"
    return matches[0]


def _exprs_of(dashboard: Mapping[str, Any], title: str) -> list[str]:
    return [target["expr"] for target in _panel(dashboard, title)["targets"]]


def _p95_query(dashboard: Mapping[str, Any]) -> str:
    """The dashboard's own p95-per-variant query."""
    (expr,) = [e for e in _exprs_of(dashboard, LATENCY) if e.startswith("histogram_quantile(0.95,")]
    return expr


LATENCY = "Latency by variant (p50 / p95 / p99)"
ERRORS = "Error rate by variant (5xx share)"
SHARE = "Traffic share by variant"
REASONS = "Evaluations by reason"
EXPIRED_COUNT = "Expired flags"
EXPIRED_TABLE = "Expired flags (remove them)"
EXPIRING_TABLE = "Flags expiring within 14 days"
VERSIONS = "Flag set in force"
FRESHNESS = "Age of the flag set in force"
SOURCE_UP = "Source up"

# Each required panel: metric names and fragments its queries must contain.
GUARD_STEP = "Rollout step per flag"
REQUIRED_PANELS: dict[str, tuple[set[str], list[str]]] = {
    LATENCY: (
        {"flagwire_request_duration_seconds_bucket"},
        [
            "histogram_quantile(0.5,",
            "histogram_quantile(0.95,",
            "histogram_quantile(0.99,",
            "by (le, variant)",
            'flag="$flag"',
            "[$__rate_interval]",
        ],
    ),
    ERRORS: (
        {"flagwire_request_duration_seconds_count"},
        ['status_class="5xx"', "by (variant)", 'flag="$flag"'],
    ),
    SHARE: ({"flagwire_evaluations_total"}, ["by (variant)", 'flag="$flag"']),
    REASONS: ({"flagwire_evaluations_total"}, ["reason", 'flag="$flag"']),
    EXPIRED_COUNT: ({"flagwire_flags_expired"}, []),
    EXPIRED_TABLE: ({"flagwire_flag_expiry_timestamp_seconds"}, ["< time()"]),
    VERSIONS: ({"flagwire_flagset_info"}, ["version"]),
    FRESHNESS: ({"flagwire_flagset_last_load_timestamp_seconds"}, ["time() -"]),
    SOURCE_UP: ({"flagwire_source_up"}, []),
    GUARD_STEP: ({"flagwire_guard_step_percent"}, ["by (flag)"]),
}
GRAFANA_VARIABLES = {"__rate_interval", "__interval", "__range"}


def test_exported_metric_names_are_the_documented_ones() -> None:
    # The registry the tests compare against really is flagwire's full set.
    assert {
        "flagwire_request_duration_seconds_bucket",
        "flagwire_request_duration_seconds_count",
        "flagwire_request_duration_seconds_sum",
        "flagwire_evaluations_total",
        "flagwire_evaluation_errors_total",
        "flagwire_flagset_info",
        "flagwire_flagset_last_load_timestamp_seconds",
        "flagwire_source_up",
        "flagwire_source_failures_total",
        "flagwire_flag_expiry_timestamp_seconds",
        "flagwire_flags_expired",
    } <= EXPORTED


def test_dashboard_queries_name_only_metrics_flagwire_exports() -> None:
    dashboard = _dashboard()
    expressions = _expressions(dashboard)
    assert len(expressions) >= 15
    for where, expr in expressions:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = names - EXPORTED
        assert not unknown, f"{where}: {sorted(unknown)} not exported by flagwire: {expr!r}"


def test_dashboard_has_the_required_panels() -> None:
    dashboard = _dashboard()
    for title, (metrics, fragments) in REQUIRED_PANELS.items():
        exprs = _exprs_of(dashboard, title)
        assert exprs, title
        named = set().union(*(metric_names(e) for e in exprs))
        assert metrics <= named, f"{title}: {sorted(metrics - named)} not queried"
        text = "\n".join(exprs)
        for fragment in fragments:
            assert fragment in text, f"{title}: no {fragment!r} in {exprs}"
    assert _p95_query(dashboard) == (
        "histogram_quantile(0.95, sum by (le, variant) (rate(flagwire_request_duration_seconds"
        '_bucket{job=~"$job", flag="$flag"}[$__rate_interval])))'
    )
    for title in (EXPIRED_TABLE, EXPIRING_TABLE, VERSIONS):
        assert _panel(dashboard, title)["type"] == "table"
        assert all(
            t["instant"] and t["format"] == "table" for t in _panel(dashboard, title)["targets"]
        )


def test_dashboard_structure() -> None:
    dashboard = _dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and dashboard["title"]
    assert "flagwire" in dashboard["tags"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    flag = variables["flag"]
    assert flag["type"] == "query" and not flag["multi"] and not flag["includeAll"]
    assert metric_names(flag["query"]) == {"flagwire_evaluations_total"}
    assert flag["query"].rstrip().endswith(", flag)")
    job = variables["job"]
    assert job["type"] == "query" and job["includeAll"] and job["allValue"] == ".*"
    assert job["query"].rstrip().endswith(", job)")

    panels = _panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel.get("description"), f"{panel['title']!r} has no description"
        # Every query goes to the data source the user picks: no hard-coded uid.
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
    for where, expr in _expressions(dashboard):
        used = {m.strip("${}") for m in re.findall(r"\$\{?\w+\}?", expr)}
        undefined = used - set(variables) - GRAFANA_VARIABLES
        assert not undefined, f"{where}: undefined variables {undefined}"


# -- (b) the rules, with promtool ------------------------------------------------------------------


def _rules() -> Json:
    document: Json = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return document


def _rules_by_name(document: Mapping[str, Any]) -> dict[str, Json]:
    return {
        rule.get("alert") or rule["record"]: rule
        for group in document["groups"]
        for rule in group["rules"]
    }


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_binary("promtool"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_promtool_checks_the_rules() -> None:
    result = _promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


ALERTS = {
    "FlagwireFlagExpired",
    "FlagwireSourceDown",
    "FlagwireFlagSetStale",
    "FlagwireVariantLatencyRegression",
    "FlagwireVariantErrorRegression",
    "FlagwireGuardPaused",
    "FlagwireGuardFailing",
}
RECORDED = {
    "flagwire:requests:rate5m",
    "flagwire:request_duration_seconds:p50",
    "flagwire:request_duration_seconds:p95",
    "flagwire:request_duration_seconds:p99",
    "flagwire:error_ratio",
    "flagwire:control_variant",
}


def test_rules_name_only_flagwire_metrics_and_describe_every_alert() -> None:
    rules = _rules_by_name(_rules())
    assert set(rules) == ALERTS | RECORDED
    for name, rule in rules.items():
        unknown = metric_names(rule["expr"]) - EXPORTED - RECORDED
        assert not unknown, f"{name}: {sorted(unknown)} are neither exported nor recorded"
        if name in ALERTS:
            annotations = rule["annotations"]
            assert annotations["summary"] and annotations["description"], name
            assert rule["labels"]["severity"] in {"info", "warning", "critical"}, name
            assert rule["for"], name
    # The margins are the documented constants in the expressions.
    latency = rules["FlagwireVariantLatencyRegression"]["expr"]
    assert "1.25 * max by (job, flag)" in latency and "+ 0.020" in latency
    errors = rules["FlagwireVariantErrorRegression"]["expr"]
    assert "1.5 * max by (job, flag)" in errors and "+ 0.01" in errors
    header = RULES.read_text(encoding="utf-8").split("groups:")[0]
    for documented in ("1.25 x control", "1.5 x control", "0.1 requests/s", "`control`"):
        assert documented in header, documented


def _substituted(expr: str, flag: str, job: str, rate_interval: str) -> str:
    """A dashboard expression with Grafana's variables replaced as Grafana would."""
    return (
        expr.replace("$__rate_interval", rate_interval).replace("$flag", flag).replace("$job", job)
    )


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    # Dashboard queries as recording rules: promtool parses them like Prometheus would.
    dashboard = _dashboard()
    rules = [
        {"record": f"dashboard:query_{n}", "expr": _substituted(expr, "f", ".*", "1m")}
        for n, (_, expr) in enumerate(_expressions(dashboard))
        if not _LABEL_VALUES.match(expr)
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


# -- promtool unit tests of the alerts ----------------------------------------------------------

BUCKETS = ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.3", "0.35", "0.45", "+Inf")


def _histogram(
    labels: str, per_minute: Mapping[str, int], minutes: int, status_class: str = "2xx"
) -> list[Json]:
    """Bucket and count series growing by ``per_minute[le]`` requests in each bucket."""
    series: list[Json] = []
    total = 0
    for le in BUCKETS:
        total += per_minute.get(le, 0)
        series.append(
            {
                "series": f"flagwire_request_duration_seconds_bucket{{{labels}, "
                f'status_class="{status_class}", le="{le}"}}',
                "values": f"0+{total}x{minutes}",
            }
        )
    series.append(
        {
            "series": "flagwire_request_duration_seconds_count"
            f'{{{labels}, status_class="{status_class}"}}',
            "values": f"0+{total}x{minutes}",
        }
    )
    return series


def _evaluations(labels: str, minutes: int) -> Json:
    return {
        "series": f'flagwire_evaluations_total{{{labels}, reason="TARGETING_MATCH"}}',
        "values": f"0+60x{minutes}",
    }


def _variant_tests() -> Json:
    minutes = 30

    def target(flag: str, variant: str) -> str:
        return f'job="shop", instance="shop-1:8000", flag="{flag}", variant="{variant}"'

    series: list[Json] = []
    # checkout-flow: treatment ~100 ms vs control ~25 ms, and 10 % 5xx vs none.
    series += _histogram(target("checkout-flow", "control"), {"0.025": 60}, minutes)
    series += _histogram(target("checkout-flow", "treatment"), {"0.1": 60}, minutes)
    series += _histogram(target("checkout-flow", "treatment"), {"0.1": 6}, minutes, "5xx")
    # tiny-gap: 2x slower but only ~5 ms: within the 20 ms slack.
    series += _histogram(target("tiny-gap", "control"), {"0.005": 60}, minutes)
    series += _histogram(target("tiny-gap", "treatment"), {"0.01": 60}, minutes)
    # quiet: much slower, but 1 request a minute: too little traffic to judge.
    series += _histogram(target("quiet", "control"), {"0.025": 60}, minutes)
    series += _histogram(target("quiet", "treatment"), {"0.25": 1}, minutes)
    series += _histogram(target("quiet", "treatment"), {"0.25": 1}, minutes, "5xx")
    # new-checkout: an on/off flag whose control `off` is declared by a rule of its own.
    series += _histogram(target("new-checkout", "off"), {"0.025": 60}, minutes)
    series += _histogram(target("new-checkout", "on"), {"0.25": 60}, minutes)
    # no-control: variants a and b, no control: never compared.
    series += _histogram(target("no-control", "a"), {"0.025": 60}, minutes)
    series += _histogram(target("no-control", "b"), {"0.25": 60}, minutes)
    # The latency margin, 1.25 x control + 20 ms: control p95 0.2975 s -> 0.392 s.
    # near-margin: treatment p95 0.3475 s, under it (a ratio of 1.1 would alert).
    series += _histogram(target("near-margin", "control"), {"0.3": 60}, minutes)
    series += _histogram(target("near-margin", "treatment"), {"0.35": 60}, minutes)
    # over-margin: treatment p95 0.445 s, over it (a ratio of 1.45 would not alert).
    series += _histogram(target("over-margin", "control"), {"0.3": 60}, minutes)
    series += _histogram(target("over-margin", "treatment"), {"0.45": 60}, minutes)
    # The error margin, 1.5 x control + 1 point: control 2 % -> 4 %; errors-near fails
    # 3.5 % (a ratio of 1.2 would alert), errors-over 6 % (2.5 would not).
    for flag, failing in (("errors-near", 7), ("errors-over", 12)):
        series += _histogram(target(flag, "control"), {"0.025": 196}, minutes)
        series += _histogram(target(flag, "control"), {"0.025": 4}, minutes, "5xx")
        series += _histogram(target(flag, "treatment"), {"0.025": 200 - failing}, minutes)
        series += _histogram(target(flag, "treatment"), {"0.025": failing}, minutes, "5xx")
    compared = (
        "checkout-flow", "tiny-gap", "quiet", "near-margin", "over-margin", "errors-near",
        "errors-over",
    )  # fmt: skip
    series += [_evaluations(target(flag, "control"), minutes) for flag in compared]

    def alert(flag: str, variant: str, severity: str) -> Json:
        return {
            "exp_labels": {"job": "shop", "flag": flag, "variant": variant, "severity": severity}
        }

    return {
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [
            # `for: 10m` / `for: 5m`: pending first, then firing.
            {"eval_time": "4m", "alertname": "FlagwireVariantLatencyRegression", "exp_alerts": []},
            {
                "eval_time": "20m",
                "alertname": "FlagwireVariantLatencyRegression",
                "exp_alerts": [
                    alert("checkout-flow", "treatment", "warning"),
                    alert("new-checkout", "on", "warning"),
                    alert("over-margin", "treatment", "warning"),
                ],
            },
            {
                "eval_time": "20m",
                "alertname": "FlagwireVariantErrorRegression",
                "exp_alerts": [
                    alert("checkout-flow", "treatment", "critical"),
                    alert("errors-over", "treatment", "critical"),
                ],
            },
        ],
        "promql_expr_test": [
            {
                "expr": "flagwire:control_variant",
                "eval_time": "10m",
                "exp_samples": [
                    {
                        "labels": f'flagwire:control_variant{{flag="{flag}", variant="{variant}"}}',
                        "value": 1,
                    }
                    for flag, variant in [(f, "control") for f in compared]
                    + [("new-checkout", "off")]
                ],
            },
            {
                # 6 of 66 requests a minute: 0.0909...
                "expr": 'round(flagwire:error_ratio{flag="checkout-flow"}, 0.001) > 0',
                "eval_time": "10m",
                "exp_samples": [
                    {
                        "labels": '{job="shop", flag="checkout-flow", variant="treatment"}',
                        "value": 0.091,
                    }
                ],
            },
        ],
    }


def _source_tests() -> Json:
    def series(name: str, instance: str, values: str, **labels: str) -> Json:
        extra = "".join(f', {key}="{value}"' for key, value in labels.items())
        return {
            "series": f'{name}{{job="shop", instance="{instance}", source="flags.yaml"{extra}}}',
            "values": values,
        }

    far_future = str(4_000_000_000)
    inputs = [
        # shop-1: failing, and its flag set was loaded at t=0: stale after an hour.
        series("flagwire_source_up", "shop-1", "0x100"),
        series("flagwire_flagset_last_load_timestamp_seconds", "shop-1", "0x100"),
        # shop-2: healthy, same old flag set: age alone is no alert.
        series("flagwire_source_up", "shop-2", "1x100"),
        series("flagwire_flagset_last_load_timestamp_seconds", "shop-2", "0x100"),
        # shop-3: failing, flag set loaded 400 s before the check: down, not stale.
        series("flagwire_source_up", "shop-3", "0x100"),
        series("flagwire_flagset_last_load_timestamp_seconds", "shop-3", "5000x100"),
    ]
    for instance in ("shop-1", "shop-2"):  # both export the flags: one alert per flag
        inputs.append(
            series(
                "flagwire_flag_expiry_timestamp_seconds",
                instance,
                "0x100",
                flag="old-banner",
                owner="web",
            )
        )
        inputs.append(
            series(
                "flagwire_flag_expiry_timestamp_seconds",
                instance,
                f"{far_future}x100",
                flag="fresh",
                owner="web",
            )
        )

    def down(instance: str) -> Json:
        return {
            "exp_labels": {
                "job": "shop",
                "instance": instance,
                "source": "flags.yaml",
                "severity": "warning",
            }
        }

    return {
        "interval": "1m",
        "input_series": inputs,
        "alert_rule_test": [
            {
                "eval_time": "90m",
                "alertname": "FlagwireSourceDown",
                "exp_alerts": [down("shop-1"), down("shop-3")],
            },
            {
                "eval_time": "90m",
                "alertname": "FlagwireFlagSetStale",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "job": "shop",
                            "instance": "shop-1",
                            "source": "flags.yaml",
                            "severity": "critical",
                        }
                    }
                ],
            },
            {"eval_time": "5m", "alertname": "FlagwireFlagExpired", "exp_alerts": []},
            {
                "eval_time": "30m",
                "alertname": "FlagwireFlagExpired",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "job": "shop",
                            "source": "flags.yaml",
                            "flag": "old-banner",
                            "owner": "web",
                            "severity": "info",
                        }
                    }
                ],
            },
        ],
    }


def test_promtool_unit_tests_of_the_alerts(tmp_path: Path) -> None:
    # The shipped rules without their annotations (promtool would compare the rendered
    # text; the e2e test checks it renders), plus a control declared the documented way.
    rules = _rules()
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    controls = {
        "groups": [
            {
                "name": "controls",
                "rules": [
                    {
                        "record": "flagwire:control_variant",
                        "expr": "vector(1)",
                        "labels": {"flag": "new-checkout", "variant": "off"},
                    }
                ],
            }
        ]
    }
    (tmp_path / "controls.yml").write_text(yaml.safe_dump(controls))
    tests = {
        "rule_files": ["rules.yml", "controls.yml"],
        "evaluation_interval": "1m",
        "tests": [_variant_tests(), _source_tests()],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run(
        [_binary("promtool"), "test", "rules", "tests.yml"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


# -- the OpenTelemetry Collector config -----------------------------------------------------------


def test_collector_config_wires_otlp_to_traces_and_prometheus() -> None:
    config: Json = yaml.safe_load(COLLECTOR.read_text(encoding="utf-8"))
    service = config["service"]
    pipelines = service["pipelines"]
    for kind in ("receivers", "processors", "exporters"):
        defined = set(config[kind])
        used = {name for pipeline in pipelines.values() for name in pipeline.get(kind, [])}
        assert used <= defined, f"{kind} used but not defined: {used - defined}"
        assert defined <= used, f"{kind} defined but in no pipeline: {defined - used}"
    assert set(service.get("extensions", [])) <= set(config.get("extensions", {}))
    otlp = config["receivers"]["otlp"]["protocols"]
    assert otlp["grpc"]["endpoint"].endswith(":4317")
    assert otlp["http"]["endpoint"].endswith(":4318")
    traces, metrics = pipelines["traces"], pipelines["metrics"]
    assert "otlp" in traces["receivers"] and "otlp" in metrics["receivers"]
    assert any(e.split("/")[0] in {"otlp", "otlp_grpc", "otlphttp"} for e in traces["exporters"])
    assert "prometheus" in metrics["exporters"]
    for pipeline in (traces, metrics):  # memory_limiter first, batch last
        assert pipeline["processors"][0] == "memory_limiter"
        assert pipeline["processors"][-1] == "batch"
    scrape = config["receivers"]["prometheus"]["config"]["scrape_configs"]
    assert all(job["static_configs"][0]["targets"] for job in scrape)


# -- (c) end to end: a real Prometheus, a real app, the shipped rules -----------------------------

JOB = "flagwire-e2e"
FLAG = "slow-path"
EXPIRED_FLAG = "old-banner"
EXPIRING_FLAG = "soon-gone"
RATE_INTERVAL = "1m"  # covers the whole traffic burst
TRAFFIC_SECONDS = 5.0
CONCURRENCY = 8
PROMETHEUS_STARTUP = 20.0


def _flag_document(today: date) -> Json:
    return {
        "metadata": {"version": "e2e-1", "owner": "platform"},
        "flags": {
            FLAG: {
                "state": "ENABLED",
                "variants": {"control": "control", "treatment": "treatment"},
                "defaultVariant": "control",
                "targeting": {"fractional": [["control", 50], ["treatment", 50]]},
                "metadata": {
                    "owner": "checkout",
                    "kind": "experiment",
                    "expires": (today + timedelta(days=90)).isoformat(),
                },
            },
            EXPIRED_FLAG: {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "off",
                "metadata": {"owner": "web", "kind": "release", "expires": "2020-01-31"},
            },
            EXPIRING_FLAG: {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "on",
                "metadata": {
                    "owner": "search",
                    "kind": "release",
                    "expires": (today + timedelta(days=7)).isoformat(),
                },
            },
        },
    }


@dataclass(frozen=True)
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def query(self, expr: str) -> list[Json]:
        response = httpx.get(
            f"{self.url}/api/v1/query", params={"query": expr}, trust_env=False, timeout=10.0
        )
        body: Json = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        assert body["data"]["resultType"] == "vector", (expr, body)
        result: list[Json] = body["data"]["result"]
        return result

    def alerts(self) -> list[Json]:
        body: Json = httpx.get(f"{self.url}/api/v1/alerts", trust_env=False, timeout=10.0).json()
        assert body["status"] == "success", body
        alerts: list[Json] = body["data"]["alerts"]
        return alerts

    def rules(self) -> list[Json]:
        body: Json = httpx.get(f"{self.url}/api/v1/rules", trust_env=False, timeout=10.0).json()
        assert body["status"] == "success", body
        return [rule for group in body["data"]["groups"] for rule in group["rules"]]

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def _rules_for_e2e(directory: Path) -> Path:
    """The shipped rules with every ``for:`` at 0s: same expressions, alerts fire at once."""
    shipped = _rules()
    rules = copy.deepcopy(shipped)
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = "0s"
    assert [r["expr"] for r in _rules_by_name(rules).values()] == [
        r["expr"] for r in _rules_by_name(shipped).values()
    ]
    path = directory / "flagwire-rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    return path


def _start_prometheus(directory: Path, app_url: str) -> Prometheus:
    rules = _rules_for_e2e(directory)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": JOB,
                "metrics_path": "/metrics/",
                "static_configs": [{"targets": [app_url.removeprefix("http://")]}],
            }
        ],
    }
    config_path = directory / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    binary = _binary("prometheus")
    for attempt in range(3):
        port = _free_port()
        log = directory / f"prometheus-{port}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={directory / f'tsdb-{port}'}",
                    f"--web.listen-address={HOST}:{port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=directory,
                start_new_session=True,
            )
        server = Prometheus(f"http://{HOST}:{port}", process, log)
        if _wait_until_ready(server):
            return server
        _stop(process)
        if "address already in use" not in server.output() or attempt == 2:
            break
    pytest.fail(f"prometheus did not come up:\n{server.output()[-3000:]}")


def _wait_until_ready(server: Prometheus) -> bool:
    deadline = time.monotonic() + PROMETHEUS_STARTUP
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{server.url}/-/ready", trust_env=False, timeout=1.0).is_success:
                return True
        time.sleep(0.1)
    return False


def _drive_traffic(url: str, seconds: float) -> dict[str, int]:
    """Requests from many users for ``seconds``; how many got each variant."""
    counts: dict[str, int] = {}

    async def worker(client: httpx.AsyncClient, worker_id: int, deadline: float) -> None:
        n = 0
        while time.monotonic() < deadline:
            response = await client.get("/work", headers={"x-user-id": f"user-{worker_id}-{n}"})
            assert response.status_code == 200, response.text
            variant = response.json()["variant"]
            counts[variant] = counts.get(variant, 0) + 1
            n += 1

    async def run() -> None:
        limits = httpx.Limits(max_connections=CONCURRENCY)
        async with httpx.AsyncClient(
            base_url=url, trust_env=False, timeout=10.0, limits=limits
        ) as client:
            deadline = time.monotonic() + seconds
            await asyncio.gather(*(worker(client, i, deadline) for i in range(CONCURRENCY)))

    asyncio.run(run())
    return counts


def _poll(what: str, check: Callable[[], Any], timeout: float) -> Any:
    """``check()``'s first truthy result; fails after ``timeout`` seconds with the last one."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}; last: {result!r}")
        time.sleep(0.25)


def _firing(prometheus: Prometheus, name: str) -> list[Json]:
    return [
        alert
        for alert in prometheus.alerts()
        if alert["labels"]["alertname"] == name and alert["state"] == "firing"
    ]


def _as_grafana_would(expr: str) -> str:
    """A dashboard query as Grafana sends it with flag ``slow-path`` and service ``JOB``."""
    return _substituted(expr, FLAG, JOB, RATE_INTERVAL)


def _by_variant(result: Sequence[Json]) -> dict[str, float]:
    return {item["metric"]["variant"]: float(item["value"][1]) for item in result}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[str, Path, Prometheus]]:
    """The metrics app under uvicorn and a Prometheus scraping it: (app url, flag file,
    prometheus); both stopped afterwards."""
    flags = tmp_path / "flags.json"
    flags.write_text(json.dumps(_flag_document(date.today())), encoding="utf-8")
    launcher = _Launcher(tmp_path)
    prometheus: Prometheus | None = None
    try:
        app = launcher.start("fastapi", flags, app_dir=TEST_APPS, module="metrics_fastapi")
        prometheus = _start_prometheus(tmp_path, app.url)
        yield app.url, flags, prometheus
    finally:
        if prometheus is not None:
            _stop(prometheus.process)
            if prometheus.process.returncode not in (0, -15):
                print(prometheus.output()[-3000:])
        launcher.close()


@pytest.mark.e2e
def test_prometheus_sees_the_slow_variant_and_the_expired_flag(
    stack: tuple[str, Path, Prometheus],
) -> None:
    app_url, flags, prometheus = stack
    dashboard = _dashboard()

    def query(title: str, contains: str = "") -> list[Json]:
        (expr,) = [e for e in _exprs_of(dashboard, title) if contains in e]
        return prometheus.query(_as_grafana_would(expr))

    _poll("the first scrape", lambda: prometheus.query(f'up{{job="{JOB}"}} == 1'), timeout=10)
    counts = _drive_traffic(app_url, TRAFFIC_SECONDS)
    assert set(counts) == {"control", "treatment"}, counts
    assert min(counts.values()) > 0.3 * sum(counts.values()), counts
    # Two scrapes after the traffic: every request is in Prometheus.
    last_scrape = time.time()
    _poll(
        "a scrape after the traffic",
        lambda: prometheus.query(f'timestamp(up{{job="{JOB}"}}) > {last_scrape + 1}'),
        timeout=10,
    )

    # The dashboard's own p95 query: the treatment is slower than the control.
    p95 = _by_variant(prometheus.query(_as_grafana_would(_p95_query(dashboard))))
    assert set(p95) == {"control", "treatment"}, p95
    assert p95["treatment"] > p95["control"], p95
    assert p95["treatment"] >= 0.05, p95  # 60 ms of sleep
    # ... and its other panels answer with what the app did.
    share = _by_variant(query(SHARE))
    assert set(share) == {"control", "treatment"} and abs(sum(share.values()) - 1) < 1e-6, share
    assert all(0.3 < value < 0.7 for value in share.values()), share
    assert _by_variant(query(ERRORS)) == {"control": 0.0, "treatment": 0.0}
    reasons = {item["metric"]["reason"] for item in query(REASONS, "reason")}
    assert reasons == {"TARGETING_MATCH"}, reasons  # fractional is targeting
    expired = query(EXPIRED_TABLE)
    assert [(e["metric"]["flag"], e["metric"]["owner"]) for e in expired] == [(EXPIRED_FLAG, "web")]
    assert [e["metric"]["flag"] for e in query(EXPIRING_TABLE)] == [EXPIRING_FLAG]
    assert [float(e["value"][1]) for e in query(EXPIRED_COUNT)] == [1.0]
    assert [e["metric"]["version"] for e in query(VERSIONS)] == [
        FlagSet.from_path(flags).version_label
    ]
    assert [float(e["value"][1]) for e in query(SOURCE_UP)] == [1.0]
    (age,) = query(FRESHNESS)
    assert 0 <= float(age["value"][1]) < 300, age
    for _, expr in _expressions(dashboard):  # every query runs
        if not _LABEL_VALUES.match(expr):
            prometheus.query(_as_grafana_would(expr))

    # The shipped alert expressions fire for the slow variant and the expired flag only.
    regressions = _poll(
        "FlagwireVariantLatencyRegression to fire",
        lambda: _firing(prometheus, "FlagwireVariantLatencyRegression"),
        timeout=15,
    )
    assert [(a["labels"]["flag"], a["labels"]["variant"]) for a in regressions] == [
        (FLAG, "treatment")
    ], regressions
    description = regressions[0]["annotations"]["description"]
    assert "against" in description and "(unknown)" not in description, description
    assert "ms" in description and "error" not in description.lower(), description
    assert regressions[0]["labels"]["job"] == JOB
    expired_alerts = _poll(
        "FlagwireFlagExpired to fire", lambda: _firing(prometheus, "FlagwireFlagExpired"), 10
    )
    assert [(a["labels"]["flag"], a["labels"]["owner"]) for a in expired_alerts] == [
        (EXPIRED_FLAG, "web")
    ], expired_alerts
    assert "2020-01-31 23:59:59" in expired_alerts[0]["annotations"]["description"]
    assert not _firing(prometheus, "FlagwireVariantErrorRegression")
    assert not _firing(prometheus, "FlagwireSourceDown")
    assert not _firing(prometheus, "FlagwireFlagSetStale")

    # A broken flag file: the source fails (the last good set stays), the alert fires.
    flags.write_text("{ not json", encoding="utf-8")
    down = _poll(
        "FlagwireSourceDown to fire", lambda: _firing(prometheus, "FlagwireSourceDown"), 15
    )
    assert [a["labels"]["job"] for a in down] == [JOB], down
    assert not _firing(prometheus, "FlagwireFlagSetStale")  # loaded seconds ago: not stale

    # Every rule evaluated without error (no many-to-many matches, no bad templates).
    unhealthy = [(r["name"], r.get("lastError")) for r in prometheus.rules() if r["health"] != "ok"]
    assert not unhealthy, unhealthy

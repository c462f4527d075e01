"""Reading per-variant figures from a Prometheus server's HTTP API.

Everything comes from ``increase(...[since])`` of the metrics flagwire exports, summed over
every label but the variant (and ``le`` / ``event``), all evaluated at one instant so the
figures are consistent with each other:

* requests: ``flagwire_request_duration_seconds_count{flag=KEY}``, which is observed once
  per decided flag per request; errors: the same with ``status_class="5xx"``;
* latency: ``flagwire_request_duration_seconds_bucket{flag=KEY}`` by ``variant, le``, the
  quantiles computed locally by the PromQL algorithm (the chart's p95 over time asks
  Prometheus for ``histogram_quantile`` instead, over ``rate`` windows);
* tracked events: ``flagwire_events_total``, ``flagwire_event_value_total`` and
  ``flagwire_event_value_squared_total``, labels ``flag, variant, event``.

Only the standard library's ``urllib`` is used, so the report extra adds no HTTP client.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flagwire._errors import ConfigError, PrometheusError
from flagwire._telemetry import NO_VARIANT

from .figures import EventFigures, VariantFigures

__all__ = [
    "PrometheusClient",
    "PrometheusError",
    "Sample",
    "Series",
    "parse_duration",
    "read_figures",
    "read_latency_series",
]

_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS = {
    "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000,
}  # fmt: skip
_REQUESTS = "flagwire_request_duration_seconds"
_EVENT_METRICS = {
    "count": "flagwire_events_total",
    "value_sum": "flagwire_event_value_total",
    "value_sq_sum": "flagwire_event_value_squared_total",
}


@dataclass(frozen=True, slots=True)
class Sample:
    """One element of an instant vector."""

    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True, slots=True)
class Series:
    """One element of a range vector: ``(unix time, value)`` points."""

    labels: Mapping[str, str]
    points: Sequence[tuple[float, float]]


class PrometheusClient:
    """A minimal client of Prometheus's query API (``/api/v1/query``, ``query_range``).

    Args:
        base_url: The server, e.g. ``http://prometheus:9090`` (a path prefix is kept).
        timeout: Seconds to wait for the connection and for each read.
        max_bytes: Refuse responses larger than this (a runaway query should fail, not
            fill memory).

    Raises:
        ConfigError: ``base_url`` is not an http(s) URL.
    """

    def __init__(
        self, base_url: str, *, timeout: float = 10.0, max_bytes: int = 16 * 1024 * 1024
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            msg = f"Prometheus URL must be http(s)://host[:port][/prefix], not {base_url!r}"
            raise ConfigError(msg)
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_bytes = max_bytes

    def query(self, promql: str, *, at: float | None = None) -> list[Sample]:
        """Evaluate an instant query.

        Args:
            promql: The expression; it must return an instant vector.
            at: Unix time to evaluate at (the server's now if None).

        Returns:
            The vector's samples.

        Raises:
            PrometheusError: The request failed or the answer is not an instant vector.
        """
        params = {"query": promql} if at is None else {"query": promql, "time": f"{at:.3f}"}
        url, data = self._get("query", params)
        try:
            return [
                Sample(item["metric"], _number(item["value"][1], url))
                for item in _result(data, "vector", url)
            ]
        except (KeyError, IndexError, TypeError) as exc:
            raise PrometheusError(f"malformed vector sample ({exc!r})", url=url) from exc

    def query_range(self, promql: str, *, start: float, end: float, step: float) -> list[Series]:
        """Evaluate a range query.

        Args:
            promql: The expression.
            start: Unix time of the first point.
            end: Unix time of the last point.
            step: Seconds between points.

        Returns:
            One series per label set; points whose value is NaN (no data) are dropped.

        Raises:
            PrometheusError: The request failed or the answer is not a matrix.
        """
        params = {
            "query": promql,
            "start": f"{start:.3f}",
            "end": f"{end:.3f}",
            "step": f"{step:g}",
        }
        url, data = self._get("query_range", params)
        series = []
        try:
            for item in _result(data, "matrix", url):
                points = [(float(t), _number(v, url)) for t, v in item["values"]]
                kept = [(t, v) for t, v in points if not math.isnan(v)]
                series.append(Series(item["metric"], kept))
        except (KeyError, ValueError, TypeError) as exc:
            raise PrometheusError(f"malformed matrix series ({exc!r})", url=url) from exc
        return series

    def _get(self, endpoint: str, params: Mapping[str, str]) -> tuple[str, Any]:
        url = f"{self.base_url}/api/v1/{endpoint}?{urllib.parse.urlencode(params)}"
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read(self.max_bytes + 1)
        except urllib.error.HTTPError as exc:
            # Prometheus explains a bad query in a JSON body on the 4xx; show that.
            detail = _error_detail(exc.read(64 * 1024))
            raise PrometheusError(f"HTTP {exc.code} {exc.reason}{detail}", url=url) from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                msg = f"no answer within {self.timeout:g}s"
            else:
                msg = f"cannot connect: {exc.reason}"
            raise PrometheusError(msg, url=url) from exc
        except TimeoutError as exc:
            raise PrometheusError(f"no answer within {self.timeout:g}s", url=url) from exc
        except OSError as exc:
            raise PrometheusError(f"connection failed: {exc!r}", url=url) from exc
        if len(body) > self.max_bytes:
            msg = f"response larger than {self.max_bytes} bytes; narrow the query or max_bytes"

            raise PrometheusError(msg, url=url)
        try:
            data = json.loads(body)
        except ValueError as exc:
            msg = f"response is not JSON (starts {body[:80]!r}); is this the Prometheus API?"
            raise PrometheusError(msg, url=url) from exc
        if not isinstance(data, dict) or data.get("status") != "success":
            status = data.get("status") if isinstance(data, dict) else type(data).__name__
            detail = _error_detail(body)
            raise PrometheusError(f"query status is {status!r}, not 'success'{detail}", url=url)
        return url, data


def parse_duration(text: str) -> float:
    """Seconds in a PromQL duration such as ``24h``, ``90m`` or ``1h30m``.

    Raises:
        ConfigError: ``text`` is not a PromQL duration.
    """
    if not text or _DURATION.sub("", text) or not _DURATION.match(text):
        msg = f"not a Prometheus duration: {text!r} (use e.g. 24h, 7d, 90m, 1h30m)"
        raise ConfigError(msg)
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION.findall(text))


def read_figures(
    client: PrometheusClient,
    *,
    flag: str,
    since: str = "24h",
    events: Sequence[str] | None = None,
    at: float | None = None,
) -> list[VariantFigures]:
    """Each variant's figures for ``flag`` over the window ``since`` ending at ``at``.

    Args:
        client: The Prometheus to ask.
        flag: The flag key.
        since: The window, a PromQL duration.
        events: The events to read (missing ones count 0); every event seen if None;
            none (and no event query) if empty.
        at: Unix time the window ends (now if None). One instant for all queries.

    Returns:
        One entry per variant that served requests, sorted by name. Requests that decided
        no variant (disabled flag, default, error) are not part of any variant.

    Raises:
        PrometheusError: A query failed.
        ConfigError: ``since`` is not a duration.
    """
    parse_duration(since)
    at = time.time() if at is None else at
    selector = f'{{flag="{_escape(flag)}"}}'

    def by(metric: str, labels: str, extra: str = "") -> list[Sample]:
        inner = selector if not extra else f'{{flag="{_escape(flag)}",{extra}}}'
        return client.query(f"sum by ({labels}) (increase({metric}{inner}[{since}]))", at=at)

    requests = _by_variant(by(f"{_REQUESTS}_count", "variant"))
    requests.pop(NO_VARIANT, None)
    requests.pop("", None)
    errors = _by_variant(by(f"{_REQUESTS}_count", "variant", 'status_class="5xx"'))
    buckets: dict[str, list[tuple[float, float]]] = {}
    for s in by(f"{_REQUESTS}_bucket", "variant, le"):
        le = s.labels.get("le")
        if le is not None:
            buckets.setdefault(s.labels.get("variant", ""), []).append((float(le), s.value))
    totals: dict[tuple[str, str], dict[str, float]] = {}
    for field, metric in _EVENT_METRICS.items() if events is None or events else ():
        for s in by(metric, "variant, event"):
            key = (s.labels.get("variant", ""), s.labels.get("event", ""))
            totals.setdefault(key, {})[field] = s.value
    names = sorted({event for _, event in totals}) if events is None else list(events)
    return [
        VariantFigures(
            variant=variant,
            requests=count,
            errors_5xx=errors.get(variant, 0.0),
            latency_buckets=tuple(sorted(buckets.get(variant, []))),
            events={name: _event(totals.get((variant, name), {})) for name in names},
        )
        for variant, count in sorted(requests.items())
    ]


def read_latency_series(
    client: PrometheusClient,
    *,
    flag: str,
    since: str = "24h",
    quantile: float = 0.95,
    step: float | None = None,
    window: float | None = None,
    at: float | None = None,
) -> dict[str, list[tuple[float, float]]]:
    """A latency quantile per variant over time, for the chart.

    Args:
        client: The Prometheus to ask.
        flag: The flag key.
        since: How far back the series starts, a PromQL duration.
        quantile: The quantile, 0 to 1.
        step: Seconds between points (about 120 points over ``since`` if None).
        window: The ``rate`` window in seconds (twice the step, at least 5 minutes, if None;
            it must span at least two scrapes).
        at: Unix time of the last point (now if None).

    Returns:
        ``variant -> [(unix time, seconds), ...]``.

    Raises:
        PrometheusError: The query failed.
        ConfigError: ``since`` is not a duration.
    """
    span = parse_duration(since)
    at = time.time() if at is None else at
    step = max(span / 120, 1.0) if step is None else step
    window = max(2 * step, 300.0) if window is None else window
    selector = f'{{flag="{_escape(flag)}"}}'
    promql = (
        f"histogram_quantile({quantile:g}, sum by (variant, le) "
        f"(rate({_REQUESTS}_bucket{selector}[{math.ceil(window)}s])))"
    )
    series = client.query_range(promql, start=at - span, end=at, step=step)
    return {
        s.labels.get("variant", ""): list(s.points)
        for s in series
        if s.labels.get("variant") not in (None, "", NO_VARIANT) and s.points
    }


def _by_variant(samples: Sequence[Sample]) -> dict[str, float]:
    return {s.labels.get("variant", ""): s.value for s in samples}


def _event(totals: Mapping[str, float]) -> EventFigures:
    return EventFigures(
        count=totals.get("count", 0.0),
        value_sum=totals.get("value_sum", 0.0),
        value_sq_sum=totals.get("value_sq_sum", 0.0),
    )


def _escape(value: str) -> str:
    """Quote a label value for a PromQL string literal."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _result(data: Mapping[str, Any], kind: str, url: str) -> list[Any]:
    payload = data.get("data")
    if not isinstance(payload, dict) or payload.get("resultType") != kind:
        got = payload.get("resultType") if isinstance(payload, dict) else None
        raise PrometheusError(f"expected a {kind} result, got {got!r}", url=url)
    result = payload.get("result")
    if not isinstance(result, list):
        raise PrometheusError(f"'data.result' is {type(result).__name__}, not a list", url=url)
    return result


def _number(value: Any, url: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise PrometheusError(f"sample value {value!r} is not a number", url=url) from exc


def _error_detail(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    if isinstance(data, dict) and data.get("error"):
        return f": {data.get('errorType', 'error')}: {data['error']}"
    return ""

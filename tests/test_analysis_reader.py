"""The Prometheus reader against a local HTTP server (real sockets) that answers the query
API with canned JSON, the way Prometheus does, and with the ways it can go wrong."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from flagwire._analysis.figures import EventFigures
from flagwire._analysis.reader import (
    PrometheusClient,
    PrometheusError,
    parse_duration,
    read_figures,
    read_latency_series,
)
from flagwire._errors import ConfigError

Answer = Callable[[dict[str, str]], tuple[int, bytes]]


class _Server:
    """A loopback HTTP server; ``answer`` maps the request's query parameters to a reply."""

    def __init__(self) -> None:
        self.answer: Answer = lambda params: (200, _vector([]))
        self.seen: list[tuple[str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                params = dict(urllib.parse.parse_qsl(url.query))
                outer.seen.append((url.path, params))
                status, body = outer.answer(params)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.close()


Rows = list[tuple[dict[str, str], float]]


def _vector(samples: Rows) -> bytes:
    result = [{"metric": m, "value": [1700000000.0, str(v)]} for m, v in samples]
    body = {"status": "success", "data": {"resultType": "vector", "result": result}}
    return json.dumps(body).encode()


def _error(text: str) -> bytes:
    return json.dumps({"status": "error", "errorType": "bad_data", "error": text}).encode()


def _canned(params: dict[str, str]) -> tuple[int, bytes]:
    """What Prometheus would answer for the reader's queries on a two-variant flag."""
    q = params["query"]
    if "_count" in q and 'status_class="5xx"' in q:
        return 200, _vector([({"variant": "on"}, 7), ({"variant": "off"}, 3)])
    if "_count" in q:
        rows: Rows = [({"variant": "on"}, 1010), ({"variant": "off"}, 990)]
        return 200, _vector([*rows, ({"variant": "_none"}, 50)])
    if "_bucket" in q:
        rows = []
        for variant, scale in (("on", 1.01), ("off", 0.99)):
            for le, c in (("0.1", 500), ("0.5", 900), ("+Inf", 1000)):
                rows.append(({"variant": variant, "le": le}, c * scale))
        return 200, _vector(rows)
    if "flagwire_events_total" in q:
        return 200, _vector([
            ({"variant": "on", "event": "checkout"}, 120),
            ({"variant": "off", "event": "checkout"}, 99),
            ({"variant": "on", "event": "signup"}, 4),
        ])  # fmt: skip
    if "flagwire_event_value_total" in q:
        return 200, _vector([({"variant": "on", "event": "checkout"}, 6000.0)])
    if "flagwire_event_value_squared_total" in q:
        return 200, _vector([({"variant": "on", "event": "checkout"}, 400000.0)])
    return 400, _error("unexpected query")


def test_read_figures_assembles_each_variant_from_the_queries(server: _Server) -> None:
    server.answer = _canned

    figures = read_figures(PrometheusClient(server.url), flag="checkout-v2", since="24h", at=1.7e9)

    assert [f.variant for f in figures] == ["off", "on"]  # "_none" decided no variant
    off, on = figures
    assert (on.requests, on.errors_5xx) == (1010, 7)
    assert on.latency_buckets == ((0.1, 505.0), (0.5, 909.0), (float("inf"), 1010.0))
    assert on.events == {
        "checkout": EventFigures(120, 6000.0, 400000.0),
        "signup": EventFigures(4),
    }
    assert off.events["signup"] == EventFigures(0)
    queries = [params["query"] for _, params in server.seen]
    assert all("[24h]" in q and 'flag="checkout-v2"' in q for q in queries)
    assert {params["time"] for _, params in server.seen} == {"1700000000.000"}
    requests = "flagwire_request_duration_seconds_count"
    assert f'sum by (variant) (increase({requests}{{flag="checkout-v2"}}[24h]))' in queries


def test_read_figures_keeps_only_the_events_asked_for(server: _Server) -> None:
    server.answer = _canned

    figures = read_figures(PrometheusClient(server.url), flag="f", events=["checkout", "refund"])

    assert list(figures[0].events) == ["checkout", "refund"]
    assert figures[1].events["refund"] == EventFigures(0)


def test_flag_keys_are_escaped_in_promql(server: _Server) -> None:
    read_figures(PrometheusClient(server.url), flag='we"ird\\key', since="1h")

    assert all('flag="we\\"ird\\\\key"' in params["query"] for _, params in server.seen)


def test_read_latency_series_asks_prometheus_for_histogram_quantile(server: _Server) -> None:
    matrix = [
        {"metric": {"variant": "on"}, "values": [[100.0, "0.2"], [160.0, "NaN"], [220.0, "0.3"]]},
        {"metric": {"variant": "_none"}, "values": [[100.0, "0.1"]]},
    ]
    body = {"status": "success", "data": {"resultType": "matrix", "result": matrix}}
    server.answer = lambda params: (200, json.dumps(body).encode())

    series = read_latency_series(PrometheusClient(server.url), flag="f", since="2h", at=7200.0)

    assert series == {"on": [(100.0, 0.2), (220.0, 0.3)]}
    path, params = server.seen[0]
    assert path == "/api/v1/query_range"
    assert params["query"].startswith("histogram_quantile(0.95, sum by (variant, le) (rate(")
    assert (params["start"], params["end"], params["step"]) == ("0.000", "7200.000", "60")


def test_a_bad_query_reports_prometheus_own_error_and_the_url(server: _Server) -> None:
    server.answer = lambda params: (400, _error("parse error at char 3"))

    with pytest.raises(PrometheusError) as caught:
        PrometheusClient(server.url).query("sum(")

    assert "HTTP 400" in str(caught.value)
    assert "bad_data: parse error at char 3" in str(caught.value)
    assert caught.value.url.startswith(f"{server.url}/api/v1/query?query=sum")


_VECTOR = b'{"status":"success","data":{"resultType":"vector","result":[%s]}}'


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"<html>not the API</html>", "not JSON"),
        (b'{"status":"error","error":"overloaded"}', "status is 'error'"),
        (b'{"status":"success","data":{"resultType":"matrix","result":[]}}', "expected a vector"),
        (_VECTOR % b'{"metric":{}}', "malformed"),
        (_VECTOR % b'{"metric":{},"value":[1,"x"]}', "not a number"),
    ],
)
def test_unusable_answers_are_named(server: _Server, body: bytes, expected: str) -> None:
    server.answer = lambda params: (200, body)

    with pytest.raises(PrometheusError, match=expected):
        PrometheusClient(server.url).query("up")


def test_a_response_over_the_size_limit_is_refused(server: _Server) -> None:
    big: Rows = [({"variant": f"v{i}", "pad": "x" * 100}, i) for i in range(200)]
    server.answer = lambda params: (200, _vector(big))

    with pytest.raises(PrometheusError, match="larger than 4096 bytes"):
        PrometheusClient(server.url, max_bytes=4096).query("up")
    assert len(PrometheusClient(server.url).query("up")) == 200


def test_an_unreachable_server_is_named() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port once the probe is closed.

    with pytest.raises(PrometheusError, match="cannot connect") as caught:
        PrometheusClient(f"http://127.0.0.1:{port}", timeout=2).query("up")
    assert f"127.0.0.1:{port}" in str(caught.value)


def test_a_slow_server_times_out(server: _Server) -> None:
    def slow(params: dict[str, str]) -> tuple[int, bytes]:
        time.sleep(1.0)
        return 200, _vector([])

    server.answer = slow

    started = time.monotonic()
    with pytest.raises(PrometheusError, match=r"no answer within 0\.2s"):
        PrometheusClient(server.url, timeout=0.2).query("up")
    assert time.monotonic() - started < 0.9


@pytest.mark.parametrize("url", ["prometheus:9090", "ftp://host/", "http://"])
def test_a_url_that_is_not_http_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="http"):
        PrometheusClient(url)


def test_a_path_prefix_is_kept(server: _Server) -> None:
    PrometheusClient(server.url + "/prom/").query("up")

    assert server.seen[0][0] == "/prom/api/v1/query"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("24h", 86400), ("90m", 5400), ("1h30m", 5400), ("500ms", 0.5), ("7d", 604800)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "24", "h", "1.5h", "24h ", "-1h", "1x"])
def test_parse_duration_rejects_what_promql_would(text: str) -> None:
    with pytest.raises(ConfigError, match="duration"):
        parse_duration(text)

"""The reader against a real Prometheus scraping a tiny exporter with the metrics flagwire
exports (names and labels as the telemetry and tracking counters have them).

The counters exist at 0 for one scrape before the traffic, and the figures are read at the
timestamp of a scrape taken after it, so ``increase()`` has nothing to extrapolate and the
figures equal the traffic exactly. Skipped when the ``prometheus`` binary is not installed
(Debian: ``apt-get install prometheus``).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from flagwire._analysis.figures import VariantFigures
from flagwire._analysis.reader import PrometheusClient, read_figures, read_latency_series
from flagwire._analysis.report import build_report

pytestmark = pytest.mark.e2e

FLAG = "checkout-v2"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
TRAFFIC = {"on": 600, "off": 400}
ERRORS = {"on": 9, "off": 2}


@dataclass
class _Exporter:
    registry: CollectorRegistry
    duration: Histogram
    events: Counter
    values: Counter
    squares: Counter
    port: int


@pytest.fixture(scope="module")
def exporter() -> Iterator[_Exporter]:
    registry = CollectorRegistry()
    labels = ["flag", "variant", "method", "route", "status_class"]
    duration = Histogram(
        "flagwire_request_duration_seconds", "d", labels, registry=registry, buckets=BUCKETS
    )
    tracked = ["flag", "variant", "event"]
    events = Counter("flagwire_events", "e", tracked, registry=registry)
    values = Counter("flagwire_event_value", "v", tracked, registry=registry)
    squares = Counter("flagwire_event_value_squared", "s", tracked, registry=registry)
    for variant in TRAFFIC:
        # Every series exists at 0 before the traffic: increase() then starts from a sample.
        for status in ("2xx", "5xx"):
            duration.labels(FLAG, variant, "GET", "/checkout", status)
        for counter in (events, values, squares):
            counter.labels(FLAG, variant, "checkout")
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    yield _Exporter(registry, duration, events, values, squares, server.server_port)
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def prometheus(
    tmp_path_factory: pytest.TempPathFactory, exporter: _Exporter
) -> Iterator[PrometheusClient]:
    with running_prometheus(
        tmp_path_factory.mktemp("prometheus"), f"127.0.0.1:{exporter.port}"
    ) as client:
        yield client


@contextlib.contextmanager
def running_prometheus(tmp_path: Path, target: str) -> Iterator[PrometheusClient]:
    """A real Prometheus scraping ``target`` every second (skips the test without one)."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary (apt-get install prometheus)")
    config = tmp_path / "prometheus.yml"
    scrape = {"job_name": "app", "static_configs": [{"targets": [target]}]}
    settings = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"}}
    # JSON is YAML: no YAML writer needed for Prometheus's config.
    config.write_text(json.dumps({**settings, "scrape_configs": [scrape]}), encoding="utf-8")
    for _ in range(3):
        port = _free_port()
        log = (tmp_path / f"prometheus-{port}.log").open("wb")
        process = subprocess.Popen(
            [
                binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / str(port)}",
                f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
            ],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            if _ready(url, process):
                yield PrometheusClient(url, timeout=5)
                return
        finally:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
    pytest.fail(f"prometheus did not start: {(tmp_path / f'prometheus-{port}.log').read_text()}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _ready(url: str, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/-/ready", timeout=1):
            return True
        time.sleep(0.1)
    return False


def _poll(what: str, check: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)
    return result


@dataclass
class _Scenario:
    client: PrometheusClient
    at: float
    checkout_values: dict[str, list[float]]
    figures: dict[str, VariantFigures]


@pytest.fixture(scope="module")
def scenario(exporter: _Exporter, prometheus: PrometheusClient) -> _Scenario:
    """Traffic driven once, between a scrape of the zeros and a scrape of the totals."""
    _poll("the first scrape", lambda: _last_scrape(prometheus))
    checkout_values = _drive(exporter)
    driven = time.time()
    at = _poll("a scrape after the traffic", lambda: (t := _last_scrape(prometheus)) > driven and t)
    figures = {f.variant: f for f in read_figures(prometheus, flag=FLAG, since="5m", at=at)}
    return _Scenario(prometheus, at, checkout_values, figures)


def _last_scrape(client: PrometheusClient) -> float:
    counts = f'flagwire_request_duration_seconds_count{{flag="{FLAG}"}}'
    samples = client.query(f"max(timestamp({counts}))")
    return samples[0].value if samples else 0.0


def _drive(exporter: _Exporter) -> dict[str, list[float]]:
    """The synthetic traffic: latencies per variant, errors, checkouts with values."""
    rng = random.Random(16)
    checkout_values: dict[str, list[float]] = {}
    for variant, requests in TRAFFIC.items():
        slow = 1.5 if variant == "on" else 1.0
        for i in range(requests):
            status = "5xx" if i < ERRORS[variant] else "2xx"
            child = exporter.duration.labels(FLAG, variant, "GET", "/checkout", status)
            child.observe(rng.lognormvariate(math.log(0.04 * slow), 0.6))
        values = [round(rng.uniform(5, 120), 2) for _ in range(requests // 8)]
        checkout_values[variant] = values
        for value in values:
            exporter.events.labels(FLAG, variant, "checkout").inc()
            exporter.values.labels(FLAG, variant, "checkout").inc(value)
            exporter.squares.labels(FLAG, variant, "checkout").inc(value * value)
    return checkout_values


def test_figures_from_a_real_prometheus_are_the_traffic_exactly(scenario: _Scenario) -> None:
    figures = scenario.figures

    assert set(figures) == set(TRAFFIC)
    for variant, requests in TRAFFIC.items():
        f = figures[variant]
        assert f.requests == requests
        assert f.errors_5xx == ERRORS[variant]
        values = scenario.checkout_values[variant]
        checkout = f.events["checkout"]
        assert checkout.count == len(values)
        assert checkout.value_sum == pytest.approx(sum(values), rel=1e-12)
        assert checkout.value_sq_sum == pytest.approx(sum(v * v for v in values), rel=1e-12)
        assert [le for le, _ in f.latency_buckets] == [*BUCKETS, math.inf]
        assert f.latency_buckets[-1][1] == requests


def test_local_quantiles_agree_with_prometheus_histogram_quantile(scenario: _Scenario) -> None:
    for q in (0.5, 0.95, 0.99):
        promql = (
            f"histogram_quantile({q}, sum by (variant, le) "
            f'(increase(flagwire_request_duration_seconds_bucket{{flag="{FLAG}"}}[5m])))'
        )
        samples = scenario.client.query(promql, at=scenario.at)
        theirs = {s.labels["variant"]: s.value for s in samples}
        for variant, f in scenario.figures.items():
            assert f.latency_quantile(q) == pytest.approx(theirs[variant], rel=1e-12), (q, variant)
    on, off = scenario.figures["on"], scenario.figures["off"]
    assert (on.latency_quantile(0.95) or 0) > (off.latency_quantile(0.95) or 0)


def test_latency_series_come_back_per_variant(scenario: _Scenario) -> None:
    series = read_latency_series(
        scenario.client, flag=FLAG, since="1m", step=1, window=5, at=scenario.at
    )

    assert set(series) == set(TRAFFIC)
    assert all(0 < v <= 10 for points in series.values() for _, v in points)


def test_a_skewed_assignment_trips_the_srm_check(scenario: _Scenario) -> None:
    figures = list(scenario.figures.values())

    as_configured = build_report(
        figures, flag=FLAG, control="off", weights={"on": 60, "off": 40}, since="5m"
    )
    skewed = build_report(
        figures, flag=FLAG, control="off", weights={"on": 50, "off": 50}, since="5m"
    )

    assert as_configured.srm is not None
    assert not as_configured.srm.mismatch
    assert skewed.srm is not None
    assert skewed.srm.mismatch
    assert skewed.warnings[0].startswith("SAMPLE RATIO MISMATCH")

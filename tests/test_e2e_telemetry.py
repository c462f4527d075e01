"""End to end: flagwire's Prometheus metrics from gunicorn workers, aggregated.

``tests/e2e_apps/metrics_flask.py`` runs under gunicorn with 2 workers and
``PROMETHEUS_MULTIPROC_DIR`` set (before anything imports prometheus_client), on a copy of
``examples/flags.yaml``. Many users' requests are spread over both workers; whichever
worker serves ``/metrics``, the counts per flag and variant must add up to exactly what the
responses said was decided.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flagwire import FlagSet
from flagwire._prometheus_batch import FLUSH_SECONDS
from test_e2e import (
    EXAMPLE_FLAGS,
    HOST,
    REPO,
    TEST_APPS,
    Server,
    _command,
    _free_port,
    _stop,
    _wait_until_up,
)

pytestmark = pytest.mark.e2e

REQUESTS = 200
FLAGS = ("new-checkout", "search-ranking", "eu-banner")
NO_VARIANT = "_none"
PLANS = ("beta", "free", "pro")
COUNTRIES = ("DE", "US", "FR", "BR", "NL", "JP")

Key = tuple[str, ...]
NEW_CONNECTION_EACH_TIME = httpx.Limits(max_keepalive_connections=0)


@pytest.fixture
def metrics_server(tmp_path: Path) -> Iterator[Server]:
    """gunicorn, 2 workers x 8 threads, in prometheus_client's multiprocess mode."""
    flags = Path(shutil.copy(EXAMPLE_FLAGS, tmp_path / "flags.yaml"))
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()  # empty at start, as prometheus_client requires
    env = {
        **os.environ,
        "FLAGWIRE_FLAGS": str(flags),
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p
        ),
    }
    server: Server | None = None
    for _attempt in range(3):
        port = _free_port()
        log = tmp_path / f"metrics_flask-{port}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                _command("flask", TEST_APPS, "metrics_flask", port, 2, ()),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=tmp_path,
                start_new_session=True,
            )
        server = Server("flask", f"http://{HOST}:{port}", flags, process, log)
        if _wait_until_up(server):
            break
        _stop(process)
        if "in use" not in server.output():
            pytest.fail(f"gunicorn did not come up:\n{server.output()[-3000:]}")
    else:
        pytest.fail("gunicorn did not come up on a free port in 3 attempts")
    assert server is not None
    try:
        yield server
    finally:
        _stop(server.process)


def _user(i: int) -> dict[str, str]:
    return {
        "x-user-id": f"metrics-user-{i:04d}",
        "x-plan": PLANS[i % len(PLANS)],
        "x-country": COUNTRIES[i % len(COUNTRIES)],
        "x-app-version": f"3.{i % 7}.0",
    }


def _send_checkouts(server: Server) -> list[dict[str, Any]]:
    """``REQUESTS`` requests for different users, 16 at a time, a new connection each (so
    both workers get some)."""
    local = threading.local()
    clients: list[httpx.Client] = []
    lock = threading.Lock()

    def client() -> httpx.Client:
        found: httpx.Client | None = getattr(local, "client", None)
        if found is None:
            found = local.client = server.client(limits=NEW_CONNECTION_EACH_TIME)
            with lock:
                clients.append(found)
        return found

    def one(i: int) -> dict[str, Any]:
        response = client().get("/checkout", headers=_user(i))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        assert body["user"] == f"metrics-user-{i:04d}"
        assert response.headers["x-worker-pid"] == body["pid"]
        return body

    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            return list(pool.map(one, range(REQUESTS)))
    finally:
        for each in clients:
            each.close()


def _scrape(client: httpx.Client) -> tuple[str, dict[str, dict[Key, float]]]:
    """One ``/metrics`` (a new connection): the serving worker's pid and the samples."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    wanted = {
        "flagwire_request_duration_seconds_count": ("flag", "variant"),
        "flagwire_request_duration_seconds_full": (
            "flag",
            "variant",
            "method",
            "route",
            "status_class",
        ),
        "flagwire_evaluations_total": ("flag", "variant", "reason"),
        "flagwire_evaluation_errors_total": ("flag", "error_code"),
        "flagwire_source_up": (),
        "flagwire_flagset_info": ("version",),
    }
    found: dict[str, dict[Key, float]] = {name: {} for name in wanted}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            names = [sample.name]
            if sample.name == "flagwire_request_duration_seconds_count":
                names.append("flagwire_request_duration_seconds_full")
            for name in names:
                if name not in wanted:
                    continue
                key = tuple(sample.labels[label] for label in wanted[name])
                found[name][key] = found[name].get(key, 0.0) + sample.value
    return response.headers["x-worker-pid"], found


def test_metrics_aggregate_every_workers_requests(metrics_server: Server) -> None:
    flagset = FlagSet.from_path(metrics_server.flags)
    replies = _send_checkouts(metrics_server)
    assert len(replies) == REQUESTS
    served = Counter(reply["pid"] for reply in replies)
    assert len(served) == 2, f"both workers should have served /checkout: {served}"

    durations: Counter[Key] = Counter()
    evaluations: Counter[Key] = Counter()
    for reply in replies:
        assert reply["version"] == flagset.version_label
        assert list(reply["decided"]) == list(FLAGS)
        for key, variant in reply["decided"].items():
            durations[key, variant or NO_VARIANT] += 1
            evaluations[key, variant or NO_VARIANT, reply["reasons"][key]] += 1
    # Enough users that every flag has more than one variant among them.
    for key in FLAGS:
        assert len({v for (k, v) in durations if k == key}) >= 2, durations

    # Each worker writes its observations to its files every FLUSH_SECONDS.
    time.sleep(FLUSH_SECONDS * 2.5)
    # Scrape until both workers have served /metrics (a scrape changes no count).
    scrapes: dict[str, dict[str, dict[Key, float]]] = {}
    deadline = time.monotonic() + 20
    attempts = 0
    with metrics_server.client(limits=NEW_CONNECTION_EACH_TIME) as client:
        while (len(scrapes) < 2 or attempts < 6) and time.monotonic() < deadline:
            pid, samples = _scrape(client)
            attempts += 1
            scrapes.setdefault(pid, samples)
            assert samples["flagwire_request_duration_seconds_count"] == durations, pid
            assert samples["flagwire_evaluations_total"] == evaluations, pid
    assert set(scrapes) == set(served), f"scrapes hit {set(scrapes)}, workers {set(served)}"
    # Each worker wrote its own files (counter_<pid>.db, histogram_<pid>.db).
    files = {f.name for f in (metrics_server.flags.parent / "prometheus").glob("*.db")}
    assert {f"counter_{pid}.db" for pid in served} <= files, files
    assert {f"histogram_{pid}.db" for pid in served} <= files, files

    for pid, samples in scrapes.items():
        full = samples["flagwire_request_duration_seconds_full"]
        assert {k[2:] for k in full} == {("GET", "/checkout", "2xx")}, pid
        assert sum(full.values()) == REQUESTS * len(FLAGS)
        assert samples["flagwire_evaluation_errors_total"] == {}
        # The flag source, as the worker that served the scrape sees it.
        assert samples["flagwire_source_up"] == {(): 1.0}
        assert samples["flagwire_flagset_info"] == {(flagset.version_label,): 1.0}


def test_tracked_events_aggregate_every_workers_requests(metrics_server: Server) -> None:
    """``track()`` in both workers: every worker's scrape has every event, per variant."""
    local = threading.local()
    clients: list[httpx.Client] = []
    lock = threading.Lock()

    def buy(i: int) -> tuple[dict[str, Any], float]:
        client: httpx.Client | None = getattr(local, "client", None)
        if client is None:
            client = local.client = metrics_server.client(limits=NEW_CONNECTION_EACH_TIME)
            with lock:
                clients.append(client)
        amount = round(5 + (i * 7.3) % 100, 2)
        response = client.get("/buy", headers={**_user(i), "x-amount": str(amount)})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body, amount

    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            bought = list(pool.map(buy, range(REQUESTS)))
    finally:
        for each in clients:
            each.close()
    assert len({body["pid"] for body, _ in bought}) == 2

    expected: dict[str, Counter[Key]] = {"count": Counter(), "sum": Counter(), "sq": Counter()}
    for body, amount in bought:
        for key, variant in body["decided"].items():
            variant = variant or NO_VARIANT
            for event in ("checkout", "viewed"):
                expected["count"][key, variant, event] += 1
            expected["sum"][key, variant, "checkout"] += amount
            expected["sq"][key, variant, "checkout"] += amount * amount

    seen: set[str] = set()
    deadline = time.monotonic() + 20
    with metrics_server.client(limits=NEW_CONNECTION_EACH_TIME) as client:
        while len(seen) < 2 and time.monotonic() < deadline:
            response = client.get("/metrics")
            seen.add(response.headers["x-worker-pid"])
            found: dict[str, dict[Key, float]] = {"count": {}, "sum": {}, "sq": {}}
            names = {
                "flagwire_events_total": "count",
                "flagwire_event_value_total": "sum",
                "flagwire_event_value_squared_total": "sq",
            }
            for family in text_string_to_metric_families(response.text):
                for sample in family.samples:
                    if sample.name in names:
                        key = (
                            sample.labels["flag"],
                            sample.labels["variant"],
                            sample.labels["event"],
                        )
                        found[names[sample.name]][key] = sample.value
            assert found["count"] == expected["count"]
            for field in ("sum", "sq"):
                got = {k: v for k, v in found[field].items() if v}
                assert got.keys() == expected[field].keys()
                for k, v in expected[field].items():
                    assert got[k] == pytest.approx(v, rel=1e-9), (field, k)
    assert len(seen) == 2, f"scrapes hit only {seen}"

"""End to end: the examples polling a flag file over HTTP (``$FLAGWIRE_FLAGS_URL``).

A real HTTP server in this process serves a copy of ``examples/flags.yaml`` (with ETags,
stoppable and restartable on the same port); the FastAPI example runs under uvicorn and
the Flask example under gunicorn, each with its own on-disk cache. The tests run in order
and share the servers: a kill switch reaches both services in time; the source going down
mid-traffic, and a service restarting while it is down, fail no request and change no
flag; the source coming back with a new version is picked up.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from flagwire import FlagSet
from test_e2e import EXAMPLE_FLAGS, Server, _expected, _Launcher, _stop

pytestmark = pytest.mark.e2e

HOST = "127.0.0.1"
INTERVAL = 0.5
JITTER = 0.2  # HttpSource's default
TIMEOUT = 2.0  # HttpSource's default
KILL_SWITCH_BOUND = INTERVAL * (1 + JITTER) + TIMEOUT
FRAMEWORKS = ("fastapi", "flask")
ALICE = {"x-user-id": "alice", "x-plan": "beta", "x-country": "DE", "x-app-version": "3.4.0"}


# -- the flag-file server ---------------------------------------------------------------------


class FlagServer:
    """Serves one YAML flag document at ``/flags.yaml`` with an ETag (304 on a match)."""

    def __init__(self, text: str) -> None:
        self.lock = threading.Lock()
        self.text = ""
        self.etag = ""
        self.last_modified = ""
        self.requests = 0
        self.not_modified = 0
        self.port = 0
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.publish(text)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/flags.yaml"

    @property
    def flagset(self) -> FlagSet:
        """The served document's flag set, as the services compute it."""
        with self.lock:
            text = self.text
        return FlagSet.from_text(text, format="yaml", source=self.url)

    def publish(self, text: str) -> None:
        """Serve ``text`` from now on, with a new ETag."""
        FlagSet.from_text(text, format="yaml")  # only valid documents in these tests
        with self.lock:
            self.text = text
            self.etag = '"' + hashlib.sha256(text.encode()).hexdigest()[:16] + '"'
            self.last_modified = formatdate(usegmt=True)

    def start(self) -> None:
        """Listen (on the same port as before, after the first start)."""
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/flags.yaml":
                    self.send_error(404)
                    return
                with server.lock:
                    server.requests += 1
                    body, etag = server.text.encode(), server.etag
                    last_modified = server.last_modified
                    not_modified = self.headers.get("If-None-Match") == etag
                    if not_modified:
                        server.not_modified += 1
                if not_modified:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/yaml; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", etag)
                self.send_header("Last-Modified", last_modified)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        assert self.httpd is None, "already running"
        httpd = ThreadingHTTPServer((HOST, self.port), Handler)  # allow_reuse_address
        httpd.daemon_threads = True
        self.port = httpd.server_address[1]
        self.httpd = httpd
        self.thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        """Stop listening: connections are refused until ``start``."""
        if self.httpd is None:
            return
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.thread is not None:
            self.thread.join(timeout=5)
        self.httpd = None
        self.thread = None


def _edited(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def _with_version(text: str, version: str) -> str:
    start = text.index('  version: "') + len('  version: "')
    end = text.index('"', start)
    return text[:start] + version + text[end:]


# -- the services -------------------------------------------------------------------------------


@dataclass
class Service:
    """One example service; ``server`` is None while it is being restarted."""

    framework: str
    cache: Path
    server: Server | None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        server = self.server
        assert server is not None, f"{self.framework} is down"
        return server.url

    def checkout(self, headers: dict[str, str] = ALICE) -> httpx.Response:
        return httpx.get(f"{self.url}/checkout", headers=headers, trust_env=False, timeout=5.0)

    def healthz(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/healthz", trust_env=False, timeout=5.0)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@dataclass
class Cluster:
    source: FlagServer
    services: dict[str, Service]
    restart: Callable[[Service], None]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("e2e-http-source")
    flags = Path(shutil.copy(EXAMPLE_FLAGS, directory / "flags.yaml"))
    source = FlagServer(flags.read_text(encoding="utf-8"))
    source.start()
    launcher = _Launcher(directory)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("FLAGWIRE_FLAGS_URL", source.url)
        monkeypatch.setenv("FLAGWIRE_FLAGS_INTERVAL", str(INTERVAL))

        def launch(framework: str, cache: Path) -> Server:
            # Servers take their environment from os.environ at launch.
            monkeypatch.setenv("FLAGWIRE_FLAGS_CACHE", str(cache))
            return launcher.start(framework, flags)

        def restart(service: Service) -> None:
            with service.lock:  # no request to it is in flight from now on
                old, service.server = service.server, None
            assert old is not None
            _stop(old.process)
            new = launch(service.framework, service.cache)  # waits for /healthz
            with service.lock:
                service.server = new

        try:
            services = {}
            for framework in FRAMEWORKS:
                cache = directory / f"{framework}-flags-cache.yaml"
                services[framework] = Service(framework, cache, launch(framework, cache))
            yield Cluster(source, services, restart)
        finally:
            launcher.close()
            source.stop()


def _wait_for_version(cluster: Cluster, label: str, timeout: float) -> dict[str, float]:
    """Seconds until each service's /checkout answers with flag-set version ``label``."""
    started = time.monotonic()
    deadline = started + timeout
    seen: dict[str, float] = {}
    last: dict[str, Any] = {}
    while len(seen) < len(cluster.services) and time.monotonic() < deadline:
        for name, service in cluster.services.items():
            if name in seen:
                continue
            response = service.checkout()
            assert response.status_code == 200, response.text
            last[name] = response.json()["version"]
            if last[name] == label:
                seen[name] = time.monotonic() - started
        time.sleep(0.02)
    missing = sorted(set(cluster.services) - set(seen))
    assert not missing, f"{missing} still serve {last} after {timeout} s, not {label}"
    return seen


# -- (a) a kill switch reaches every service within the documented bound ---------------------


def test_kill_switch_reaches_both_services_within_the_bound(cluster: Cluster) -> None:
    before = cluster.source.flagset
    for service in cluster.services.values():
        response = service.checkout()
        assert response.status_code == 200, response.text
        assert response.json() == _expected(before, ALICE, service.framework)
        assert response.json()["eu_banner"] is True
        assert service.healthz() == {
            "ok": True,
            "flags_version": before.version_label,
            "error": None,
        }
    # Unchanged polls are answered 304 Not Modified (the services send the ETag back).
    time.sleep(INTERVAL * (1 + JITTER) * 2)
    assert cluster.source.not_modified > 0

    text = cluster.source.text
    killed = _edited(
        text,
        "  eu-banner:\n    state: ENABLED\n",
        "  eu-banner:\n    state: DISABLED\n",
    )
    cluster.source.publish(_with_version(killed, "2026.11.26-2"))
    after = cluster.source.flagset
    alice = {"targetingKey": "alice", "country": "DE"}
    assert after.evaluate("eu-banner", alice, False).value is False

    took = _wait_for_version(cluster, after.version_label, timeout=KILL_SWITCH_BOUND + 3)
    for service in cluster.services.values():
        response = service.checkout()
        assert response.json()["eu_banner"] is False
        assert response.json() == _expected(after, ALICE, service.framework)
    late = {name: round(t, 2) for name, t in took.items() if t > KILL_SWITCH_BOUND}
    assert not late, f"the kill switch took longer than {KILL_SWITCH_BOUND} s: {late}"


# -- (b) the source down mid-traffic, and a service restarting meanwhile ---------------------


@dataclass
class Traffic:
    """Steady requests to each service while it is up, in one thread per service."""

    services: list[Service]
    limit: float = 20.0
    stop: threading.Event = field(default_factory=threading.Event)
    results: list[tuple[str, int | str, str | None]] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for service in self.services:
            thread = threading.Thread(target=self._run, args=(service,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _run(self, service: Service) -> None:
        deadline = time.monotonic() + self.limit
        while not self.stop.is_set() and time.monotonic() < deadline:
            with service.lock:
                if service.server is not None:
                    try:
                        response = service.checkout()
                    except httpx.HTTPError as exc:
                        self.results.append((service.framework, repr(exc), None))
                    else:
                        version = (
                            response.json().get("version") if response.status_code == 200 else None
                        )
                        self.results.append((service.framework, response.status_code, version))
            time.sleep(0.01)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)


def test_source_down_and_a_restart_while_down_fail_no_request(cluster: Cluster) -> None:
    good = cluster.source.flagset
    _wait_for_version(cluster, good.version_label, timeout=KILL_SWITCH_BOUND + 3)
    restarted = cluster.services["flask"]
    other = cluster.services["fastapi"]
    assert restarted.cache.exists()
    assert FlagSet.from_path(restarted.cache).version_label == good.version_label

    traffic = Traffic(list(cluster.services.values()))
    traffic.start()
    try:
        time.sleep(1.0)
        cluster.source.stop()
        time.sleep(1.0)
        cluster.restart(restarted)
        time.sleep(1.0)
    finally:
        traffic.finish()

    per_service = {name: sum(1 for r in traffic.results if r[0] == name) for name in FRAMEWORKS}
    assert all(n > 20 for n in per_service.values()), per_service
    failed = [r for r in traffic.results if r[1] != 200]
    assert not failed, f"{len(failed)} of {len(traffic.results)} requests failed: {failed[:5]}"
    versions = {r[2] for r in traffic.results}
    assert versions == {good.version_label}, versions

    # The restarted service started from its cache: flags served, source reported down.
    health = restarted.healthz()
    assert health["ok"] is False, health
    assert health["flags_version"] == good.version_label
    assert health["error"], health
    response = restarted.checkout()
    assert response.status_code == 200, response.text
    assert response.json() == _expected(good, ALICE, restarted.framework)
    # The service that kept running has noticed too, and kept its flags.
    health = other.healthz()
    assert health["ok"] is False, health
    assert health["flags_version"] == good.version_label


# -- (c) the source comes back with a new version ---------------------------------------------


def test_source_back_with_a_new_version_is_picked_up(cluster: Cluster) -> None:
    cluster.source.stop()  # down already after (b); idempotent
    text = _edited(cluster.source.text, "control: classic\n", "control: classic-v3\n")
    cluster.source.publish(_with_version(text, "2026.11.26-3"))
    new = cluster.source.flagset
    cluster.source.start()
    # The services have backed off (interval doubled per failure), so allow a few periods.
    _wait_for_version(cluster, new.version_label, timeout=15.0)
    for service in cluster.services.values():
        response = service.checkout()
        assert response.status_code == 200, response.text
        assert response.json() == _expected(new, ALICE, service.framework)
        assert service.healthz() == {"ok": True, "flags_version": new.version_label, "error": None}
        assert FlagSet.from_path(service.cache).version_label == new.version_label

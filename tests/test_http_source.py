"""HttpSource against a real local HTTP server: ETags, updates, failures, cache, kill switch."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from flagwire import ConfigError, FlagSet, Reason, SourceError
from flagwire._sources.http import HttpSource

Document = dict[str, Any]


def _document(version: str, *, kill_state: str = "ENABLED", color: str = "red") -> Document:
    return {
        "metadata": {"version": version},
        "flags": {
            "payments": {
                "state": kill_state,
                "variants": {"on": True, "off": False},
                "defaultVariant": "on",
            },
            "color": {
                "state": "ENABLED",
                "variants": {"red": "red", "blue": "blue"},
                "defaultVariant": color,
            },
        },
    }


class FlagServer:
    """A flag-file server on 127.0.0.1 whose behaviour the tests switch at will.

    ``mode``: ``"ok"`` (the document, with an ETag; 304 to a matching If-None-Match),
    ``"garbage"`` (200 with an invalid body), ``"invalid"`` (200 with valid JSON that is
    not a flag set), ``"error"`` (500) or ``"hang"`` (no answer until ``release`` is set
    or ``hang_seconds`` pass).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.mode = "ok"
        self.body = b""
        self.content_type = "application/json"
        self.etag = ""
        self.last_modified = formatdate(usegmt=True)
        self.requests = 0
        self.not_modified = 0
        self.if_none_match: list[str | None] = []
        self.hang_seconds = 5.0
        self.release = threading.Event()
        self.port = 0
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.publish(_document("1"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/flags.json"

    def publish(self, document: Document | str, content_type: str = "application/json") -> None:
        body = (document if isinstance(document, str) else json.dumps(document)).encode()
        with self.lock:
            self.body = body
            self.content_type = content_type
            self.etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            self.last_modified = formatdate(usegmt=True)

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server.lock:
                    server.requests += 1
                    server.if_none_match.append(self.headers.get("If-None-Match"))
                    mode, body, etag = server.mode, server.body, server.etag
                    content_type, last_modified = server.content_type, server.last_modified
                if mode == "hang":
                    server.release.wait(server.hang_seconds)
                    mode = "error"
                if mode == "error":
                    self._send(500, b"boom", "text/plain")
                elif mode == "garbage":
                    self._send(200, b'{"flags": {', "application/json", etag='"garbage"')
                elif mode == "invalid":
                    self._send(200, b'{"flags": 42}', "application/json", etag='"invalid"')
                elif self.headers.get("If-None-Match") == etag:
                    with server.lock:
                        server.not_modified += 1
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                else:
                    self._send(200, body, content_type, etag=etag, last_modified=last_modified)

            def _send(
                self,
                code: int,
                body: bytes,
                content_type: str,
                *,
                etag: str | None = None,
                last_modified: str | None = None,
            ) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                if etag is not None:
                    self.send_header("ETag", etag)
                if last_modified is not None:
                    self.send_header("Last-Modified", last_modified)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that timed out and left: not a test failure

        self.httpd = Server(("127.0.0.1", self.port), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Shut down (the port is then refused, until :meth:`start` binds it again)."""
        self.release.set()
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None
        if self.thread is not None:
            self.thread.join(timeout=5)
            self.thread = None
        self.release = threading.Event()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FlagServer]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    flag_server = FlagServer()
    flag_server.start()
    yield flag_server
    flag_server.stop()


MakeSource = Callable[..., HttpSource]


@pytest.fixture
def make_source() -> Iterator[MakeSource]:
    """HttpSource(...) that is closed at the end of the test."""
    sources: list[HttpSource] = []

    def make(url: str, **kwargs: Any) -> HttpSource:
        kwargs.setdefault("timeout", 1.0)
        source = HttpSource(url, **kwargs)
        sources.append(source)
        return source

    yield make
    for source in sources:
        source.close()


def _wait_for(condition: Callable[[], bool], timeout: float) -> float:
    """Poll ``condition`` until true; returns the seconds it took (fails after timeout)."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.01)
    return time.monotonic() - start


def _color(source: HttpSource) -> str:
    return str(source.flagset.string("color", "none"))


# -- loading ------------------------------------------------------------------------------


def test_initial_load(server: FlagServer, make_source: MakeSource) -> None:
    source = make_source(server.url, interval=0)

    assert source.flagset.version == "1"
    assert _color(source) == "red"
    assert source.status.ok
    assert source.status.loads == 1
    assert source.status.last_good_load is not None
    assert source.etag == server.etag
    assert source.flagset.source == server.url
    assert source.age is not None and source.age < 5
    assert not source.is_stale(60)


def test_yaml_by_content_type(server: FlagServer, make_source: MakeSource) -> None:
    server.publish(
        "flags:\n  color:\n    state: ENABLED\n    variants: {red: red, blue: blue}\n"
        "    defaultVariant: blue\n",
        content_type="application/yaml; charset=utf-8",
    )
    source = make_source(server.url, interval=0)

    assert source.status.ok, source.status.last_error
    assert _color(source) == "blue"


def test_credentials_and_query_are_not_shown(server: FlagServer, make_source: MakeSource) -> None:
    url = f"http://user:secret@127.0.0.1:{server.port}/flags.json?token=hunter2"
    source = make_source(url, interval=0, headers={"Authorization": "Bearer xyz"})

    assert source.status.ok
    assert "secret" not in repr(source) and "hunter2" not in repr(source)
    assert source.flagset.source == server.url


# -- conditional requests -----------------------------------------------------------------


def test_etag_gives_304_and_keeps_the_same_set(server: FlagServer, make_source: MakeSource) -> None:
    source = make_source(server.url, interval=0.05, jitter=0.0)
    first = source.flagset
    changes: list[tuple[FlagSet, FlagSet]] = []
    source.subscribe(lambda old, new: changes.append((old, new)))

    _wait_for(lambda: server.not_modified >= 3, timeout=5)

    assert source.flagset is first
    assert source.not_modified_count >= 3
    assert server.if_none_match[0] is None
    assert server.etag in server.if_none_match[1:]
    assert source.status.ok
    assert source.status.loads == 1
    assert changes == []
    assert source.refresh() is False


def test_304_counts_as_a_success(server: FlagServer, make_source: MakeSource) -> None:
    source = make_source(server.url, interval=0)
    server.mode = "error"
    source.refresh()
    assert not source.status.ok
    failed_at = source.status.last_good_load
    server.mode = "ok"

    assert source.refresh() is False

    assert source.status.ok
    assert source.status.last_error is None
    assert source.status.last_good_load is not None and failed_at is not None
    assert source.status.last_good_load > failed_at
    assert source.not_modified_count == 1


def test_update_is_picked_up_within_two_intervals(
    server: FlagServer, make_source: MakeSource
) -> None:
    interval = 0.3
    source = make_source(server.url, interval=interval, jitter=0.2)
    seen = threading.Event()
    source.subscribe(lambda old, new: seen.set())

    server.publish(_document("2", color="blue"))
    took = _wait_for(seen.is_set, timeout=2 * interval)

    assert took <= 2 * interval
    assert _color(source) == "blue"
    assert source.flagset.version == "2"


# -- failures -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["garbage", "invalid"])
def test_invalid_document_keeps_last_good_and_cache(
    server: FlagServer, make_source: MakeSource, tmp_path: Path, mode: str
) -> None:
    cache = tmp_path / "flags.cache.json"
    source = make_source(server.url, interval=0, cache_path=cache)
    good = source.flagset
    cached = cache.read_bytes()
    meta = cache.with_name(cache.name + ".meta.json").read_bytes()
    server.mode = mode

    assert source.refresh() is False

    assert source.flagset is good
    assert not source.status.ok
    assert source.status.last_error is not None
    assert source.status.failures == 1
    assert cache.read_bytes() == cached
    assert cache.with_name(cache.name + ".meta.json").read_bytes() == meta
    assert source.etag == server.etag  # the validators of the set in force, not garbage's

    server.mode = "ok"
    server.publish(_document("2", color="blue"))
    assert source.refresh() is True
    assert source.status.ok
    assert _color(source) == "blue"


def test_server_error_keeps_last_good(server: FlagServer, make_source: MakeSource) -> None:
    source = make_source(server.url, interval=0)
    server.mode = "error"

    assert source.refresh() is False

    assert _color(source) == "red"
    assert not source.status.ok
    assert "HTTP 500" in (source.status.last_error or "")


def test_slow_server_times_out_and_recovers(server: FlagServer, make_source: MakeSource) -> None:
    source = make_source(server.url, interval=0, timeout=0.3)
    good = source.flagset
    server.mode = "hang"

    start = time.monotonic()
    assert source.refresh() is False
    assert time.monotonic() - start < 2.0

    assert source.flagset is good
    assert not source.status.ok
    assert "timed out" in (source.status.last_error or "")

    server.release.set()
    server.mode = "ok"
    server.publish(_document("2", color="blue"))
    assert source.refresh() is True
    assert source.status.ok
    assert _color(source) == "blue"


def test_backoff_doubles_up_to_the_cap_and_resets(
    server: FlagServer, make_source: MakeSource
) -> None:
    server.mode = "error"
    # interval=1 s: the poller's first wait (2 s) outlasts this test's manual refreshes.
    source = make_source(server.url, interval=1.0, jitter=0.0, max_backoff=5.0)

    delays = [source.next_delay]
    for _ in range(4):
        source.refresh()
        delays.append(source.next_delay)

    assert delays == [2.0, 4.0, 5.0, 5.0, 5.0]
    assert source.consecutive_failures == 5

    server.mode = "ok"
    source.refresh()
    assert source.next_delay == 1.0
    assert source.consecutive_failures == 0


def test_jitter_spreads_the_delay(server: FlagServer, make_source: MakeSource) -> None:
    source = make_source(server.url, interval=0, max_backoff=100.0)
    source.interval = 10.0

    delays = [source.compute_delay(0) for _ in range(200)]
    assert all(8.0 <= d <= 12.0 for d in delays)
    assert max(delays) - min(delays) > 1.0  # really spread, not a constant
    assert all(d <= 100.0 for d in (source.compute_delay(20) for _ in range(50)))
    assert all(32.0 <= source.compute_delay(2) <= 48.0 for _ in range(50))


# -- start-up while the server is down ------------------------------------------------------


def test_down_at_start_serves_the_cache(
    server: FlagServer, make_source: MakeSource, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache" / "flags.json"
    with HttpSource(server.url, interval=0, cache_path=cache) as previous_run:
        fetched_at = previous_run.status.last_good_load
    assert cache.exists()
    assert [p.name for p in cache.parent.iterdir() if p.name.endswith(".tmp")] == []
    server.stop()

    with caplog.at_level(logging.WARNING, logger="flagwire"):
        source = make_source(server.url, interval=0, cache_path=cache, strict=True)

    assert _color(source) == "red"
    assert source.flagset.version == "1"
    assert source.from_cache
    assert not source.status.ok
    assert "cannot fetch" in (source.status.last_error or "")
    assert source.status.last_good_load == fetched_at
    assert "OFFLINE" in caplog.text

    # The server comes back: the conditional request from the cache's ETag gives a 304.
    server.start()
    assert source.refresh() is False
    assert source.status.ok
    assert not source.from_cache
    assert server.not_modified == 1


def test_cache_of_another_url_is_ignored(
    server: FlagServer, make_source: MakeSource, tmp_path: Path
) -> None:
    cache = tmp_path / "flags.json"
    make_source(server.url, interval=0, cache_path=cache).close()
    other = f"http://127.0.0.1:{server.port}/other.json"
    server.stop()

    source = make_source(other, interval=0, cache_path=cache)

    assert len(source.flagset) == 0
    assert not source.from_cache


def test_down_at_start_without_cache_starts_empty(
    server: FlagServer, make_source: MakeSource, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.stop()
    with caplog.at_level(logging.WARNING, logger="flagwire"):
        source = make_source(server.url, interval=0, cache_path=tmp_path / "none.json")

    assert len(source.flagset) == 0
    assert source.flagset.evaluate("payments", default=True).value is True
    assert not source.status.ok
    assert source.status.last_good_load is None
    assert "NO FLAGS" in caplog.text

    server.start()
    assert source.refresh() is True
    assert source.status.ok
    assert (tmp_path / "none.json").exists()


def test_down_at_start_strict_raises(server: FlagServer, tmp_path: Path) -> None:
    server.stop()
    with pytest.raises(SourceError, match="no flag set"):
        HttpSource(server.url, interval=0.1, timeout=1.0, strict=True, cache_path=tmp_path / "x")


def test_invalid_at_start_strict_raises(server: FlagServer) -> None:
    server.mode = "garbage"
    with pytest.raises(SourceError, match="invalid JSON"):
        HttpSource(server.url, interval=0.1, timeout=1.0, strict=True)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"interval": -1},
        {"jitter": 1.0},
        {"timeout": 0},
        {"interval": 10, "max_backoff": 5},
        {"fractional": "v9"},
    ],
)
def test_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        HttpSource("http://127.0.0.1:9/flags.json", **kwargs)


def test_close_stops_the_poller(server: FlagServer) -> None:
    with HttpSource(server.url, interval=0.05, timeout=1.0) as source:
        thread = source._thread
        assert thread is not None and thread.is_alive()
    assert not thread.is_alive()
    requests = server.requests
    time.sleep(0.2)
    assert server.requests == requests


# -- the kill switch --------------------------------------------------------------------------


def test_kill_switch_reaches_two_services_in_the_documented_time(
    server: FlagServer, make_source: MakeSource
) -> None:
    interval, jitter, timeout = 0.5, 0.2, 1.0
    services = [
        make_source(server.url, interval=interval, jitter=jitter, timeout=timeout) for _ in range(2)
    ]
    for service in services:
        assert service.flagset.boolean("payments", False) is True

    server.publish(_document("2", kill_state="DISABLED"))
    flipped = time.monotonic()
    bound = interval * (1 + jitter) + timeout

    def killed(service: HttpSource) -> bool:
        return service.flagset.evaluate("payments", default=False).reason == Reason.DISABLED

    _wait_for(lambda: all(killed(s) for s in services), timeout=bound)

    assert time.monotonic() - flipped <= bound
    for service in services:
        assert service.flagset.boolean("payments", False) is False
        assert service.status.ok

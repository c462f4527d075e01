"""End to end: the examples (and ``tests/e2e_apps``) under real servers, over loopback.

FastAPI runs under uvicorn, Flask under gunicorn, each in its own process group on a
free 127.0.0.1 port, with ``$FLAGWIRE_FLAGS`` pointing at a copy of the flag file; httpx
drives them. What a server answers is checked against ``FlagSet.evaluate`` in-process on
the same file.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from flagwire import FlagSet, FlagsetError

pytestmark = pytest.mark.e2e

WriteFile = Callable[[str, str | Mapping[str, Any]], Path]
WaitFor = Callable[..., None]

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
TEST_APPS = Path(__file__).resolve().with_name("e2e_apps")
EXAMPLE_FLAGS = EXAMPLES / "flags.yaml"
STARTUP_TIMEOUT = 20.0
COOKIE = re.compile(
    r"flagwire_id=([A-Za-z0-9_-]{16,64}); Path=/; Max-Age=\d+; SameSite=Lax; HttpOnly"
)
# Recent gunicorn opens a control socket at one path per user (~/.gunicorn); servers side by
# side would fight over it.
_NO_CONTROL_SOCKET = (
    ["--no-control-socket"]
    if hasattr(importlib.import_module("gunicorn.config"), "ControlSocketDisable")
    else []
)


# -- servers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """A server process listening on ``url``, serving the flag file ``flags``."""

    framework: str
    url: str
    flags: Path
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, **options: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, trust_env=False, timeout=10.0, **options)

    def healthz(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/healthz", trust_env=False, timeout=5.0)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _command(
    framework: str, app_dir: Path, module: str, port: int, workers: int, extra: Sequence[str]
) -> list[str]:
    # The servers keep idle connections longer than the tests' client pools do, so a pooled
    # connection is never closed by the server just as a client reuses it (a ReadError
    # that is no one's bug). Later options win, so ``extra`` may override this.
    if framework == "fastapi":
        return [
            sys.executable, "-m", "uvicorn", f"{module}:app",
            "--app-dir", str(app_dir), "--host", HOST, "--port", str(port),
            "--no-access-log", "--timeout-graceful-shutdown", "2",
            "--timeout-keep-alive", "30", *extra,
        ]  # fmt: skip
    return [
        sys.executable, "-m", "gunicorn", "--chdir", str(app_dir),
        "-b", f"{HOST}:{port}", "--workers", str(workers), "--threads", "8",
        "--graceful-timeout", "2", "--keep-alive", "30", *_NO_CONTROL_SOCKET, *extra,
        f"{module}:app",
    ]  # fmt: skip


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (gunicorn's workers too), SIGKILL if it lingers."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=6)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # workers orphaned by a crashed master


class _Launcher:
    """Starts servers into ``directory`` and stops every one of them on ``close``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.servers: list[Server] = []

    def start(
        self,
        framework: str,
        flags: Path,
        *,
        app_dir: Path = EXAMPLES,
        module: str | None = None,
        workers: int = 1,
        extra: Sequence[str] = (),
    ) -> Server:
        module = module or f"{framework}_app"
        env = {
            **os.environ,
            "FLAGWIRE_FLAGS": str(flags),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p
            ),
        }
        for attempt in range(3):
            port = _free_port()  # free now; another process may take it before the server
            log = self.directory / f"{module}-{port}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    _command(framework, app_dir, module, port, workers, extra),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.directory,
                    start_new_session=True,
                )
            server = Server(framework, f"http://{HOST}:{port}", flags, process, log)
            self.servers.append(server)
            if _wait_until_up(server):
                return server
            _stop(process)
            if "in use" not in server.output() or attempt == 2:
                break
        pytest.fail(f"{framework} server did not come up:\n{server.output()[-3000:]}")

    def close(self) -> None:
        for server in self.servers:
            _stop(server.process)
            if server.process.returncode not in (0, -signal.SIGTERM):
                print(f"--- {server.log.name} (exit {server.process.returncode})")
                print(server.output()[-3000:])


def _wait_until_up(server: Server) -> bool:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            response = httpx.get(f"{server.url}/healthz", trust_env=False, timeout=1.0)
        except httpx.TransportError:
            time.sleep(0.05)
            continue
        if response.status_code == 200:
            return True
        time.sleep(0.05)
    return False


Launch = Callable[..., Server]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """Start servers (``launch(framework, flags, ...)``); all are stopped after the test."""
    launcher = _Launcher(tmp_path)
    try:
        yield launcher.start
    finally:
        launcher.close()


@pytest.fixture(scope="module", params=["fastapi", "flask"])
def example(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """An example app (uvicorn, or gunicorn with 1 worker x 8 threads) shared by the
    tests that do not touch its flag file."""
    framework: str = request.param
    directory = tmp_path_factory.mktemp(f"e2e-{framework}")
    flags = Path(shutil.copy(EXAMPLE_FLAGS, directory / "flags.yaml"))
    launcher = _Launcher(directory)
    try:
        yield launcher.start(framework, flags)
    finally:
        launcher.close()


# -- expectations, computed in-process ---------------------------------------------------------

_HEADER_ATTRIBUTES = {
    "x-user-id": "targetingKey",
    "x-plan": "plan",
    "x-country": "country",
    "x-app-version": "appVersion",
}


def _expected(flagset: FlagSet, user: Mapping[str, str], framework: str) -> dict[str, Any]:
    """What ``/checkout`` answers for request headers ``user``, by the flag set itself."""
    context = {_HEADER_ATTRIBUTES[name]: value for name, value in user.items()}
    new_checkout = flagset.evaluate("new-checkout", context, False)
    ranking = flagset.evaluate("search-ranking", context, "classic")
    eu_banner = flagset.evaluate("eu-banner", context, False)
    return {
        "service": framework,
        "user": context.get("targetingKey"),
        "new_checkout": new_checkout.value,
        "ranking": ranking.value,
        "eu_banner": eu_banner.value,
        "version": flagset.version_label,
        "decided": {
            "new-checkout": new_checkout.variant,
            "search-ranking": ranking.variant,
            "eu-banner": eu_banner.variant,
        },
        "reasons": {
            "new-checkout": new_checkout.reason.value,
            "search-ranking": ranking.reason.value,
            "eu-banner": eu_banner.reason.value,
        },
    }


def _new_anonymous_id(response: httpx.Response) -> str:
    """The anonymous id of the one ``Set-Cookie`` the response carries."""
    cookies = response.headers.get_list("set-cookie")
    assert len(cookies) == 1, cookies
    found = COOKIE.fullmatch(cookies[0])
    assert found is not None, cookies[0]
    return found.group(1)


# -- (1) the examples answer as documented ----------------------------------------------------


def test_examples_answer_as_documented(example: Server) -> None:
    flagset = FlagSet.from_path(example.flags)
    alice = {"x-user-id": "alice", "x-plan": "beta", "x-country": "DE", "x-app-version": "3.4.0"}
    others = [
        {"x-user-id": f"visitor-{i}", "x-plan": "free", "x-country": country}
        for i, country in enumerate(["US", "FR", "BR", "NL", "JP", "IT"])
    ]
    with example.client() as client:
        response = client.get("/checkout", headers=alice)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["service"] == example.framework
        assert body["user"] == "alice"
        assert body["new_checkout"] is True  # beta testers always get it
        assert body["eu_banner"] is True
        assert (
            body["ranking"]
            == flagset.evaluate(
                "search-ranking",
                {"targetingKey": "alice", "plan": "beta", "country": "DE", "appVersion": "3.4.0"},
            ).value
        )
        assert body["version"] == flagset.version_label
        assert body == _expected(flagset, alice, example.framework)
        assert "set-cookie" not in response.headers  # a known user needs no anonymous id
        for user in others:
            response = client.get("/checkout", headers=user)
            assert response.status_code == 200, response.text
            assert response.json() == _expected(flagset, user, example.framework)
    assert example.healthz() == {"ok": True, "flags_version": flagset.version_label, "error": None}


# -- (2) concurrency: every response is its own user's -------------------------------------------


@pytest.fixture(params=["fastapi", "flask"])
def busy_server(request: pytest.FixtureRequest, launch: Launch, tmp_path: Path) -> Server:
    """uvicorn, or gunicorn with 2 workers x 8 threads, on a copy of the example flags."""
    flags = Path(shutil.copy(EXAMPLE_FLAGS, tmp_path / "flags.yaml"))
    return launch(request.param, flags, workers=2)


def test_concurrent_requests_each_get_their_own_users_assignments(busy_server: Server) -> None:
    flagset = FlagSet.from_path(busy_server.flags)
    plans, countries = ["beta", "free", "pro"], ["DE", "US", "FR", "BR", "NL"]
    users = {
        f"user-{i:03d}": {
            "x-user-id": f"user-{i:03d}",
            "x-plan": plans[i % 3],
            "x-country": countries[i % 5],
            "x-app-version": f"3.{i % 7}.0",
        }
        for i in range(100)
    }
    expected = {key: _expected(flagset, user, busy_server.framework) for key, user in users.items()}
    # Several distinct answers, or the test could not tell users apart.
    assert len({(e["new_checkout"], e["ranking"], e["eu_banner"]) for e in expected.values()}) > 6
    order = [key for key in users for _ in range(4)]
    random.Random(2026).shuffle(order)

    async def send_all() -> list[tuple[str, httpx.Response]]:
        # 8 clients x 8 connections: 64 requests on the wire at once (gunicorn has 2 x 8
        # threads). One pool of 64 would do too, but httpcore's scheduling of queued
        # requests is quadratic and would take most of the test's time.
        limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(
                    httpx.AsyncClient(
                        base_url=busy_server.url, trust_env=False, timeout=30.0, limits=limits
                    )
                )
                for _ in range(8)
            ]

            async def one(n: int, key: str) -> tuple[str, httpx.Response]:
                return key, await clients[n % 8].get("/checkout", headers=users[key])

            return await asyncio.gather(*(one(n, key) for n, key in enumerate(order)))

    started = time.monotonic()
    results = asyncio.run(send_all())
    elapsed = time.monotonic() - started
    assert len(results) == 400
    wrong = []
    for key, response in results:
        body = response.json() if response.status_code == 200 else response.text
        ids = set(re.findall(r"user-\d{3}", response.text))
        if body != expected[key] or ids != {key} or "set-cookie" in response.headers:
            wrong.append((key, response.status_code, body))
    assert not wrong, f"{len(wrong)} of 400 responses were not their user's: {wrong[:5]}"
    assert elapsed < 30, f"400 requests took {elapsed:.1f}s"


# -- (3) a request keeps its view while the file changes under it ------------------------------


def _greetings(version: str, greeting: str, farewell: str) -> dict[str, Any]:
    return {
        "metadata": {"version": version},
        "flags": {
            "greeting": {
                "state": "ENABLED",
                "variants": {"current": greeting, "fallback": "fallback"},
                "defaultVariant": "current",
            },
            "farewell": {
                "state": "ENABLED",
                "variants": {"current": farewell, "fallback": "fallback"},
                "defaultVariant": "current",
            },
        },
    }


@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_flag_file_change_mid_request_does_not_change_the_requests_view(
    framework: str, launch: Launch, replace_file: WriteFile, wait_for: WaitFor
) -> None:
    flags = replace_file("flags.json", _greetings("1", "hello", "bye"))
    old = FlagSet.from_path(flags).version_label
    server = launch(framework, flags, app_dir=TEST_APPS, module=f"slow_{framework}")
    assert server.healthz()["flags_version"] == old
    with server.client() as slow_client, ThreadPoolExecutor(max_workers=1) as pool:
        in_flight = pool.submit(slow_client.get, "/slow", params={"sleep": 5})
        wait_for(lambda: server.healthz()["in_flight"] >= 1, timeout=5, what="/slow to start")
        replace_file("flags.json", _greetings("2", "hallo", "tschuess"))
        new = FlagSet.from_path(flags).version_label
        response = in_flight.result(timeout=15)
    assert response.status_code == 200, response.text
    body = response.json()
    # The file was reloaded while the request was in flight ...
    assert body["live_version"] == new
    # ... and the request saw the flag set it started with, before and after.
    pinned = {"value": "hello", "version": old, "decided_by": old}
    assert body["before"] == pinned
    assert body["after"]["greeting"] == body["before"]
    assert body["after"]["farewell"] == {"value": "bye", "version": old, "decided_by": old}

    wait_for(lambda: server.healthz()["flags_version"] == new, timeout=3, what="the reload")
    with server.client() as client:
        response = client.get("/slow", params={"sleep": 0})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["before"] == {"value": "hallo", "version": new, "decided_by": new}
    assert body["after"]["farewell"] == {"value": "tschuess", "version": new, "decided_by": new}


# -- (4) bad input over the wire never gives a 500 ------------------------------------------------

_GARBAGE_IDS = [
    "short",
    "x" * 65,
    "../../etc/passwd",
    "<script>alert(1)</script>",
    "a b c d e f g h i j k l m n o p",
    "%00%0d%0a-abcdefghijklmnop",
    "\u00fcn\u00efcode-abcdefghijklmnop",
]


@pytest.mark.parametrize("garbage", _GARBAGE_IDS)
def test_garbage_anonymous_cookie_is_replaced(example: Server, garbage: str) -> None:
    flagset = FlagSet.from_path(example.flags)
    headers = [(b"cookie", f"flagwire_id={garbage}".encode())]
    with example.client() as client:
        response = client.get("/checkout", headers=headers)
    assert response.status_code == 200, response.text
    new_id = _new_anonymous_id(response)
    assert new_id != garbage
    assert response.json() == _expected(flagset, {"x-user-id": new_id}, example.framework)


@pytest.mark.parametrize(
    "cookie",
    [
        ";;;",
        "=; ==x; flagwire_id; =flagwire_id",
        '"; flagwire_id="; a=b=c; \xe9=\xe9',
        "flagwire_id",
        "flagwire_id=",
        "=" * 200,
    ],
)
def test_malformed_cookie_header_is_survived(example: Server, cookie: str) -> None:
    with example.client() as client:
        response = client.get("/checkout", headers=[(b"cookie", cookie.encode("latin-1"))])
    assert response.status_code == 200, response.text
    assert response.json()["user"] == _new_anonymous_id(response)


def test_missing_user_headers_give_an_anonymous_id(example: Server) -> None:
    flagset = FlagSet.from_path(example.flags)
    with example.client() as client:
        bare = client.get("/checkout")
    with example.client() as client:
        empty = client.get("/checkout", headers={"x-user-id": "", "x-plan": "", "x-country": ""})
    for response in (bare, empty):
        assert response.status_code == 200, response.text
        new_id = _new_anonymous_id(response)
        body = response.json()
        assert body["user"] == new_id
        assert body["ranking"] == flagset.evaluate("search-ranking", {"targetingKey": new_id}).value
        assert body["version"] == flagset.version_label


def test_non_ascii_and_junk_header_values_are_survived(example: Server) -> None:
    flagset = FlagSet.from_path(example.flags)
    raw = {
        b"x-user-id": "Zo\u00eb-\u00e9t\u00e9-\U0001f600".encode(),
        b"x-plan": "b\u00e9ta".encode(),
        b"x-country": "\u00d6sterreich".encode(),
        b"x-app-version": b"not.a.version\xff",
    }
    with example.client() as client:
        response = client.get("/checkout", headers=list(raw.items()))
    assert response.status_code == 200, response.text
    # Servers hand header bytes over as latin-1 (ASGI and PEP 3333 alike).
    seen = {name.decode(): value.decode("latin-1") for name, value in raw.items()}
    assert response.json() == _expected(flagset, seen, example.framework)
    assert "set-cookie" not in response.headers


# -- (5) the anonymous cookie keeps a visitor in one bucket --------------------------------------


def test_anonymous_cookie_keeps_a_visitor_in_one_bucket(example: Server) -> None:
    flagset = FlagSet.from_path(example.flags)
    with example.client() as client:
        responses = [client.get("/checkout") for _ in range(20)]
        kept = client.cookies.get("flagwire_id")
    assert all(r.status_code == 200 for r in responses)
    first_id = _new_anonymous_id(responses[0])
    assert kept == first_id
    assert all("set-cookie" not in r.headers for r in responses[1:])
    assert {(r.json()["user"], r.json()["ranking"]) for r in responses} == {
        (first_id, flagset.evaluate("search-ranking", {"targetingKey": first_id}).value)
    }
    with example.client() as stranger:
        other = stranger.get("/checkout")
    assert other.status_code == 200, other.text
    assert other.json()["user"] == _new_anonymous_id(other) != first_id


# -- (6) an invalid edit keeps the last good version; a valid one is picked up ------------------


@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_invalid_edit_keeps_last_good_version_and_valid_edit_is_picked_up(
    framework: str, launch: Launch, replace_file: WriteFile, wait_for: WaitFor
) -> None:
    good_text = EXAMPLE_FLAGS.read_text(encoding="utf-8")
    flags = replace_file("flags.yaml", good_text)
    good = FlagSet.from_path(flags)
    server = launch(framework, flags)
    alice = {"x-user-id": "alice", "x-plan": "beta", "x-country": "DE", "x-app-version": "3.4.0"}
    expected_good = _expected(good, alice, framework)

    bad_edits = {
        "unparsable": good_text.replace("flags:\n", "flags: [\n", 1),
        "invalid flag": good_text.replace(
            "    defaultVariant: off\n", "    defaultVariant: purple\n", 1
        ),
    }
    with server.client() as client:
        for what, text in bad_edits.items():
            with pytest.raises(FlagsetError):
                FlagSet.from_text(text, format="yaml")
            before = server.healthz()
            replace_file("flags.yaml", text)
            wait_for(
                lambda before=before: (
                    (now := server.healthz())["ok"] is False and now["error"] != before["error"]
                ),
                timeout=3,
                what=f"the {what} edit to be rejected",
            )
            health = server.healthz()
            assert health["flags_version"] == good.version_label
            assert str(flags) in health["error"], health
            response = client.get("/checkout", headers=alice)
            assert response.status_code == 200, response.text
            assert response.json() == expected_good

        valid_text = good_text.replace(
            'version: "2026.11.26-1"', 'version: "2026.11.26-2"'
        ).replace("control: classic", "control: classic-v2")
        changed = FlagSet.from_text(valid_text, format="yaml", source=str(flags))
        assert changed.version_label != good.version_label
        replace_file("flags.yaml", valid_text)
        written = time.monotonic()
        wait_for(
            lambda: (
                client.get("/checkout", headers=alice).json()["version"] == changed.version_label
            ),
            timeout=2,
            what="the valid edit to be picked up",
        )
        picked_up = time.monotonic() - written
        response = client.get("/checkout", headers=alice)
    assert response.json() == _expected(changed, alice, framework)
    assert server.healthz() == {"ok": True, "flags_version": changed.version_label, "error": None}
    assert picked_up < 2


def test_preloaded_gunicorn_workers_pick_up_a_valid_edit(
    launch: Launch, replace_file: WriteFile, wait_for: WaitFor
) -> None:
    # --preload imports the app, and so builds the FileSource, in the master before it
    # forks the workers: each worker must still watch the file.
    text = EXAMPLE_FLAGS.read_text(encoding="utf-8")
    flags = replace_file("flags.yaml", text)
    server = launch("flask", flags, workers=2, extra=["--preload"])
    assert server.healthz()["flags_version"] == FlagSet.from_path(flags).version_label
    edited = text.replace('version: "2026.11.26-1"', 'version: "2026.11.26-2"')
    replace_file("flags.yaml", edited)
    changed = FlagSet.from_path(flags).version_label
    wait_for(
        lambda: all(server.healthz()["flags_version"] == changed for _ in range(8)),
        timeout=2,
        what=f"both preloaded workers to serve {changed}",
    )

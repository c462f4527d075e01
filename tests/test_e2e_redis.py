"""End to end: two services on RedisSource, a real redis-server, ``flagwire`` commands.

FastAPI under uvicorn and Flask under gunicorn (2 workers) serve ``tests/e2e_apps/redis_*``
on a free loopback port each; a real ``redis-server`` holds the flags. Under steady traffic
(new connections, so both gunicorn workers answer), the tests run in order: kill switches
and publishes reach every worker (measured: from the command returning until every worker
serves the change); Redis down for 10 s, with a service restarted meanwhile from its cache,
fails no request; two publishers at once lose no update; an invalid document written to
the key by hand changes nothing; the history lists every change, and a rollback restores
the earlier version everywhere.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from flagwire import FlagSet
from redis_support import RedisServer, running_redis
from test_e2e import EXAMPLE_FLAGS, REPO, TEST_APPS, Server, _Launcher, _stop

pytestmark = pytest.mark.e2e

BETA = {"x-user-id": "alice", "x-plan": "beta"}  # new-checkout: "on" by its targeting
KILL_BOUND = 1.0
BACK_BOUND = 2.0
ROUNDS = 5


@dataclass
class Service:
    framework: str
    cache: Path
    server: Server | None
    pids: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, path: str) -> httpx.Response:
        assert self.server is not None, f"{self.framework} is down"
        return httpx.get(self.server.url + path, headers=BETA, trust_env=False, timeout=5.0)

    def workers(self) -> dict[int, dict[str, Any]]:
        """``/healthz`` of every worker (gunicorn's connections land on either)."""
        seen: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + 5
        while len(seen) < (2 if self.framework == "flask" else 1) and time.monotonic() < deadline:
            body = self.get("/healthz").json()
            seen[body["pid"]] = body
        self.pids = set(seen)
        return seen


@dataclass
class Sample:
    sent: float
    at: float
    service: str
    status: int | str
    body: dict[str, Any]


@dataclass
class Cluster:
    redis: RedisServer
    services: list[Service]
    env: dict[str, str]
    launch: Any
    samples: list[Sample] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)

    def flagwire(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "flagwire", *args], env=self.env, capture_output=True,
            text=True, timeout=30,
        )  # fmt: skip
        if check:
            assert done.returncode == 0, done.stdout + done.stderr
        return done

    def restart(self, service: Service) -> None:
        with service.lock:
            old, service.server = service.server, None
        assert old is not None
        _stop(old.process)
        new = self.launch(service.framework, service.cache)
        with service.lock:
            service.server = new


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("e2e-redis")
    with running_redis(directory) as redis, pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("FLAGWIRE_REDIS_URL", redis.url)
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "FLAGWIRE_AUTHOR": "e2e"}
        launcher = _Launcher(directory)

        def launch(framework: str, cache: Path) -> Server:
            monkeypatch.setenv("FLAGWIRE_FLAGS_CACHE", str(cache))
            module, workers = ("redis_fastapi", 1) if framework == "fastapi" else ("redis_flask", 2)
            return launcher.start(
                framework, EXAMPLE_FLAGS, app_dir=TEST_APPS, module=module, workers=workers
            )

        cluster = Cluster(redis, [], env, launch)
        try:
            cluster.flagwire("publish", str(EXAMPLE_FLAGS), "-m", "first")
            cluster.changes.append("publish")
            for framework in ("fastapi", "flask"):
                cache = directory / f"{framework}-cache.json"
                cluster.services.append(Service(framework, cache, launch(framework, cache)))
            yield cluster
        finally:
            launcher.close()


class Traffic:
    """Two threads per service, each a request at a time on a new connection."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(s,), daemon=True)
            for s in cluster.services
            for _ in range(2)
        ]

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def _run(self, service: Service) -> None:
        while not self.stop.is_set():
            with service.lock:
                if service.server is not None:
                    sent = time.time()
                    try:
                        response = service.get("/flag")
                        status: int | str = response.status_code
                        body = response.json() if status == 200 else {}
                    except httpx.HTTPError as exc:
                        status, body = repr(exc), {}
                    self.cluster.samples.append(
                        Sample(sent, time.time(), service.framework, status, body)
                    )
            time.sleep(0.005)

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)


def _everywhere(cluster: Cluster, version: str, since: float, timeout: float) -> dict[str, float]:
    """Seconds from ``since`` until each worker's first answer with ``version``."""
    return {w: at for w, (at, _) in _arrivals(cluster, version, since, timeout).items()}


def _arrivals(
    cluster: Cluster, version: str, since: float, timeout: float
) -> dict[str, tuple[float, float]]:
    """Per worker: seconds from ``since`` to its first answer with ``version``, and to the
    moment its source swapped that version in (its own clock; negative if before)."""
    workers = {(s.framework, pid) for s in cluster.services for pid in s.pids}
    first: dict[tuple[str, int], Sample] = {}
    seen = 0
    deadline = time.monotonic() + timeout
    while set(first) != workers and time.monotonic() < deadline:
        time.sleep(0.005)
        new, seen = cluster.samples[seen:], len(cluster.samples)
        for sample in new:
            worker = (sample.service, sample.body.get("pid", 0))
            if sample.at >= since and sample.body.get("version") == version:
                first.setdefault(worker, sample)
    missing = workers - set(first)
    assert not missing, f"{sorted(missing)} do not serve {version} after {timeout} s"
    return {
        f"{w[0]}:{w[1]}": (s.at - since, s.body["swapped_at"] - since) for w, s in first.items()
    }


def _published(out: str) -> str:
    """The version label ``flagwire publish/kill/rollback`` says it published."""
    return out.split("published revision ")[1].split("(")[1].split(")")[0]


def _failed(cluster: Cluster, since: float) -> list[Sample]:
    return [s for s in cluster.samples if s.at >= since and s.status != 200]


def _edited(old: str, new: str, version: str) -> str:
    text = EXAMPLE_FLAGS.read_text(encoding="utf-8")
    assert text.count(old) == 1
    return text.replace(old, new).replace('version: "2026.11.26-1"', f'version: "{version}"')


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(0.95 * len(ordered)) - 1)]


def _ms(values: list[float]) -> str:
    return f"p50 {statistics.median(values) * 1000:.0f} ms, p95 {_p95(values) * 1000:.0f} ms"


def test_kill_and_publish_reach_every_worker_fast(cluster: Cluster) -> None:
    for service in cluster.services:
        service.workers()
    assert [len(s.pids) for s in cluster.services] == [1, 2]
    good = FlagSet.from_path(EXAMPLE_FLAGS).version_label
    start = time.time()
    # (began, returned, version, arrivals) per change; kill, then publish back, ROUNDS times.
    changes: list[tuple[float, float, str, dict[str, tuple[float, float]]]] = []
    with Traffic(cluster):
        _everywhere(cluster, good, start, timeout=5)
        for _ in range(ROUNDS):
            for command in (
                ["kill", "new-checkout", "--variant", "off", "-m", "incident"],
                ["publish", str(EXAMPLE_FLAGS), "-m", "restore"],
            ):
                began = time.time()
                version = _published(cluster.flagwire(*command).stdout)
                returned = time.time()
                changes.append((began, returned, version, _arrivals(cluster, version, returned, 5)))
                cluster.changes.append(command[0])
        ended = time.time()
    killed = changes[0][2]
    served = {(s.body["version"], s.body["variant"]) for s in cluster.samples if s.at >= start}
    assert served == {(good, "on"), (killed, "off")}, served
    assert not _failed(cluster, start)
    # No request sent after a command returned got the flag set it replaced, on any worker.
    bounds = [(c[1], c[2], n[0]) for c, n in zip(changes, [*changes[1:], (ended,)], strict=True)]
    stale = [
        (s.service, s.body["pid"], round(s.sent - returned, 3))
        for returned, version, until in bounds
        for s in cluster.samples
        if returned <= s.sent and s.at < until and s.body["version"] != version
    ]
    assert not stale, stale
    # When each change was committed (its history entry), on the same clock.
    lines = cluster.flagwire("history", "--json", "--limit", str(len(changes))).stdout
    committed = [
        datetime.fromisoformat(json.loads(line)["time"]).timestamp() for line in lines.splitlines()
    ]
    swapped = [max(swap for _, swap in c[3].values()) + c[1] for c in changes]
    propagation = [swap - at for swap, at in zip(swapped, committed, strict=True)]
    after_exit = [max(0.0, swap - c[1]) for swap, c in zip(swapped, changes, strict=True)]
    first_answer = [max(at for at, _ in c[3].values()) for c in changes]
    print(
        f"\n{len(changes)} kills and publishes, 3 workers (uvicorn + gunicorn x2):"
        f"\n  commit -> every worker's flag set swapped: {_ms(propagation)}, max "
        f"{max(propagation) * 1000:.0f} ms"
        f"\n  command returned -> every worker serving it: {_ms(after_exit)} (swapped before "
        f"the command exited: {sum(1 for v in after_exit if v == 0)} of {len(changes)})"
        f"\n  command returned -> an answer from every worker seen: {_ms(first_answer)}, max "
        f"{max(first_answer) * 1000:.0f} ms (bounded by the traffic reaching each worker)"
    )
    assert _p95(after_exit) < KILL_BOUND, after_exit
    assert _p95(propagation) < KILL_BOUND, propagation


def test_redis_down_10s_and_a_restart_meanwhile_fail_no_request(cluster: Cluster) -> None:
    good = FlagSet.from_path(EXAMPLE_FLAGS).version_label
    flask = cluster.services[1]
    start = time.time()
    with Traffic(cluster):
        time.sleep(0.5)
        cluster.redis.stop(save=True)  # a Redis that persists, restarting
        down = time.monotonic()
        time.sleep(1.0)
        cluster.restart(flask)
        workers = flask.workers()
        assert all(w["from_cache"] and not w["ok"] for w in workers.values()), workers
        assert {w["flags_version"] for w in workers.values()} == {good}
        time.sleep(max(0.0, 10 - (time.monotonic() - down)))
        cluster.redis.start()
        newer = _edited("- [on, 20]\n", "- [on, 30]\n", "2026.11.26-9")
        path = cluster.redis.directory / "newer.yaml"
        path.write_text(newer.replace("- [off, 80]", "- [off, 70]"), encoding="utf-8")
        publishing = time.time()
        cluster.flagwire("publish", str(path), "-m", "after the outage")
        returned = time.time()
        cluster.changes.append("publish")
        took = _everywhere(cluster, FlagSet.from_path(path).version_label, returned, 5)
    assert not _failed(cluster, start), _failed(cluster, start)[:5]
    outage = [s for s in cluster.samples if start <= s.at < publishing]
    assert len(outage) > 200 and {s.body["version"] for s in outage} == {good}
    print(f"\nafter 10 s of Redis down, the next publish -> every worker: {took}")
    assert max(took.values()) < BACK_BOUND, took
    for service in cluster.services:
        assert all(w["ok"] for w in service.workers().values())


def test_two_publishers_at_once_lose_no_update(cluster: Cluster, tmp_path: Path) -> None:
    files = []
    for name, share in (("a", 40), ("b", 60)):
        path = tmp_path / f"{name}.yaml"
        text = _edited("- [on, 20]\n", f"- [on, {share}]\n", f"2026.11.26-{name}")
        path.write_text(text.replace("- [off, 80]", f"- [off, {100 - share}]"), "utf-8")
        files.append(path)
    command = [sys.executable, "-m", "flagwire", "publish"]
    runs = [
        subprocess.Popen([*command, str(f)], env=cluster.env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for f in files
    ]  # fmt: skip
    outcomes = [(run.wait(timeout=30), *run.communicate()) for run in runs]
    for (code, _, err), path in zip(list(outcomes), files, strict=True):
        assert code in (0, 3), err
        if code == 3:  # told to retry: it reviews the change again and publishes
            assert "conflict" in err
            outcomes.append((0, cluster.flagwire("publish", str(path)).stdout, ""))
    published = []
    for code, out, _ in outcomes:
        if code == 0:  # it wrote exactly on top of the revision it diffed against
            read = int(out.split("in force: revision ")[1].split()[0])
            wrote = int(out.split("published revision ")[1].split()[0])
            assert wrote == read + 1, out
            published.append(wrote)
            cluster.changes.append("publish")
    conflicts = sum(1 for code, _, _ in outcomes if code == 3)
    print(f"\ntwo publishers at once: revisions {published}, {conflicts} told to retry")
    assert len(published) == 2 and len(set(published)) == 2
    out = cluster.flagwire("history", "--json", "--limit", "2").stdout
    history = [json.loads(line) for line in out.splitlines()]
    assert {h["version"].split("+")[0] for h in history} == {"2026.11.26-a", "2026.11.26-b"}


def test_an_invalid_document_written_to_the_key_changes_nothing(cluster: Cluster) -> None:
    client = cluster.redis.client()
    in_force = client.get("flagwire:flags")
    version = FlagSet.from_text(in_force.decode()).version_label
    start = time.time()
    with Traffic(cluster):
        client.set("flagwire:flags", '{"flags": {"new-checkout": {"state": "SOMETIMES"}}}')
        client.publish("{flagwire:flags}:changes", "by hand")
        time.sleep(1.0)
        for service in cluster.services:
            for health in service.workers().values():
                assert not health["ok"] and "SOMETIMES" in health["error"], health
                assert health["flags_version"] == version
    assert not _failed(cluster, start)
    assert {s.body["version"] for s in cluster.samples if s.at >= start} == {version}


def test_history_lists_every_change_and_rollback_restores_everywhere(cluster: Cluster) -> None:
    lines = cluster.flagwire("history", "--json").stdout.splitlines()
    history = [json.loads(line) for line in lines]
    assert [h["revision"] for h in history] == list(range(1, len(history) + 1))
    assert [h["action"] for h in history] == cluster.changes
    assert all(h["author"] == "e2e" for h in history)
    with Traffic(cluster):
        out = cluster.flagwire("rollback", "--to", "2", "-m", "back to the kill").stdout
        returned = time.time()
        assert _published(out) == history[1]["version"]
        _everywhere(cluster, history[1]["version"], returned, 2)
    assert cluster.flagwire("history", "--limit", "1").stdout.split()[3:6] == [
        "rollback",
        "to",
        "2",
    ]

"""End to end: ``flagwire guard`` on a real service, Prometheus, Alertmanager and Redis.

A Flask service under gunicorn (2 workers, ``tests/e2e_apps/guard_flask.py``) on
RedisSource serves four flags under steady traffic; a real Prometheus scrapes it every
second and evaluates the shipped rules (``integrations/prometheus/flagwire-rules.yml``,
their windows and ``for`` compressed to seconds) into a real Alertmanager, whose webhook
is the guard's ``--listen``. Time is compressed through the plans (1 s interval, bakes of
a few seconds). One run of about a minute and a half checks, with the guard restarted
half-way:

* ``bad-checkout``: ``on`` is 5x slower and fails 10%; the guard rolls it back within 3
  intervals of ``guard.min_requests``, every worker then serves ``off``, and
  ``flagwire history`` shows the rollback with its reason;
* ``good-search``: healthy; walked through every step to 100% at the bake time, and the
  restarted guard resumes at the step in force;
* ``aa-banner``: identical variants under noisy latency, judged over 60 intervals and
  never rolled back;
* ``alert-checkout``: as bad as ``bad-checkout`` but its own judgement is kept thin, so
  only the shipped regression alert, delivered by Alertmanager, makes the guard kill it.

And with Prometheus unreachable, ``flagwire guard --once`` changes nothing and says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from flagwire._analysis.reader import PrometheusClient
from flagwire._control.store import FlagStore
from guard_support import plan_metadata
from redis_support import RedisServer, running_redis
from test_analysis_e2e import _free_port, _ready
from test_e2e import REPO, TEST_APPS, Server, _Launcher

pytestmark = pytest.mark.e2e

RULES = REPO / "integrations" / "prometheus" / "flagwire-rules.yml"
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
INTERVAL = 1.0
AA_INTERVALS = 60
BAD_MIN_REQUESTS = 60


def _flag(steps: str, share: float, **plan: Any) -> dict[str, Any]:
    return {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "targeting": {"fractional": [["on", share], ["off", 100 - share]]},
        "metadata": plan_metadata(**{"rollout.steps": steps, "guard.window": 600, **plan}),
    }


DOCUMENT = {
    "flags": {
        "bad-checkout": _flag("10,50,100", 10, **{
            "rollout.bake": 3, "guard.min_requests": BAD_MIN_REQUESTS}),
        "good-search": _flag("10,25,50,100", 10, **{
            "rollout.bake": 4, "guard.min_requests": 40}),
        "aa-banner": _flag("50,100", 50, **{
            "rollout.bake": 3600, "guard.min_requests": 100}),
        "alert-checkout": _flag("50,100", 50, **{
            "rollout.bake": 3600, "guard.min_requests": 1e9, "guard.action": "kill"}),
    }
}  # fmt: skip
FLAGS = tuple(DOCUMENT["flags"])


def _compressed_rules(directory: Path) -> Path:
    """The shipped rules with 10 s windows, no ``for``, and each flag's control declared."""
    text = RULES.read_text().replace("[5m]", "[10s]")
    rules = yaml.safe_load(re.sub(r"for: \d+m", "for: 0s", text))
    rules["groups"].append({
        "name": "controls",
        "rules": [{"record": "flagwire:control_variant", "expr": "vector(1)",
                   "labels": {"flag": flag, "variant": "off"}} for flag in FLAGS],
    })  # fmt: skip
    path = directory / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    return path


@contextlib.contextmanager
def _process(argv: list[str], log: Path, url: str) -> Iterator[str]:
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    try:
        if not _ready(url, process):
            pytest.fail(f"{argv[0]} did not start: {log.read_text()[-2000:]}")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _alertmanager(directory: Path, webhook: str) -> contextlib.AbstractContextManager[str]:
    assert ALERTMANAGER is not None
    config = directory / "alertmanager.yml"
    # Only alert-checkout's alerts reach the guard: bad-checkout is left to its judgement.
    receivers = [
        {"name": "guard", "webhook_configs": [{"url": webhook, "send_resolved": True}]},
        {"name": "nobody"},
    ]
    route = {"receiver": "nobody", "group_by": ["alertname", "flag", "variant", "job"],
             "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1m",
             "routes": [{"receiver": "guard", "matchers": ['flag="alert-checkout"']}]}  # fmt: skip
    config.write_text(json.dumps({"route": route, "receivers": receivers}))
    port = _free_port()
    argv = [ALERTMANAGER, f"--config.file={config}", f"--storage.path={directory / 'am'}",
            f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
            "--log.level=warn"]  # fmt: skip
    return _process(argv, directory / "alertmanager.log", f"http://127.0.0.1:{port}")


def _prometheus(directory: Path, target: str, alertmanager: str, guard: str) -> Any:
    binary = shutil.which("prometheus")
    assert binary is not None
    config = directory / "prometheus.yml"
    settings = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(_compressed_rules(directory))],
        "alerting": {"alertmanagers": [{"static_configs": [
            {"targets": [alertmanager.removeprefix("http://")]}]}]},
        "scrape_configs": [
            {"job_name": "shop", "static_configs": [{"targets": [target]}]},
            {"job_name": "flagwire-guard", "static_configs": [{"targets": [guard]}]},
        ],
    }  # fmt: skip
    config.write_text(json.dumps(settings))
    port = _free_port()
    argv = [binary, f"--config.file={config}", f"--storage.tsdb.path={directory / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]  # fmt: skip
    return _process(argv, directory / "prometheus.log", f"http://127.0.0.1:{port}")


@dataclass
class Traffic:
    server: Server
    stop: threading.Event = field(default_factory=threading.Event)
    statuses: dict[int, int] = field(default_factory=dict)
    threads: list[threading.Thread] = field(default_factory=list)

    def _run(self) -> None:
        with httpx.Client(base_url=self.server.url, trust_env=False, timeout=10) as client:
            while not self.stop.is_set():
                for flag in FLAGS:
                    headers = {"x-user-id": uuid.uuid4().hex}
                    with contextlib.suppress(httpx.TransportError):
                        status = client.get(f"/flag/{flag}", headers=headers).status_code
                        self.statuses[status] = self.statuses.get(status, 0) + 1

    def start(self, threads: int = 10) -> None:
        for _ in range(threads):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self.threads.append(thread)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)


@dataclass
class Rig:
    redis: RedisServer
    store: FlagStore
    service: Server
    prometheus: str
    directory: Path
    env: dict[str, str]
    listen: str
    guards: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def guard(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "flagwire", "guard", "--redis", self.redis.url, *args]

    def start_guard(self) -> None:
        log = self.directory / f"guard-{len(self.logs)}.log"
        with log.open("wb") as out:
            argv = self.guard("--prometheus", self.prometheus, "--interval", str(INTERVAL),
                              "--listen", self.listen)  # fmt: skip
            self.guards.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                                env=self.env))  # fmt: skip
        self.logs.append(log)

    def stop_guard(self) -> None:
        process = self.guards[-1]
        process.terminate()
        process.wait(timeout=10)

    def stop_guards(self) -> None:
        for process in self.guards:
            if process.poll() is None:
                process.terminate()
            process.wait(timeout=10)

    def lines(self, flag: str, log: int | None = None) -> list[str]:
        paths = self.logs if log is None else [self.logs[log]]
        marker = f"guard {flag}: "
        return [
            line.split(marker, 1)[1]
            for path in paths
            for line in path.read_text().splitlines()
            if marker in line
        ]

    def flag(self, key: str) -> dict[str, Any]:
        document = json.loads(self.store.read().document or b"{}")
        flag: dict[str, Any] = document["flags"][key]
        return flag


def _share(flag: dict[str, Any]) -> float | None:
    targeting = flag.get("targeting")
    return None if not targeting else float(dict(targeting["fractional"])["on"])


def _wait(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)
    return found


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    if shutil.which("prometheus") is None or ALERTMANAGER is None:
        pytest.skip("needs prometheus and prometheus-alertmanager (.ci/install-services.sh)")
    directory = tmp_path_factory.mktemp("guard")
    multiproc = directory / "multiproc"
    multiproc.mkdir()
    launcher = _Launcher(directory)
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(running_redis(directory))
        store = stack.enter_context(FlagStore(redis.url))
        from flagwire._control import publish

        publish.publish(store, DOCUMENT, author="alice", message="start four rollouts")
        with pytest.MonkeyPatch.context() as env:
            env.setenv("FLAGWIRE_REDIS_URL", redis.url)
            env.setenv("PROMETHEUS_MULTIPROC_DIR", str(multiproc))
            env.setenv("GUARD_BAD_FLAGS", "bad-checkout,alert-checkout")
            service = launcher.start("flask", directory / "unused.json", app_dir=TEST_APPS,
                                     module="guard_flask", workers=2)  # fmt: skip
        stack.callback(launcher.close)
        listen = f"127.0.0.1:{_free_port()}"
        alertmanager = stack.enter_context(_alertmanager(directory, f"http://{listen}/alerts"))
        target = service.url.removeprefix("http://")
        prometheus = stack.enter_context(_prometheus(directory, target, alertmanager, listen))
        env_vars = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
        rig = Rig(redis, store, service, prometheus, directory, env_vars, listen)
        traffic = Traffic(service)
        traffic.start()
        stack.callback(traffic.close)
        stack.callback(rig.stop_guards)
        _run(rig)
        yield rig


def _run(rig: Rig) -> None:
    """Guard the four rollouts; restart the guard once good-search is past its first step."""
    rig.start_guard()
    _wait("good-search at 25%", lambda: _share(rig.flag("good-search")) == 25, 60)
    rig.stop_guard()
    rig.start_guard()
    _wait("good-search at 100%", lambda: _share(rig.flag("good-search")) == 100, 60)
    _wait(f"{AA_INTERVALS} judgements of aa-banner",
          lambda: len([x for x in rig.lines("aa-banner") if "healthy" in x]) >= AA_INTERVALS,
          90)  # fmt: skip
    _wait("the alert's kill", lambda: _share(rig.flag("alert-checkout")) is None, 30)


def test_a_bad_variant_is_rolled_back_within_three_intervals(rig: Rig) -> None:
    lines = rig.lines("bad-checkout")
    rollback = next(i for i, line in enumerate(lines) if line.startswith("rollback"))
    judged = [line for line in lines[:rollback] if "too little data" not in line]
    # The first tick with min_requests of both (after the start stamp) or one of the next two.
    assert len(judged) <= 1 + 2, lines[: rollback + 1]  # the start stamp + at most 2 holds
    assert "regressed" in lines[rollback] and "all traffic to off" in lines[rollback]
    assert _share(rig.flag("bad-checkout")) == 0


def test_every_worker_serves_the_control_after_the_rollback(rig: Rig) -> None:
    seen: dict[int, set[str]] = {}
    deadline = time.monotonic() + 10
    while (len(seen) < 2 or any(v != {"off"} for v in seen.values())) and (
        time.monotonic() < deadline
    ):
        seen = {}
        for i in range(40):  # new connections, so both workers answer
            body = httpx.get(f"{rig.service.url}/flag/bad-checkout", trust_env=False,
                             headers={"x-user-id": f"after-{i}"}).json()  # fmt: skip
            seen.setdefault(body["pid"], set()).add(body["variant"])
    assert len(seen) == 2 and all(v == {"off"} for v in seen.values()), seen


def test_history_shows_the_rollback_with_its_reason(rig: Rig) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "flagwire", "history", "--redis", rig.redis.url],
        capture_output=True, text=True, env=rig.env, check=True, timeout=30,
    ).stdout  # fmt: skip
    (line,) = [x for x in out.splitlines() if "guard rollback bad-checkout" in x]
    assert "flagwire-guard@" in line and "rollback [10% -> 0%]" in line
    assert re.search(r"5xx \d+\.\d+% vs|p95 \d+ms vs", line), line


def test_a_healthy_rollout_walks_every_step_and_resumes_after_a_restart(rig: Rig) -> None:
    steps = [line for line in rig.lines("good-search") if line.startswith(("start", "advance"))]
    assert [s.split("]")[0] for s in steps] == [
        "start [10%",
        "advance [10% -> 25%",
        "advance [25% -> 50%",
        "advance [50% -> 100%",
    ]
    first = rig.lines("good-search", log=1)[0]
    assert not first.startswith("start") and "[25%" in first  # resumed, no new stamp
    baked = [float(re.search(r"healthy (\d+)s >= bake 4s", line).group(1))  # type: ignore[union-attr]
             for line in steps[1:]]  # fmt: skip
    assert all(b >= 4 for b in baked), steps
    # The first step also waits for min_requests; the later ones have the data at once
    # (a few intervals of slack: the guard's restart, Prometheus's scrape).
    assert all(b <= 4 + 4 * INTERVAL for b in baked[1:]), steps


def test_an_aa_rollout_is_never_rolled_back(rig: Rig) -> None:
    lines = rig.lines("aa-banner")
    assert len([x for x in lines if "healthy" in x]) >= AA_INTERVALS
    assert not [x for x in lines if x.startswith(("rollback", "kill", "pause"))]
    assert _share(rig.flag("aa-banner")) == 50


def test_the_shipped_alert_through_alertmanager_makes_the_guard_act(rig: Rig) -> None:
    lines = rig.lines("alert-checkout")
    (kill,) = [x for x in lines if x.startswith("kill")]
    assert "Alertmanager: FlagwireVariant" in kill
    assert "alert-checkout=on in job shop" in kill
    flag = rig.flag("alert-checkout")
    assert _share(flag) is None and flag["defaultVariant"] == "off"
    assert all("regressed" not in x for x in lines)  # its own judgement never had the data


def test_prometheus_unreachable_changes_nothing_and_says_so(rig: Rig) -> None:
    before = rig.store.read()
    done = subprocess.run(
        rig.guard("--prometheus", f"http://127.0.0.1:{_free_port()}", "--once"),
        capture_output=True, text=True, env=rig.env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "aa-banner: error [50%]: cannot read Prometheus" in done.stdout
    assert "nothing changed" in done.stdout
    assert rig.store.read() == before


def test_the_guard_exports_its_metrics(rig: Rig) -> None:
    with urllib.request.urlopen(f"http://{rig.listen}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'flagwire_guard_step_percent{flag="good-search"} 100.0' in text
    assert 'flagwire_guard_judgements_total{flag="aa-banner",outcome="healthy"}' in text


def test_the_dashboard_shows_the_steps_and_annotates_the_actions(rig: Rig) -> None:
    dashboard = json.loads((REPO / "integrations/grafana/flagwire-dashboard.json").read_text())
    (step,) = [p for p in dashboard["panels"] if p.get("title") == "Rollout step per flag"]
    (annotation,) = [a for a in dashboard["annotations"]["list"] if a["name"] == "Guard actions"]
    client = PrometheusClient(rig.prometheus)

    def steps() -> dict[str, float]:
        found = client.query(step["targets"][0]["expr"])
        return {s.labels["flag"]: s.value for s in found}

    # The guard is scraped every second: the panel shows each flag where it stands, and
    # the annotation query finds its actions (the first of each kind included, whose
    # counter series starts at 1).
    expected = {"good-search": 100, "bad-checkout": 0, "aa-banner": 50, "alert-checkout": -1}
    _wait("the steps on the panel", lambda: steps() == expected, 10)
    acted = {(s.labels["flag"], s.labels["action"]) for s in client.query(
        annotation["expr"].replace("2m", "10m"))}  # fmt: skip
    # Every action of the running guard (the first one's last actions may have gone
    # unscraped before it stopped: the step panel still shows where they left the flag).
    made = {
        (flag, line.split(" ", 1)[0])
        for flag in FLAGS
        for line in rig.lines(flag, log=1)
        if line.split(" ", 1)[0] in ("start", "advance", "rollback", "kill", "pause")
    }
    assert ("good-search", "advance") in made
    assert made <= acted, (made, acted)

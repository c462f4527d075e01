"""The guard's controller on a flag file and on a real redis-server, with the Prometheus
figures given by the test (the end-to-end tests read a real Prometheus): it starts,
bakes and steps a healthy rollout to the end, acts on a regression as the plan says,
changes nothing on thin data or without Prometheus, resumes after a restart, and takes
Alertmanager's webhook."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flagwire import FlagSet, FlagsetError
from flagwire._analysis.reader import PrometheusClient
from flagwire._cli.main import main
from flagwire._control import guard as guard_module
from flagwire._control import publish as api
from flagwire._control.alerts import AlertListener
from flagwire._control.guard import Guard
from flagwire._control.guard_metrics import GuardMetrics
from flagwire._control.store import FlagStore
from flagwire._control.targets import FileTarget, RedisTarget
from guard_support import figures, guarded_document
from redis_support import RedisServer, free_port, redis_server

__all__ = ["redis_server"]

HEALTHY = [figures("on", 1000, 1), figures("off", 20000, 20)]
FAILING = [figures("on", 1000, 100), figures("off", 20000, 20)]
THIN = [figures("on", 100), figures("off", 20000)]


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Served:
    """What Prometheus answers (the last of ``answers``), and the windows asked for."""

    def __init__(self) -> None:
        self.answers = [HEALTHY]
        self.asked: list[str] = []


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Served:
    found = Served()

    def read(client: Any, *, flag: str, since: str, events: Any, at: float) -> Any:
        assert flag == "new-checkout" and events == ()
        found.asked.append(since)
        return found.answers[-1]

    monkeypatch.setattr(guard_module, "read_figures", read)
    return found


@pytest.fixture
def flag_file(tmp_path: Path) -> Path:
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(guarded_document(1, **{"rollout.bake": 60})))
    return path


def _guard(target: Any, clock: Clock, **kwargs: Any) -> Guard:
    prometheus = PrometheusClient(f"http://127.0.0.1:{free_port()}", timeout=1)
    return Guard(target, prometheus, clock=clock, **kwargs)


def _flag(path: Path) -> dict[str, Any]:
    flag: dict[str, Any] = json.loads(path.read_text())["flags"]["new-checkout"]
    return flag


def _share(flag: dict[str, Any]) -> Any:
    pairs = dict(flag["targeting"]["fractional"])
    return pairs["on"]


def test_a_healthy_rollout_is_walked_to_the_end_at_the_bake_time(
    flag_file: Path, served: Served
) -> None:
    clock = Clock()
    metrics = GuardMetrics()
    guard = _guard(FileTarget(flag_file), clock, metrics=metrics)
    (start,) = guard.tick()
    assert (start.action, start.applied) == ("start", True)
    assert _flag(flag_file)["metadata"]["guard.step"] == 1
    shares = [1]
    for _ in range(4):
        clock.now += 30
        (hold,) = guard.tick()
        assert hold.action == "hold" and "baking 30/60s" in hold.reason
        clock.now += 30
        (advance,) = guard.tick()
        assert advance.action == "advance", advance
        assert "healthy 60s >= bake 60s" in advance.reason
        shares.append(_share(_flag(flag_file)))
    assert shares == [1, 5, 25, 50, 100]
    (done,) = guard.tick()
    assert done.action == "complete"
    registry = metrics.registry
    assert registry.get_sample_value("flagwire_guard_step_percent", {"flag": "new-checkout"}) == 100
    advances = {"flag": "new-checkout", "action": "advance"}
    assert registry.get_sample_value("flagwire_guard_actions_total", advances) == 4
    # Each judgement read the step's data so far: 30 s, then 60 s.
    assert served.asked[:2] == ["30s", "60s"]


def test_a_regression_is_rolled_back_with_its_reason(flag_file: Path, served: Served) -> None:
    clock = Clock()
    guard = _guard(FileTarget(flag_file), clock)
    guard.tick()
    served.answers.append(FAILING)
    clock.now += 10
    (decision,) = guard.tick()
    assert decision.action == "rollback" and decision.applied
    assert decision.new_share == 0
    assert "all traffic to off: regressed: 5xx 10.00% vs 0.10%" in decision.reason
    assert _share(_flag(flag_file)) == 0
    clock.now += 1000
    (after,) = guard.tick()
    assert after.action == "hold" and "serves 0%" in after.reason


@pytest.mark.parametrize("action", ["kill", "pause"])
def test_kill_and_pause(tmp_path: Path, served: Served, action: str) -> None:
    path = tmp_path / "flags.yaml"  # a YAML file stays YAML
    path.write_text(json.dumps(guarded_document(5, **{"guard.action": action})))
    clock = Clock()
    guard = _guard(FileTarget(path), clock)
    guard.tick()
    served.answers.append(FAILING)
    clock.now += 10
    (decision,) = guard.tick()
    assert decision.action == action and decision.applied
    flag = FlagSet.from_path(path).definition("new-checkout")
    assert flag is not None
    assert not path.read_text().lstrip().startswith("{")
    if action == "kill":
        assert flag.targeting is None and flag.default_variant == "off"
    else:
        assert "5xx 10.00%" in str(flag.metadata["guard.paused"])
        assert _share(_flag_yaml(path)) == 5  # held where it was
    clock.now += 1000
    (after,) = guard.tick()
    assert after.action == "hold" and not after.applied


def _flag_yaml(path: Path) -> dict[str, Any]:
    import yaml

    flag: dict[str, Any] = yaml.safe_load(path.read_text())["flags"]["new-checkout"]
    return flag


def test_thin_data_and_an_unreachable_prometheus_change_nothing(
    flag_file: Path, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    metrics = GuardMetrics()
    guard = _guard(FileTarget(flag_file), clock, metrics=metrics)
    guard.tick()
    before = flag_file.read_bytes()
    served.answers.append(THIN)
    clock.now += 3600
    (thin,) = guard.tick()
    assert thin.action == "hold" and "too little data: on has 100 of 500" in thin.reason
    monkeypatch.undo()  # the real reader, against a port nobody listens on
    (down,) = guard.tick()
    assert down.action == "error"
    assert "cannot read Prometheus" in down.reason and "nothing changed" in down.reason
    assert flag_file.read_bytes() == before
    errors = metrics.registry.get_sample_value(
        "flagwire_guard_errors_total", {"kind": "prometheus"}
    )
    assert errors == 1


def test_a_restarted_guard_resumes_at_the_step_in_force(flag_file: Path, served: Served) -> None:
    clock = Clock()
    _guard(FileTarget(flag_file), clock).tick()  # start at 1%
    clock.now += 60
    (advance,) = _guard(FileTarget(flag_file), clock).tick()  # a new process
    assert advance.action == "advance" and _share(_flag(flag_file)) == 5
    clock.now += 45
    (hold,) = _guard(FileTarget(flag_file), clock).tick()  # and another: 45 s into the bake
    assert hold.action == "hold" and "baking 45/60s" in hold.reason


def test_a_dry_run_says_what_it_would_do_and_writes_nothing(
    flag_file: Path, served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    before = flag_file.read_bytes()
    args = ["guard", "--prometheus", "http://127.0.0.1:9", "--file", str(flag_file)]
    assert main([*args, "--once", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "guard new-checkout: would start [1%]: watching on at 1%" in out
    assert flag_file.read_bytes() == before


def test_a_change_made_meanwhile_is_not_overwritten(flag_file: Path, served: Served) -> None:
    target = FileTarget(flag_file)
    snapshot = target.read()
    flag_file.write_text(json.dumps(guarded_document(2)))  # someone published
    guard = _guard(target, Clock())
    guard.target = type("Stale", (), {"read": lambda self: snapshot,
                                      "write": target.write, "kill": target.kill,
                                      "name": "stale"})()  # fmt: skip
    (decision,) = guard.tick()
    assert decision.action == "error" and "changed meanwhile" in decision.reason
    assert _share(_flag(flag_file)) == 2


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[FlagStore]:
    with FlagStore(redis_server.url) as store:
        yield store


def test_in_redis_every_change_is_in_the_history_and_can_be_undone(
    store: FlagStore,
    redis_server: RedisServer,
    served: Served,
    capsys: pytest.CaptureFixture[str],
) -> None:
    api.publish(store, guarded_document(5), author="alice", message="start at 5%")
    clock = Clock()
    guard = _guard(RedisTarget(store, author="flagwire-guard@test"), clock)
    guard.tick()
    served.answers.append(FAILING)
    clock.now += 10
    (rollback,) = guard.tick()
    assert rollback.revision == 3
    entry = store.history()[-1]
    assert entry.fields["action"] == "guard rollback"
    assert entry.fields["author"] == "flagwire-guard@test"
    assert "new-checkout: rollback [5% -> 0%]" in entry.fields["message"]
    assert "5xx 10.00% vs 0.10%" in entry.fields["message"]
    assert main(["history", "--redis", redis_server.url]) == 0
    assert "guard rollback new-checkout" in capsys.readouterr().out
    assert main(["rollback", "--redis", redis_server.url, "-m", "false alarm"]) == 0
    assert _share(json.loads(store.read().document or b"")["flags"]["new-checkout"]) == 5


def test_publish_refuses_a_broken_plan(store: FlagStore) -> None:
    with pytest.raises(FlagsetError, match=r"rollout\.steps must increase"):
        api.publish(store, guarded_document(**{"rollout.steps": "5,1"}))


def _post(url: str, body: Any, **headers: str) -> httpx.Response:
    return httpx.post(url, json=body, headers=headers, trust_env=False, timeout=5)


def _alert(name: str, variant: str = "on", status: str = "firing") -> dict[str, Any]:
    labels = {"alertname": name, "flag": "new-checkout", "variant": variant, "job": "shop"}
    return {"version": "4", "status": status, "alerts": [{"status": status, "labels": labels}]}


@pytest.fixture
def listening(flag_file: Path) -> Iterator[Callable[..., AlertListener]]:
    started: list[AlertListener] = []

    def start(token: str | None = None) -> AlertListener:
        guard = _guard(FileTarget(flag_file), Clock(), metrics=GuardMetrics())
        listener = AlertListener(guard, "127.0.0.1", 0, token=token).start()
        started.append(listener)
        return listener

    yield start
    for listener in started:
        listener.close()


def test_alertmanager_webhook_applies_the_action(
    flag_file: Path, listening: Callable[..., AlertListener]
) -> None:
    listener = listening()
    url = f"http://127.0.0.1:{listener.port}/alerts"
    resolved = _post(url, _alert("FlagwireVariantErrorRegression", status="resolved")).json()
    assert resolved["alerts"][0]["action"] == "ignore"
    other = _post(url, _alert("FlagwireVariantErrorRegression", variant="off")).json()
    assert other["alerts"][0]["action"] == "ignore"
    assert _share(_flag(flag_file)) == 1
    done = _post(url, _alert("FlagwireVariantLatencyRegression")).json()["alerts"][0]
    assert done["action"] == "rollback"
    assert "FlagwireVariantLatencyRegression firing for new-checkout=on in job shop" in (
        done["reason"])  # fmt: skip
    assert _share(_flag(flag_file)) == 0
    metrics = httpx.get(f"http://127.0.0.1:{listener.port}/metrics", trust_env=False).text
    assert 'flagwire_guard_actions_total{action="rollback",flag="new-checkout"} 1.0' in metrics
    assert _post(url, {"nope": 1}).status_code == 400


def test_a_listener_with_a_token_refuses_requests_without_it(
    flag_file: Path, listening: Callable[..., AlertListener]
) -> None:
    listener = listening(token="s3cret")
    url = f"http://127.0.0.1:{listener.port}/"
    assert _post(url, _alert("FlagwireVariantErrorRegression")).status_code == 401
    assert _share(_flag(flag_file)) == 1
    ok = _post(url, _alert("FlagwireVariantErrorRegression"), Authorization="Bearer s3cret")
    assert ok.status_code == 200 and _share(_flag(flag_file)) == 0

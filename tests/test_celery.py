"""flagwire.celery: tasks carry the publishing request's flags and run with them pinned.

A real worker (prefork pool, 2 children) on a private redis-server runs the tasks of
``tests/e2e_apps/celery_app.py``; its flag file rolls out differently from the publisher's,
so without propagation many users would get other variants in the task.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

celery = pytest.importorskip("celery", reason="needs Celery: pip install -e '.[celery]'")

from celery.signals import before_task_publish  # noqa: E402

import flagwire.celery  # noqa: E402
from flagwire import FlagSet, Propagation, RequestFlags, activate  # noqa: E402
from frameworks_support import (  # noqa: E402
    KEYS,
    Worker,
    document,
    redis_url,
    start_worker,
    stop_worker,
)

__all__ = ["redis_url"]  # a fixture

PUBLISHER = FlagSet.from_mapping(document("web-1", 30, (60, 20, 20)), source="web.json")
WORKER_DOCUMENT = document("worker-1", 70, (20, 20, 60))
USERS = [f"user-{n}" for n in range(40)]


@pytest.fixture
def publisher() -> Iterator[celery.Celery]:
    """An app that publishes by task name, with flagwire set up (signed with KEYS)."""
    app = celery.Celery("publisher", broker="memory://", backend="cache+memory://")
    undo = flagwire.celery.setup(app, source=PUBLISHER, propagation=Propagation(keys=[KEYS]))
    yield app
    undo()


@pytest.fixture
def published() -> Iterator[list[dict[str, Any]]]:
    """The headers of every message published during the test."""
    seen: list[dict[str, Any]] = []

    def capture(headers: dict[str, Any] | None = None, **_: Any) -> None:
        seen.append(dict(headers or {}))

    before_task_publish.connect(capture)
    yield seen
    before_task_publish.disconnect(capture)


def in_request(user: str) -> RequestFlags:
    """A web request's flags for ``user``, with both flags decided (as a view would)."""
    flags = RequestFlags(PUBLISHER, {"targetingKey": user})
    flags.boolean("rollout", False)
    flags.string("color", "none")
    return flags


def test_task_published_in_a_request_carries_its_signed_flags(
    publisher: celery.Celery, published: list[dict[str, Any]]
) -> None:
    flags = in_request("user-1")
    with activate(flags):
        publisher.send_task("e2e.decide")
    publisher.send_task("e2e.decide")  # outside any request
    inside, outside = published
    baggage = inside[flagwire.celery.HEADER]
    decoded = Propagation(keys=[KEYS]).decode(baggage)
    assert decoded.trusted and decoded.targeting_key == "user-1"
    assert dict(decoded.assignments) == flags.outbound()[0]
    assert flagwire.celery.HEADER not in outside


def test_setup_twice_is_an_error(publisher: celery.Celery) -> None:
    with pytest.raises(flagwire.ConfigError, match="already"):
        flagwire.celery.setup(publisher, source=PUBLISHER)


def test_missing_celery_names_the_extra() -> None:
    import subprocess

    code = "import sys; sys.modules['celery'] = None; import flagwire.celery"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert 'pip install -e ".[celery]"' in result.stderr


# -- a real worker ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("celery")
    (directory / "flags.json").write_text(json.dumps(WORKER_DOCUMENT))
    return directory


@pytest.fixture(scope="module")
def worker(redis_url: str, worker_dir: Path) -> Iterator[Worker]:
    started = start_worker(
        worker_dir,
        {
            "CELERY_BROKER": f"{redis_url}/0",
            "CELERY_BACKEND": f"{redis_url}/1",
            "FLAGWIRE_FLAGS": str(worker_dir / "flags.json"),
            "FLAGWIRE_PROPAGATION_KEYS": KEYS,
            "FLAGWIRE_RECORDS": str(worker_dir / "records.jsonl"),
        },
    )
    yield started
    stop_worker(started)


@pytest.fixture
def client(redis_url: str, worker: Worker) -> Iterator[celery.Celery]:
    app = celery.Celery("client", broker=f"{redis_url}/0", backend=f"{redis_url}/1")
    undo = flagwire.celery.setup(app, source=PUBLISHER, propagation=Propagation(keys=[KEYS]))
    yield app
    undo()


def records(worker_dir: Path) -> list[dict[str, Any]]:
    path = worker_dir / "records.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.e2e
def test_worker_runs_tasks_with_the_requests_flags_pinned(
    client: celery.Celery, worker: Worker, worker_dir: Path
) -> None:
    results = []
    for user in USERS:
        flags = in_request(user)
        with activate(flags):
            results.append((user, flags, client.send_task("e2e.decide")))
    worker_flags = FlagSet.from_mapping(WORKER_DOCUMENT)
    would_differ = 0
    pids = set()
    for user, flags, result in results:
        seen = result.get(timeout=15)
        pids.add(seen["pid"])
        assert seen["user"] == user
        assert (seen["rollout"], seen["color"]) == (
            flags.boolean("rollout"),
            flags.string("color"),
        )
        assert seen["reasons"] == {"rollout": "PROPAGATED", "color": "PROPAGATED"}
        own = worker_flags.decide("color", {"targetingKey": user}).value
        would_differ += own != seen["color"]
    assert would_differ >= 5  # the worker alone would have decided otherwise for many
    assert worker.process.pid not in pids  # run in the pool's forked children
    wait_for(lambda: len(records(worker_dir)) >= len(USERS))
    decide = [r for r in records(worker_dir) if r["route"] == "e2e.decide"]
    assert {(r["method"], r["status"]) for r in decide} == {("TASK", 200)}
    assert all(set(r["flags"]) == {"rollout", "color"} for r in decide)


@pytest.mark.e2e
def test_tasks_published_outside_a_request_or_forged_decide_for_themselves(
    client: celery.Celery,
) -> None:
    alone = client.send_task("e2e.decide").get(timeout=15)
    assert alone["user"] is None
    assert alone["reasons"]["color"] != "PROPAGATED"
    good = Propagation(keys=[KEYS]).header({"color": "green"}, "user-7", "web-1")
    forged = good.replace("color~green", "color~blue")
    assert forged != good
    unsigned = "fw.ver=1,fw.tk=user-7,fw.f.color=blue"
    for header in (forged, unsigned, "fw.garbage", "x" * 9000):
        seen = client.send_task("e2e.decide", headers={flagwire.celery.HEADER: header})
        body = seen.get(timeout=15)
        assert body["user"] is None and body["reasons"]["color"] != "PROPAGATED"
    trusted = client.send_task("e2e.decide", headers={flagwire.celery.HEADER: good})
    assert trusted.get(timeout=15)["color"] == "green"  # the control: a signed one counts


@pytest.mark.e2e
def test_a_failing_task_is_recorded_and_a_task_passes_its_flags_on(
    client: celery.Celery, worker_dir: Path
) -> None:
    with pytest.raises(RuntimeError, match="on purpose"):
        client.send_task("e2e.fail").get(timeout=15, propagate=True)
    wait_for(lambda: any(r["route"] == "e2e.fail" for r in records(worker_dir)))
    failed = next(r for r in records(worker_dir) if r["route"] == "e2e.fail")
    assert failed["status"] == 500
    flags = in_request("user-3")
    with activate(flags):
        parent = client.send_task("e2e.chain").get(timeout=15)
    child = client.AsyncResult(parent["child"]).get(timeout=15)
    assert child["user"] == parent["user"] == "user-3"
    assert child["color"] == parent["color"] == flags.string("color")


@pytest.mark.e2e
def test_forked_children_pick_up_a_flag_file_edit(client: celery.Celery, worker_dir: Path) -> None:
    edited = document("worker-2", 70, (20, 20, 60))
    tmp = worker_dir / "flags.tmp"
    tmp.write_text(json.dumps(edited))
    os.replace(tmp, worker_dir / "flags.json")
    versions: set[str] = set()

    def all_children_updated() -> bool:
        batch = [client.send_task("e2e.decide") for _ in range(6)]
        seen = {r.get(timeout=15)["version"] for r in batch}
        versions.update(seen)
        return all(v.startswith("worker-2") for v in seen)

    wait_for(all_children_updated, timeout=15)

"""Fixtures and helpers for the Django, Celery and gRPC tests: a Redis server, a Celery
worker (prefork pool) and flag documents, all on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from test_e2e import REPO, TEST_APPS, _free_port, _stop

HOST = "127.0.0.1"
KEYS = "frameworks-secret-2026-0123456789abcdef"
COLORS = ("red", "green", "blue")


def document(version: str, rollout_on: int, colors: Sequence[int]) -> dict[str, Any]:
    """``rollout`` (boolean) on for ``rollout_on`` % of users, ``color`` split three ways."""
    return {
        "metadata": {"version": version},
        "flags": {
            "rollout": {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "off",
                "targeting": {"fractional": [["on", rollout_on], ["off", 100 - rollout_on]]},
            },
            "color": {
                "state": "ENABLED",
                "variants": {name: name for name in COLORS},
                "defaultVariant": "red",
                "targeting": {"fractional": [[n, w] for n, w in zip(COLORS, colors, strict=True)]},
            },
        },
    }


def app_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a test app process: src and the test apps importable."""
    path = [str(REPO / "src"), str(TEST_APPS), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(p for p in path if p),
        **extra,
    }


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on a free loopback port (no persistence), for Celery."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    directory = tmp_path_factory.mktemp("redis")
    port = _free_port()
    log = (directory / "redis.log").open("wb")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
         "--dir", str(directory)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection((HOST, port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail("redis-server did not start: " + (directory / "redis.log").read_text())
            time.sleep(0.05)
        yield f"redis://{HOST}:{port}"
    finally:
        _stop(process)
        log.close()


class Worker:
    """A Celery worker process (prefork pool) for ``tests/e2e_apps/celery_app.py``."""

    def __init__(self, env: dict[str, str], log: Path, process: subprocess.Popen[bytes]):
        self.env, self.log, self.process = env, log, process

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def start_worker(directory: Path, env: Mapping[str, str], concurrency: int = 2) -> Worker:
    """Start a worker and wait until it runs tasks."""
    full = app_env(env)
    log = directory / "celery-worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool", "prefork",
             "--concurrency", str(concurrency), "--loglevel", "INFO", "--without-gossip",
             "--without-mingle", "--without-heartbeat", "-n", f"e2e-{os.getpid()}@%h"],
            stdout=out, stderr=subprocess.STDOUT, env=full, cwd=directory,
            start_new_session=True,
        )  # fmt: skip
    worker = Worker(full, log, process)
    deadline = time.monotonic() + 30
    while "ready." not in worker.output():
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            pytest.fail("the Celery worker did not start:\n" + worker.output()[-3000:])
        time.sleep(0.1)
    return worker


def stop_worker(worker: Worker) -> None:
    _stop(worker.process)

"""A real ``redis-server`` for the tests: a free loopback port, a temporary directory, no
persistence; stoppable and restartable on the same port. Tests that need it skip, saying
why, when the binary is not installed (``bash .ci/install-services.sh``)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HOST = "127.0.0.1"
BINARY = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process on ``port`` (kept across restarts)."""

    def __init__(self, directory: Path, config: Path | None = None) -> None:
        assert BINARY is not None
        self.directory = directory
        self.config = [] if config is None else [str(config)]
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        assert self.process is None, "already running"
        for _ in range(3):
            log = (self.directory / f"redis-{self.port}.log").open("ab")
            self.process = subprocess.Popen(
                [BINARY or "redis-server", *self.config, "--port", str(self.port), "--bind", HOST,
                 *([] if self.config else ["--save", "", "--appendonly", "no"]),
                 "--dir", str(self.directory)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            log.close()
            if self._wait_until_up():
                return
            self.stop()
            self.port = free_port()  # someone took the port meanwhile
        pytest.fail(f"redis-server did not start; see {self.directory}")

    def _wait_until_up(self) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.2):
                return True
            time.sleep(0.02)
        return False

    def stop(self, *, save: bool = False) -> None:
        """Stop it. Everything in it is lost, unless ``save``: then it is written to
        ``dump.rdb`` first and read back by the next :meth:`start` (a Redis with
        persistence restarting)."""
        if self.process is None:
            return
        if save:
            import redis

            with contextlib.suppress(redis.ConnectionError):
                self.client().shutdown(save=True)
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None

    def client(self) -> Any:
        import redis

        return redis.Redis(host=HOST, port=self.port, socket_timeout=5)


def require_redis_server() -> None:
    if BINARY is None:
        pytest.skip("redis-server is not installed (bash .ci/install-services.sh installs it)")


@contextlib.contextmanager
def running_redis(directory: Path) -> Iterator[RedisServer]:
    require_redis_server()
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh, empty redis-server for one test."""
    with running_redis(tmp_path) as server:
        yield server

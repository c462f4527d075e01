"""``integrations/redis/flagwire-redis.conf`` on a real redis-server: the service user can
read and subscribe but not write; the publisher user publishes, kills and reads history.
And a Sentinel URL, through a real ``redis-server --sentinel``."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from flagwire import RedisSource
from flagwire._control import publish as api
from flagwire._control.store import FlagStore
from redis_support import BINARY, HOST, RedisServer, free_port, require_redis_server, running_redis

CONF = Path(__file__).resolve().parents[1] / "integrations" / "redis" / "flagwire-redis.conf"
DOC = {"flags": {"f": {"state": "ENABLED", "variants": {"a": 1, "b": 2}, "defaultVariant": "a"}}}


def test_the_operator_settings_and_users_work(tmp_path: Path) -> None:
    require_redis_server()
    import redis

    server = RedisServer(tmp_path, CONF)
    server.start()
    try:
        base = f"{HOST}:{server.port}/0"
        with FlagStore(f"redis://flagwire-publisher:change-me-publisher@{base}") as store:
            api.publish(store, DOC, message="first")
            source = RedisSource(f"redis://flagwire-service:change-me-service@{base}")
            try:
                assert source.status.ok and source.flagset.evaluate("f", {}).variant == "a"
                api.kill(store, "f", variant="b")
                deadline = time.monotonic() + 2
                while source.flagset.evaluate("f", {}).variant != "b":
                    assert time.monotonic() < deadline, source.status
                    time.sleep(0.01)
            finally:
                source.close()
            assert [e.fields["action"] for e in store.history()] == ["publish", "kill"]
        service = redis.Redis(
            host=HOST, port=server.port, username="flagwire-service", password="change-me-service"
        )
        with pytest.raises(redis.exceptions.NoPermissionError):
            service.set("flagwire:flags", json.dumps(DOC))
        with socket.create_connection((HOST, server.port), timeout=5) as anonymous:
            anonymous.sendall(b"PING\r\n")
            assert anonymous.recv(100).startswith(b"-NOAUTH")  # the default user is off
    finally:
        server.stop()


def test_sentinel_urls_reach_the_master_it_names(tmp_path: Path) -> None:
    require_redis_server()
    with running_redis(tmp_path) as master:
        sentinel_port = free_port()
        conf = tmp_path / "sentinel.conf"
        conf.write_text(
            f"port {sentinel_port}\nbind {HOST}\ndir {tmp_path}\n"
            f"sentinel monitor main {HOST} {master.port} 1\n"
        )
        with (tmp_path / "sentinel.log").open("wb") as log:
            sentinel = subprocess.Popen(
                [str(BINARY), str(conf), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
            )
        try:
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError), socket.create_connection((HOST, sentinel_port)):
                    break
                assert time.monotonic() < deadline, (tmp_path / "sentinel.log").read_text()
                time.sleep(0.05)
            url = f"redis+sentinel://{HOST}:{sentinel_port}/main/0"
            with FlagStore(url) as store:
                api.publish(store, DOC)
                source = RedisSource(url)
                try:
                    assert source.flagset.evaluate("f", {}).variant == "a"
                    api.kill(store, "f", variant="b")
                    deadline = time.monotonic() + 2
                    while source.flagset.evaluate("f", {}).variant != "b":
                        assert time.monotonic() < deadline, source.status
                        time.sleep(0.01)
                finally:
                    source.close()
        finally:
            sentinel.terminate()
            sentinel.wait(timeout=5)

"""RedisSource against a real redis-server on loopback: the first read, the push, an
invalid document, Redis going down and coming back, the disk cache, fork, credentials."""

from __future__ import annotations

import logging
import multiprocessing
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flagwire import ConfigError, FlagSet, RedisSource, SourceError
from flagwire._control.publish import publish
from flagwire._control.store import FlagStore
from flagwire._sources.redis_client import RedisKeys, display_redis_url, require_redis
from redis_support import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture

Document = dict[str, Any]
MakeSource = Callable[..., RedisSource]
WaitFor = Callable[..., None]


def _flags(variant: str = "off", version: str = "1") -> Document:
    return {
        "metadata": {"version": version},
        "flags": {
            "kill-me": {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": variant,
            }
        },
    }


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[FlagStore]:
    with FlagStore(redis_server.url) as store:
        yield store


@pytest.fixture
def make_source(redis_server: RedisServer) -> Iterator[MakeSource]:
    sources: list[RedisSource] = []

    def make(url: str | None = None, **options: Any) -> RedisSource:
        options.setdefault("max_backoff", 0.2)
        source = RedisSource(url or redis_server.url, **options)
        sources.append(source)
        return source

    yield make
    for source in sources:
        source.close()


def _variant(source: RedisSource) -> str | None:
    return source.flagset.evaluate("kill-me", {}, True).variant


def test_starts_from_the_document_in_redis(store: FlagStore, make_source: MakeSource) -> None:
    publish(store, _flags("on"))
    source = make_source()
    assert _variant(source) == "on"
    assert source.status.ok
    assert source.revision == 1
    assert source.flagset.version_label == FlagSet.from_mapping(_flags("on")).version_label


def test_a_publish_is_pushed_to_the_source(
    store: FlagStore, make_source: MakeSource, wait_for: WaitFor
) -> None:
    publish(store, _flags("on"))
    source = make_source()
    changes: list[tuple[str | None, str | None]] = []
    source.subscribe(lambda old, new: changes.append((old.version, new.version)))
    wait_for(lambda: source.connected, what="the subscription")
    publish(store, _flags("off", version="2"))
    wait_for(lambda: _variant(source) == "off", timeout=1.0, what="the pushed change")
    assert changes == [("1", "2")]
    assert source.revision == 2
    assert source.status.ok


def test_an_invalid_document_never_replaces_the_set_in_force(
    redis_server: RedisServer, store: FlagStore, make_source: MakeSource, wait_for: WaitFor
) -> None:
    publish(store, _flags("on"))
    source = make_source()
    wait_for(lambda: source.connected, what="the subscription")
    client = redis_server.client()
    client.set("flagwire:flags", '{"flags": {"kill-me": {"state": "MAYBE"}}}')
    client.publish(store.keys.channel, "x")
    wait_for(lambda: not source.status.ok, what="the invalid document to be reported")
    assert _variant(source) == "on"
    assert "flagwire:flags" in (source.status.last_error or "")
    assert "MAYBE" in (source.status.last_error or "")
    # A direct write without a notification is found by the periodic re-read too.
    client.set("flagwire:flags", "not: [a flag set")
    assert source.refresh() is False
    assert _variant(source) == "on"
    publish(store, _flags("off", version="2"))  # the next valid publish is taken
    wait_for(lambda: _variant(source) == "off", what="the valid publish")
    assert source.status.ok


def test_a_missing_key_starts_empty_or_raises_in_strict_mode(make_source: MakeSource) -> None:
    source = make_source(key="team:flags")
    assert len(source.flagset) == 0
    assert not source.status.ok
    assert "'team:flags' does not exist" in (source.status.last_error or "")
    assert "flagwire publish FILE --redis URL --key team:flags" in (source.status.last_error or "")
    with pytest.raises(SourceError, match="team:flags"):
        make_source(key="team:flags", strict=True)


def test_redis_down_keeps_the_set_and_the_next_publish_is_seen_after_it_is_back(
    redis_server: RedisServer, store: FlagStore, make_source: MakeSource, wait_for: WaitFor
) -> None:
    publish(store, _flags("on"))
    source = make_source()
    wait_for(lambda: source.connected, what="the subscription")
    redis_server.stop()
    wait_for(lambda: not source.status.ok, what="the outage to be reported")
    assert "disconnected" in (source.status.last_error or "")
    assert _variant(source) == "on"
    redis_server.start()  # empty: it keeps nothing on disk
    wait_for(lambda: source.connected, timeout=3, what="the reconnection")
    assert _variant(source) == "on"  # an empty Redis changes nothing either
    publish(store, _flags("off", version="2"))
    wait_for(lambda: _variant(source) == "off", timeout=2, what="the publish after the outage")
    assert source.reconnects == 1
    assert source.status.ok


def test_a_start_while_redis_is_down_serves_the_disk_cache(
    redis_server: RedisServer, store: FlagStore, make_source: MakeSource, tmp_path: Path
) -> None:
    cache = tmp_path / "cache" / "flags.json"
    publish(store, _flags("on", version="7"))
    first = make_source(cache_path=cache)
    assert cache.exists()
    first.close()
    redis_server.stop()
    offline = make_source(cache_path=cache, timeout=0.5)
    assert offline.from_cache
    assert _variant(offline) == "on"
    assert offline.flagset.version == "7"
    assert offline.revision == 1
    assert not offline.status.ok
    assert offline.status.last_good_load is not None
    # A cache written for another key is not served.
    other = make_source(key="other:flags", cache_path=cache, timeout=0.5)
    assert len(other.flagset) == 0


def test_credentials_never_reach_logs_status_or_repr(
    redis_server: RedisServer, make_source: MakeSource, caplog: pytest.LogCaptureFixture
) -> None:
    redis_server.stop()
    url = f"redis://admin:s3cr3t-pw@127.0.0.1:{redis_server.port}/0"
    with caplog.at_level(logging.DEBUG, logger="flagwire"):
        source = make_source(url, timeout=0.3)
        source.close()
    shown = [r.getMessage() for r in caplog.records]
    assert shown, "the failure is logged"
    assert f"127.0.0.1:{redis_server.port}" in shown[0]
    for text in [*shown, repr(source), str(source.status)]:
        assert "s3cr3t" not in text and "admin" not in text, text


def _child(source: RedisSource, ready: Any, done: Any) -> None:
    ready.put(source.flagset.version)
    deadline = time.monotonic() + 5
    while source.flagset.version != "2" and time.monotonic() < deadline:
        time.sleep(0.01)
    done.put(source.flagset.version)


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_a_forked_child_listens_on_its_own_connection(
    store: FlagStore, make_source: MakeSource
) -> None:
    publish(store, _flags("on", version="1"))
    source = make_source()
    context = multiprocessing.get_context("fork")
    ready, done = context.Queue(), context.Queue()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        child = context.Process(target=_child, args=(source, ready, done))
        child.start()
    try:
        assert ready.get(timeout=5) == "1"
        publish(store, _flags("off", version="2"))
        assert done.get(timeout=6) == "2"
    finally:
        child.join(timeout=5)
    assert child.exitcode == 0
    assert source.flagset.version == "2"  # the parent still listens too


def test_bad_urls_and_options_are_named(make_source: MakeSource) -> None:
    with pytest.raises(ConfigError, match=r"'http://h:1/x' is not a Redis URL"):
        RedisSource("http://user:pw@h:1/x")
    with pytest.raises(ConfigError, match="max_backoff"):
        RedisSource("redis://127.0.0.1:1", max_backoff=0)
    with pytest.raises(ConfigError, match="name the Sentinel service"):
        RedisSource("redis+sentinel://h1:26379,h2:26379")


def test_display_urls_drop_credentials() -> None:
    assert display_redis_url("redis://u:pw@h:6379/2?x=1") == "redis://h:6379/2"
    assert display_redis_url("rediss://:pw@h:6380/0") == "rediss://h:6380/0"
    assert (
        display_redis_url("redis+sentinel://:pw@h1:26379,h2:26379/main/0")
        == "redis+sentinel://h1:26379,h2:26379/main/0"
    )


def test_keys_share_one_cluster_slot() -> None:
    keys = RedisKeys.for_key("flagwire:flags")
    assert keys.revision == "{flagwire:flags}:revision"
    assert keys.channel == "{flagwire:flags}:changes"
    tagged = RedisKeys.for_key("{shop}:flags")
    assert (tagged.document, tagged.history) == ("{shop}:flags", "{shop}:flags:history")
    with pytest.raises(ConfigError, match="must not be empty"):
        RedisKeys.for_key("")


def test_a_missing_redis_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[redis\]"'):
        require_redis()
    with pytest.raises(ImportError, match="redis"):
        RedisSource("redis://127.0.0.1:1")

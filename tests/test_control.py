"""Publishing to Redis (compare-and-set, history, notification), kill and rollback, through
the Python API and ``flagwire publish / kill / history / rollback``, on a real redis-server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flagwire import ConfigError, FlagSet, FlagsetError, SourceError
from flagwire._cli.main import main
from flagwire._control import publish as api
from flagwire._control.store import ConflictError, FlagStore
from redis_support import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flags.yaml"


def _doc(version: str, default: str = "off", **extra: Any) -> dict[str, Any]:
    return {
        "metadata": {"version": version},
        "flags": {
            "checkout": {
                "state": "ENABLED",
                "variants": {"on": True, "off": False, "dark": False},
                "defaultVariant": default,
                "targeting": {"if": [{"==": [{"var": "plan"}, "beta"]}, "on", None]},
                **extra,
            },
            "bare": {"state": "ENABLED", "variants": {"a": 1, "b": 2}},
        },
    }


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[FlagStore]:
    with FlagStore(redis_server.url) as store:
        yield store


def _in_force(store: FlagStore) -> FlagSet:
    stored = store.read()
    assert stored.document is not None
    return FlagSet.from_text(stored.document.decode())


def test_publish_writes_records_and_notifies(redis_server: RedisServer, store: FlagStore) -> None:
    listener = redis_server.client().pubsub()
    listener.subscribe(store.keys.channel)
    assert listener.get_message(timeout=2)["type"] == "subscribe"
    done = api.publish(store, EXAMPLE, author="alice", message="first")
    assert (done.revision, done.previous) == (1, 0)
    assert _in_force(store).version_label == FlagSet.from_path(EXAMPLE).version_label
    message = listener.get_message(timeout=2)
    assert message is not None and message["data"] == b"1"
    (entry,) = store.history()
    assert entry.revision == 1
    assert entry.fields["author"] == "alice"
    assert entry.fields["message"] == "first"
    assert entry.fields["action"] == "publish"
    assert entry.fields["version"] == FlagSet.from_path(EXAMPLE).version_label
    assert entry.fields["previous"] == "0"
    assert FlagSet.from_text(entry.document.decode()).digest == done.flagset.digest
    listener.close()


def test_the_second_of_two_publishers_on_one_revision_is_told_to_retry(store: FlagStore) -> None:
    api.publish(store, _doc("1"))
    first, second = api.plan_publish(store, _doc("2a")), api.plan_publish(store, _doc("2b"))
    api.commit(store, first)
    with pytest.raises(ConflictError, match="run it again") as caught:
        api.commit(store, second)
    assert (caught.value.expected, caught.value.actual) == (1, 2)
    assert _in_force(store).version == "2a"
    assert [e.fields["version"].split("+")[0] for e in store.history()] == ["1", "2a"]


def test_a_direct_write_to_the_key_is_a_conflict_too(
    redis_server: RedisServer, store: FlagStore
) -> None:
    api.publish(store, _doc("1"))
    plan = api.plan_publish(store, _doc("2"))
    redis_server.client().set("flagwire:flags", json.dumps(_doc("by-hand")))
    with pytest.raises(ConflictError):
        api.commit(store, plan)


def test_concurrent_publishers_that_retry_lose_no_update(store: FlagStore) -> None:
    api.publish(store, _doc("0"))
    start = threading.Barrier(4)

    def publisher(name: str) -> None:
        start.wait()
        for i in range(5):
            while True:
                plan = api.plan_publish(store, _doc(f"{name}-{i}"))
                try:
                    api.commit(store, plan, author=name)
                    break
                except ConflictError:
                    continue

    threads = [threading.Thread(target=publisher, args=(f"p{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    history = store.history()
    assert [e.revision for e in history] == list(range(1, 22))
    versions = [e.fields["version"].split("+")[0] for e in history[1:]]
    assert sorted(versions) == sorted(f"p{n}-{i}" for n in range(4) for i in range(5))
    for n in range(4):  # each publisher's own changes in its order
        mine = [v for v in versions if v.startswith(f"p{n}-")]
        assert mine == [f"p{n}-{i}" for i in range(5)]
    assert [e.fields["previous"] for e in history] == [str(r) for r in range(21)]


def test_invalid_and_broken_documents_are_refused_and_nothing_is_written(
    store: FlagStore, tmp_path: Path
) -> None:
    api.publish(store, _doc("1"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"flags": {"x": {"state": "ON"}}}')
    with pytest.raises(FlagsetError, match=r"bad\.json"):
        api.publish(store, bad)
    broken = _doc("2", targeting={"no-such-op": [1]})
    with pytest.raises(FlagsetError, match="broken rules"):
        api.publish(store, broken)
    assert store.read().revision == 1


def test_kill_serves_one_variant_to_everyone(store: FlagStore) -> None:
    api.publish(store, _doc("1"))
    beta = {"targetingKey": "u1", "plan": "beta"}
    assert _in_force(store).evaluate("checkout", beta).variant == "on"
    done = api.kill(store, "checkout", variant="dark", message="incident 42")
    flags = _in_force(store)
    assert flags.evaluate("checkout", beta).variant == "dark"
    assert flags.evaluate("checkout", {"targetingKey": "u2"}).variant == "dark"
    assert done.fields["action"] == "kill"
    assert store.history()[-1].fields["variant"] == "dark"
    api.kill(store, "checkout")  # the default variant to everyone
    assert _in_force(store).evaluate("checkout", beta).variant == "dark"
    api.kill(store, "bare")  # no default variant: disabled
    assert _in_force(store).definition("bare").state == "DISABLED"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=r"no flag 'nope'.*flags: bare, checkout"):
        api.kill(store, "nope")
    with pytest.raises(ConfigError, match=r"no variant 'purple'.*on, off, dark"):
        api.kill(store, "checkout", variant="purple")


def test_kill_needs_a_valid_flag_set_in_force(store: FlagStore) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        api.kill(store, "checkout")


def test_rollback_republishes_an_earlier_revision(store: FlagStore) -> None:
    api.publish(store, _doc("1"))
    api.publish(store, _doc("2"))
    api.kill(store, "checkout", variant="dark")
    done = api.rollback(store)
    assert done.revision == 4
    assert _in_force(store).version_label == api.plan_publish(store, _doc("2")).new.version_label
    api.rollback(store, 1)
    assert _in_force(store).version == "1"
    assert store.history()[-1].fields["rollback_to"] == "1"
    with pytest.raises(ConfigError, match="revision 99 is not in the history"):
        api.rollback(store, 99)


# -- the command line ---------------------------------------------------------------------


def test_cli_publish_shows_the_change_then_publishes(
    redis_server: RedisServer, store: FlagStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["publish", str(EXAMPLE), "--redis", redis_server.url, "-m", "go"]) == 0
    edited = tmp_path / "flags.yaml"
    edited.write_text(EXAMPLE.read_text().replace("- [on, 20]\n", "- [on, 50]\n", 1).replace(
        "- [off, 80]", "- [off, 50]", 1
    ))  # fmt: skip
    capsys.readouterr()
    url = redis_server.url
    assert main(["publish", str(edited), "--redis", url, "--dry-run", "--sample", "200"]) == 0
    out = capsys.readouterr().out
    assert "in force: revision 1" in out
    assert "rollout: on 20% -> 50%, off 80% -> 50%" in out
    assert "dry run: nothing written" in out
    assert store.read().revision == 1
    assert main(["publish", str(edited), "--redis", url, "--author", "bob"]) == 0
    assert "published revision 2" in capsys.readouterr().out
    assert main(["kill", "new-checkout", "--variant", "off", "--redis", url]) == 0
    assert main(["rollback", "--redis", url, "--to", "1"]) == 0
    capsys.readouterr()
    assert main(["history", "--redis", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["1", "2", "3", "4"]
    assert "'go'" in lines[0] and "bob" in lines[1]
    assert "kill new-checkout -> off" in lines[2] and "rollback to 1" in lines[3]
    assert _in_force(store).version_label == FlagSet.from_path(EXAMPLE).version_label


def test_cli_conflict_exits_3_and_writes_nothing(
    redis_server: RedisServer, store: FlagStore, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    api.publish(store, _doc("1"))
    real_plan = api.plan_publish

    def plan_then_someone_publishes(*args: Any) -> api.Plan:
        plan = real_plan(*args)
        api.commit(store, real_plan(store, _doc("meanwhile")))
        return plan

    monkeypatch.setattr(api, "plan_publish", plan_then_someone_publishes)
    assert main(["publish", str(EXAMPLE), "--redis", redis_server.url]) == 3
    assert "conflict" in capsys.readouterr().err
    assert _in_force(store).version == "meanwhile"


def test_cli_require_refuses_a_file_that_breaks_the_policy(
    redis_server: RedisServer, store: FlagStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ownerless = tmp_path / "ownerless.json"
    ownerless.write_text(json.dumps(_doc("1")))
    code = main(["publish", str(ownerless), "--redis", redis_server.url, "--require", "owner"])
    assert code == 1
    assert "nothing published" in capsys.readouterr().err
    assert store.read().revision == 0


def test_cli_errors_name_redis_without_its_password(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLAGWIRE_REDIS_URL", raising=False)
    assert main(["history"]) == 2
    assert "--redis URL" in capsys.readouterr().out
    redis_server.stop()
    url = f"redis://:hunter2@127.0.0.1:{redis_server.port}/0"
    assert main(["kill", "x", "--redis", url]) == 2
    err = capsys.readouterr().err
    assert f"redis://127.0.0.1:{redis_server.port}/0 key flagwire:flags: cannot read" in err
    assert "hunter2" not in err

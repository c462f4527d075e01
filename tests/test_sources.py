"""FileSource: loading, watching, keeping the last good flag set, listeners, threads."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from flagwire import (
    ErrorCode,
    FileSource,
    FlagSet,
    FlagsetError,
    Source,
    SourceStatus,
)

Document = dict[str, Any]
WriteFile = Callable[[str, str | Mapping[str, Any]], Path]
WaitFor = Callable[..., None]
MakeSource = Callable[..., FileSource]

POLL = 0.01  # seconds; the watcher tests wait at most 2 s for an edit


def _document(version: str, color: str) -> Document:
    return {
        "metadata": {"version": version},
        "flags": {
            "color": {
                "state": "ENABLED",
                "variants": {"red": "red", "blue": "blue"},
                "defaultVariant": color,
            },
            "size": {
                "state": "ENABLED",
                "variants": {"small": 1, "large": 2},
                "defaultVariant": "small" if color == "red" else "large",
            },
        },
    }


V1 = _document("1", "red")
V2 = _document("2.0", "blue")  # also a different size, whatever the mtime resolution
V3 = _document("3.00", "red")

BAD_JSON = '{"metadata": {"version": "9"}, "flags": {'
BAD_FLAG = json.dumps(
    {
        "metadata": {"version": "9"},
        "flags": {
            "checkout-v2": {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "blue",
            }
        },
    },
    indent=2,
)


def _watchers(path: Path) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"flagwire-watch:{path}" and t.is_alive()]


def _records(caplog: pytest.LogCaptureFixture, level: int, *fragments: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == level and all(f in r.getMessage() for f in fragments)
    ]


# -- loading and watching --------------------------------------------------------------------


def test_loads_the_file_at_start(write_file: WriteFile, make_source: MakeSource) -> None:
    path = write_file("flags.json", V1)

    src = make_source(path, poll_interval=POLL)

    assert isinstance(src, Source)
    assert src.flagset.version == "1"
    assert src.flagset.source == str(path)
    assert src.flagset.string("color", "none") == "red"
    status = src.status
    assert isinstance(status, SourceStatus)
    assert status.ok is True
    assert status.version == src.flagset.version_label
    assert status.last_good_load is not None
    assert status.last_error is None
    assert (status.loads, status.failures) == (1, 0)


def test_a_valid_edit_is_picked_up(
    write_file: WriteFile, make_source: MakeSource, wait_for: WaitFor
) -> None:
    path = write_file("flags.json", V1)
    src = make_source(path, poll_interval=POLL)
    first_load = src.status.last_good_load

    write_file("flags.json", V2)  # in place, as an editor that truncates and writes

    wait_for(lambda: src.flagset.version == "2.0", timeout=2.0, what="the edit")
    wait_for(lambda: src.status.ok, timeout=2.0, what="status ok")
    assert src.flagset.string("color", "none") == "blue"
    assert src.status.version == src.flagset.version_label
    assert src.status.last_good_load is not None
    assert first_load is not None
    assert src.status.last_good_load > first_load
    assert src.status.loads >= 2


def test_an_atomic_replace_is_picked_up(
    write_file: WriteFile,
    replace_file: WriteFile,
    make_source: MakeSource,
    wait_for: WaitFor,
) -> None:
    path = write_file("flags.json", V1)
    src = make_source(path, poll_interval=POLL)

    replace_file("flags.json", V2)

    wait_for(lambda: src.flagset.version == "2.0", timeout=2.0, what="the replaced file")
    assert src.status.ok
    assert src.status.last_error is None


def test_an_atomic_replace_with_the_same_size_is_picked_up(
    write_file: WriteFile,
    replace_file: WriteFile,
    make_source: MakeSource,
    wait_for: WaitFor,
) -> None:
    path = write_file("flags.json", V1)
    src = make_source(path, poll_interval=POLL)
    same_size = _document("7", "red")
    assert len(json.dumps(same_size, indent=2)) == path.stat().st_size

    replace_file("flags.json", same_size)  # a new inode

    wait_for(lambda: src.flagset.version == "7", timeout=2.0, what="the replaced file")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param(BAD_JSON, ["invalid JSON"], id="bad-json"),
        pytest.param(
            BAD_FLAG,
            ['flag "checkout-v2"', 'defaultVariant "blue" is not one of variants [on, off]'],
            id="bad-flag",
        ),
    ],
)
def test_an_invalid_edit_never_replaces_the_flag_set(
    write_file: WriteFile,
    make_source: MakeSource,
    wait_for: WaitFor,
    caplog: pytest.LogCaptureFixture,
    content: str,
    problem: list[str],
) -> None:
    caplog.set_level(logging.INFO, logger="flagwire")
    path = write_file("flags.json", V1)
    src = make_source(path, poll_interval=POLL)
    before = src.flagset
    good = src.status

    write_file("flags.json", content)

    def failed_with_the_problem() -> bool:
        error = src.status.last_error
        return error is not None and all(p in error for p in problem)

    wait_for(failed_with_the_problem, timeout=2.0, what="the load to fail")
    assert src.flagset is before
    assert src.flagset.version == "1"
    assert src.flagset.string("color", "none") == "red"
    status = src.status
    assert status.ok is False
    assert status.last_error is not None
    assert "flags.json" in status.last_error
    assert status.last_error_time is not None
    assert status.last_good_load == good.last_good_load
    assert status.version == good.version
    assert status.loads == good.loads
    assert status.failures >= 1
    # The status is set before the error is logged (from the watcher thread): wait for both.
    wait_for(
        lambda: _records(caplog, logging.ERROR, "flags.json", *problem),
        timeout=2.0,
        what="the error to be logged",
    )

    # A later valid edit recovers.
    write_file("flags.json", V2)
    wait_for(lambda: src.status.ok, timeout=2.0, what="recovery")
    assert src.flagset.version == "2.0"
    assert src.status.last_error is None
    assert src.status.last_error_time is None
    assert src.status.last_good_load is not None
    assert good.last_good_load is not None
    assert src.status.last_good_load > good.last_good_load


def test_a_deleted_file_keeps_the_flag_set(
    write_file: WriteFile, make_source: MakeSource, wait_for: WaitFor
) -> None:
    path = write_file("flags.json", V1)
    src = make_source(path, poll_interval=POLL)

    path.unlink()

    wait_for(lambda: not src.status.ok, timeout=2.0, what="the load to fail")
    assert src.flagset.version == "1"
    assert src.status.last_error is not None
    assert "file not found" in src.status.last_error
    write_file("flags.json", V2)
    wait_for(lambda: src.flagset.version == "2.0", timeout=2.0, what="the file to come back")


def test_an_unknown_fractional_algorithm_in_an_edit_is_rejected(
    write_file: WriteFile, make_source: MakeSource
) -> None:
    path = write_file("flags.json", V1)
    src = make_source(path, poll_interval=0)
    bad = _document("9", "red")
    bad["metadata"]["flagwire.fractional"] = "v9"

    write_file("flags.json", bad)

    assert src.refresh() is False
    assert src.flagset.version == "1"
    assert src.status.ok is False
    assert src.status.last_error is not None
    assert "v9" in src.status.last_error


def test_fractional_option_applies_to_every_load(
    write_file: WriteFile, make_source: MakeSource
) -> None:
    path = write_file("flags.json", V1)
    src = make_source(path, poll_interval=0, fractional="v3")
    assert src.flagset.fractional == "v3"

    write_file("flags.json", V2)

    assert src.refresh() is True
    assert src.flagset.fractional == "v3"


# -- start-up --------------------------------------------------------------------------------


def test_missing_file_in_strict_mode_raises(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"

    with pytest.raises(FlagsetError) as info:
        FileSource(path, strict=True, poll_interval=POLL)

    assert info.value.path == str(path)
    assert "file not found" in str(info.value)
    assert not _watchers(path)


def test_invalid_file_in_strict_mode_raises(write_file: WriteFile) -> None:
    path = write_file("flags.json", BAD_FLAG)

    with pytest.raises(FlagsetError, match=r'defaultVariant "blue"'):
        FileSource(path, strict=True, poll_interval=POLL)

    assert not _watchers(path)


def test_missing_file_starts_empty_warns_and_loads_when_it_appears(
    tmp_path: Path,
    write_file: WriteFile,
    make_source: MakeSource,
    wait_for: WaitFor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="flagwire")
    path = tmp_path / "flags.json"

    src = make_source(path, poll_interval=POLL)

    assert len(src.flagset) == 0
    a = src.flagset.evaluate("color", {"targetingKey": "u1"}, "grey")
    assert (a.value, a.error_code) == ("grey", ErrorCode.FLAG_NOT_FOUND)
    assert src.status.ok is False
    assert src.status.last_good_load is None
    assert src.status.last_error is not None
    assert "flags.json" in src.status.last_error
    assert "file not found" in src.status.last_error
    assert _records(caplog, logging.WARNING, "NO FLAGS", str(path))

    write_file("flags.json", V1)

    wait_for(lambda: src.flagset.version == "1", timeout=2.0, what="the file to appear")
    wait_for(lambda: src.status.ok, timeout=2.0, what="status ok")
    assert src.flagset.string("color", "none") == "red"
    assert src.status.last_error is None


def test_invalid_file_starts_empty_and_loads_when_fixed(
    write_file: WriteFile,
    make_source: MakeSource,
    wait_for: WaitFor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="flagwire")
    path = write_file("flags.json", BAD_JSON)

    src = make_source(path, poll_interval=POLL)

    assert len(src.flagset) == 0
    assert src.status.ok is False
    assert _records(caplog, logging.WARNING, "NO FLAGS", str(path))
    write_file("flags.json", V1)
    wait_for(lambda: src.flagset.version == "1", timeout=2.0, what="the fixed file")


def test_unknown_fractional_algorithm_at_start_does_not_raise_when_not_strict(
    write_file: WriteFile, make_source: MakeSource
) -> None:
    # strict=False: "start with an empty flag set, log a loud warning, and load the file
    # as soon as it becomes valid" -- whatever makes the file unusable.
    bad = _document("9", "red")
    bad["metadata"]["flagwire.fractional"] = "v9"
    path = write_file("flags.json", bad)

    src = make_source(path, poll_interval=0)

    assert len(src.flagset) == 0
    assert src.status.ok is False
    assert src.status.last_error is not None
    assert "v9" in src.status.last_error


# -- listeners -------------------------------------------------------------------------------


def test_listeners_get_old_and_new_once_per_change(
    write_file: WriteFile, make_source: MakeSource
) -> None:
    path = write_file("flags.json", V1)
    src = make_source(path, poll_interval=0)
    calls: list[tuple[FlagSet, FlagSet]] = []
    src.subscribe(lambda old, new: calls.append((old, new)))
    first = src.flagset

    write_file("flags.json", V2)
    assert src.refresh() is True
    assert src.refresh() is False  # nothing changed since

    assert calls == [(first, src.flagset)]
    assert calls[0][1].version == "2.0"

    write_file("flags.json", V2)  # rewritten, same content: not a change
    src.refresh()
    assert len(calls) == 1

    second = src.flagset
    write_file("flags.json", V3)
    assert src.refresh() is True
    assert len(calls) == 2
    assert calls[1][0].version == second.version == "2.0"
    assert calls[1][1] is src.flagset


def test_listeners_are_not_called_for_a_rejected_edit(
    write_file: WriteFile, make_source: MakeSource
) -> None:
    path = write_file("flags.json", V1)
    src = make_source(path, poll_interval=0)
    calls: list[tuple[FlagSet, FlagSet]] = []
    src.subscribe(lambda old, new: calls.append((old, new)))

    write_file("flags.json", BAD_JSON)
    assert src.refresh() is False

    assert calls == []


def test_listener_is_called_from_the_watcher(
    write_file: WriteFile, make_source: MakeSource, wait_for: WaitFor
) -> None:
    path = write_file("flags.json", V1)
    src = make_source(path, poll_interval=POLL)
    first = src.flagset
    calls: list[tuple[FlagSet, FlagSet]] = []
    src.subscribe(lambda old, new: calls.append((old, new)))

    write_file("flags.json", V2)

    wait_for(lambda: len(calls) == 1, timeout=2.0, what="the listener")
    old, new = calls[0]
    assert old is first
    assert new.version == "2.0"
    assert new is src.flagset


def test_unsubscribe_stops_the_calls(write_file: WriteFile, make_source: MakeSource) -> None:
    path = write_file("flags.json", V1)
    src = make_source(path, poll_interval=0)
    kept: list[str | None] = []
    dropped: list[str | None] = []
    src.subscribe(lambda old, new: kept.append(new.version))
    unsubscribe = src.subscribe(lambda old, new: dropped.append(new.version))

    write_file("flags.json", V2)
    src.refresh()
    unsubscribe()
    unsubscribe()  # a second call is harmless
    write_file("flags.json", V3)
    src.refresh()

    assert kept == ["2.0", "3.00"]
    assert dropped == ["2.0"]


def test_a_raising_listener_does_not_break_the_source(
    write_file: WriteFile,
    make_source: MakeSource,
    wait_for: WaitFor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="flagwire")
    path = write_file("flags.json", V1)
    src = make_source(path, poll_interval=POLL)
    seen: list[str | None] = []

    def explode(old: FlagSet, new: FlagSet) -> None:
        raise RuntimeError("listener bug")

    src.subscribe(explode)
    src.subscribe(lambda old, new: seen.append(new.version))

    write_file("flags.json", V2)
    wait_for(lambda: seen == ["2.0"], timeout=2.0, what="the second listener")
    assert src.flagset.version == "2.0"
    assert src.status.ok

    write_file("flags.json", V3)  # the watcher survived
    wait_for(lambda: seen == ["2.0", "3.00"], timeout=2.0, what="the next change")
    assert src.flagset.version == "3.00"
    assert _records(caplog, logging.ERROR, "listener")


# -- manual refresh, threads, close ------------------------------------------------------------


def test_poll_interval_zero_means_refresh_by_hand(
    write_file: WriteFile, make_source: MakeSource
) -> None:
    path = write_file("flags.json", V1)
    src = make_source(path, poll_interval=0)
    assert not _watchers(path)

    write_file("flags.json", V2)
    assert src.flagset.version == "1"  # nobody is watching

    assert src.refresh() is True
    assert src.flagset.version == "2.0"
    assert src.refresh() is False
    write_file("flags.json", BAD_JSON)
    assert src.refresh() is False
    assert src.flagset.version == "2.0"
    assert src.status.ok is False


def test_readers_never_see_an_error_or_half_a_flag_set(
    write_file: WriteFile, make_source: MakeSource, label_of: Callable[[Document], str]
) -> None:
    expected = {
        label_of(V1): ("red", 1),
        label_of(V2): ("blue", 2),
    }
    path = write_file("flags.json", V1)
    src = make_source(path, poll_interval=0.001)
    stop = threading.Event()
    failures: list[BaseException] = []
    seen: list[set[str]] = []

    def read() -> None:
        versions: set[str] = set()
        try:
            while not stop.is_set():
                fs = src.flagset
                color = fs.evaluate("color", {"targetingKey": "u"}, "none")
                size = fs.evaluate("size", None, 0)
                assert color.error_code is None, color
                assert size.error_code is None, size
                assert color.flagset_version == size.flagset_version
                assert (color.value, size.value) == expected[color.flagset_version]
                versions.add(color.flagset_version)
                time.sleep(0)  # let the writer run: spinning readers starve it of the GIL
        except BaseException as exc:
            failures.append(exc)
        finally:
            seen.append(versions)

    readers = [threading.Thread(target=read, name=f"reader-{i}") for i in range(3)]
    for reader in readers:
        reader.start()
    try:
        for i in range(100):
            write_file("flags.json", V2 if i % 2 == 0 else V1)  # in place, not atomic
            src.refresh()  # the watcher races with this
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=5)

    assert not failures, failures[0]
    assert all(not r.is_alive() for r in readers)
    assert set().union(*seen) == set(expected)  # both versions were read
    assert src.flagset.version == "1"  # the last write, whole
    assert src.status.ok


def test_close_stops_the_watcher(write_file: WriteFile) -> None:
    path = write_file("flags.json", V1)
    src = FileSource(path, poll_interval=POLL)
    assert len(_watchers(path)) == 1

    src.close()

    assert not _watchers(path)
    src.close()  # idempotent
    write_file("flags.json", V2)
    assert src.refresh() is True  # refresh by hand still works after close
    assert src.flagset.version == "2.0"


def test_the_context_manager_closes(write_file: WriteFile) -> None:
    path = write_file("flags.json", V1)

    with FileSource(path, poll_interval=POLL) as src:
        assert src.flagset.version == "1"
        assert len(_watchers(path)) == 1

    assert not _watchers(path)

"""A valid flag update is never lost and a half-written one never served: files really
written (in place, in chunks, or while reads fail) while a :class:`FileSource` polls them."""

from __future__ import annotations

import json
import os
import resource
import threading
import time
from pathlib import Path

import pytest

from flagwire import FileSource


def _yaml(count: int, variant: str) -> str:
    lines = ["flags:"]
    for index in range(count):
        lines += [
            f"  flag-{index:03d}:",
            "    state: ENABLED",
            "    variants: {a: 'a', b: 'b'}",
            f"    defaultVariant: {variant}",
        ]
    return "\n".join(lines) + "\n"


def _json(variant: str) -> str:
    flag = {"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": variant}
    return json.dumps({"flags": {"flag-000": flag}})


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def test_a_read_that_fails_is_retried_until_it_succeeds(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    path.write_text(_json("a"))
    with FileSource(path, poll_interval=0.02) as source:
        assert source.flagset.decide("flag-000", {}).variant == "a"
        writer = os.open(path, os.O_WRONLY)  # opened before the descriptors run out
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        filler: list[int] = []
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
            try:
                while True:
                    filler.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                pass
            os.ftruncate(writer, 0)
            os.pwrite(writer, _json("b").encode(), 0)
            os.close(writer)
            filler.append(os.open(os.devnull, os.O_RDONLY))  # take the one close freed
            _wait(
                lambda: "Too many open files" in (source.status.last_error or ""),
                5,
                "the poller's read to fail",
            )
        finally:
            for fd in filler:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        _wait(lambda: source.status.ok, 5, "the read to be retried")
        assert source.flagset.decide("flag-000", {}).variant == "b"


@pytest.mark.e2e
def test_a_yaml_file_rewritten_in_place_in_chunks_is_never_served_half_written(
    tmp_path: Path,
) -> None:
    count = 200
    versions = [_yaml(count, "a"), _yaml(count, "b")]
    path = tmp_path / "flags.yaml"
    path.write_text(versions[0])
    seen_sizes: set[int] = set()
    stop = threading.Event()
    with FileSource(path, poll_interval=0.01, settle=0.3) as source:
        assert len(source.flagset) == count

        def read() -> None:
            while not stop.is_set():
                seen_sizes.add(len(source.flagset))
                time.sleep(0.0005)

        reader = threading.Thread(target=read)
        reader.start()
        try:
            for rewrite in range(20):
                lines = versions[(rewrite + 1) % 2].splitlines(keepends=True)
                with path.open("w") as handle:  # in place: truncate, then line-aligned chunks
                    for start in range(0, len(lines), 80):
                        handle.write("".join(lines[start : start + 80]))
                        handle.flush()
                        time.sleep(0.01)
            final = "b" if 20 % 2 else "a"
            _wait(
                lambda: source.flagset.decide("flag-199", {}).variant == final,
                3,
                "the last version",
            )
        finally:
            stop.set()
            reader.join()
    assert seen_sizes == {count}, f"flag sets of sizes {sorted(seen_sizes)} were served"


def test_atomic_renames_and_json_rewrites_are_taken_at_once(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(_yaml(1, "a"))
    with FileSource(path, poll_interval=0, settle=60) as source:
        tmp = tmp_path / "next.yaml"
        tmp.write_text(_yaml(1, "b"))
        os.replace(tmp, path)
        assert source.refresh() is True
        path.write_text(_yaml(1, "a"))  # in place: waits for the settle interval
        assert source.refresh() is False
        assert source.flagset.decide("flag-000", {}).variant == "b"
    json_path = tmp_path / "flags.json"
    json_path.write_text(_json("a"))
    with FileSource(json_path, poll_interval=0, settle=60) as source:
        json_path.write_text(_json("b"))
        assert source.refresh() is True


def test_a_missing_file_says_where_it_looked_and_what_happens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with FileSource(tmp_path / "nope.yaml", poll_interval=0):
        pass
    text = caplog.text
    assert str((tmp_path / "nope.yaml").resolve()) in text
    assert "keeping the flag set in force" not in text
    assert "every flag gives its code default" in text

"""No flag content or cache fails a non-strict start: alias bombs, mixed key types, huge
numbers, deep nesting and corrupted caches are refused with an error naming the file and
the problem (real files, a real HttpSource whose server is down)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from attack_servers import free_port
from flagwire import FileSource, FlagsetError, HttpSource, SourceError

GOOD = (
    "flags:\n  a:\n    state: ENABLED\n    variants: {on: true, off: false}\n"
    "    defaultVariant: on\n"
)
LOL = '["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'
BOMB = (
    f"a: &a {LOL}\n"
    + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
    )
    + "flags: {}\n"
)
DEEP = "flags: {a: {state: ENABLED, variants: {on: true}, defaultVariant: on, targeting: %s}}\n"
BAD = {
    "alias bomb": (BOMB, "alias bomb"),
    "recursive alias": ("x: &a [*a]\nflags: {}\n", "refers to the node"),
    "mixed keys": (GOOD + "    targeting: {if: [{1: 2, a: 3}, on, off]}\n", "mixes key types"),
    "mixed top keys": ("{1: x, flags: {}}\n", "mixes key types"),
    "huge number": (GOOD.replace("true", "1" * 5000), "too many digits"),
    "deep nesting": (DEEP % ("[" * 1500 + "]" * 1500), "nested deeper"),
    "deep mapping": (DEEP % ('{"!": ' * 150 + "true" + "}" * 150), "nested deeper"),
}


def test_an_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    assert len(BOMB) < 600
    path = tmp_path / "flags.yaml"
    path.write_text(BOMB)
    started = time.monotonic()
    with FileSource(path, poll_interval=0) as source:
        assert time.monotonic() - started < 1
        assert len(source.flagset) == 0 and not source.status.ok
        assert "alias bomb" in (source.status.last_error or "")


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_documents_fail_strict_and_keep_the_last_good_set(tmp_path: Path, case: str) -> None:
    text, problem = BAD[case]
    path = tmp_path / "flags.yaml"
    path.write_text(text)
    with pytest.raises(FlagsetError) as raised:
        FileSource(path, strict=True, poll_interval=0)
    assert str(path) in str(raised.value) and problem in str(raised.value)
    with FileSource(path, poll_interval=0) as source:  # non-strict: starts, empty, loud
        assert len(source.flagset) == 0 and problem in (source.status.last_error or "")
    path.write_text(GOOD)
    with FileSource(path, poll_interval=0) as source:
        tmp = tmp_path / "next.yaml"
        tmp.write_text(text)
        os.replace(tmp, path)
        assert source.refresh() is False
        assert "a" in source.flagset and problem in (source.status.last_error or "")


def test_deep_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    path.write_text('{"flags": {"a": {"targeting": ' + "[" * 5000 + "]" * 5000 + "}}}")
    with pytest.raises(FlagsetError, match="nested deeper"):
        FileSource(path, strict=True, poll_interval=0)


@pytest.mark.parametrize(
    "cached",
    [
        BAD["mixed keys"][0].encode(),
        BAD["deep nesting"][0].encode(),
        BAD["alias bomb"][0].encode(),
        b"\xff\xfe\x00garbage",
    ],
)
def test_a_corrupted_http_cache_fails_no_non_strict_start(tmp_path: Path, cached: bytes) -> None:
    url = f"http://127.0.0.1:{free_port()}/flags.yaml"  # nothing listens there
    cache = tmp_path / "cache.yaml"
    cache.write_bytes(cached)
    (tmp_path / "cache.yaml.meta.json").write_text(json.dumps({"url": url, "format": "yaml"}))
    with HttpSource(url, interval=0, timeout=0.5, cache_path=cache) as source:
        assert len(source.flagset) == 0 and not source.status.ok
    with pytest.raises(SourceError, match="cache"):
        HttpSource(url, interval=0, timeout=0.5, cache_path=cache, strict=True)

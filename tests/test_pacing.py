"""Loading without stalling a server: the piecewise JSON reader agrees with json.loads,
and a background load paces itself."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from flagwire import FlagSet
from flagwire._engine import pacing

DOCUMENTS = [
    "{}",
    " {\n } \n",
    '{"flags": {}}',
    '{"a": 1, "a": 2}',
    '{"flags": {"x": {"y": [1, 2]}} , "m": NaN, "n": -Infinity}',
    '{"flags": {"x": {"deep": {"deeper": {"z": null}}}}, "flags": {"y": true}}',
    '{"\\u00e9\\"": {"b\\n": "\\ud83d\\ude00"}}',
    '[1, {"a": 2}]',
    '"text"',
    "12",
    '{"a": }',
    '{"a": 1} x',
    '{"a": 1,}',
    '{"a" 1}',
    '{"a": 1 "b": 2}',
    '{"flags": {"x": {"y": 1}',
    '{"flags": {"x" : 1 , }}',
    "{1: 2}",
    "\ufeff{}",
    "",
    "   ",
]


def _outcome(load: Any, text: str) -> tuple[str, Any]:
    try:
        return "value", load(text)
    except json.JSONDecodeError as exc:
        return "error", (exc.msg, exc.lineno, exc.colno)


@pytest.mark.parametrize("text", DOCUMENTS)
def test_the_piecewise_reader_gives_what_json_loads_gives(text: str) -> None:
    want = _outcome(json.loads, text)

    got = _outcome(pacing.loads_in_pieces, text)

    assert repr(got) == repr(want)  # repr: NaN != NaN


def test_a_large_document_is_read_whole_and_in_order() -> None:
    flags = {f"flag-{i}": {"state": "ENABLED", "variants": {"on": [i]}} for i in range(1234)}
    text = json.dumps({"flags": flags, "metadata": {"v": 1}}, indent=2)

    read = pacing.loads_in_pieces(text)

    assert read == json.loads(text)
    assert list(read["flags"]) == list(flags)


def test_a_background_load_lets_other_threads_run_between_pieces() -> None:
    flags = {
        f"flag-{i:05d}": {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {"if": [{"in": [{"var": "plan"}, ["pro", "team"]]}, "on", "off"]},
        }
        for i in range(5000)
    }
    text = json.dumps({"flags": flags})
    pauses: list[str] = []
    original = pacing.time.sleep

    def counting_sleep(seconds: float) -> None:
        pauses.append(threading.current_thread().name)
        original(seconds)

    pacing.time.sleep = counting_sleep  # type: ignore[assignment]
    try:
        FlagSet.from_text(text)  # the main thread: nobody to make way for
        on_main = len(pauses)
        loader = threading.Thread(target=FlagSet.from_text, args=(text,), name="loader")
        loader.start()
        loader.join()
    finally:
        pacing.time.sleep = original  # type: ignore[assignment]

    assert on_main == 0
    # A pause at least every PIECE flags in each step that walks them all.
    assert pauses.count("loader") >= 3 * len(flags) // pacing.PIECE


def test_the_young_generations_are_collected_during_a_load_not_after_it() -> None:
    import gc

    flags = {f"f{i}": {"state": "ENABLED", "variants": {"a": [i]}} for i in range(3000)}
    text = json.dumps({"flags": flags})
    during: list[int] = []

    def seen(phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and not gc.isenabled():  # automatic collection is off
            during.append(info["generation"])

    gc.callbacks.append(seen)
    try:
        FlagSet.from_text(text)
    finally:
        gc.callbacks.remove(seen)

    # Piece by piece, young generations only (left for the end, one collection would
    # walk every container of the load; a full one would walk the whole heap).
    assert len(during) >= len(flags) // pacing.PIECE
    assert set(during) == {1}


def test_json_s_error_is_raised_as_json_raises_it() -> None:
    with pytest.raises(json.JSONDecodeError) as caught:
        pacing.loads_in_pieces('{"flags": {"a": 1,}}')

    assert caught.value.__context__ is None  # not chained to the piecewise reader's own

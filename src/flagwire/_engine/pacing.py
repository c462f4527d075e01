"""Loading a large flag set without stalling the server that loads it.

A reload runs on a source's thread while the server's threads (or its event loop) serve
requests, and both need the GIL. Three things would make requests wait:

- One long C call: ``json.loads`` of a 10,000-flag document holds the GIL for tens of
  milliseconds. :func:`loads_in_pieces` parses the top two levels itself and each flag
  with one short call of the same decoder.
- A long stretch of Python: the interpreter hands the GIL over only every 5 ms, and a
  request that needs it several times waits each time. The load calls :func:`pace` about
  every millisecond of work; off the main thread it sleeps a moment so waiting threads run.
- The cyclic collector: a load allocates hundreds of thousands of containers that all
  stay alive, and each time the heap has grown by a quarter a full collection walks them
  all again for nothing (a third of the load, tens of milliseconds each).
  :func:`collector_paused` turns automatic collection off for the load, and :func:`pace`
  collects the young generations piece by piece instead (moving what survives to the old
  one, as the collector would).
"""

from __future__ import annotations

import gc
import json
import re
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["PIECE", "collector_paused", "loads_in_pieces", "pace", "paced"]

T = TypeVar("T")

PIECE = 50
"""Items (flags, nodes / 10) between two calls of :func:`pace`: a few tenths of a millisecond."""
_PAUSE = 0.0002  # long enough for a waiting thread to wake and take the GIL

_lock = threading.Lock()
_loads = 0  # loads in progress that paused the collector
_paused = False  # flagwire disabled it (an application that disabled it keeps it so)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run the block with the cyclic collector off (nested and concurrent loads share one
    pause; it resumes when the last ends)."""
    global _loads, _paused
    with _lock:
        if _loads == 0 and gc.isenabled():
            gc.disable()
            _paused = True
        _loads += 1
    try:
        yield
    finally:
        with _lock:
            _loads -= 1
            if _loads == 0 and _paused:
                _paused = False
                gc.enable()


def pace() -> None:
    """Between two pieces of a load: collect the young objects, and let the threads
    waiting for the GIL run if this is a background load (a start on the main thread has
    nobody to wait for)."""
    if _paused:
        # What the collector would have done for the objects made since the last piece,
        # in a short call: left for the end, it would walk all of them in one.
        gc.collect(1)
    if threading.current_thread() is not threading.main_thread():
        time.sleep(_PAUSE)


def paced(items: Iterable[T], every: int = PIECE) -> Iterator[T]:
    """``items``, with :func:`pace` called after each ``every`` of them (for the steps of a
    load that walk every flag)."""
    for i, item in enumerate(items, 1):
        yield item
        if i % every == 0:
            pace()


_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _skip(text: str, at: int) -> int:
    """The index of the first character at or after ``at`` that is not JSON whitespace."""
    return _SPACE.match(text, at).end()  # type: ignore[union-attr]  # matches the empty string


_scanstring: Any = json.decoder.scanstring  # type: ignore[attr-defined]


def loads_in_pieces(text: str) -> Any:
    """``json.loads(text)``, with the document's top two levels of objects parsed member by
    member (a flag at a time), pacing between pieces. Anything it does not expect, errors
    included, is left to ``json.loads``, which gives the same value or the same error."""
    try:
        value, end = _members(text, _skip(text, 0), 2)
        whole = _skip(text, end) == len(text)
    except (ValueError, IndexError):
        whole = False
    # Outside the handler: json's error is raised as json raises it, not chained to ours.
    return value if whole else json.loads(text)


def _members(text: str, start: int, levels: int) -> tuple[Any, int]:
    if levels == 0 or text[start] != "{":
        return _DECODER.raw_decode(text, start)
    found: dict[str, Any] = {}
    at = _skip(text, start + 1)
    if text[at] == "}":
        return found, at + 1
    count = 0
    while True:
        if text[at] != '"':
            raise ValueError("expected a key")
        key, at = _scanstring(text, at + 1, True)
        at = _skip(text, at)
        if text[at] != ":":
            raise ValueError("expected ':'")
        value, at = _members(text, _skip(text, at + 1), levels - 1)
        found[key] = value  # a repeated key keeps the last value, as json.loads does
        count += 1
        if count % PIECE == 0:
            pace()
        at = _skip(text, at)
        if text[at] == "}":
            return found, at + 1
        if text[at] != ",":
            raise ValueError("expected ',' or '}'")
        at = _skip(text, at + 1)

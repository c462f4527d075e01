"""The cyclic garbage collector, paused while a flag set is built.

A load allocates hundreds of thousands of dicts and lists (the parsed document, the
definitions), and nearly all of them live as long as the flag set. Each time the
collector's thresholds trip it walks all of them again and finds nothing to free: at
10,000 flags that is a third of the load, and a full collection holds the GIL for tens of
milliseconds while a server's requests wait. Reference counting still frees what a load
drops; cycles made meanwhile (anywhere in the process) are collected once it ends.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["collector_paused"]

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

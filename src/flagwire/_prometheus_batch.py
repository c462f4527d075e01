"""Observations of the request path, batched: appended without a lock per call, and
applied to the prometheus_client metrics in bulk before every scrape.

prometheus_client takes a lock per value it changes: a histogram observation and a
counter increment per flag cost about a microsecond, most of the telemetry's cost per
request. Here a request appends ``(children, duration)`` per decided flag to a deque
(atomic under the GIL); a flush sums what came in per label set and changes each value
once. A flush runs at every collection of the registry (the scrape sees everything
recorded before it), every :data:`FLUSH_SECONDS` on a daemon thread of the process, at
exit, and on the recording thread when the batch has grown past :data:`MAX_PENDING`
items (memory stays bounded if the thread falls behind). In prometheus_client's
multiprocess mode (gunicorn) the scrape reads the workers' files, which are then at most
about a second behind their requests.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from bisect import bisect_left
from collections import deque
from time import sleep
from typing import Any

__all__ = ["FLUSH_SECONDS", "MAX_PENDING", "Batch", "FlushBeforeCollect", "flush_all"]

MAX_PENDING = 20_000
FLUSH_SECONDS = 1.0


class Batch:
    """The pending observations of one registry's duration histogram and counter."""

    def __init__(self) -> None:
        self._pending: deque[tuple[tuple[Any, Any], float]] = deque()
        self.add = self._pending.append
        self._flushing = threading.Lock()
        _BATCHES.add(self)

    def settle(self) -> None:
        """After a request's observations were added: make sure this process flushes them
        (a worker forked after the first request has no flushing thread yet), and flush
        here if the batch is too large."""
        if not _flusher.started:
            _flusher.start()
        if len(self._pending) >= MAX_PENDING:
            self.flush(wait=False)

    def forget_pending(self) -> None:
        """Drop what is pending (a forked child's copy of its parent's batch)."""
        self._pending.clear()
        self._flushing = threading.Lock()

    def flush(self, *, wait: bool = True) -> None:
        """Apply every pending observation (``wait``: even if another thread is flushing,
        as a scrape must; a recording thread that finds one running goes on)."""
        if not self._flushing.acquire(blocking=wait):
            return
        try:
            self._apply()
        finally:
            self._flushing.release()

    def _apply(self) -> None:
        take = self._pending.popleft
        # id(children) -> [children, the histogram's upper bounds, count, sum, *buckets]
        sums: dict[int, list[Any]] = {}
        while True:
            try:
                children, duration = take()
            except IndexError:
                break
            tally = sums.get(id(children))
            if tally is None:
                bounds = children[0]._upper_bounds  # +Inf last, as observe() uses them
                tally = sums[id(children)] = [children, bounds, 0, 0.0, *([0] * len(bounds))]
            tally[2] += 1
            tally[3] += duration
            tally[4 + bisect_left(tally[1], duration)] += 1  # the first bound >= duration
        for children, _, count, total, *counts in sums.values():
            histogram, counter = children
            counter.inc(count)
            add_to_histogram(histogram, total, counts)


def add_to_histogram(histogram: Any, total: float, counts: list[int]) -> None:
    """Add observations, given as their sum and their count per bucket (not cumulative),
    to a labelled ``Histogram`` child: what ``observe`` does once per observation, done
    once per bucket. It reads and writes the child's values as ``observe`` does
    (``_upper_bounds``, ``_sum``, ``_buckets``), so multiprocess mode's files get them too."""
    histogram._raise_if_not_observable()
    histogram._sum.inc(total)
    for value, count in zip(histogram._buckets, counts, strict=True):
        if count:
            value.inc(count)


class FlushBeforeCollect:
    """A collector that yields no metric: registered on a registry before the metrics,
    it flushes the batch whenever the registry is collected (a scrape, a test's read)."""

    def __init__(self, batch: Batch) -> None:
        self._batch = batch

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> list[Any]:
        self._batch.flush()
        return []


_BATCHES: weakref.WeakSet[Batch] = weakref.WeakSet()


def flush_all() -> None:
    """Flush every batch of this process (each second, and at exit)."""
    for batch in list(_BATCHES):
        batch.flush()


class _Flusher:
    """The daemon thread of this process that flushes every batch each second."""

    def __init__(self) -> None:
        self.started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if not self.started:
                self.started = True
                threading.Thread(target=self._run, name="flagwire-metrics", daemon=True).start()

    def forget(self) -> None:
        """In a forked child: the parent's thread is not there (a new one starts with the
        child's first request), and the parent's pending observations are the parent's
        to apply (in multiprocess mode the child would count them a second time)."""
        self.started = False
        self._lock = threading.Lock()
        for batch in list(_BATCHES):
            batch.forget_pending()

    @staticmethod
    def _run() -> None:
        while True:
            sleep(FLUSH_SECONDS)
            try:
                flush_all()
            except Exception:  # a broken metric must not end the flushing of the others
                logging.getLogger("flagwire").exception("flagwire: flushing metrics failed")


_flusher = _Flusher()
os.register_at_fork(after_in_child=_flusher.forget)
atexit.register(flush_all)

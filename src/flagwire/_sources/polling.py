"""The polling lifecycle shared by sources that refresh themselves: a daemon thread, a
restart in forked children (gunicorn ``--preload``, multiprocessing), ``close()`` and the
context manager."""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from flagwire._errors import SourceError

from .base import SourceBase

logger = logging.getLogger("flagwire")


__all__ = ["PollingSource"]


_P = TypeVar("_P", bound="PollingSource")


class PollingSource(SourceBase):
    """A source a daemon thread refreshes, restarted in forked children.

    Subclasses set ``_refresh_lock`` (a ``Lock`` unless they need an ``RLock``),
    implement :meth:`_poll` and :meth:`_delay`, and call :meth:`_start_polling`.
    """

    _refresh_lock_type: Callable[[], Any] = threading.Lock
    _join_timeout = 5.0
    from_cache = False
    """True while the flag set in force came from the on-disk cache (remote sources)."""
    cache_path: Path | None = None

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refresh_lock = self._refresh_lock_type()

    def _poll(self) -> object:
        raise NotImplementedError

    def _report_start(
        self,
        first_error: Exception | None,
        cache_problem: str | None,
        *,
        strict: bool,
        peer: str,
    ) -> None:
        """After the first read of a remote source: fail (``strict``), or say loudly that
        it starts with no flags, or from its on-disk cache."""
        if first_error is None:
            return
        if len(self.flagset) == 0 and not self.from_cache:
            reason = f"no flag set: {first_error}"
            if cache_problem:
                reason += f"; cache: {cache_problem}"
            if strict:
                raise SourceError(reason) from first_error
            logger.warning(
                "flagwire: starting with NO FLAGS: %s. Every flag gives its code default "
                "until %s answers (use strict=True to fail instead).",
                reason,
                peer,
            )
        elif self.from_cache:
            logger.warning(
                "flagwire: OFFLINE: %s; serving the cached flag set %s from %s, fetched %s",
                first_error,
                self.flagset.version_label,
                self.cache_path,
                self._status.last_good_load,
            )

    def _delay(self) -> float:
        raise NotImplementedError

    def _thread_name(self) -> str:
        return f"flagwire-source:{self._name}"

    def _start_polling(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._thread_name(), daemon=True)
        self._thread.start()
        _POLLING.add(self)

    def _run(self) -> None:
        while not self._stop.wait(self._delay()):
            self._poll()

    def _after_fork(self) -> None:
        # A forked child (gunicorn --preload, multiprocessing) has no polling thread, and
        # its locks may have been held at the fork: new ones, and a new thread.
        self._lock = threading.Lock()
        self._refresh_lock = self._refresh_lock_type()
        if not self._stop.is_set():
            self._stop = threading.Event()
            self._start_polling()

    def close(self) -> None:
        """Stop polling (a refresh in progress finishes)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self._join_timeout)

    def __enter__(self: _P) -> _P:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_POLLING: weakref.WeakSet[PollingSource] = weakref.WeakSet()


def _restart_polling_after_fork() -> None:
    for source in list(_POLLING):
        source._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restart_polling_after_fork)

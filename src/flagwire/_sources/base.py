"""Where flag sets come from: the :class:`Source` protocol and :class:`FileSource`.

A source holds the flag set in force and swaps it atomically when a valid new version
arrives. An invalid update never replaces the flag set in force: the source keeps the
last good one, logs the error and reports it in :attr:`Source.status`.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from flagwire._engine.flagset import FlagSet
from flagwire._errors import ConfigError, FlagsetError, SourceError

__all__ = ["FileSource", "Listener", "Source", "SourceStatus", "StaticSource", "as_source"]

logger = logging.getLogger("flagwire")

Listener = Callable[[FlagSet, FlagSet], None]
"""Called as ``listener(old, new)`` after a new flag set is in force."""


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """The health of a source.

    Attributes:
        ok: False while the latest attempt to load failed (the last good flag set, if
            any, is still in force).
        version: The version label of the flag set in force.
        last_good_load: When the flag set in force was loaded (UTC), or ``None``.
        last_error: The latest load error, cleared by the next good load.
        last_error_time: When ``last_error`` happened.
        loads: How many good loads so far.
        failures: How many failed loads so far.
    """

    ok: bool
    version: str
    last_good_load: datetime | None = None
    last_error: str | None = None
    last_error_time: datetime | None = None
    loads: int = 0
    failures: int = 0


@runtime_checkable
class Source(Protocol):
    """Anything that holds a current :class:`FlagSet`."""

    @property
    def flagset(self) -> FlagSet:
        """The flag set in force. Reading it is lock-free and always whole."""
        ...

    @property
    def status(self) -> SourceStatus:
        """The source's health."""
        ...

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(old, new)`` on every change; returns an unsubscribe function."""
        ...


def _now() -> datetime:
    return datetime.now(timezone.utc)


class _SourceBase:
    """The last-known-good flag set, status and listeners, shared by sources."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        # A plain attribute, swapped whole: reading it is one attribute load, no lock.
        self.flagset: FlagSet = FlagSet.empty(source=name)
        self._status = SourceStatus(ok=False, version=self.flagset.version_label)
        self._listeners: tuple[Listener, ...] = ()

    @property
    def status(self) -> SourceStatus:
        return self._status

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners = (*self._listeners, listener)

        def unsubscribe() -> None:
            with self._lock:
                self._listeners = tuple(x for x in self._listeners if x is not listener)

        return unsubscribe

    def _accept(self, new: FlagSet) -> None:
        with self._lock:
            old = self.flagset
            self.flagset = new  # one reference swap: readers see old or new, whole
            self._status = replace(
                self._status,
                ok=True,
                version=new.version_label,
                last_good_load=_now(),
                last_error=None,
                last_error_time=None,
                loads=self._status.loads + 1,
            )
            listeners = self._listeners
        for problem in new.problems:
            logger.warning("flagwire: %s: %s", self._name, problem)
        if old.digest == new.digest:
            return
        for listener in listeners:
            try:
                listener(old, new)
            except Exception:  # noqa: PERF203 - one listener must not stop the others
                logger.exception("flagwire: a flag-set listener failed")

    def _reject(self, error: Exception) -> None:
        with self._lock:
            self._status = replace(
                self._status,
                ok=False,
                last_error=str(error),
                last_error_time=_now(),
                failures=self._status.failures + 1,
            )
            version = self.flagset.version_label
        logger.error("flagwire: %s; keeping the flag set in force (%s)", error, version)


_P = TypeVar("_P", bound="_PollingSource")


class _PollingSource(_SourceBase):
    """A source a daemon thread refreshes, restarted in forked children.

    Subclasses set ``_refresh_lock`` (a ``Lock`` unless they need an ``RLock``),
    implement :meth:`_poll` and :meth:`_delay`, and call :meth:`_start_polling`.
    """

    _refresh_lock_type: Callable[[], Any] = threading.Lock
    _join_timeout = 5.0

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refresh_lock = self._refresh_lock_type()

    def _poll(self) -> object:
        raise NotImplementedError

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


_POLLING: weakref.WeakSet[_PollingSource] = weakref.WeakSet()


def _restart_polling_after_fork() -> None:
    for source in list(_POLLING):
        source._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restart_polling_after_fork)


class FileSource(_PollingSource):
    """A flag-definition file, reloaded when it changes.

    The file is checked every ``poll_interval`` seconds by a daemon thread (by size,
    modification time and inode, so editors that replace the file are seen too). A
    valid new version replaces the flag set in one atomic swap; an invalid one is
    logged and reported in :attr:`status` while the last good flag set stays in force.

    Args:
        path: The JSON or YAML file.
        strict: Raise at start-up if the file is missing or invalid. Otherwise start
            with an empty flag set, log a loud warning, and load the file as soon as
            it becomes valid.
        poll_interval: Seconds between checks; ``0`` disables watching (call
            :meth:`refresh` yourself).
        fractional: Force the fractional algorithm (``"v2"``/``"v3"``).

    Raises:
        FlagsetError: In strict mode, when the file is missing or invalid.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        strict: bool = False,
        poll_interval: float = 0.5,
        fractional: str | None = None,
    ) -> None:
        super().__init__(str(path))
        self.path = Path(path)
        self._fractional = fractional
        self._signature: tuple[int, int, int] | None = None
        try:
            self._load()
        except FlagsetError as exc:
            if strict:
                raise
            self._reject(exc)
            logger.warning(
                "flagwire: starting with NO FLAGS: %s. Every flag gives its code default "
                "until %s is valid (use strict=True to fail instead).",
                exc,
                self.path,
            )
        self._poll_interval = poll_interval
        if poll_interval > 0:
            self._start_polling()

    def _delay(self) -> float:
        return self._poll_interval

    def _thread_name(self) -> str:
        return f"flagwire-watch:{self.path}"

    def _poll(self) -> object:
        return self.refresh()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _load(self) -> None:
        signature = self._stat()
        self._signature = signature
        if signature is None:
            raise FlagsetError("file not found", path=str(self.path))
        self._accept(FlagSet.from_path(self.path, fractional=self._fractional))

    def refresh(self) -> bool:
        """Reload now if the file changed. Returns True if a new flag set is in force."""
        with self._refresh_lock:
            signature = self._stat()
            if signature == self._signature:
                return False
            before = self.flagset
            try:
                self._load()
            except (FlagsetError, SourceError) as exc:
                self._reject(exc)
                return False
            except Exception as exc:  # never let a bad file kill the watcher
                self._reject(SourceError(f"{self.path}: {type(exc).__name__}: {exc}"))
                return False
            return self.flagset.digest != before.digest

    def __repr__(self) -> str:
        return f"<FileSource {self.path} {self._status.version} ok={self._status.ok}>"


class StaticSource:
    """A source that always holds the same flag set (embedding, tests).

    Args:
        flagset: The flag set.
    """

    def __init__(self, flagset: FlagSet) -> None:
        self.flagset: FlagSet = flagset
        self._status = SourceStatus(
            ok=True, version=flagset.version_label, last_good_load=_now(), loads=1
        )

    @property
    def status(self) -> SourceStatus:
        return self._status

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return lambda: None

    def __repr__(self) -> str:
        return f"<StaticSource {self.flagset.version_label}>"


def as_source(source: Source | FlagSet) -> Source:
    """A :class:`Source` for a source or a bare flag set."""
    if isinstance(source, FlagSet):
        return StaticSource(source)
    if not hasattr(source, "flagset"):
        raise ConfigError(
            f"source must be a flagwire Source (FileSource, ...) or a FlagSet, not "
            f"{type(source).__name__}"
        )
    return source

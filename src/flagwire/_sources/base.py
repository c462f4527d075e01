"""Where flag sets come from: the :class:`Source` protocol, its status and the shared base.

A source holds the flag set in force and swaps it atomically when a valid new version
arrives. An invalid update never replaces the flag set in force: the source keeps the
last good one, logs the error and reports it in :attr:`Source.status`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Protocol, runtime_checkable

from flagwire._engine.flagset import FlagSet
from flagwire._errors import ConfigError, FlagsetError

__all__ = [
    "Listener",
    "Source",
    "SourceBase",
    "SourceStatus",
    "StaticSource",
    "as_source",
    "load_text",
]

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


def load_text(
    text: str, *, source: str, format: str | None = None, fractional: str | None = None
) -> FlagSet:
    """A flag set from a document's text; any failure is a :class:`FlagsetError` naming
    ``source`` (a source never lets a document crash its start or its poller)."""
    try:
        return FlagSet.from_text(text, format=format, source=source, fractional=fractional)
    except FlagsetError:
        raise
    except RecursionError:
        raise FlagsetError("the document is nested too deeply", path=source) from None
    except Exception as exc:
        raise FlagsetError(
            f"cannot load the document: {type(exc).__name__}: {exc}", path=source
        ) from exc


def _now() -> datetime:
    return datetime.now(timezone.utc)


class SourceBase:
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

    def _confirm(self) -> None:
        """The source confirmed the flag set in force: a success, without a swap."""
        with self._lock:
            self._status = replace(
                self._status,
                ok=True,
                last_good_load=_now(),
                last_error=None,
                last_error_time=None,
            )

    def _reject(self, error: Exception, *, log: bool = True) -> None:
        with self._lock:
            self._status = replace(
                self._status,
                ok=False,
                last_error=str(error),
                last_error_time=_now(),
                failures=self._status.failures + 1,
            )
            version = self.flagset.version_label
            loaded = self._status.loads > 0
        if not log:
            return
        if loaded:
            logger.error("flagwire: %s; keeping the flag set in force (%s)", error, version)
        else:
            logger.error(
                "flagwire: %s; no flag set loaded yet: every flag gives its code default "
                "until a valid one loads",
                error,
            )


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

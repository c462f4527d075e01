"""Flags in traces and metrics: the :class:`Telemetry` protocol and the shared record.

The middleware calls every configured telemetry once per request, after the response, with
the request's decisions and tracked events (:class:`RequestRecord`); nothing runs per
evaluation. Label values are bounded: flag keys and variants come from the flag set, routes
are templates, past ``max_flags`` decided flags per request the rest share the ``_other``
label, and event names are declared or capped (past the cap: ``_other``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from functools import lru_cache
from typing import Protocol, runtime_checkable

from ._engine.assignment import Assignment, ErrorCode
from ._engine.flagset import FlagSet
from ._request.tracking import TrackedEvent

__all__ = ["OVERFLOW", "UNKNOWN_FLAG", "RequestRecord", "Telemetry", "status_class"]

logger = logging.getLogger("flagwire")

OVERFLOW = "_other"
"""The flag label of decisions past a telemetry's ``max_flags`` in one request."""
NO_VARIANT = "_none"
"""The variant label of a decision that chose no variant (disabled, default, error)."""
UNKNOWN_FLAG = "_unknown"
"""The flag label of every flag the flag set does not define (keys an app takes from
request data must not make a label value each)."""
OTHER_METHOD = "_OTHER"
"""The method label (and span name) of a method that is not a standard one, as in
OpenTelemetry's HTTP conventions."""
METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
    | {"TASK", "GRPC"}  # the method labels of Celery tasks and gRPC calls
)


def method_label(method: str) -> str:
    """``method`` if it is a standard HTTP method, else ``_OTHER`` (clients send any)."""
    return method if method in METHODS else OTHER_METHOD


def flag_label(key: str, decision: Assignment) -> str:
    """The flag label: the key, or ``_unknown`` for a flag the flag set does not have."""
    return UNKNOWN_FLAG if decision.error_code is ErrorCode.FLAG_NOT_FOUND else key


def label_text(text: str) -> str:
    """``text`` as exposition formats can write it (a lone surrogate becomes ``?``)."""
    if text.isascii():
        return text
    return text.encode("utf-8", "replace").decode("utf-8")


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One finished request, as telemetry sees it.

    Attributes:
        decisions: The flags the request decided, in the order decided.
        method: The HTTP method.
        route: The route template (``/users/{id}``), never the raw path; ``""`` if the
            framework gave none.
        status: The response status code (500 if the app raised before responding).
        duration: Seconds from the request's start to the end of its response.
        flagset_version: The pinned flag set's version label.
        reads: For a flag whose reads were served different assignments (read as a
            string, then as a boolean), each distinct one in the order served; the flag's
            entry in ``decisions`` is the last.
        targeting_key: The request's targeting key, if it has one.
        events: The outcomes the request tracked (:meth:`~flagwire.RequestFlags.track`),
            ``(name, value or None)`` in the order tracked; each one counts for every
            flag in ``decisions``.
    """

    decisions: Mapping[str, Assignment]
    method: str
    route: str
    status: int
    duration: float
    flagset_version: str
    reads: Mapping[str, tuple[Assignment, ...]] = field(default_factory=dict)
    targeting_key: str | None = None
    events: Sequence[TrackedEvent] = ()


@runtime_checkable
class Telemetry(Protocol):
    """Something that records finished requests (OpenTelemetry, Prometheus, ...)."""

    def record(self, request: RequestRecord) -> None:
        """Record one request. Must not raise (the middleware logs if it does)."""
        ...


def status_class(status: int) -> str:
    """``2xx``, ``4xx``, ``5xx`` ... for a status code."""
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


def record_all(telemetry: Sequence[Telemetry], request: RequestRecord) -> None:
    """Hand a request to every telemetry; one that fails never fails the request."""
    for sink in telemetry:
        try:
            sink.record(request)
        except Exception:  # noqa: PERF203 - a telemetry bug must not break the others
            logger.exception("flagwire: telemetry %r failed", sink)


def variant_label(decision: Assignment) -> str:
    return decision.variant if decision.variant is not None else NO_VARIANT


def bounded(decisions: Mapping[str, Assignment], max_flags: int) -> list[tuple[str, Assignment]]:
    """The decisions to label (by :func:`flag_label`), past ``max_flags`` folded into one
    overflow entry."""
    items = [(flag_label(key, decision), decision) for key, decision in decisions.items()]
    if len(items) <= max_flags:
        return items
    kept = items[:max_flags]
    overflow = items[max_flags][1]
    return [*kept, (OVERFLOW, overflow)]


def _expiry(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    return _day_end(value[:10])


@lru_cache(maxsize=4096)  # a flag set's expiry dates repeat (the end of a quarter, ...)
def _day_end(value: str) -> float | None:
    try:
        day = date.fromisoformat(value)
    except ValueError:
        return None
    # A flag expires at the end of its expiry day (UTC).
    return datetime(day.year, day.month, day.day, 23, 59, 59, tzinfo=timezone.utc).timestamp()


def expiries(flagset: FlagSet) -> list[tuple[str, str, float]]:
    """``(flag, owner, expiry as unix seconds)`` for each flag with ``metadata.expires``."""
    found = []
    for key in flagset:
        definition = flagset.definition(key)
        if definition is None:
            continue
        when = _expiry(definition.metadata.get("expires"))
        if when is not None:
            found.append((key, str(definition.metadata.get("owner", "")), when))
    return found


def expired_flags(flagset: FlagSet, now: float | None = None) -> list[str]:
    """The flags past their ``metadata.expires`` date."""
    moment = time.time() if now is None else now
    return [key for key, _, when in expiries(flagset) if when < moment]

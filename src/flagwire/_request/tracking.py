"""Tracked outcomes: :meth:`flagwire.RequestFlags.track` and what a valid event is.

A request's events stay with its :class:`~flagwire.RequestFlags` until telemetry takes
them (after the response, with the request's decisions). A tracking bug neither fails a
request nor floods the log: a bad event is dropped with a warning logged once.
"""

from __future__ import annotations

import logging
import math

__all__ = ["TrackedEvent", "Tracking", "valid_event", "warn_once"]

logger = logging.getLogger("flagwire")

TrackedEvent = tuple[str, "float | None"]
"""One tracked outcome: the event's name and its value (None for an event without one)."""

_WARNED: set[tuple[str, str]] = set()  # tracking problems logged so far
_WARNED_MAX = 1000  # event names should be a fixed set, but a bug could make them unbounded


def valid_event(event: object, value: object) -> bool:
    """Whether ``track(event, value)`` can be recorded (else it warns, once per event)."""
    if not isinstance(event, str) or not event:
        warn_once(
            ("name", repr(event)[:100]),
            "flagwire: track(%r): the event name must be a non-empty string; the event is dropped",
            event,
        )
        return False
    if value is None:
        return True
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return True
    warn_once(
        ("value", event),
        'flagwire: track("%s", %r): the value must be a finite '
        "number or None; the event is dropped (logged once per event)",
        event,
        value,
    )
    return False


def warn_once(mark: tuple[str, str], message: str, *args: object) -> None:
    if mark in _WARNED or len(_WARNED) >= _WARNED_MAX:
        return
    _WARNED.add(mark)
    logger.warning(message, *args)


class Tracking:
    """The tracking half of :class:`~flagwire.RequestFlags` (a mixin, no state of its own
    until a request tracks something; it gives the flags their ``__dict__``)."""

    _events: list[TrackedEvent] | None = None
    _detached = False  # made by current_flags() outside a request: nothing records it

    def track(self, event: str, value: float | None = None) -> None:
        """Record that ``event`` happened in this request (a checkout, a sign-up, ...).

        The event counts for **every flag the request decides**, the ones decided before
        this call and the ones decided after it: telemetry records the request's events
        when it ends, against the same decisions its requests are counted under, so an
        event's rate per request has one set of requests above and below the line. (A
        flag decided after the event cannot have caused it; for that flag the event is
        noise shared equally by its variants, not a bias.)

        Inside a request handled by flagwire's middleware the events are recorded after
        the response. For flags you made yourself (``RequestFlags(...)`` with
        :func:`activate`, in a job or a script) nothing ends the unit of work: hand the
        flags to the telemetry when it is done (e.g.
        :meth:`flagwire.prometheus.PrometheusTelemetry.record_events`). On the throwaway
        flags :func:`current_flags` returns outside any request, the event is dropped
        with a warning (logged once): no flag was decided there to count it for.

        Never raises: an event name that is not a non-empty string, or a value that is
        not a finite number, is dropped with a warning (logged once per event).

        Args:
            event: The event's name. Telemetry bounds how many names get a label of
                their own; use a fixed set of names, never user input.
            value: A number that goes with it (revenue, items), or None. Track an event
                always with a value or always without: its mean value is the sum of
                values over the count of events.
        """
        if not valid_event(event, value):
            return
        if self._detached:
            warn_once(
                ("detached", event),
                'flagwire: track("%s") outside a request: no flag was decided to count it '
                "for; the event is dropped",
                event,
            )
            return
        events = self._events
        if events is None:  # setdefault and append are atomic: threads of one request
            events = self.__dict__.setdefault("_events", [])
        events.append((event, None if value is None else float(value)))

    def tracked(self) -> tuple[TrackedEvent, ...]:
        """The events tracked so far and not yet recorded, in the order tracked."""
        return tuple(self._events or ())

    def take_tracked(self) -> list[TrackedEvent]:
        """The events tracked and not yet recorded; they count as recorded from now on
        (telemetry calls this, so no event is recorded twice)."""
        events = self._events
        if not events:
            return []
        self._events = None
        return events

"""Prometheus metrics per flag and variant (prometheus_client).

::

    from prometheus_client import make_asgi_app
    from flagwire.prometheus import PrometheusTelemetry

    telemetry = PrometheusTelemetry(sources=[source])          # default registry
    app.add_middleware(FlagwireMiddleware, source=source, telemetry=[telemetry])
    app.mount("/metrics", make_asgi_app())

Metrics (names follow Prometheus conventions; labels are bounded):

- ``flagwire_request_duration_seconds`` (histogram; flag, variant, method, route,
  status_class): observed once per decided flag per request;
- ``flagwire_evaluations_total`` (counter; flag, variant, reason);
- ``flagwire_evaluation_errors_total`` (counter; flag, error_code);
- ``flagwire_flagset_info`` (gauge; source, version): 1 for the flag set in force;
- ``flagwire_flagset_last_load_timestamp_seconds`` (gauge; source);
- ``flagwire_source_up`` (gauge; source): 1 if the last load succeeded, else 0;
- ``flagwire_source_failures_total`` (counter; source);
- ``flagwire_flag_expiry_timestamp_seconds`` (gauge; source, flag, owner): from
  ``metadata.expires`` (end of that day, UTC), for the flags expired or expiring within 30
  days (the rest would only grow every scrape; built once per flag-set version);
- ``flagwire_flags_expired`` (gauge; source): flags past their expiry now;
- ``flagwire_events_total``, ``flagwire_event_value_total``,
  ``flagwire_event_value_squared_total`` (counters; flag, variant, event): tracked events
  (:meth:`flagwire.RequestFlags.track`), counted once per flag the request decided, with
  the sum and the sum of squares of their values (what ``flagwire report`` needs for
  means and variances); an event without a value adds to the count only.

``variant`` is ``_none`` for a decision without a variant; past ``max_flags`` decided flags in
one request the rest are counted under ``flag="_other"``, and flags the flag set does not
define under ``flag="_unknown"``. The metrics are created once per registry and shared by
every :class:`PrometheusTelemetry` on it. Event names are bounded too: the
``events`` you declare, or else the first ``max_events`` names this process sees (up to
``MAX_EVENT_NAME`` characters); any other name is counted as ``event="_other"``. The
tracking counters have at most (flags + 1) x (variants + 1) x (event names + 1) series
each. Works in prometheus_client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, gunicorn): the counters and the histogram
are aggregated by its collector; the source gauges describe the worker that serves the
scrape, which reads the same files as the others. Requests are observed without a lock:
each worker writes what it recorded to those files every second (and a scrape of a
registry in-process flushes first), so a multiprocess scrape is at most about a second
behind.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

from ._engine.assignment import Assignment, ErrorCode
from ._errors import ConfigError, missing_extra
from ._request.flags import RequestFlags
from ._request.tracking import TrackedEvent, warn_once
from ._sources.base import Source
from ._telemetry import (
    OVERFLOW,
    UNKNOWN_FLAG,
    RequestRecord,
    bounded,
    label_text,
    status_class,
    variant_label,
)

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

    from ._prometheus_batch import Batch, FlushBeforeCollect
    from ._prometheus_sources import SourceCollector
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise missing_extra(exc, "flagwire.prometheus", "prometheus_client", "prometheus") from exc

__all__ = ["DEFAULT_BUCKETS", "MAX_EVENT_NAME", "PrometheusTelemetry", "SourceCollector"]

logger = logging.getLogger("flagwire")

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
MAX_EVENT_NAME = 100
"""Event names longer than this are counted as ``_other`` (a label value is stored in
every sample of its series)."""


class _Metrics:
    """The metrics of one registry and their children, shared by every telemetry on it."""

    def __init__(self, registry: CollectorRegistry | None, buckets: Sequence[float]) -> None:
        self.batch = Batch()
        if registry is not None:  # first: collections flush before the metrics are read
            registry.register(FlushBeforeCollect(self.batch))
        self.duration = Histogram(
            "flagwire_request_duration_seconds",
            "Request duration, observed once per flag the request decided, by variant.",
            ["flag", "variant", "method", "route", "status_class"],
            registry=registry,
            buckets=buckets,
        )
        self.evaluations = Counter(
            "flagwire_evaluations",
            "Flags decided in requests, by variant and reason.",
            ["flag", "variant", "reason"],
            registry=registry,
        )
        self.errors = Counter(
            "flagwire_evaluation_errors",
            "Flag evaluations that ended in an error, by error code.",
            ["flag", "error_code"],
            registry=registry,
        )
        tracked = ["flag", "variant", "event"]
        self.events = Counter(
            "flagwire_events",
            "Tracked events, counted once per flag the request decided, by variant.",
            tracked,
            registry=registry,
        )
        self.event_values = Counter(
            "flagwire_event_value",
            "Sum of tracked events' values, by flag, variant and event.",
            tracked,
            registry=registry,
        )
        self.event_squares = Counter(
            "flagwire_event_value_squared",
            "Sum of tracked events' squared values (for their variance).",
            tracked,
            registry=registry,
        )
        self.sources = SourceCollector()
        if registry is not None:
            registry.register(self.sources)
        # .labels() takes a lock per call: the children are kept per label values.
        self.children: dict[tuple[Any, ...], tuple[Any, Any]] = {}
        self.counts: dict[tuple[str, ...], Any] = {}
        self.error_children: dict[tuple[str, ...], Any] = {}
        self.event_children: dict[tuple[str, str, str], tuple[Any, Any, Any]] = {}
        self.lock = threading.Lock()


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()
_BY_REGISTRY_LOCK = threading.Lock()
_CHILDREN_MAX = 20_000  # label children are bounded anyway; the lookup cache is too


def _metrics(registry: CollectorRegistry | None, buckets: Sequence[float]) -> _Metrics:
    if registry is None:
        return _Metrics(None, buckets)
    with _BY_REGISTRY_LOCK:
        found = _BY_REGISTRY.get(registry)
        if found is None:
            found = _BY_REGISTRY[registry] = _Metrics(registry, buckets)
        return found


class PrometheusTelemetry:
    """Records each request's decided flags in Prometheus metrics.

    Args:
        registry: Where to register (default: prometheus_client's global registry).
            The metrics are created once per registry and shared: a second telemetry
            on the same registry (an app factory called twice, an app per test) records
            into the same metrics, and its sources are exported too.
        sources: Sources whose health, flag-set version and expiring flags to export.
        max_flags: Decided flags labelled per request; the rest count as ``_other``.
        buckets: Histogram buckets (seconds), used by the first telemetry of a registry.
        events: The tracked event names to label; any other counts as ``_other``. The
            hard bound, the same in every process: declare them in production.
        max_events: Without ``events``, how many distinct names this process labels (the
            first it sees); later ones count as ``_other``. In multiprocess mode each
            worker admits its own first ``max_events``, so the bound is per worker.

    Raises:
        ConfigError: ``max_events`` is negative, or a declared name is empty or too long.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = REGISTRY,
        sources: Iterable[Source] = (),
        max_flags: int = 20,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        events: Iterable[str] | None = None,
        max_events: int = 50,
    ) -> None:
        self.max_flags = max_flags
        declared = None if events is None else frozenset(events)
        if declared is not None and any(
            not isinstance(e, str) or not 0 < len(e) <= MAX_EVENT_NAME for e in declared
        ):
            msg = f"PrometheusTelemetry(events=...): names must be 1 to {MAX_EVENT_NAME} characters"
            raise ConfigError(msg)
        if max_events < 0:
            msg = f"PrometheusTelemetry(max_events={max_events}): must be 0 or more"
            raise ConfigError(msg)
        self.max_events = len(declared) if declared is not None else max_events
        # Event name -> its label; with declared events, filled up front and never grown.
        self._event_labels: dict[str, str] = {e: e for e in declared or ()}
        self._events_closed = declared is not None
        metrics = self._metrics = _metrics(registry, buckets)
        self.duration = metrics.duration
        self.evaluations = metrics.evaluations
        self.errors = metrics.errors
        self.events = metrics.events
        self.event_values = metrics.event_values
        self.event_squares = metrics.event_squares
        self.sources = metrics.sources
        for source in sources:
            self.sources.add(source)
        self._children = metrics.children
        self._counts = metrics.counts
        self._errors = metrics.error_children
        self._event_children = metrics.event_children
        self._lock = metrics.lock
        self._batch = metrics.batch

    def flush(self) -> None:
        """Apply the observations recorded so far to the metrics now (collecting the
        registry does it, and a thread does it every second)."""
        self._batch.flush()

    def record(self, request: RequestRecord) -> None:
        method = request.method
        route = request.route
        status = status_class(request.status)
        duration = request.duration
        decisions = request.decisions
        items = (
            decisions.items()
            if len(decisions) <= self.max_flags
            else bounded(decisions, self.max_flags)
        )
        children = self._children
        add = self._batch.add
        for key, decision in items:
            error_code = decision.error_code
            if error_code is ErrorCode.FLAG_NOT_FOUND:
                key = UNKNOWN_FLAG
            shape = (key, decision.variant, decision.reason, method, route, status)
            pair = children.get(shape)
            if pair is None:
                pair = self._pair(shape, decision)
            add((pair, duration))
            if error_code is not None:
                error_labels = (key, error_code.value)
                error = self._errors.get(error_labels)
                if error is None:
                    error = self._child(self._errors, self.errors, error_labels)
                error.inc()
        if request.events:
            self._record_events(items, request.events)
        self._batch.settle()

    def record_events(self, flags: RequestFlags) -> None:
        """Record the events ``flags`` tracked and not yet recorded, against the flags it
        decided: for units of work no middleware ends (a job, a script)::

            flags = RequestFlags(source.flagset, {"targetingKey": user_id})
            with activate(flags):
                run_job()  # calls flagwire.track("export", 3)
            telemetry.record_events(flags)

        Only the tracking counters change (there was no request to time). Events of flags
        that decided nothing are dropped: there is no variant to count them for.
        """
        events = flags.take_tracked()
        decisions = flags.served()
        if events and decisions:
            self._record_events(bounded(decisions, self.max_flags), events)

    def _record_events(
        self, items: Iterable[tuple[str, Assignment]], events: Sequence[TrackedEvent]
    ) -> None:
        labelled = [
            (self._event_label(name), value)
            for name, value in events
            if value is None or value >= 0 or self._negative(name, value)
        ]
        children = self._event_children
        for key, decision in items:
            if decision.error_code is ErrorCode.FLAG_NOT_FOUND:
                key = UNKNOWN_FLAG
            variant = variant_label(decision)
            for event, value in labelled:
                labels = (key, variant, event)
                trio = children.get(labels)
                if trio is None:
                    trio = self._trio(labels)
                trio[0].inc()
                if value:  # None (no value) and 0 leave the sums as they are
                    trio[1].inc(value)
                    trio[2].inc(value * value)

    def _event_label(self, name: str) -> str:
        label = self._event_labels.get(name)
        if label is not None:
            return label
        if self._events_closed or len(name) > MAX_EVENT_NAME:
            return OVERFLOW
        with self._lock:
            labels = self._event_labels
            if name not in labels:
                if len(labels) >= self.max_events:
                    self._events_closed = True
                    logger.warning(
                        "flagwire: more than %d tracked event names; new names are counted "
                        'as event="%s" (declare them: PrometheusTelemetry(events=[...]))',
                        self.max_events,
                        OVERFLOW,
                    )
                    return OVERFLOW
                labels[name] = name
            return labels[name]

    @staticmethod
    def _negative(name: str, value: float) -> bool:
        warn_once(
            ("negative", name),
            'flagwire: track("%s", %r): Prometheus counters only go up, so values must be '
            ">= 0; the event is not recorded (logged once per event)",
            name,
            value,
        )
        return False

    def _trio(self, labels: tuple[str, str, str]) -> tuple[Any, Any, Any]:
        with self._lock:
            trio = self._event_children.get(labels)
            if trio is None:
                texts = [label_text(label) for label in labels]
                trio = (
                    self.events.labels(*texts),
                    self.event_values.labels(*texts),
                    self.event_squares.labels(*texts),
                )
                if len(self._event_children) < _CHILDREN_MAX:
                    self._event_children[labels] = trio
            return trio

    def _pair(self, shape: tuple[Any, ...], decision: Any) -> tuple[Any, Any]:
        key, _, reason, method, route, status = shape
        key, route = label_text(key), label_text(route)
        variant = label_text(variant_label(decision))
        with self._lock:
            pair = self._children.get(shape)
            if pair is None:
                count_labels = (key, variant, reason.value)
                count = self._counts.get(count_labels)
                if count is None:
                    count = self.evaluations.labels(*count_labels)
                    self._counts[count_labels] = count
                pair = (self.duration.labels(key, variant, method, route, status), count)
                if len(self._children) < _CHILDREN_MAX:
                    self._children[shape] = pair
            return pair

    def _child(
        self, cache: dict[tuple[str, ...], Any], metric: Any, labels: tuple[str, ...]
    ) -> Any:
        with self._lock:
            child = cache.get(labels)
            if child is None:
                child = metric.labels(*(label_text(label) for label in labels))
                cache[labels] = child
            return child

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
  ``metadata.expires`` (end of that day, UTC);
- ``flagwire_flags_expired`` (gauge; source): flags past their expiry now;
- ``flagwire_events_total``, ``flagwire_event_value_total``,
  ``flagwire_event_value_squared_total`` (counters; flag, variant, event): tracked events
  (:meth:`flagwire.RequestFlags.track`), counted once per flag the request decided, with
  the sum and the sum of squares of their values (what ``flagwire report`` needs for
  means and variances); an event without a value adds to the count only.

``variant`` is ``_none`` for a decision without a variant; past ``max_flags`` decided flags in
one request the rest are counted under ``flag="_other"``. Event names are bounded too: the
``events`` you declare, or else the first ``max_events`` names this process sees (up to
``MAX_EVENT_NAME`` characters); any other name is counted as ``event="_other"``. The
tracking counters have at most (flags + 1) x (variants + 1) x (event names + 1) series
each. Works in prometheus_client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, gunicorn): the counters and the histogram
are aggregated by its collector; the source gauges describe the worker that serves the
scrape, which reads the same files as the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ._engine.assignment import Assignment
from ._errors import ConfigError, missing_extra
from ._request.flags import RequestFlags
from ._request.tracking import TrackedEvent, warn_once
from ._sources.base import Source
from ._telemetry import (
    OVERFLOW,
    RequestRecord,
    bounded,
    expiries,
    status_class,
    variant_label,
)

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise missing_extra(exc, "flagwire.prometheus", "prometheus_client", "prometheus") from exc

__all__ = ["DEFAULT_BUCKETS", "MAX_EVENT_NAME", "PrometheusTelemetry", "SourceCollector"]

logger = logging.getLogger("flagwire")

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
MAX_EVENT_NAME = 100
"""Event names longer than this are counted as ``_other`` (a label value is stored in
every sample of its series)."""


class PrometheusTelemetry:
    """Records each request's decided flags in Prometheus metrics.

    Args:
        registry: Where to register (default: prometheus_client's global registry).
            Build one telemetry per registry: registering twice raises
            ``ValueError: Duplicated timeseries``.
        sources: Sources whose health, flag-set version and expiring flags to export.
        max_flags: Decided flags labelled per request; the rest count as ``_other``.
        buckets: Histogram buckets (seconds).
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
        self._event_children: dict[tuple[str, str, str], tuple[Any, Any, Any]] = {}
        self.sources = SourceCollector(sources)
        if registry is not None:
            registry.register(self.sources)
        # .labels() takes a lock per call: the children are kept per label values.
        self._children: dict[tuple[Any, ...], tuple[Any, Any]] = {}
        self._counts: dict[tuple[str, ...], Any] = {}
        self._errors: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()

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
        for key, decision in items:
            shape = (key, decision.variant, decision.reason, method, route, status)
            pair = children.get(shape)
            if pair is None:
                pair = self._pair(shape, decision)
            pair[0].observe(duration)
            pair[1].inc()
            if decision.error_code is not None:
                error_labels = (key, decision.error_code.value)
                error = self._errors.get(error_labels)
                if error is None:
                    error = self._child(self._errors, self.errors, error_labels)
                error.inc()
        if request.events:
            self._record_events(items, request.events)

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
                trio = self._event_children[labels] = (
                    self.events.labels(*labels),
                    self.event_values.labels(*labels),
                    self.event_squares.labels(*labels),
                )
            return trio

    def _pair(self, shape: tuple[Any, ...], decision: Any) -> tuple[Any, Any]:
        key, _, reason, method, route, status = shape
        variant = variant_label(decision)
        with self._lock:
            pair = self._children.get(shape)
            if pair is None:
                count_labels = (key, variant, reason.value)
                count = self._counts.get(count_labels)
                if count is None:
                    count = self._counts[count_labels] = self.evaluations.labels(*count_labels)
                pair = (self.duration.labels(key, variant, method, route, status), count)
                self._children[shape] = pair
            return pair

    def _child(
        self, cache: dict[tuple[str, ...], Any], metric: Any, labels: tuple[str, ...]
    ) -> Any:
        with self._lock:
            child = cache.get(labels)
            if child is None:
                child = cache[labels] = metric.labels(*labels)
            return child


class SourceCollector(Collector):
    """Exports sources' health and flag sets at scrape time (nothing on the request path)."""

    def __init__(self, sources: Iterable[Source] = ()) -> None:
        self._sources = list(sources)

    def add(self, source: Source) -> None:
        """Export one more source."""
        self._sources.append(source)

    def collect(self) -> Iterable[Any]:
        info = GaugeMetricFamily(
            "flagwire_flagset_info",
            "The flag set in force (value 1).",
            labels=["source", "version"],
        )
        loaded = GaugeMetricFamily(
            "flagwire_flagset_last_load_timestamp_seconds",
            "When the flag set in force was loaded.",
            labels=["source"],
        )
        up = GaugeMetricFamily(
            "flagwire_source_up", "1 if the source's last load succeeded.", labels=["source"]
        )
        failures = CounterMetricFamily(
            "flagwire_source_failures", "Failed loads of the source.", labels=["source"]
        )
        expiry = GaugeMetricFamily(
            "flagwire_flag_expiry_timestamp_seconds",
            "When a flag expires (metadata.expires, end of day UTC).",
            labels=["source", "flag", "owner"],
        )
        expired = GaugeMetricFamily(
            "flagwire_flags_expired", "Flags past their expiry date now.", labels=["source"]
        )
        now = time.time()
        for source in self._sources:
            flagset = source.flagset
            name = flagset.source or repr(source)
            status = source.status
            info.add_metric([name, status.version], 1)
            if status.last_good_load is not None:
                loaded.add_metric([name], status.last_good_load.timestamp())
            up.add_metric([name], 1 if status.ok else 0)
            failures.add_metric([name], status.failures)
            count = 0
            for key, owner, when in expiries(flagset):
                expiry.add_metric([name, key, owner], when)
                count += when < now
            expired.add_metric([name], count)
        yield from (info, loaded, up, failures, expiry, expired)

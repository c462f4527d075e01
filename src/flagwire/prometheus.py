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
- ``flagwire_flags_expired`` (gauge; source): flags past their expiry now.

``variant`` is ``_none`` for a decision without a variant; past ``max_flags`` decided flags in
one request the rest are counted under ``flag="_other"``, and flags the flag set does not
define under ``flag="_unknown"``. The metrics are created once per registry and shared by
every :class:`PrometheusTelemetry` on it. Works in prometheus_client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, gunicorn): the counters and the histogram
are aggregated by its collector; the source gauges describe the worker that serves the
scrape, which reads the same files as the others.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

from ._engine.assignment import ErrorCode
from ._sources.base import Source
from ._telemetry import (
    UNKNOWN_FLAG,
    RequestRecord,
    bounded,
    expiries,
    label_text,
    status_class,
    variant_label,
)

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "flagwire.prometheus needs prometheus_client: pip install 'flagwire[prometheus]'"
    ) from exc

__all__ = ["DEFAULT_BUCKETS", "PrometheusTelemetry", "SourceCollector"]

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)


class _Metrics:
    """The metrics of one registry and their children, shared by every telemetry on it."""

    def __init__(self, registry: CollectorRegistry | None, buckets: Sequence[float]) -> None:
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
        self.sources = SourceCollector()
        if registry is not None:
            registry.register(self.sources)
        # .labels() takes a lock per call: the children are kept per label values.
        self.children: dict[tuple[Any, ...], tuple[Any, Any]] = {}
        self.counts: dict[tuple[str, ...], Any] = {}
        self.error_children: dict[tuple[str, ...], Any] = {}
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
        registry: Where to register (default: prometheus_client's global registry). The
            metrics are created once per registry and shared: a second telemetry on the
            same registry (an app factory called twice, an app per test) records into
            the same metrics, and its sources are exported too.
        sources: Sources whose health, flag-set version and expiring flags to export.
        max_flags: Decided flags labelled per request; the rest count as ``_other``.
            Flags the flag set does not define all count as ``_unknown``.
        buckets: Histogram buckets (seconds), used by the first telemetry of a registry.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = REGISTRY,
        sources: Iterable[Source] = (),
        max_flags: int = 20,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        self.max_flags = max_flags
        metrics = self._metrics = _metrics(registry, buckets)
        self.duration = metrics.duration
        self.evaluations = metrics.evaluations
        self.errors = metrics.errors
        self.sources = metrics.sources
        for source in sources:
            self.sources.add(source)
        self._children = metrics.children
        self._counts = metrics.counts
        self._errors = metrics.error_children
        self._lock = metrics.lock

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
            error_code = decision.error_code
            if error_code is ErrorCode.FLAG_NOT_FOUND:
                key = UNKNOWN_FLAG
            shape = (key, decision.variant, decision.reason, method, route, status)
            pair = children.get(shape)
            if pair is None:
                pair = self._pair(shape, decision)
            pair[0].observe(duration)
            pair[1].inc()
            if error_code is not None:
                error_labels = (key, error_code.value)
                error = self._errors.get(error_labels)
                if error is None:
                    error = self._child(self._errors, self.errors, error_labels)
                error.inc()

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


class SourceCollector(Collector):
    """Exports sources' health and flag sets at scrape time (nothing on the request path)."""

    def __init__(self, sources: Iterable[Source] = ()) -> None:
        self._sources = list(sources)

    def add(self, source: Source) -> None:
        """Export one more source (once, however often it is added)."""
        if not any(known is source for known in self._sources):
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
        for source in list(self._sources):
            flagset = source.flagset
            name = label_text(flagset.source or repr(source))
            status = source.status
            info.add_metric([name, label_text(status.version)], 1)
            if status.last_good_load is not None:
                loaded.add_metric([name], status.last_good_load.timestamp())
            up.add_metric([name], 1 if status.ok else 0)
            failures.add_metric([name], status.failures)
            count = 0
            for key, owner, when in expiries(flagset):
                expiry.add_metric([name, label_text(key), label_text(owner)], when)
                count += when < now
            expired.add_metric([name], count)
        yield from (info, loaded, up, failures, expiry, expired)

"""flagwire's OpenTelemetry propagator: the request's flags in OTel-propagated ``baggage``.

With OpenTelemetry's HTTP client instrumentation (httpx, requests, aiohttp, ...) doing the
outbound propagation, add flagwire after the W3C baggage propagator::

    from flagwire.otel import install_propagator
    install_propagator()      # tracecontext, baggage, flagwire

or ``OTEL_PROPAGATORS=tracecontext,baggage,flagwire`` (flagwire registers the
``opentelemetry_propagator`` entry point ``flagwire``). On each outgoing request the
propagator rewrites ``baggage``: it removes every ``fw.*`` member the baggage propagator
copied from the context (an upstream's, trusted or forged) and, if the destination is
allowed, adds the current request's signed assignments. The destination is read from the
request's ``Host`` header or the client span's attributes (``server.address``,
``url.full``, ...); with neither — an unsampled span and a client that sets no ``Host``,
as requests — nothing is sent, unless the instrumentation was given :func:`request_hook`
(``RequestsInstrumentor().instrument(request_hook=flagwire.otel.request_hook)``).
Inbound assignments are read by flagwire's middleware, not here.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

from ._errors import missing_extra
from .propagation import outbound_baggage

try:
    from opentelemetry import trace
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.context import Context
    from opentelemetry.propagate import set_global_textmap
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.propagators.textmap import (
        CarrierT,
        Getter,
        Setter,
        TextMapPropagator,
        default_getter,
        default_setter,
    )
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from ._otel_flags import (
        CONTEXT_ID,
        ERROR_MESSAGE,
        ERROR_TYPE,
        EVENT_NAME,
        FLAG_KEY,
        FLAGSET_ID,
        FLAGSET_VERSION,
        PROPAGATED_ATTRIBUTE,
        PROVIDER_NAME,
        RESULT_REASON,
        RESULT_VALUE,
        RESULT_VARIANT,
        SPAN_ATTRIBUTE_PREFIX,
        OTelTelemetry,
    )

except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise missing_extra(exc, "flagwire.otel", "OpenTelemetry", "otel") from exc

__all__ = [
    "CONTEXT_ID",
    "ERROR_MESSAGE",
    "ERROR_TYPE",
    "EVENT_NAME",
    "FLAGSET_ID",
    "FLAGSET_VERSION",
    "FLAG_KEY",
    "PROPAGATED_ATTRIBUTE",
    "PROVIDER_NAME",
    "RESULT_REASON",
    "RESULT_VALUE",
    "RESULT_VARIANT",
    "SPAN_ATTRIBUTE_PREFIX",
    "FlagwirePropagator",
    "OTelMetricsTelemetry",
    "OTelTelemetry",
    "install_propagator",
    "request_hook",
]

_URL_ATTRIBUTES = ("url.full", "http.url")
_HOST_ATTRIBUTES = ("server.address", "net.peer.name", "http.host")


_next_destination: ContextVar[str | None] = ContextVar("flagwire.otel.destination", default=None)


def request_hook(span: Any, request: Any) -> None:
    """A ``request_hook`` for OpenTelemetry's requests (and httpx) instrumentation.

    It tells flagwire's propagator where the request goes even when the span is not
    sampled (requests sets no ``Host`` header, and an unsampled span has no attributes)::

        RequestsInstrumentor().instrument(request_hook=flagwire.otel.request_hook)
    """
    url = getattr(request, "url", None)
    if isinstance(url, bytes):
        url = url.decode("latin-1")
    host = getattr(url, "host", None) if url is not None and not isinstance(url, str) else None
    if host is None and url is not None:
        host = urlsplit(str(url)).hostname
    _next_destination.set(host or None)


def _destination(carrier: Any) -> str | None:
    hinted = _next_destination.get()
    if hinted is not None:
        _next_destination.set(None)  # for this request only
        return hinted
    if isinstance(carrier, Mapping) or hasattr(carrier, "get"):
        try:
            host = carrier.get("host") or carrier.get("Host")
        except Exception:  # an exotic carrier: fall back to the span
            host = None
        if isinstance(host, bytes):
            host = host.decode("latin-1")
        if host:
            return str(host)
    attributes = getattr(trace.get_current_span(), "attributes", None) or {}
    for name in _HOST_ATTRIBUTES:
        value = attributes.get(name)
        if value:
            return str(value)
    for name in _URL_ATTRIBUTES:
        value = attributes.get(name)
        if value:
            return urlsplit(str(value)).hostname
    return None


class FlagwirePropagator(TextMapPropagator):
    """Adds the current request's assignments to ``baggage`` for allowed destinations."""

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        from opentelemetry.context import get_current

        return context if context is not None else get_current()

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        try:
            existing = carrier.get("baggage")  # type: ignore[attr-defined]
        except Exception:
            existing = None
        if isinstance(existing, list):
            existing = ",".join(existing)
        value = outbound_baggage(_destination(carrier), existing)
        if value is not None:
            setter.set(carrier, "baggage", value)
        elif existing:
            try:
                del carrier["baggage"]  # type: ignore[attr-defined]
            except Exception:
                setter.set(carrier, "baggage", "")

    @property
    def fields(self) -> set[str]:
        return {"baggage"}


def install_propagator() -> None:
    """Set OpenTelemetry's global propagator to tracecontext, baggage, flagwire."""
    set_global_textmap(
        CompositePropagator(
            [TraceContextTextMapPropagator(), W3CBaggagePropagator(), FlagwirePropagator()]
        )
    )


# -- telemetry: OpenTelemetry metrics ------------------------------------------------------------


class OTelMetricsTelemetry:
    """The Prometheus metrics' meaning on an OpenTelemetry metrics pipeline.

    Instruments (attributes as the Prometheus labels): ``flagwire.request.duration``
    (histogram, seconds; flag, variant, method, route, status_class, once per decided flag
    per request), ``flagwire.evaluations`` (counter; flag, variant, reason),
    ``flagwire.evaluation.errors`` (counter; flag, error_code), and observable gauges
    ``flagwire.source.up``, ``flagwire.flagset.last_load`` (unix seconds) and
    ``flagwire.flags.expired`` per source.

    Args:
        meter_provider: Default: the global one.
        sources: Sources whose health and expired flags to report.
        max_flags: Decided flags per request; the rest are counted as ``_other``.
    """

    def __init__(
        self,
        *,
        meter_provider: Any = None,
        sources: Any = (),
        max_flags: int = 20,
    ) -> None:
        from opentelemetry import metrics
        from opentelemetry.metrics import CallbackOptions, Observation

        from ._telemetry import bounded, expired_flags, status_class, variant_label

        meter = (meter_provider or metrics.get_meter_provider()).get_meter("flagwire")
        self.max_flags = max_flags
        self._bounded = bounded
        self._status_class = status_class
        self._variant_label = variant_label
        self.duration = meter.create_histogram(
            "flagwire.request.duration",
            unit="s",
            description="Request duration, once per flag the request decided, by variant.",
        )
        self.evaluations = meter.create_counter(
            "flagwire.evaluations", description="Flags decided in requests."
        )
        self.errors = meter.create_counter(
            "flagwire.evaluation.errors", description="Flag evaluations that ended in an error."
        )
        self._sources = list(sources)

        def up(options: CallbackOptions) -> list[Observation]:
            return [
                Observation(1 if s.status.ok else 0, {"source": s.flagset.source or ""})
                for s in self._sources
            ]

        def last_load(options: CallbackOptions) -> list[Observation]:
            return [
                Observation(s.status.last_good_load.timestamp(), {"source": s.flagset.source or ""})
                for s in self._sources
                if s.status.last_good_load is not None
            ]

        def expired(options: CallbackOptions) -> list[Observation]:
            return [
                Observation(len(expired_flags(s.flagset)), {"source": s.flagset.source or ""})
                for s in self._sources
            ]

        meter.create_observable_gauge("flagwire.source.up", callbacks=[up])
        meter.create_observable_gauge("flagwire.flagset.last_load", callbacks=[last_load], unit="s")
        meter.create_observable_gauge("flagwire.flags.expired", callbacks=[expired])

    def record(self, request: Any) -> None:
        status = self._status_class(request.status)
        for key, decision in self._bounded(request.decisions, self.max_flags):
            variant = self._variant_label(decision)
            self.duration.record(
                request.duration,
                {
                    "flag": key,
                    "variant": variant,
                    "method": request.method,
                    "route": request.route,
                    "status_class": status,
                },
            )
            self.evaluations.add(
                1, {"flag": key, "variant": variant, "reason": decision.reason.value}
            )
            if decision.error_code is not None:
                self.errors.add(1, {"flag": key, "error_code": decision.error_code.value})

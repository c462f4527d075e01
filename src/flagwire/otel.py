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

import sys
from collections.abc import Mapping
from contextvars import ContextVar
from functools import cache
from typing import Any

from .propagation import host_of, outbound_baggage, without_anonymous_cookie

try:
    from opentelemetry import trace
    from opentelemetry.attributes import BoundedAttributes
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.context import Context
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

except ModuleNotFoundError as exc:  # pragma: no cover - exercised without the extra
    if not (exc.name or "").startswith("opentelemetry"):
        raise
    raise ImportError("flagwire.otel needs OpenTelemetry: pip install 'flagwire[otel]'") from exc
# Not opentelemetry.propagate at import time: with OTEL_PROPAGATORS=...,flagwire that module
# imports this one while it is being initialised (it loads the propagators on import).

__all__ = [
    "EVENT_NAME",
    "FlagwirePropagator",
    "OTelMetricsTelemetry",
    "OTelTelemetry",
    "install_propagator",
    "request_hook",
]

_URL_ATTRIBUTES = ("url.full", "http.url")
_HOST_ATTRIBUTES = ("server.address", "net.peer.name", "http.host")


_next_destination: ContextVar[tuple[Any, str | None] | None] = ContextVar(
    "flagwire.otel.destination", default=None
)
_requests_guarded = False


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
        host = host_of(str(url))
    _next_destination.set((span, host or None))


def _guard_requests() -> None:
    # OpenTelemetry's requests instrumentation does not propagate on redirect hops (they
    # run with instrumentation suppressed): the headers of the first hop go on as they
    # are. flagwire.requests makes every session drop flagwire's members on a redirect to
    # a destination that is not allowed.
    global _requests_guarded
    if not _requests_guarded and "requests" in sys.modules:
        _requests_guarded = True
        from .requests import guard_redirects

        guard_redirects()


def _destination(carrier: Any) -> str | None:
    hinted = _next_destination.get()
    if hinted is not None:
        _next_destination.set(None)  # for this request only
        if hinted[0] is trace.get_current_span():  # and only for its own span
            return hinted[1]
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
            return host_of(str(value))
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
        _guard_requests()
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
            _remove(carrier, "baggage", setter)
        try:
            cookie = carrier.get("cookie")  # type: ignore[attr-defined]
        except Exception:
            cookie = None
        if isinstance(cookie, str) and (kept := without_anonymous_cookie(cookie)) != cookie:
            if kept is None:
                _remove(carrier, "cookie", setter)
            else:
                setter.set(carrier, "cookie", kept)

    @property
    def fields(self) -> set[str]:
        return {"baggage"}


def _remove(carrier: Any, name: str, setter: Setter[Any]) -> None:
    try:
        del carrier[name]
    except Exception:
        setter.set(carrier, name, "")


def install_propagator() -> None:
    """Set OpenTelemetry's global propagator to tracecontext, baggage, flagwire."""
    from opentelemetry.propagate import set_global_textmap

    set_global_textmap(
        CompositePropagator(
            [TraceContextTextMapPropagator(), W3CBaggagePropagator(), FlagwirePropagator()]
        )
    )


# -- telemetry: flags on spans ----------------------------------------------------------------

EVENT_NAME = "feature_flag.evaluation"
"""The span event for each flag a request decided (OpenTelemetry semantic conventions)."""
FLAG_KEY = "feature_flag.key"
RESULT_VARIANT = "feature_flag.result.variant"
RESULT_REASON = "feature_flag.result.reason"
RESULT_VALUE = "feature_flag.result.value"
PROVIDER_NAME = "feature_flag.provider.name"
FLAGSET_VERSION = "feature_flag.version"
FLAGSET_ID = "feature_flag.set.id"
ERROR_TYPE = "error.type"
SPAN_ATTRIBUTE_PREFIX = "flagwire.flag."
"""Server-span attribute per decided flag: ``flagwire.flag.<key> = <variant>`` (searchable)."""
PROPAGATED_ATTRIBUTE = "flagwire.propagated"


@cache
def _sdk_event() -> Any:
    try:
        from opentelemetry.sdk.trace import Event
    except ImportError:  # pragma: no cover - recording spans come from an SDK
        return None
    return Event


class OTelTelemetry:
    """Puts each request's decided flags on its server span.

    For every decided flag, a ``feature_flag.evaluation`` event with the semantic-convention
    attributes (key, variant, reason, provider ``flagwire``, flag-set version and id,
    ``error.type`` on errors, the value only with ``record_values=True``), and a searchable
    span attribute ``flagwire.flag.<key> = <variant>``. A propagated decision's event has
    ``flagwire.propagated = true``. Works on the span that OpenTelemetry's ASGI / WSGI /
    Flask instrumentation made current; without one (or when it is not recording) it does
    nothing.

    Args:
        record_values: Also record ``feature_flag.result.value`` (values may be sensitive).
        max_flags: Decided flags put on a span per request; the rest are left out.
    """

    def __init__(
        self,
        *,
        record_values: bool = False,
        max_flags: int = 50,
        server_spans: bool = False,
        tracer_provider: Any = None,
    ) -> None:
        self.record_values = record_values
        self.max_flags = max_flags
        self.server_spans = server_spans
        self._tracer = (
            trace.get_tracer("flagwire", tracer_provider=tracer_provider) if server_spans else None
        )
        # Event attributes repeat (same flag, variant, reason, version): validate them once.
        self._attributes: dict[tuple[Any, ...], Any] = {}

    def open_span(self, method: str, scope: Any) -> Any:
        """A server span for the request when nothing else made one (ASGI only), else None.

        Used with ``server_spans=True`` in apps without OpenTelemetry's ASGI
        instrumentation: the span is named ``METHOD route`` (``_OTHER route`` for a
        method that is not a standard one) and carries
        ``http.request.method``, ``url.path``, ``http.route`` and
        ``http.response.status_code``.
        """
        if self._tracer is None or trace.get_current_span().is_recording():
            return None
        from ._telemetry import method_label

        known = method_label(method)  # span names stay bounded: "_OTHER" for the rest
        attributes = {"http.request.method": known, "url.path": scope.get("path", "")}
        if known != method:
            attributes["http.request.method_original"] = method
        return self._tracer.start_as_current_span(
            known, kind=trace.SpanKind.SERVER, attributes=attributes
        )

    def record(self, request: Any) -> None:
        span = trace.get_current_span()
        if not span.is_recording():
            return
        # The SDK span's own append, skipping the per-call re-validation of attributes
        # that were validated once (the SDK is there when a span records).
        add_event = getattr(span, "_add_event", None)
        event_class = _sdk_event() if add_event is not None else None
        if event_class is None:
            add_event = None
        attributes: dict[str, Any] = {}
        version = request.flagset_version
        for index, (key, decision) in enumerate(request.decisions.items()):
            if index >= self.max_flags:
                break
            if decision.variant is not None:
                attributes[SPAN_ATTRIBUTE_PREFIX + key] = decision.variant
            if add_event is not None and not self.record_values:
                event_attributes = self._cached(key, decision, version)
                add_event(event_class(EVENT_NAME, event_attributes))  # type: ignore[misc]
            else:
                span.add_event(EVENT_NAME, self._event(key, decision, version))
        if attributes:
            span.set_attributes(attributes)

    def _cached(self, key: str, decision: Any, version: str) -> Any:
        cache_key = (
            key,
            decision.variant,
            decision.reason,
            decision.error_code,
            decision.flagset_version or version,
            decision.flag_metadata.get("flagSetId"),
        )
        found = self._attributes.get(cache_key)
        if found is None:
            found = BoundedAttributes(None, self._event(key, decision, version), immutable=True)
            if len(self._attributes) < 4096:
                self._attributes[cache_key] = found
        return found

    def _event(self, key: str, decision: Any, version: str) -> dict[str, Any]:
        event: dict[str, Any] = {
            FLAG_KEY: key,
            PROVIDER_NAME: "flagwire",
            RESULT_REASON: decision.reason.value.lower(),
            FLAGSET_VERSION: decision.flagset_version or version,
        }
        set_id = decision.flag_metadata.get("flagSetId")
        if set_id is not None:
            event[FLAGSET_ID] = str(set_id)
        if decision.variant is not None:
            event[RESULT_VARIANT] = decision.variant
        if decision.error_code is not None:
            event[ERROR_TYPE] = decision.error_code.value.lower()
        if decision.reason.value == "PROPAGATED":
            event[PROPAGATED_ATTRIBUTE] = True
        if self.record_values and decision.value is not None:
            value = decision.value
            event[RESULT_VALUE] = (
                value if isinstance(value, (bool, int, float, str)) else str(value)
            )
        return event


from ._otel_metrics import OTelMetricsTelemetry  # noqa: E402 - after the extra's check

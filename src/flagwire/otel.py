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
from typing import Any

from ._errors import missing_extra
from .propagation import host_of, outbound_baggage, without_anonymous_cookie

try:
    from opentelemetry import trace
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
# Not opentelemetry.propagate at import time: with OTEL_PROPAGATORS=...,flagwire that module
# imports this one while it is being initialised (it loads the propagators on import).

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


from ._otel_metrics import OTelMetricsTelemetry  # noqa: E402 - after the extra's check

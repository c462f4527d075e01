"""Each request's flags in OpenTelemetry traces and events (semantic conventions).

Follows the feature-flag conventions as of August 2026 (``model/feature-flags/`` in
open-telemetry/semantic-conventions; release candidate): since PR #1440 the
``feature_flag.evaluation`` event is a log-based event, emitted through the Logs API with
the request's trace context so that backends link it to the span. Trace UIs show span
events and attributes, so flagwire can emit those as well (``events=``).
"""

from __future__ import annotations

from functools import cache
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes

from ._telemetry import method_label

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
    "OTelTelemetry",
]

EVENT_NAME: Final = "feature_flag.evaluation"
"""The event for each flag read a request made (OpenTelemetry semantic conventions)."""
FLAG_KEY: Final = "feature_flag.key"
RESULT_VARIANT: Final = "feature_flag.result.variant"
RESULT_REASON: Final = "feature_flag.result.reason"
RESULT_VALUE: Final = "feature_flag.result.value"
PROVIDER_NAME: Final = "feature_flag.provider.name"
CONTEXT_ID: Final = "feature_flag.context.id"
FLAGSET_VERSION: Final = "feature_flag.version"
FLAGSET_ID: Final = "feature_flag.set.id"
ERROR_TYPE: Final = "error.type"
ERROR_MESSAGE: Final = "feature_flag.error.message"
SPAN_ATTRIBUTE_PREFIX: Final = "flagwire.flag."
"""Server-span attribute per decided flag: ``flagwire.flag.<key> = <variant>`` (searchable)."""
PROPAGATED_ATTRIBUTE: Final = "flagwire.propagated"

_EVENT_MODES: Final = ("log", "span", "both")


@cache
def _sdk_event() -> Any:
    try:
        from opentelemetry.sdk.trace import Event
    except ImportError:  # pragma: no cover - recording spans come from an SDK
        return None
    return Event


def _logs_enabled(logger: Any) -> bool:
    """Whether the Logs API would record the event (the spec's ``Logger.Enabled``): with
    no logs pipeline configured, emitting is work for nothing."""
    enabled = getattr(logger, "enabled", None)  # opentelemetry-api < 1.35 has none
    return True if enabled is None else bool(enabled(event_name=EVENT_NAME))


def _add_span_events(span: Any, attributes: list[Any]) -> None:
    """One ``feature_flag.evaluation`` span event per item of validated ``attributes``.

    On the SDK's span, appended under one lock: ``add_event`` takes the span's lock and
    the event list's once per event and validates attributes that were validated once
    already, which costs twice the events themselves. Another span gets ``add_event``."""
    event_class = _sdk_event()
    lock = getattr(span, "_lock", None)
    events = getattr(span, "_events", None)
    if event_class is None or lock is None or not hasattr(events, "extend"):
        for item in attributes:
            span.add_event(EVENT_NAME, item)
        return
    made = [event_class(EVENT_NAME, item) for item in attributes]
    with lock:
        if getattr(span, "_end_time", None) is None:  # an ended span takes no events
            events.extend(made)  # type: ignore[union-attr]


def _attribute_value(value: Any) -> Any:
    return value if isinstance(value, (bool, int, float, str)) else str(value)


class OTelTelemetry:
    """Puts each request's flag reads on its trace.

    For every distinct assignment a read served (a flag read twice with different types
    gives two), a ``feature_flag.evaluation`` event with the semantic-convention
    attributes: key, variant, reason, provider ``flagwire``, flag-set version and id;
    ``error.type`` and ``feature_flag.error.message`` on errors; the value served when
    there is no variant (disabled, no default variant, errors: the code's default), which
    the conventions require then, and otherwise only with ``record_values=True``. A
    propagated decision's event has ``flagwire.propagated = true``. The span gets a
    searchable attribute ``flagwire.flag.<key> = <variant>``. Works on the span that
    OpenTelemetry's ASGI / WSGI / Flask instrumentation made current; without one (or when
    it is not recording) it does nothing.

    Args:
        record_values: Also record ``feature_flag.result.value`` when there is a variant
            (values may be sensitive).
        record_context_id: Record ``feature_flag.context.id``, the targeting key (it
            identifies a user, so it is opt-in).
        events: ``"log"`` (the conventions' log-based event, through the Logs API),
            ``"span"`` (span events, which trace UIs show) or ``"both"``, the default: the
            conventions' event for backends that read logs, and the span events that trace
            UIs show today (without a logs pipeline the Logs API is a no-op).
        max_flags: Decided flags put on a span per request; the rest are left out.
        logger_provider: For the log-based events; default the global one.
    """

    def __init__(
        self,
        *,
        record_values: bool = False,
        record_context_id: bool = False,
        events: str = "both",
        max_flags: int = 50,
        server_spans: bool = False,
        tracer_provider: Any = None,
        logger_provider: Any = None,
    ) -> None:
        if events not in _EVENT_MODES:
            msg = f'events must be "log", "span" or "both", not {events!r}'
            raise ValueError(msg)
        self.record_values = record_values
        self.record_context_id = record_context_id
        self.events = events
        self.max_flags = max_flags
        self.server_spans = server_spans
        self._tracer = (
            trace.get_tracer("flagwire", tracer_provider=tracer_provider) if server_spans else None
        )
        self._logger: Any = None
        if events != "span":
            from opentelemetry._logs import get_logger

            self._logger = get_logger("flagwire", logger_provider=logger_provider)
        # Event attributes repeat (same flag, variant, reason, version): validate them once.
        self._attributes: dict[tuple[Any, ...], Any] = {}
        self._by_identity: dict[int, tuple[Any, str, Any, str | None, str, bool]] = {}

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
        span_events: list[Any] | None = [] if self.events != "log" else None
        emit = None
        if self._logger is not None and _logs_enabled(self._logger):
            emit, linked = self._logger.emit, trace.set_span_in_context(span)
        attributes: dict[str, Any] = {}
        version = request.flagset_version
        reads = getattr(request, "reads", None) or {}
        context_id = getattr(request, "targeting_key", None) if self.record_context_id else None
        by_identity = self._by_identity if context_id is None else {}
        with_values = self.record_values  # a public attribute: entries say which they used
        for index, (key, decision) in enumerate(request.decisions.items()):
            if index >= self.max_flags:
                break
            for served in reads.get(key) or (decision,):
                # Deciders hand out prebuilt assignments: most reads are found by identity
                # (the entry holds the assignment, so its id is not reused meanwhile).
                known = by_identity.get(id(served))
                if (
                    known is None
                    or known[0] is not served
                    or known[1] != version
                    or known[4] != key
                    or known[5] is not with_values
                ):
                    known = self._entry(key, served, version, context_id)
                name = known[3]
                if name is not None and name not in attributes:
                    attributes[name] = served.variant
                if span_events is not None:
                    span_events.append(known[2])
                if emit is not None:
                    emit(event_name=EVENT_NAME, attributes=known[2], context=linked)
        if span_events:
            _add_span_events(span, span_events)
        if attributes:
            span.set_attributes(attributes)

    def _entry(
        self, key: str, decision: Any, version: str, context_id: Any
    ) -> tuple[Any, str, Any, str | None, str, bool]:
        """(assignment, version, event attributes, span attribute name or None, flag key,
        record_values)."""
        name = SPAN_ATTRIBUTE_PREFIX + key if decision.variant is not None else None
        event = self._by_value(key, decision, version, context_id)
        entry = (decision, version, event, name, key, self.record_values)
        if context_id is None:
            if len(self._by_identity) >= 4096:  # one-off assignments, old flag sets': anew
                self._by_identity.clear()
            self._by_identity[id(decision)] = entry
        return entry

    def _by_value(self, key: str, decision: Any, version: str, context_id: Any) -> Any:
        with_value = self.record_values or decision.variant is None
        cache_key = (
            key,
            decision.variant,
            decision.reason,
            decision.error_code,
            decision.flagset_version or version,
            decision.flag_metadata.get("flagSetId"),
            context_id,
            _attribute_value(decision.value) if with_value else None,
            decision.error_message,
        )
        try:
            found = self._attributes.get(cache_key)
        except TypeError:  # an unhashable value: build it every time
            return BoundedAttributes(None, self._event(key, decision, version, context_id))
        if found is None:
            event = self._event(key, decision, version, context_id)
            found = BoundedAttributes(None, event, immutable=True)
            if len(self._attributes) < 4096:
                self._attributes[cache_key] = found
        return found

    def _event(self, key: str, decision: Any, version: str, context_id: Any) -> dict[str, Any]:
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
            if decision.error_message:
                event[ERROR_MESSAGE] = decision.error_message
        if decision.reason.value == "PROPAGATED":
            event[PROPAGATED_ATTRIBUTE] = True
        if isinstance(context_id, str) and context_id:
            event[CONTEXT_ID] = context_id
        # Conditionally required without a variant (the value served is the code's
        # default); opt-in otherwise. A null default is not an attribute value.
        if (self.record_values or decision.variant is None) and decision.value is not None:
            event[RESULT_VALUE] = _attribute_value(decision.value)
        return event

"""``OTelTelemetry`` against OpenTelemetry's feature-flag semantic conventions (issue 12).

The conventions as of August 2026 (open-telemetry/semantic-conventions ``384d6616``,
``model/feature-flags/events.yaml`` and ``registry.yaml``): ``feature_flag.evaluation`` is
a log-based event (PR #1440), its attributes and their requirement levels are below as
data. A FastAPI app with OpenTelemetry's ASGI middleware serves the requests.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import pytest
from fastapi import FastAPI
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from flagwire import FlagSet, context
from flagwire.asgi import FlagwireMiddleware
from flagwire.otel import (
    CONTEXT_ID,
    ERROR_MESSAGE,
    ERROR_TYPE,
    EVENT_NAME,
    FLAG_KEY,
    RESULT_VALUE,
    RESULT_VARIANT,
    SPAN_ATTRIBUTE_PREFIX,
    OTelTelemetry,
)
from test_telemetry import Call, drive_asgi

# events.yaml, event.feature_flag.evaluation: attribute -> requirement level
EVENT_ATTRIBUTES: Final = {
    "feature_flag.key": "required",
    "feature_flag.result.variant": "conditionally_required",  # if the provider has variants
    "feature_flag.result.value": "conditionally_required",  # iff there is no variant
    "feature_flag.provider.name": "recommended",
    "feature_flag.context.id": "recommended",
    "feature_flag.version": "recommended",
    "feature_flag.set.id": "recommended",
    "feature_flag.result.reason": "recommended",
    "error.type": "conditionally_required",  # iff an error occurred
    "feature_flag.error.message": "recommended",  # on errors
}
REASONS: Final = {
    "static", "default", "targeting_match", "split", "cached", "disabled", "unknown", "stale",
    "error",
}  # fmt: skip
ERROR_TYPES: Final = {
    "flag_not_found", "invalid_context", "parse_error", "provider_fatal", "provider_not_ready",
    "targeting_key_missing", "type_mismatch", "general",
}  # fmt: skip
OWN_ATTRIBUTES: Final = {"flagwire.propagated"}  # flagwire's own, namespaced

FLAGS: Final = FlagSet.from_mapping(
    {
        "flags": {
            "banner": {"state": "ENABLED", "variants": {"red": "#f00"}, "defaultVariant": "red"},
            "retired": {"state": "DISABLED", "variants": {"on": True}, "defaultVariant": "on"},
            "rollout": {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "off",
                "targeting": {"fractional": [["on", 50], ["off", 50]]},
            },
        }
    }
)


def _app(telemetry: OTelTelemetry, tracer_provider: TracerProvider) -> Any:
    app = FastAPI()

    @app.get("/read")
    async def read() -> dict[str, Any]:
        from flagwire import current_flags

        flags = current_flags()
        flags.string("banner", "none")
        flags.boolean("banner", False)  # the same flag with another type: TYPE_MISMATCH
        flags.boolean("retired", True)  # DISABLED: the code's default
        flags.boolean("rollout", False)
        flags.string("no-such-flag", "fallback")
        return {}

    app.add_middleware(
        FlagwireMiddleware,
        source=FLAGS,
        context=context.headers({"x-user-id": "targetingKey"}),
        anonymous_cookie=None,
        propagation=False,
        telemetry=[telemetry],
    )
    return OpenTelemetryMiddleware(app, tracer_provider=tracer_provider)


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(spans: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    yield provider
    provider.shutdown()


@pytest.fixture
def logs() -> InMemoryLogRecordExporter:
    return InMemoryLogRecordExporter()


@pytest.fixture
def logger_provider(logs: InMemoryLogRecordExporter) -> Iterator[LoggerProvider]:
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    yield provider
    provider.shutdown()


def _serve(telemetry: OTelTelemetry, tracer_provider: TracerProvider) -> None:
    (reply,) = drive_asgi(
        _app(telemetry, tracer_provider), [Call("GET", "/read", {"x-user-id": "user-42"})]
    )
    assert reply.status == 200


def _server_span(spans: InMemorySpanExporter) -> ReadableSpan:
    (span,) = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    return span


def _check_conventions(event: dict[str, Any]) -> None:
    """Every attribute is the registry's (or flagwire's own) and each requirement holds."""
    unknown = set(event) - set(EVENT_ATTRIBUTES) - OWN_ATTRIBUTES
    assert not unknown, unknown
    assert isinstance(event[FLAG_KEY], str)
    assert event["feature_flag.result.reason"] in REASONS
    has_variant = RESULT_VARIANT in event
    if not has_variant:
        assert RESULT_VALUE in event, "result.value is required without a variant"
    if event["feature_flag.result.reason"] == "error":
        assert event[ERROR_TYPE] in ERROR_TYPES
        assert event.get(ERROR_MESSAGE) and event[ERROR_MESSAGE] != event[ERROR_TYPE]
    else:
        assert ERROR_TYPE not in event and ERROR_MESSAGE not in event


def _expected_reads() -> list[tuple[str, str | None, Any]]:
    rollout = FLAGS.evaluate("rollout", {"targetingKey": "user-42"}).variant
    return [
        ("banner", "red", None),
        ("banner", None, False),
        ("retired", None, True),
        ("rollout", rollout, None),
        ("no-such-flag", None, "fallback"),
    ]


def _reads(events: list[dict[str, Any]]) -> list[tuple[str, str | None, Any]]:
    return [(e[FLAG_KEY], e.get(RESULT_VARIANT), e.get(RESULT_VALUE)) for e in events]


def test_log_based_events_follow_the_conventions_and_link_to_the_span(
    tracer_provider: TracerProvider,
    spans: InMemorySpanExporter,
    logger_provider: LoggerProvider,
    logs: InMemoryLogRecordExporter,
) -> None:
    _serve(OTelTelemetry(events="log", logger_provider=logger_provider), tracer_provider)
    span = _server_span(spans)
    records = [r.log_record for r in logs.get_finished_logs()]
    assert records and all(r.event_name == EVENT_NAME for r in records)
    events = [dict(r.attributes or {}) for r in records]
    for record, event in zip(records, events, strict=True):
        _check_conventions(event)
        assert (record.trace_id, record.span_id) == (
            span.context.trace_id,
            span.context.span_id,
        )
    assert _reads(events) == _expected_reads()
    assert not [e for e in span.events if e.name == EVENT_NAME]  # events="log": no span events
    # both reads of "banner" are recorded, and the span still shows the variant served
    assert span.attributes is not None
    assert span.attributes[SPAN_ATTRIBUTE_PREFIX + "banner"] == "red"


def test_span_events_follow_the_conventions_too(
    tracer_provider: TracerProvider,
    spans: InMemorySpanExporter,
    logger_provider: LoggerProvider,
    logs: InMemoryLogRecordExporter,
) -> None:
    _serve(OTelTelemetry(events="span", logger_provider=logger_provider), tracer_provider)
    span = _server_span(spans)
    events = [dict(e.attributes or {}) for e in span.events if e.name == EVENT_NAME]
    for event in events:
        _check_conventions(event)
    assert _reads(events) == _expected_reads()
    assert logs.get_finished_logs() == ()


def test_both_is_the_default(
    tracer_provider: TracerProvider,
    spans: InMemorySpanExporter,
    logger_provider: LoggerProvider,
    logs: InMemoryLogRecordExporter,
) -> None:
    telemetry = OTelTelemetry(logger_provider=logger_provider)
    assert telemetry.events == "both"
    _serve(telemetry, tracer_provider)
    span_events = [e for e in _server_span(spans).events if e.name == EVENT_NAME]
    assert len(span_events) == len(logs.get_finished_logs()) == len(_expected_reads())


def test_error_message_and_opt_in_context_id(
    tracer_provider: TracerProvider, spans: InMemorySpanExporter
) -> None:
    _serve(OTelTelemetry(events="span"), tracer_provider)
    events = [dict(e.attributes or {}) for e in _server_span(spans).events]
    assert all(CONTEXT_ID not in e for e in events)  # it identifies a user: opt-in
    missing = next(e for e in events if e[FLAG_KEY] == "no-such-flag")
    assert missing[ERROR_TYPE] == "flag_not_found"
    assert "no-such-flag" in missing[ERROR_MESSAGE]
    spans.clear()
    _serve(OTelTelemetry(events="span", record_context_id=True), tracer_provider)
    events = [dict(e.attributes or {}) for e in _server_span(spans).events]
    assert {e[CONTEXT_ID] for e in events} == {"user-42"}


def test_unknown_event_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="events must be"):
        OTelTelemetry(events="logs")


def test_each_request_s_events_carry_its_own_flag_set_version(
    tracer_provider: TracerProvider, spans: InMemorySpanExporter
) -> None:
    # Events are cached by the assignment object: a reload (a new version) and one-off
    # assignments must not be served a cached event of another request.
    from flagwire import RequestFlags
    from flagwire._telemetry import RequestRecord

    telemetry = OTelTelemetry(events="span")
    tracer = tracer_provider.get_tracer("test")
    seen: list[tuple[str, str, str | None]] = []
    for version in ("1", "2", "1"):
        flagset = FlagSet.from_mapping(
            {
                "metadata": {"version": version},
                "flags": {
                    "banner": {"state": "ENABLED", "variants": {"on": True}, "defaultVariant": "on"}
                },
            }
        )
        flags = RequestFlags(flagset, {"targetingKey": "u"})
        flags.boolean("banner")
        flags.string("banner", "x")  # a type mismatch: a new assignment each request
        record = RequestRecord(
            flags.served(), "GET", "/", 200, 0.01, flagset.version_label, flags.reads()
        )
        with tracer.start_as_current_span("request"):
            telemetry.record(record)
        span = spans.get_finished_spans()[-1]
        seen.extend(
            (
                dict(e.attributes or {})["feature_flag.version"],
                version,
                e.attributes.get(ERROR_TYPE),
            )
            for e in span.events
        )

    assert [(v.split("+")[0], want, error) for v, want, error in seen] == [
        (want, want, error) for _, want, error in seen
    ]
    assert [error for _, _, error in seen] == [None, "type_mismatch"] * 3


def test_one_assignment_served_under_two_keys_gets_an_event_for_each(
    tracer_provider: TracerProvider, spans: InMemorySpanExporter
) -> None:
    from flagwire import Assignment, Reason
    from flagwire._telemetry import RequestRecord

    shared = Assignment("shared", True, "on", Reason.STATIC)
    telemetry = OTelTelemetry(events="span")
    tracer = tracer_provider.get_tracer("test")
    keys: list[list[str]] = []
    for record_values in (False, True):
        telemetry.record_values = record_values
        with tracer.start_as_current_span("request"):
            telemetry.record(RequestRecord({"x": shared, "y": shared}, "GET", "/", 200, 0.0, "v"))
        span = spans.get_finished_spans()[-1]
        events = [dict(e.attributes or {}) for e in span.events]
        keys.append([e[FLAG_KEY] for e in events])
        assert span.attributes is not None
        assert {k for k in span.attributes if k.startswith(SPAN_ATTRIBUTE_PREFIX)} == {
            SPAN_ATTRIBUTE_PREFIX + "x",
            SPAN_ATTRIBUTE_PREFIX + "y",
        }
        # record_values is read at each request, cached events or not
        assert all((RESULT_VALUE in e) is record_values for e in events)

    assert keys == [["x", "y"], ["x", "y"]]

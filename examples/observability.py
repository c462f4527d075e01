"""Telemetry for the examples: Prometheus metrics always, traces when asked.

Both example services call :func:`telemetry` for flagwire's ``telemetry=`` list. With
``$FLAGWIRE_EXAMPLE_SPANS`` set to a file, they also record OpenTelemetry traces there (one
JSON span a line), which is how the demo shows a trace across the two services without a
collector. In your own service, export spans to your backend instead (OTLP).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from flagwire import Source
from flagwire.otel import OTelTelemetry
from flagwire.prometheus import PrometheusTelemetry

SPANS_FILE = os.environ.get("FLAGWIRE_EXAMPLE_SPANS")


def tracer_provider() -> Any:
    """An SDK tracer provider writing spans to ``$FLAGWIRE_EXAMPLE_SPANS``, or None."""
    if not SPANS_FILE:
        return None
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    from flagwire.otel import install_propagator

    out = open(SPANS_FILE, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(
            ConsoleSpanExporter(
                out=out, formatter=lambda span: json.dumps(json.loads(span.to_json())) + "\n"
            )
        )
    )
    install_propagator()  # traceparent and flagwire's baggage on outgoing calls
    return provider


def telemetry(sources: Sequence[Source], traced: bool) -> list[Any]:
    """flagwire's telemetry: Prometheus, plus spans when tracing is on."""
    sinks: list[Any] = [PrometheusTelemetry(sources=sources)]
    if traced:
        sinks.append(OTelTelemetry())
    return sinks

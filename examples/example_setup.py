"""What the example services share: where their flags come from, and their telemetry.

:func:`flag_source` reads ``$FLAGWIRE_FLAGS`` (a file, default ``examples/flags.yaml``) or
``$FLAGWIRE_FLAGS_URL`` (a central file over HTTP, polled every
``$FLAGWIRE_FLAGS_INTERVAL`` seconds, cached at ``$FLAGWIRE_FLAGS_CACHE``). The services
call :func:`telemetry` for flagwire's ``telemetry=`` list: Prometheus metrics always (with
the tracked ``checkout`` event declared, so event labels stay bounded). With
``$FLAGWIRE_EXAMPLE_SPANS`` set to a file, they also record OpenTelemetry traces there (one
JSON span a line), which is how the demo shows a trace across the two services without a
collector. In your own service, export spans to your backend instead (OTLP).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flagwire import FileSource, HttpSource, Source
from flagwire.otel import OTelTelemetry
from flagwire.prometheus import PrometheusTelemetry

SPANS_FILE = os.environ.get("FLAGWIRE_EXAMPLE_SPANS")
DEFAULT_FLAGS = Path(__file__).with_name("flags.yaml")
TRACKED_EVENTS = ["checkout"]
"""The outcomes the services track (``flagwire.track``), for ``flagwire report``."""


def flag_source() -> FileSource | HttpSource:
    """The example's flag source, from the environment (see the module docstring)."""
    url = os.environ.get("FLAGWIRE_FLAGS_URL")
    if url:
        return HttpSource(
            url,
            interval=float(os.environ.get("FLAGWIRE_FLAGS_INTERVAL", "2")),
            cache_path=os.environ.get("FLAGWIRE_FLAGS_CACHE"),
        )
    return FileSource(Path(os.environ.get("FLAGWIRE_FLAGS", DEFAULT_FLAGS)))


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
    sinks: list[Any] = [PrometheusTelemetry(sources=sources, events=TRACKED_EVENTS)]
    if traced:
        sinks.append(OTelTelemetry())
    return sinks

"""The HTTP gateway of the cross-framework journey (FastAPI under uvicorn).

``GET /journey`` (user: header ``x-user-id``) decides ``rollout`` and ``color``, then calls
the gRPC service's ``Enqueue`` (``$GRPC_TARGET``, flagwire's aio client interceptors)
asking for Celery task ``e2e.journey``, and answers with its decisions and the service's.
Spans (flagwire's own server spans, with the flag events) go to ``$SPANS_FILE``.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from grpc import aio
from grpc_service import SERVICE, dumps, loads
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from spans import JsonLinesExporter

from flagwire import FileSource, context
from flagwire.fastapi import Flags, FlagwireMiddleware
from flagwire.grpc import aio_client_interceptors
from flagwire.otel import OTelTelemetry

provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(os.environ["SPANS_FILE"])))
TARGET = os.environ["GRPC_TARGET"]
source = FileSource(os.environ["FLAGWIRE_FLAGS"])
channels: list[aio.Channel] = []

app = FastAPI()
app.add_middleware(
    FlagwireMiddleware,
    source=source,
    context=context.headers({"x-user-id": "targetingKey"}),
    telemetry=[OTelTelemetry(server_spans=True, tracer_provider=provider)],
)


@app.get("/journey")
async def journey(flags: Flags) -> dict[str, Any]:
    rollout = flags.details("rollout", False)
    color = flags.details("color", "none")
    if not channels:
        channels.append(aio.insecure_channel(TARGET, interceptors=aio_client_interceptors(TARGET)))
    call = channels[0].unary_unary(f"/{SERVICE}/Enqueue", dumps, loads)
    answer = await call({"task": "e2e.journey"}, timeout=10)
    return {
        "user": flags.context.get("targetingKey"),
        "rollout": rollout.value,
        "color": color.value,
        "grpc": answer,
    }


@app.get("/healthz")
async def healthz() -> dict[str, Any]:
    return {"ok": source.status.ok, "id": os.environ.get("CHAIN_ID")}

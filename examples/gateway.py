"""A FastAPI gateway that calls the Flask service, with flagwire on both.

Run it (with the Flask service on port 8001 and the same key on both):

    export FLAGWIRE_PROPAGATION_KEYS=change-me-to-a-long-random-secret
    gunicorn --chdir examples -b 127.0.0.1:8001 flask_app:app &
    SERVICE_URL=http://127.0.0.1:8001 uvicorn gateway:app --app-dir examples --port 8000
    curl -H 'x-user-id: alice' localhost:8000/checkout

The gateway decides its flags and sends the decisions, signed, in the ``baggage`` of its
call to the service (flagwire's httpx transport), so the service gives the user the same
variants even where its own flag file rolls the flag out differently.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
from example_setup import flag_source, telemetry, tracer_provider
from fastapi import FastAPI, Header
from prometheus_client import make_asgi_app

from flagwire import context
from flagwire.fastapi import Flags, FlagwireMiddleware
from flagwire.httpx import AsyncFlagwireTransport

SERVICE_URL = os.environ.get("SERVICE_URL", "http://127.0.0.1:8001")

source = flag_source()
provider = tracer_provider()
app = FastAPI(title="flagwire gateway example")
app.add_middleware(
    FlagwireMiddleware,
    source=source,
    telemetry=telemetry([source], traced=provider is not None),
    context=context.headers(
        {
            "x-user-id": "targetingKey",
            "x-plan": "plan",
            "x-country": "country",
            "x-app-version": "appVersion",
        }
    ),
)
client = httpx.AsyncClient(transport=AsyncFlagwireTransport(), timeout=10.0)
app.mount("/metrics", make_asgi_app())
if provider is not None:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=provider)
    app.add_middleware(OpenTelemetryMiddleware, tracer_provider=provider)  # outermost


@app.get("/checkout")
async def checkout(flags: Flags, x_order_total: float | None = Header(None)) -> dict[str, Any]:
    """The gateway's decisions, and the service's answer for the same user. A request with
    ``x-order-total`` is a completed order: tracked as ``checkout`` with that value, for
    every flag this request decides (the experiment report compares them per variant)."""
    if x_order_total is not None:
        flags.track("checkout", x_order_total)
    mine = {
        "service": "gateway",
        "user": flags.context.get("targetingKey"),
        "new_checkout": flags.boolean("new-checkout", False),
        "ranking": flags.string("search-ranking", "classic"),
        "eu_banner": flags.boolean("eu-banner", False),
        "version": flags.flagset.version_label,
    }
    # Only the assignments travel: the service gets no user headers from us.
    downstream = await client.get(f"{SERVICE_URL}/checkout")
    return {"gateway": mine, "service": downstream.json()}


@app.get("/healthz")
async def healthz() -> dict[str, Any]:
    """The flag source's health."""
    status = source.status
    return {"ok": status.ok, "flags_version": status.version, "error": status.last_error}

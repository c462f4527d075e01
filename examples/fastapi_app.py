"""A minimal FastAPI service with flagwire.

Run it:  ``uvicorn fastapi_app:app --app-dir examples --port 8000``
then:    ``curl -H 'x-user-id: alice' -H 'x-plan: beta' localhost:8000/checkout``

The flag file is ``examples/flags.yaml`` (or ``$FLAGWIRE_FLAGS``, or served over HTTP at
``$FLAGWIRE_FLAGS_URL``); edit it while the service runs and the next requests use the new
version. Prometheus metrics are at ``/metrics``; with ``$FLAGWIRE_EXAMPLE_SPANS`` set to a
file, OpenTelemetry spans (with the flags on them) are written there, one JSON a line.
"""

from __future__ import annotations

from typing import Any

from example_setup import flag_source, telemetry, tracer_provider
from fastapi import FastAPI, Header
from prometheus_client import make_asgi_app

from flagwire import context
from flagwire.fastapi import Flags, FlagwireMiddleware

source = flag_source()
provider = tracer_provider()
app = FastAPI(title="flagwire FastAPI example")
app.mount("/metrics", make_asgi_app())
app.add_middleware(
    FlagwireMiddleware,
    source=source,
    telemetry=telemetry([source], traced=provider is not None),
    context=[
        context.headers(
            {
                "x-user-id": "targetingKey",
                "x-plan": "plan",
                "x-country": "country",
                "x-app-version": "appVersion",
            }
        ),
        context.client(),
    ],
)
if provider is not None:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    app.add_middleware(OpenTelemetryMiddleware, tracer_provider=provider)  # outermost


@app.get("/checkout")
async def checkout(flags: Flags, x_order_total: float | None = Header(None)) -> dict[str, Any]:
    """Which checkout and ranking this user gets, and from which flag-set version; with
    ``x-order-total``, an order: tracked as ``checkout`` with that value."""
    if x_order_total is not None:
        flags.track("checkout", x_order_total)
    return {
        "service": "fastapi",
        "user": flags.context.get("targetingKey"),
        "new_checkout": flags.boolean("new-checkout", False),
        "ranking": flags.string("search-ranking", "classic"),
        "eu_banner": flags.boolean("eu-banner", False),
        "version": flags.flagset.version_label,
        "decided": {k: a.variant for k, a in flags.evaluated().items()},
        "reasons": {k: a.reason.value for k, a in flags.evaluated().items()},
    }


@app.get("/healthz")
async def healthz() -> dict[str, Any]:
    """The flag source's health."""
    status = source.status
    return {"ok": status.ok, "flags_version": status.version, "error": status.last_error}

"""A minimal Flask service with flagwire.

Run it:  ``gunicorn --chdir examples -b 127.0.0.1:8001 flask_app:app``
then:    ``curl -H 'x-user-id: alice' -H 'x-plan: beta' localhost:8001/checkout``

The flag file is ``examples/flags.yaml`` (or ``$FLAGWIRE_FLAGS``).
"""

from __future__ import annotations

import os
import time
from typing import Any

from example_setup import flag_source, telemetry, tracer_provider
from flask import Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from flagwire import context
from flagwire.flask import Flagwire, flags

source = flag_source()
provider = tracer_provider()
app = Flask(__name__)
if provider is not None:
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
Flagwire(
    app,
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


# The demo sets this to make the new checkout measurably slower, as a regression would.
EXTRA_MS = float(os.environ.get("EXAMPLE_NEW_CHECKOUT_EXTRA_MS", "0"))


@app.get("/checkout")
def checkout() -> dict[str, Any]:
    """Which checkout and ranking this user gets, and from which flag-set version; with
    ``x-order-total``, an order: tracked as ``checkout`` with that value."""
    order_total = request.headers.get("x-order-total", type=float)
    if order_total is not None:
        flags.track("checkout", order_total)
    if EXTRA_MS and flags.boolean("new-checkout", False):
        time.sleep(EXTRA_MS / 1000)
    return {
        "service": "flask",
        "user": flags.context.get("targetingKey"),
        "new_checkout": flags.boolean("new-checkout", False),
        "ranking": flags.string("search-ranking", "classic"),
        "eu_banner": flags.boolean("eu-banner", False),
        "version": flags.flagset.version_label,
        "decided": {k: a.variant for k, a in flags.evaluated().items()},
        "reasons": {k: a.reason.value for k, a in flags.evaluated().items()},
    }


@app.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics (flagwire's among them)."""
    return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)


@app.get("/healthz")
def healthz() -> dict[str, Any]:
    """The flag source's health."""
    status = source.status
    return {"ok": status.ok, "flags_version": status.version, "error": status.last_error}

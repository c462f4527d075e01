"""A FastAPI app exporting flagwire's Prometheus metrics, for ``tests/test_integrations.py``.

``GET /work`` (header ``x-user-id``) decides the flag ``slow-path``: the ``treatment``
variant waits 60 ms more than ``control``, so a real Prometheus scraping ``/metrics``
sees the treatment's latency regress against its control. ``/metrics`` is
prometheus_client's ASGI app on the app's own registry, with the file source's health,
flag-set version and expiry gauges; ``/healthz`` answers when the app is up. The flag file
is ``$FLAGWIRE_FLAGS``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, make_asgi_app

from flagwire import FileSource, context
from flagwire.fastapi import Flags, FlagwireMiddleware
from flagwire.prometheus import PrometheusTelemetry

TREATMENT_DELAY = 0.060
"""Seconds the ``treatment`` variant of ``slow-path`` waits on top of ``control``."""

source = FileSource(os.environ["FLAGWIRE_FLAGS"])
registry = CollectorRegistry()
telemetry = PrometheusTelemetry(registry=registry, sources=[source])

app = FastAPI()
app.add_middleware(
    FlagwireMiddleware,
    source=source,
    context=context.headers({"x-user-id": "targetingKey"}),
    anonymous_cookie=None,
    propagation=False,
    telemetry=[telemetry],
)
app.mount("/metrics", make_asgi_app(registry=registry))


@app.get("/work")
async def work(flags: Flags) -> dict[str, Any]:
    """Do the work the user's ``slow-path`` variant does: the treatment is slower."""
    variant = flags.string("slow-path", "control")
    if variant == "treatment":
        await asyncio.sleep(TREATMENT_DELAY)
    return {"variant": variant, "reported": flags.details("slow-path").variant}


@app.get("/healthz")
async def healthz() -> dict[str, Any]:
    """The flag source's health."""
    status = source.status
    return {"ok": status.ok, "flags_version": status.version, "error": status.last_error}

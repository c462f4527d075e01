"""A FastAPI app for the end-to-end tests, started under uvicorn by ``tests/test_e2e.py``.

``GET /slow?sleep=S`` reads the flag ``greeting`` and the pinned version, waits up to ``S``
seconds (less if the flag file is reloaded meanwhile), then reads ``greeting`` again and
``farewell`` for the first time. ``/healthz`` also counts the ``/slow`` requests in flight,
so a test knows when to edit the file. The flag file is ``$FLAGWIRE_FLAGS``.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from fastapi import FastAPI

from flagwire import FileSource, RequestFlags, context, current_flags
from flagwire.fastapi import Flags, FlagwireMiddleware

source = FileSource(os.environ["FLAGWIRE_FLAGS"])
app = FastAPI()
app.add_middleware(
    FlagwireMiddleware,
    source=source,
    context=context.headers({"x-user-id": "targetingKey"}),
)
in_flight = 0


def read(flags: RequestFlags, key: str) -> dict[str, Any]:
    """The flag's value, the request's pinned version, and the version that decided it."""
    return {
        "value": flags.string(key, "?"),
        "version": flags.flagset.version_label,
        "decided_by": flags.details(key).flagset_version,
    }


@app.get("/slow")
async def slow(flags: Flags, sleep: float = 0.8) -> dict[str, Any]:
    """Read, wait (until the source swaps or ``sleep`` runs out), read again."""
    global in_flight
    before = read(flags, "greeting")
    in_flight += 1
    try:
        deadline = time.monotonic() + sleep
        while time.monotonic() < deadline and source.flagset.version_label == before["version"]:
            await asyncio.sleep(0.01)
        again = current_flags()  # through the context variable, not the dependency
        after = {"greeting": read(again, "greeting"), "farewell": read(again, "farewell")}
    finally:
        in_flight -= 1
    return {"before": before, "after": after, "live_version": source.flagset.version_label}


@app.get("/healthz")
async def healthz() -> dict[str, Any]:
    """The flag source's health and the number of ``/slow`` requests in flight."""
    status = source.status
    return {
        "ok": status.ok,
        "flags_version": status.version,
        "error": status.last_error,
        "in_flight": in_flight,
    }

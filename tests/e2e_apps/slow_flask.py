"""A Flask app for the end-to-end tests, started under gunicorn by ``tests/test_e2e.py``.

The same endpoints as ``slow_fastapi.py``: ``GET /slow?sleep=S`` reads ``greeting`` and the
pinned version, waits up to ``S`` seconds (less if the flag file is reloaded meanwhile),
reads ``greeting`` again and ``farewell`` for the first time; ``/healthz`` counts the
``/slow`` requests in flight. The flag file is ``$FLAGWIRE_FLAGS``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from flask import Flask, request

from flagwire import FileSource, RequestFlags, context, current_flags
from flagwire.flask import Flagwire, flags

source = FileSource(os.environ["FLAGWIRE_FLAGS"])
app = Flask(__name__)
Flagwire(app, source=source, context=context.headers({"x-user-id": "targetingKey"}))
_lock = threading.Lock()
in_flight = 0


def read(request_flags: RequestFlags, key: str) -> dict[str, Any]:
    """The flag's value, the request's pinned version, and the version that decided it."""
    return {
        "value": request_flags.string(key, "?"),
        "version": request_flags.flagset.version_label,
        "decided_by": request_flags.details(key).flagset_version,
    }


@app.get("/slow")
def slow() -> dict[str, Any]:
    """Read, wait (until the source swaps or ``sleep`` runs out), read again."""
    global in_flight
    sleep = float(request.args.get("sleep", "0.8"))
    before = read(flags, "greeting")
    with _lock:
        in_flight += 1
    try:
        deadline = time.monotonic() + sleep
        while time.monotonic() < deadline and source.flagset.version_label == before["version"]:
            time.sleep(0.01)
        again = current_flags()
        after = {"greeting": read(again, "greeting"), "farewell": read(again, "farewell")}
    finally:
        with _lock:
            in_flight -= 1
    return {"before": before, "after": after, "live_version": source.flagset.version_label}


@app.get("/healthz")
def healthz() -> dict[str, Any]:
    """The flag source's health and the number of ``/slow`` requests in flight."""
    status = source.status
    return {
        "ok": status.ok,
        "flags_version": status.version,
        "error": status.last_error,
        "in_flight": in_flight,
    }

"""A Flask service for ``tests/test_e2e_guard.py``, under gunicorn (2 workers, multiprocess
Prometheus metrics) on :class:`~flagwire.RedisSource` (``$FLAGWIRE_REDIS_URL``).

``GET /<flag>`` decides that one flag for the user in ``x-user-id`` and answers after a
noisy wait (log-normal, median 10 ms); the variant named in ``$GUARD_BAD_VARIANT``
(``on``) of the flags in ``$GUARD_BAD_FLAGS`` is 5x slower and fails 10% of its requests
with a 500. ``/metrics`` aggregates every worker's metrics; each answer names its worker.
"""

from __future__ import annotations

import os
import random
import time

from flask import Flask, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from flagwire import RedisSource, context
from flagwire.flask import Flagwire, flags
from flagwire.prometheus import PrometheusTelemetry

BAD_FLAGS = frozenset(os.environ.get("GUARD_BAD_FLAGS", "").split(","))
BAD_VARIANT = os.environ.get("GUARD_BAD_VARIANT", "on")
PID = os.getpid()

source = RedisSource(os.environ["FLAGWIRE_REDIS_URL"], resync_interval=5.0)
telemetry = PrometheusTelemetry(registry=CollectorRegistry(), sources=[source])
app = Flask(__name__)
Flagwire(app, source=source, context=context.headers({"x-user-id": "targetingKey"}),
         telemetry=[telemetry])  # fmt: skip


@app.get("/flag/<key>")
def decide(key: str) -> Response:
    variant = flags.details(key, False).variant
    wait = random.lognormvariate(-4.6, 0.6)  # median 10 ms, noisy
    bad = key in BAD_FLAGS and variant == BAD_VARIANT
    time.sleep(5 * wait if bad else wait)
    response = jsonify({"pid": PID, "variant": variant})
    if bad and random.random() < 0.10:
        response.status_code = 500
    return response


@app.get("/metrics")
def metrics() -> Response:
    scrape = CollectorRegistry()
    MultiProcessCollector(scrape)  # type: ignore[no-untyped-call]
    scrape.register(telemetry.sources)
    return Response(generate_latest(scrape), headers={"Content-Type": CONTENT_TYPE_LATEST})


@app.get("/healthz")
def healthz() -> dict[str, object]:
    return {"pid": PID, "ok": source.status.ok}

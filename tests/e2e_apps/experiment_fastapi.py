"""A FastAPI service running experiments, for ``tests/test_e2e_report.py``.

``GET /visit`` decides the flags ``checkout-v2``, ``aa-test`` and ``skewed`` for the user in
``x-user-id``, and the user converts (``track("checkout", amount)``) when the uniform draw
the test sends in ``x-draw`` is below their conversion rate: ``$EXPERIMENT_BASE_RATE``, times
``1 + $EXPERIMENT_LIFT`` for ``checkout-v2=on``. The other flags change nothing. The amount
is ``x-amount``. ``/metrics`` is flagwire's Prometheus registry; the flag file is
``$FLAGWIRE_FLAGS``.
"""

from __future__ import annotations

import os

from fastapi import FastAPI, Header, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from flagwire import FileSource, context
from flagwire.fastapi import Flags, FlagwireMiddleware
from flagwire.prometheus import PrometheusTelemetry

BASE_RATE = float(os.environ["EXPERIMENT_BASE_RATE"])
LIFT = float(os.environ["EXPERIMENT_LIFT"])
FLAGS = ("checkout-v2", "aa-test", "skewed")

source = FileSource(os.environ["FLAGWIRE_FLAGS"])
registry = CollectorRegistry()
telemetry = PrometheusTelemetry(registry=registry, sources=[source], events=["checkout"])
app = FastAPI()
app.add_middleware(
    FlagwireMiddleware,
    source=source,
    context=context.headers({"x-user-id": "targetingKey"}),
    telemetry=[telemetry],
)


@app.get("/visit")
async def visit(
    flags: Flags, x_draw: float = Header(), x_amount: float = Header()
) -> dict[str, object]:
    variants = {key: flags.details(key).variant for key in FLAGS}
    rate = BASE_RATE * (1 + LIFT if variants["checkout-v2"] == "on" else 1)
    converted = x_draw < rate
    if converted:
        flags.track("checkout", x_amount)
    return {"variants": variants, "converted": converted}


@app.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@app.get("/healthz")
async def healthz() -> dict[str, object]:
    return {"ok": source.status.ok}

"""A Flask app with flagwire's Prometheus telemetry, for ``tests/test_e2e_telemetry.py``.

Like ``examples/flask_app.py`` (``GET /checkout`` decides ``new-checkout``,
``search-ranking`` and ``eu-banner`` for the user in the ``x-*`` headers and says what it
decided), ``GET /buy`` (the same, then tracks a ``checkout`` with the value in
``x-amount``, and a ``viewed`` without one), plus ``GET /metrics``. Every response carries
the serving worker's pid in ``x-worker-pid``. The flag file is ``$FLAGWIRE_FLAGS``.

Under gunicorn with several workers, set ``PROMETHEUS_MULTIPROC_DIR`` (to an empty
directory) in the environment gunicorn starts with, so that prometheus_client is already
in multiprocess mode when it is first imported: each worker then writes its counters and
histograms to files there, and ``/metrics`` — whichever worker serves it — aggregates
every worker's files (``MultiProcessCollector``), plus this worker's view of the flag
source. Without the variable, ``/metrics`` is this process's own registry.
"""

from __future__ import annotations

import os

from flask import Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

import flagwire
from flagwire import FileSource, context
from flagwire.flask import Flagwire, flags
from flagwire.prometheus import PrometheusTelemetry

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

source = FileSource(os.environ["FLAGWIRE_FLAGS"])
# The metrics' own registry. In multiprocess mode it is never scraped: the values live in
# the shared files, and registering them where MultiProcessCollector also reads would
# count them twice.
registry = CollectorRegistry()
telemetry = PrometheusTelemetry(registry=registry, sources=[source])

app = Flask(__name__)
app.json.sort_keys = False  # type: ignore[attr-defined]  # decisions in the order made
Flagwire(
    app,
    source=source,
    context=context.headers(
        {
            "x-user-id": "targetingKey",
            "x-plan": "plan",
            "x-country": "country",
            "x-app-version": "appVersion",
        }
    ),
    telemetry=[telemetry],
)
PID = str(os.getpid())


@app.after_request
def tag_worker(response: Response) -> Response:
    response.headers["x-worker-pid"] = PID
    return response


@app.get("/checkout")
def checkout() -> dict[str, object]:
    """What this user got, and from which worker."""
    flags.boolean("new-checkout", False)
    flags.string("search-ranking", "classic")
    flags.boolean("eu-banner", False)
    decided = flags.evaluated()
    return {
        "user": flags.context.get("targetingKey"),
        "pid": PID,
        "version": flags.flagset.version_label,
        "decided": {key: a.variant for key, a in decided.items()},
        "reasons": {key: a.reason.value for key, a in decided.items()},
    }


@app.get("/buy")
def buy() -> dict[str, object]:
    """Like ``/checkout``, and the user buys for ``x-amount``."""
    flagwire.track("viewed")
    decided = checkout()
    flags.track("checkout", float(request.headers["x-amount"]))
    return decided


@app.get("/metrics")
def metrics() -> Response:
    """Prometheus text format: every worker's metrics in multiprocess mode."""
    if MULTIPROCESS:
        scrape = CollectorRegistry()
        MultiProcessCollector(scrape)  # type: ignore[no-untyped-call]
        scrape.register(telemetry.sources)  # the flag source, as this worker sees it
    else:
        scrape = registry
    return Response(generate_latest(scrape), headers={"Content-Type": CONTENT_TYPE_LATEST})


@app.get("/healthz")
def healthz() -> dict[str, object]:
    """The flag source's health (no flag decided: not in the metrics)."""
    status = source.status
    return {"ok": status.ok, "flags_version": status.version, "error": status.last_error}

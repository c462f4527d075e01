"""A Celery app for ``tests/test_celery.py`` and the cross-framework journey.

Configured by the environment: ``CELERY_BROKER`` / ``CELERY_BACKEND`` (Redis URLs),
``FLAGWIRE_FLAGS`` (the worker's flag file), ``FLAGWIRE_PROPAGATION_KEYS``,
``FLAGWIRE_RECORDS`` (a file each finished task's telemetry record is appended to, as a
JSON line, with the worker process's pid).
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery import Celery

import flagwire
import flagwire.celery
from flagwire._telemetry import RequestRecord

app = Celery(
    "flagwire_e2e",
    broker=os.environ.get("CELERY_BROKER", "memory://"),
    backend=os.environ.get("CELERY_BACKEND", "cache+memory://"),
)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


class FileTelemetry:
    """Appends each task's record to ``$FLAGWIRE_RECORDS`` (one JSON object a line)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def record(self, request: RequestRecord) -> None:
        line = {
            "pid": os.getpid(),
            "route": request.route,
            "method": request.method,
            "status": request.status,
            "flags": {k: d.variant for k, d in request.decisions.items()},
            "reasons": {k: d.reason.value for k, d in request.decisions.items()},
        }
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")


_flags_file = os.environ.get("FLAGWIRE_FLAGS")
_spans_file = os.environ.get("SPANS_FILE")
if _flags_file:
    records = os.environ.get("FLAGWIRE_RECORDS")
    telemetry: list[Any] = [FileTelemetry(records)] if records else []
    if _spans_file:
        from flagwire.otel import OTelTelemetry

        telemetry.append(OTelTelemetry())
    flagwire.celery.setup(app, source=flagwire.FileSource(_flags_file), telemetry=telemetry)

if _spans_file:
    from celery.signals import worker_process_init

    @worker_process_init.connect(weak=False)
    def _instrument(**_: Any) -> None:
        """OpenTelemetry's Celery instrumentation in each pool child (its spans get the
        flag events; flagwire's receivers were connected first, so they run inside)."""
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from spans import JsonLinesExporter

        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(_spans_file)))
        CeleryInstrumentor().instrument(tracer_provider=provider)


def decisions() -> dict[str, Any]:
    """What a task sees: its flags' decisions, targeting key, and the process it ran in."""
    flags = flagwire.current_flags()
    rollout = flags.details("rollout", False)
    color = flags.details("color", "none")
    return {
        "pid": os.getpid(),
        "user": flags.context.get("targetingKey"),
        "rollout": rollout.value,
        "color": color.value,
        "reasons": {"rollout": rollout.reason.value, "color": color.reason.value},
        "version": flags.flagset.version_label,
    }


@app.task(name="e2e.decide")
def decide() -> dict[str, Any]:
    return decisions()


@app.task(name="e2e.fail")
def fail() -> None:
    flagwire.current_flags().boolean("rollout", False)
    raise RuntimeError("task failed on purpose")


@app.task(name="e2e.journey")
def journey() -> dict[str, Any]:
    """Decides, then calls the Django service (``$DJANGO_URL/hop``) with flagwire's httpx
    transport, which sends this task's flags on."""
    import httpx

    from flagwire.httpx import FlagwireTransport

    first = decisions()
    with httpx.Client(transport=FlagwireTransport(), trust_env=False, timeout=10) as http:
        answer = http.get(f"{os.environ['DJANGO_URL']}/hop")
    return {**first, "django": answer.json() if answer.status_code == 200 else answer.text}


@app.task(name="e2e.chain")
def chain() -> dict[str, Any]:
    """Decides, then publishes ``e2e.decide`` from inside this task: a task's task."""
    return {**decisions(), "child": decide.delay().id}

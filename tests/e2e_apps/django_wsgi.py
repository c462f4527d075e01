"""``tests/e2e_apps/django_site.py`` as a WSGI app (gunicorn ``django_wsgi:app``)."""

from __future__ import annotations

import os

import django_site  # noqa: F401 - configures the settings
from django.core.wsgi import get_wsgi_application

app = get_wsgi_application()

if os.environ.get("SPANS_FILE"):  # OpenTelemetry's WSGI server spans, exported to a file
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from spans import JsonLinesExporter

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(os.environ["SPANS_FILE"])))
    app = OpenTelemetryMiddleware(app, tracer_provider=provider)

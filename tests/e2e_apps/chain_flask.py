"""A Flask hop of a service chain, started under gunicorn by ``tests/test_e2e_propagation.py``.

The same environment and endpoints as ``chain_fastapi.py`` (``FLAGWIRE_FLAGS``,
``CHAIN_NAME``, ``CHAIN_NEXT``, ``CHAIN_CLIENT``, ``CHAIN_BAGGAGE``, ``CHAIN_ID``; ``GET /hop``,
``/healthz``), with a synchronous client: ``CHAIN_HTTP=requests`` (default; a
``requests.Session`` per thread, with :func:`flagwire.requests.install` or OpenTelemetry's
``RequestsInstrumentor``) or ``CHAIN_HTTP=httpx`` (one ``httpx.Client``, on
:class:`flagwire.httpx.FlagwireTransport` or ``HTTPXClientInstrumentor``).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx
import requests
from flask import Flask, request

from flagwire import FileSource, context
from flagwire.flask import Flagwire, flags

NAME = os.environ.get("CHAIN_NAME", "flask")
NEXT = os.environ.get("CHAIN_NEXT", "").rstrip("/")
CLIENT = os.environ.get("CHAIN_CLIENT", "flagwire")
HTTP = os.environ.get("CHAIN_HTTP", "requests")
APP_BAGGAGE = os.environ.get("CHAIN_BAGGAGE", "")

if CLIENT not in ("flagwire", "otel") or HTTP not in ("requests", "httpx"):
    raise SystemExit(f"unknown CHAIN_CLIENT={CLIENT!r} or CHAIN_HTTP={HTTP!r}")

if CLIENT == "otel":
    from opentelemetry import baggage as otel_baggage
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    from opentelemetry.sdk.trace import TracerProvider

    from flagwire.otel import install_propagator

    trace.set_tracer_provider(TracerProvider())
    if HTTP == "requests":
        RequestsInstrumentor().instrument()
    else:
        HTTPXClientInstrumentor().instrument()
    install_propagator()


class _NoCookies(DefaultCookiePolicy):
    """A service-to-service client keeps no cookies (one client serves every user)."""

    def set_ok(self, cookie: Any, request: Any) -> bool:
        return False

    def return_ok(self, cookie: Any, request: Any) -> bool:
        return False


source = FileSource(os.environ["FLAGWIRE_FLAGS"])
app = Flask(__name__)
Flagwire(app, source=source, context=context.headers({"x-user-id": "targetingKey"}))

_local = threading.local()
_httpx_client: httpx.Client | None = None
if NEXT and HTTP == "httpx":
    if CLIENT == "flagwire":
        from flagwire.httpx import FlagwireTransport

        _httpx_client = httpx.Client(
            transport=FlagwireTransport(),
            trust_env=False,
            timeout=30.0,
            cookies=CookieJar(policy=_NoCookies()),
        )
    else:
        _httpx_client = httpx.Client(
            trust_env=False, timeout=30.0, cookies=CookieJar(policy=_NoCookies())
        )


def _session() -> requests.Session:
    """This thread's session (``requests.Session`` is not meant to be shared by threads)."""
    session: requests.Session | None = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        session.trust_env = False
        session.cookies.set_policy(_NoCookies())
        if CLIENT == "flagwire":
            from flagwire.requests import install

            install(session)
        _local.session = session
    return session


@contextlib.contextmanager
def _otel_context() -> Iterator[None]:
    """The inbound trace context and baggage current, plus the app's own baggage."""
    if CLIENT != "otel":
        yield
        return
    ctx = propagate.extract(request.headers)
    if APP_BAGGAGE:
        for member in APP_BAGGAGE.split(","):
            key, _, value = member.partition("=")
            ctx = otel_baggage.set_baggage(key.strip(), value.strip(), context=ctx)
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


def _call_next() -> dict[str, Any]:
    headers = {"baggage": APP_BAGGAGE} if APP_BAGGAGE and CLIENT == "flagwire" else {}
    url = f"{NEXT}/hop"
    if _httpx_client is not None:
        response = _httpx_client.get(url, headers=headers)
        status, text = response.status_code, response.text
    else:
        answer = _session().get(url, headers=headers, timeout=30)
        status, text = answer.status_code, answer.text
    if status != 200:
        return {"error": status, "text": text[-2000:]}
    body: dict[str, Any] = json.loads(text)
    return body


@app.get("/hop")
def hop() -> dict[str, Any]:
    """This hop's decisions, what it received, and the next hop's answer."""
    rollout = flags.details("rollout", False)
    color = flags.details("color", "none")
    next_body = None
    if NEXT:
        with _otel_context():
            next_body = _call_next()
    return {
        "service": NAME,
        "user": flags.context.get("targetingKey"),
        "rollout": rollout.value,
        "color": color.value,
        "reason": rollout.reason.value,
        "reasons": {"rollout": rollout.reason.value, "color": color.reason.value},
        "variants": {"rollout": rollout.variant, "color": color.variant},
        "version": flags.flagset.version_label,
        "baggage": request.headers.get("baggage"),
        "traceparent": request.headers.get("traceparent"),
        "next": next_body,
    }


@app.get("/healthz")
def healthz() -> dict[str, Any]:
    """The flag source's health, and ``$CHAIN_ID`` (so a test knows it reached this server)."""
    status = source.status
    return {
        "ok": status.ok,
        "flags_version": status.version,
        "error": status.last_error,
        "id": os.environ.get("CHAIN_ID"),
    }

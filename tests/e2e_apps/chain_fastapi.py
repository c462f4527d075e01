"""A FastAPI hop of a service chain, started under uvicorn by ``tests/test_e2e_propagation.py``.

Configured by the environment:

``FLAGWIRE_FLAGS``
    The flag file (flags ``rollout``, boolean, and ``color``, string).
``CHAIN_NAME``
    The service's name in its answers (default ``fastapi``).
``CHAIN_NEXT``
    The base URL of the next hop, or empty for the last one.
``CHAIN_CLIENT``
    ``flagwire``: an ``httpx.AsyncClient`` on :class:`flagwire.httpx.AsyncFlagwireTransport`;
    ``otel``: OpenTelemetry's SDK, ``HTTPXClientInstrumentor`` and
    :func:`flagwire.otel.install_propagator`, with the inbound context (``traceparent``,
    ``baggage``) extracted and attached around the handler, as OTel's server
    instrumentation does.
``CHAIN_BAGGAGE``
    The app's own baggage members for the next hop (``tenant=acme``), or empty.
``CHAIN_ID``
    A token ``/healthz`` echoes, so the test knows the port is this server's.

``GET /hop`` (user: header ``x-user-id``) reads ``rollout`` and ``color``, calls
``CHAIN_NEXT/hop`` forwarding nothing itself (only what the client library adds), and
answers with its decisions, the raw inbound ``baggage`` and ``traceparent`` headers and the
next hop's answer.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx
from fastapi import FastAPI, Request

from flagwire import FileSource, context
from flagwire.fastapi import Flags, FlagwireMiddleware

NAME = os.environ.get("CHAIN_NAME", "fastapi")
NEXT = os.environ.get("CHAIN_NEXT", "").rstrip("/")
CLIENT = os.environ.get("CHAIN_CLIENT", "flagwire")
APP_BAGGAGE = os.environ.get("CHAIN_BAGGAGE", "")

if CLIENT not in ("flagwire", "otel"):
    raise SystemExit(f"CHAIN_CLIENT must be 'flagwire' or 'otel', not {CLIENT!r}")

if CLIENT == "otel":
    from opentelemetry import baggage as otel_baggage
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.sdk.trace import TracerProvider

    from flagwire.otel import install_propagator

    trace.set_tracer_provider(TracerProvider())
    HTTPXClientInstrumentor().instrument()
    install_propagator()


class _NoCookies(DefaultCookiePolicy):
    """A service-to-service client keeps no cookies (one client serves every user)."""

    def set_ok(self, cookie: Any, request: Any) -> bool:
        return False

    def return_ok(self, cookie: Any, request: Any) -> bool:
        return False


source = FileSource(os.environ["FLAGWIRE_FLAGS"])
clients: list[httpx.AsyncClient] = []


@contextlib.asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    if NEXT:
        transport: httpx.AsyncBaseTransport | None = None
        if CLIENT == "flagwire":
            from flagwire.httpx import AsyncFlagwireTransport

            transport = AsyncFlagwireTransport()
        clients.append(
            httpx.AsyncClient(
                transport=transport,
                trust_env=False,
                timeout=30.0,
                cookies=CookieJar(policy=_NoCookies()),
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
            )
        )
    try:
        yield
    finally:
        for client in clients:
            await client.aclose()


app = FastAPI(lifespan=lifespan)
app.add_middleware(
    FlagwireMiddleware,
    source=source,
    context=context.headers({"x-user-id": "targetingKey"}),
)


@contextlib.contextmanager
def _otel_context(request: Request) -> Iterator[None]:
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


async def _call_next() -> dict[str, Any]:
    headers = {"baggage": APP_BAGGAGE} if APP_BAGGAGE and CLIENT == "flagwire" else {}
    response = await clients[0].get(f"{NEXT}/hop", headers=headers)
    if response.status_code != 200:
        return {"error": response.status_code, "text": response.text[-2000:]}
    body: dict[str, Any] = response.json()
    return body


@app.get("/hop")
async def hop(request: Request, flags: Flags) -> dict[str, Any]:
    """This hop's decisions, what it received, and the next hop's answer."""
    rollout = flags.details("rollout", False)
    color = flags.details("color", "none")
    next_body = None
    if NEXT:
        with _otel_context(request):
            next_body = await _call_next()
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
async def healthz() -> dict[str, Any]:
    """The flag source's health, and ``$CHAIN_ID`` (so a test knows it reached this server)."""
    status = source.status
    return {
        "ok": status.ok,
        "flags_version": status.version,
        "error": status.last_error,
        "id": os.environ.get("CHAIN_ID"),
    }

"""Flags in metrics and traces: ``flagwire.prometheus`` and ``flagwire.otel``'s telemetry,
through the ASGI middleware (Starlette, FastAPI) and the Flask extension, in-process.

Prometheus metrics go to a fresh ``CollectorRegistry`` per test; spans to a real
OpenTelemetry SDK ``TracerProvider`` with an in-memory exporter. What a metric or span says
is checked against what the responses say each request decided.
"""

from __future__ import annotations

import asyncio
import logging
import random
import string
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from flask import Flask
from flask import request as flask_request
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from flagwire import (
    Assignment,
    FileSource,
    FlagSet,
    Propagation,
    Reason,
    RequestFlags,
    StaticSource,
    context,
    current_flags,
)
from flagwire._telemetry import RequestRecord, Telemetry
from flagwire.asgi import FlagwireMiddleware
from flagwire.flask import Flagwire
from flagwire.otel import (
    ERROR_TYPE,
    EVENT_NAME,
    FLAG_KEY,
    FLAGSET_ID,
    FLAGSET_VERSION,
    PROPAGATED_ATTRIBUTE,
    PROVIDER_NAME,
    RESULT_REASON,
    RESULT_VALUE,
    RESULT_VARIANT,
    SPAN_ATTRIBUTE_PREFIX,
    OTelTelemetry,
)
from flagwire.prometheus import PrometheusTelemetry

Document = dict[str, Any]
MakeSource = Callable[..., FileSource]
WriteFile = Callable[..., Path]

DURATION = "flagwire_request_duration_seconds"
EVALUATIONS = "flagwire_evaluations_total"
ERRORS = "flagwire_evaluation_errors_total"
NO_VARIANT = "_none"
OVERFLOW = "_other"
PROPAGATION_KEY = "telemetry-test-secret-0123456789abcdef"
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)

ON_OFF = {"on": True, "off": False}


def _document() -> Document:
    return {
        "metadata": {"version": "t1", "flagSetId": "shop", "owner": "web"},
        "flags": {
            "new-checkout": {
                "state": "ENABLED",
                "variants": ON_OFF,
                "defaultVariant": "off",
                "targeting": {"if": [{"==": [{"var": "plan"}, "beta"]}, "on", "off"]},
            },
            "ranking": {
                "state": "ENABLED",
                "variants": {"classic": "classic", "vector": "vector", "hybrid": "hybrid"},
                "defaultVariant": "classic",
                "targeting": {"fractional": [["classic", 34], ["vector", 33], ["hybrid", 33]]},
            },
            "retired": {"state": "DISABLED", "variants": ON_OFF, "defaultVariant": "on"},
            "banner": {
                "state": "ENABLED",
                "variants": {"red": "#f00", "blue": "#00f"},
                "defaultVariant": "red",
            },
            # The rule's result is whatever the client sends in x-color: a variant name
            # the flag does not have must not become a label value.
            "echo": {
                "state": "ENABLED",
                "variants": {"a": "a", "b": "b"},
                "defaultVariant": "a",
                "targeting": {"var": "color"},
            },
        },
    }


DOCUMENT = _document()
FLAGSET = FlagSet.from_mapping(DOCUMENT, source="telemetry-flags.json")
VARIANTS: dict[str, set[str]] = {
    key: set(flag["variants"]) for key, flag in DOCUMENT["flags"].items()
}
MANY = ["new-checkout", "ranking", "retired", "banner", "echo"]
EXTRACT = context.headers({"x-user-id": "targetingKey", "x-plan": "plan", "x-color": "color"})


# -- the apps: the same endpoints in Starlette, FastAPI and Flask -----------------------------


def _decided(flags: RequestFlags) -> dict[str, Any]:
    evaluated = flags.evaluated()
    return {
        "decided": {key: a.variant for key, a in evaluated.items()},
        "reasons": {key: a.reason.value for key, a in evaluated.items()},
    }


def read_item(item_id: int) -> tuple[int, dict[str, Any]]:
    """``/items/<id>``: two flags; items from 1000 on do not exist (404 after reading)."""
    flags = current_flags()
    flags.boolean("new-checkout", False)
    flags.string("ranking", "classic")
    return (404 if item_id >= 1000 else 200), _decided(flags)


def place_order() -> dict[str, Any]:
    """``POST /orders``: a fractional flag and a disabled one."""
    flags = current_flags()
    flags.string("ranking", "classic")
    flags.boolean("retired", False)
    return _decided(flags)


def boom() -> None:
    """``/boom``: reads a flag, then fails (a 500)."""
    current_flags().string("banner", "")
    raise RuntimeError("boom after reading a flag")


def mistyped() -> dict[str, Any]:
    """``/mistyped``: a string flag read as a boolean, and a flag that does not exist."""
    flags = current_flags()
    flags.boolean("banner", False)
    flags.boolean("missing-flag", False)
    return _decided(flags)


def read_many() -> dict[str, Any]:
    """``/many``: every flag of :data:`MANY`, in that order."""
    flags = current_flags()
    for key in MANY:
        flags.get(key)
    return _decided(flags)


def read_echo() -> dict[str, Any]:
    """``/echo``: a flag whose rule returns what the client sent."""
    flags = current_flags()
    flags.string("echo", "?")
    flags.string("banner", "")
    return _decided(flags)


def starlette_app(telemetry: Sequence[Telemetry], **options: Any) -> Starlette:
    async def items(request: Request) -> Response:
        status, body = read_item(int(request.path_params["item_id"]))
        return JSONResponse(body, status_code=status)

    async def orders(request: Request) -> Response:
        return JSONResponse(place_order())

    async def boom_endpoint(request: Request) -> Response:
        boom()
        return PlainTextResponse("unreachable")

    async def plain(request: Request) -> Response:
        return JSONResponse({"decided": {}, "reasons": {}})

    async def mistyped_endpoint(request: Request) -> Response:
        return JSONResponse(mistyped())

    async def many(request: Request) -> Response:
        return JSONResponse(read_many())

    async def echo(request: Request) -> Response:
        return JSONResponse(read_echo())

    return Starlette(
        routes=[
            Route("/items/{item_id}", items),
            Route("/orders", orders, methods=["POST"]),
            Route("/boom", boom_endpoint),
            Route("/plain", plain),
            Route("/mistyped", mistyped_endpoint),
            Route("/many", many),
            Route("/echo", echo),
        ],
        middleware=[Middleware(FlagwireMiddleware, **_binding_options(telemetry, options))],
    )


def fastapi_app(telemetry: Sequence[Telemetry], **options: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def items(item_id: int) -> Response:
        status, body = read_item(item_id)
        return JSONResponse(body, status_code=status)

    @app.post("/orders")
    async def orders() -> dict[str, Any]:
        return place_order()

    @app.get("/boom")
    async def boom_endpoint() -> None:
        boom()

    @app.get("/plain")
    async def plain() -> dict[str, Any]:
        return {"decided": {}, "reasons": {}}

    @app.get("/mistyped")
    def mistyped_endpoint() -> dict[str, Any]:  # a sync endpoint: Starlette's thread pool
        return mistyped()

    @app.get("/many")
    async def many() -> dict[str, Any]:
        return read_many()

    @app.get("/echo")
    async def echo() -> dict[str, Any]:
        return read_echo()

    app.add_middleware(FlagwireMiddleware, **_binding_options(telemetry, options))
    return app


def flask_app(telemetry: Sequence[Telemetry], **options: Any) -> Flask:
    app = Flask(f"telemetry-{id(telemetry)}")
    app.json.sort_keys = False  # type: ignore[attr-defined]  # "decided" is in decision order

    @app.get("/items/<int:item_id>")
    def items(item_id: int) -> tuple[dict[str, Any], int]:
        status, body = read_item(item_id)
        return body, status

    @app.post("/orders")
    def orders() -> dict[str, Any]:
        return place_order()

    @app.get("/boom")
    def boom_endpoint() -> str:
        boom()
        return "unreachable"

    @app.get("/plain")
    def plain() -> dict[str, Any]:
        return {"decided": {}, "reasons": {}}

    @app.get("/mistyped")
    def mistyped_endpoint() -> dict[str, Any]:
        return mistyped()

    @app.get("/many")
    def many() -> dict[str, Any]:
        return read_many()

    @app.get("/echo")
    def echo() -> dict[str, Any]:
        return read_echo()

    Flagwire(app, **_binding_options(telemetry, options))
    return app


def _binding_options(telemetry: Sequence[Telemetry], options: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "source": FLAGSET,
        "context": EXTRACT,
        "anonymous_cookie": None,
        "propagation": False,
        "telemetry": telemetry,
        **options,
    }


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any


def drive_asgi(app: ASGIApp, calls: Sequence[Call]) -> list[Reply]:
    """Send the calls in order, in-process (a 500 comes back as a response)."""

    async def main() -> list[Reply]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            replies = []
            for call in calls:
                response = await client.request(call.method, call.path, headers=call.headers)
                body = (
                    response.json()
                    if response.headers.get("content-type") == "application/json"
                    else None
                )
                replies.append(Reply(response.status_code, body))
            return replies

    return asyncio.run(main())


def drive_flask(app: Flask, calls: Sequence[Call]) -> list[Reply]:
    client = app.test_client()
    replies = []
    for call in calls:
        response = client.open(call.path, method=call.method, headers=dict(call.headers))
        replies.append(Reply(response.status_code, response.get_json(silent=True)))
    return replies


@dataclass(frozen=True)
class Service:
    """One framework's app and the route templates it should report."""

    framework: str
    app: Any

    @property
    def items_route(self) -> str:
        return "/items/<int:item_id>" if self.framework == "flask" else "/items/{item_id}"

    def send(self, calls: Sequence[Call]) -> list[Reply]:
        if self.framework == "flask":
            return drive_flask(self.app, calls)
        return drive_asgi(self.app, calls)


BUILDERS: dict[str, Callable[..., Any]] = {
    "starlette": starlette_app,
    "fastapi": fastapi_app,
    "flask": flask_app,
}
FRAMEWORKS = list(BUILDERS)


def make_service(framework: str, telemetry: Sequence[Telemetry], **options: Any) -> Service:
    return Service(framework, BUILDERS[framework](telemetry, **options))


# -- reading a registry ------------------------------------------------------------------------


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called ``name``: sorted label items -> value."""
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def by_labels(
    registry: CollectorRegistry, name: str, labels: Sequence[str]
) -> dict[tuple[str, ...], float]:
    """``name``'s samples keyed by the values of ``labels`` (in that order), summed over
    the other labels."""
    found: dict[tuple[str, ...], float] = {}
    for items, value in samples(registry, name).items():
        key = tuple(dict(items)[label] for label in labels)
        found[key] = found.get(key, 0.0) + value
    return found


def label_values(registry: CollectorRegistry, name: str, label: str) -> set[str]:
    return {dict(items)[label] for items in samples(registry, name)}


DURATION_LABELS = ("flag", "variant", "method", "route", "status_class")


def durations(registry: CollectorRegistry) -> dict[tuple[str, ...], float]:
    return by_labels(registry, DURATION + "_count", DURATION_LABELS)


def evaluations(registry: CollectorRegistry) -> dict[tuple[str, ...], float]:
    return by_labels(registry, EVALUATIONS, ("flag", "variant", "reason"))


def errors(registry: CollectorRegistry) -> dict[tuple[str, ...], float]:
    return by_labels(registry, ERRORS, ("flag", "error_code"))


def expected_durations(
    calls: Sequence[Call], replies: Sequence[Reply], route_of: Callable[[Call], str]
) -> Counter[tuple[str, ...]]:
    """What the histogram should count, from what each response said it decided."""
    expected: Counter[tuple[str, ...]] = Counter()
    for call, reply in zip(calls, replies, strict=True):
        for key, variant in reply.body["decided"].items():
            status_class = f"{reply.status // 100}xx"
            expected[key, variant or NO_VARIANT, call.method, route_of(call), status_class] += 1
    return expected


def expected_evaluations(replies: Sequence[Reply]) -> Counter[tuple[str, ...]]:
    expected: Counter[tuple[str, ...]] = Counter()
    for reply in replies:
        for key, variant in reply.body["decided"].items():
            expected[key, variant or NO_VARIANT, reply.body["reasons"][key]] += 1
    return expected


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def prometheus(registry: CollectorRegistry) -> PrometheusTelemetry:
    return PrometheusTelemetry(registry=registry)


def user_headers(i: int, **extra: str) -> dict[str, str]:
    return {"x-user-id": f"user-{i:04d}", "x-plan": "beta" if i % 4 == 0 else "free", **extra}


# -- Prometheus: request durations and evaluations per flag and variant ------------------------


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_histogram_counts_match_the_variants_each_request_got(
    framework: str, registry: CollectorRegistry, prometheus: PrometheusTelemetry
) -> None:
    service = make_service(framework, [prometheus])
    calls = [Call("GET", f"/items/{i * 7}", user_headers(i)) for i in range(60)]
    calls += [Call("GET", f"/items/{1000 + i}", user_headers(i)) for i in range(10)]  # 404s
    calls += [Call("POST", "/orders", user_headers(i)) for i in range(30)]
    replies = service.send(calls)
    assert [r.status for r in replies] == [200] * 60 + [404] * 10 + [200] * 30

    def route_of(call: Call) -> str:
        return service.items_route if call.path.startswith("/items/") else "/orders"

    expected = expected_durations(calls, replies, route_of)
    assert durations(registry) == expected
    # Many users: every ranking variant shows up, each with its own series.
    assert {key[1] for key in expected if key[0] == "ranking"} == VARIANTS["ranking"]
    assert label_values(registry, DURATION + "_count", "route") == {service.items_route, "/orders"}
    # The sum is the request's duration, observed once per decided flag.
    sums = by_labels(registry, DURATION + "_sum", DURATION_LABELS)
    assert set(sums) == set(expected)
    assert all(0 < total < 60 for total in sums.values())

    assert evaluations(registry) == expected_evaluations(replies)
    # "retired" is disabled: no variant, counted as such.
    assert evaluations(registry)["retired", NO_VARIANT, "DISABLED"] == 30
    assert errors(registry) == {}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_route_label_is_the_template_never_the_raw_path(
    framework: str, registry: CollectorRegistry, prometheus: PrometheusTelemetry
) -> None:
    service = make_service(framework, [prometheus])
    ids = random.Random(7).sample(range(1, 999), 40)
    replies = service.send([Call("GET", f"/items/{i}?q={i}", user_headers(i)) for i in ids])
    assert all(r.status == 200 for r in replies)
    assert label_values(registry, DURATION + "_count", "route") == {service.items_route}
    counts = by_labels(registry, DURATION + "_count", ("flag", "route"))
    assert counts == {
        ("new-checkout", service.items_route): 40,
        ("ranking", service.items_route): 40,
    }


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_missing_flag_and_wrong_type_count_as_evaluation_errors(
    framework: str, registry: CollectorRegistry, prometheus: PrometheusTelemetry
) -> None:
    service = make_service(framework, [prometheus])
    replies = service.send([Call("GET", "/mistyped", user_headers(i)) for i in range(5)])
    assert all(r.status == 200 for r in replies)
    found = errors(registry)
    # a flag the flag set does not define: one label for all of them (bounded)
    assert found["_unknown", "FLAG_NOT_FOUND"] == 5
    assert evaluations(registry)["_unknown", NO_VARIANT, "ERROR"] == 5
    # "banner" is a string flag read with flags.boolean(): the caller got its default, a
    # TYPE_MISMATCH — and the metrics must say so, not that "red" was served.
    assert found.get(("banner", "TYPE_MISMATCH")) == 5, found


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_failing_handler_is_counted_as_5xx(
    framework: str,
    registry: CollectorRegistry,
    prometheus: PrometheusTelemetry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = make_service(framework, [prometheus])
    with caplog.at_level(logging.ERROR):
        replies = service.send([Call("GET", "/boom", user_headers(i)) for i in range(3)])
    assert [r.status for r in replies] == [500] * 3
    assert durations(registry) == {("banner", "red", "GET", "/boom", "5xx"): 3}
    assert evaluations(registry) == {("banner", "red", "STATIC"): 3}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_request_that_decides_no_flag_records_nothing(
    framework: str, registry: CollectorRegistry, prometheus: PrometheusTelemetry
) -> None:
    service = make_service(framework, [prometheus])
    replies = service.send([Call("GET", "/plain", user_headers(i)) for i in range(5)])
    assert all(r.status == 200 for r in replies)
    assert samples(registry, DURATION + "_count") == {}
    assert samples(registry, EVALUATIONS) == {}
    assert samples(registry, ERRORS) == {}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_flags_past_max_flags_share_the_overflow_label(
    framework: str, registry: CollectorRegistry
) -> None:
    telemetry = PrometheusTelemetry(registry=registry, max_flags=3)
    service = make_service(framework, [telemetry])
    replies = service.send([Call("GET", "/many", user_headers(i)) for i in range(8)])
    assert all(list(r.body["decided"]) == MANY for r in replies)
    flags_seen = label_values(registry, DURATION + "_count", "flag")
    assert flags_seen == {*MANY[:3], OVERFLOW}
    assert label_values(registry, EVALUATIONS, "flag") == {*MANY[:3], OVERFLOW}
    per_flag: Counter[str] = Counter()
    for (flag, *_), count in durations(registry).items():
        per_flag[flag] += int(count)
    # Once per request for each labelled flag, and once per request for the rest together.
    assert per_flag == dict.fromkeys([*MANY[:3], OVERFLOW], 8)
    # The overflow's variant is still one of the flag set's variants (or none).
    all_variants = set().union(*VARIANTS.values(), {NO_VARIANT})
    assert label_values(registry, DURATION + "_count", "variant") <= all_variants


def _junk(rng: random.Random, size: int = 12) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits + "-_.") for _ in range(size))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_label_values_stay_bounded_whatever_the_client_sends(
    framework: str, registry: CollectorRegistry
) -> None:
    telemetry = PrometheusTelemetry(registry=registry)
    keys = [PROPAGATION_KEY]
    service = make_service(framework, [telemetry], propagation=Propagation(keys=keys))
    forger = Propagation(keys=keys)
    rng = random.Random(20261126)
    calls = []
    for i in range(120):
        user = _junk(rng)
        headers = {"x-user-id": user, "x-plan": _junk(rng), "x-color": _junk(rng)}
        if i % 3 == 0:  # unsigned flagwire baggage naming variants that do not exist
            headers["baggage"] = f"fw.ver=1,fw.tk={user},fw.f.banner={_junk(rng)}"
        elif i % 3 == 1:  # correctly signed, but variants the flags do not have
            members = forger.encode(
                {"banner": _junk(rng), "ranking": _junk(rng), "echo": _junk(rng)},
                user,
                FLAGSET.version_label,
            )
            headers["baggage"] = ",".join(members)
        path = (
            f"/items/{rng.randrange(10**6)}?{_junk(rng)}={_junk(rng)}"
            if i % 2
            else f"/echo?{_junk(rng)}"
        )
        calls.append(Call("GET", path, headers))
    replies = service.send(calls)
    assert all(r.status in (200, 404) for r in replies)

    declared = set(VARIANTS)
    all_variants = set().union(*VARIANTS.values(), {NO_VARIANT})
    for name in (DURATION + "_count", EVALUATIONS):
        assert label_values(registry, name, "flag") <= declared
        assert label_values(registry, name, "variant") <= all_variants
    assert label_values(registry, DURATION + "_count", "route") == {service.items_route, "/echo"}
    assert label_values(registry, DURATION + "_count", "method") == {"GET"}
    assert label_values(registry, DURATION + "_count", "status_class") <= {"2xx", "4xx"}
    # The client-chosen rule results are errors without a variant, never label values.
    assert errors(registry)["echo", "GENERAL"] == 60
    series = len(samples(registry, DURATION + "_count"))
    assert series <= len(declared) * 4 * 2 * 2  # flags x variants x routes x status classes


def _method_reading_app(framework: str, telemetry: Sequence[Telemetry]) -> Service:
    """An app that reads a flag for every request, before routing (a common pattern:
    a maintenance switch in a middleware or a ``before_request`` hook)."""
    if framework == "flask":
        app = Flask("before-request")

        @app.before_request
        def maintenance_hook() -> None:
            current_flags().boolean("new-checkout", False)

        @app.get("/")
        def flask_index() -> str:
            return "ok"

        Flagwire(app, **_binding_options(telemetry, {}))
        return Service(framework, app)

    class Maintenance:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                current_flags().boolean("new-checkout", False)
            await self.app(scope, receive, send)

    async def index(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Service(
        framework,
        Starlette(
            routes=[Route("/", index)],
            middleware=[
                Middleware(FlagwireMiddleware, **_binding_options(telemetry, {})),
                Middleware(Maintenance),
            ],
        ),
    )


@pytest.mark.parametrize("framework", ["starlette", "flask"])
def test_method_label_is_bounded_when_clients_send_made_up_methods(
    framework: str, registry: CollectorRegistry
) -> None:
    telemetry = PrometheusTelemetry(registry=registry)
    service = _method_reading_app(framework, [telemetry])
    made_up = [f"X{_junk(random.Random(i), 8).upper().replace('.', '')}" for i in range(40)]
    replies = service.send([Call(m, "/", user_headers(i)) for i, m in enumerate(made_up)])
    assert all(r.status in (404, 405, 501) for r in replies), [r.status for r in replies]
    methods = label_values(registry, DURATION + "_count", "method")
    # Any HTTP token is a valid method: echoing it makes one series per made-up method.
    assert len(methods - HTTP_METHODS) <= 1, sorted(methods)


# -- Prometheus: the telemetry object itself -----------------------------------------------------


def _record(
    decisions: Mapping[str, Assignment],
    *,
    method: str = "GET",
    route: str = "/r",
    status: int = 200,
    duration: float = 0.01,
) -> RequestRecord:
    return RequestRecord(dict(decisions), method, route, status, duration, FLAGSET.version_label)


def _decisions(*keys: str, context: Mapping[str, Any] | None = None) -> dict[str, Assignment]:
    flags = RequestFlags(FLAGSET, context or {"targetingKey": "user-1"})
    for key in keys:
        flags.get(key)
    return dict(flags.evaluated())


def test_metric_children_are_cached_per_label_values(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    telemetry = PrometheusTelemetry(registry=registry)
    calls: dict[str, list[tuple[str, ...]]] = {"duration": [], "evaluations": [], "errors": []}
    for name in calls:
        metric = getattr(telemetry, name)
        real = metric.labels

        def spy(*values: str, _real: Any = real, _name: str = name) -> Any:
            calls[_name].append(values)
            return _real(*values)

        monkeypatch.setattr(metric, "labels", spy)

    decisions = _decisions("banner", "retired", "missing-flag")
    for _ in range(50):
        telemetry.record(_record(decisions))
        telemetry.record(_record(decisions, status=503))
    assert len(calls["duration"]) == 3 * 2  # flags x status classes, each once
    assert len(set(calls["duration"])) == len(calls["duration"])
    assert len(calls["evaluations"]) == 3
    assert calls["errors"] == [("_unknown", "FLAG_NOT_FOUND")]
    assert durations(registry)["banner", "red", "GET", "/r", "5xx"] == 50
    assert errors(registry) == {("_unknown", "FLAG_NOT_FOUND"): 100}


def test_recording_from_many_threads_loses_no_count(registry: CollectorRegistry) -> None:
    telemetry = PrometheusTelemetry(registry=registry)
    decisions = _decisions("banner", "new-checkout")
    routes = [f"/r{i}" for i in range(8)]
    start = threading.Barrier(len(routes))

    def work(route: str) -> None:
        start.wait()
        for _ in range(400):
            telemetry.record(_record(decisions, route=routes[0]))
            telemetry.record(_record(decisions, route=route))

    threads = [threading.Thread(target=work, args=(route,)) for route in routes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts = durations(registry)
    assert counts["banner", "red", "GET", "/r0", "2xx"] == 8 * 400 + 400
    assert sum(counts.values()) == 2 * 2 * 8 * 400
    assert evaluations(registry)["banner", "red", "STATIC"] == 2 * 8 * 400


def test_status_classes(registry: CollectorRegistry) -> None:
    telemetry = PrometheusTelemetry(registry=registry)
    decisions = _decisions("banner")
    for status in (101, 200, 204, 302, 404, 500, 599, 600, 0):
        telemetry.record(_record(decisions, status=status))
    assert label_values(registry, DURATION + "_count", "status_class") == {
        "1xx",
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "other",
    }


def test_two_telemetries_on_one_registry_share_its_metrics(registry: CollectorRegistry) -> None:
    first = PrometheusTelemetry(registry=registry)
    second = PrometheusTelemetry(registry=registry)  # an app factory called twice
    assert second.duration is first.duration
    first.record(_record(_decisions("banner")))
    second.record(_record(_decisions("banner")))
    assert durations(registry)["banner", "red", "GET", "/r", "2xx"] == 2
    # Separate registries get their own.
    assert PrometheusTelemetry(registry=CollectorRegistry()).duration is not first.duration


def test_custom_buckets(registry: CollectorRegistry) -> None:
    telemetry = PrometheusTelemetry(registry=registry, buckets=(0.1, 1.0))
    telemetry.record(_record(_decisions("banner"), duration=0.5))
    buckets = by_labels(registry, DURATION + "_bucket", ("flag", "le"))
    assert buckets == {("banner", "0.1"): 0, ("banner", "1.0"): 1, ("banner", "+Inf"): 1}


# -- Prometheus: sources, flag sets and expiring flags ------------------------------------------


def _expiring_document(version: str) -> Document:
    document = _document()
    document["metadata"]["version"] = version
    document["flags"]["old-promo"] = {
        "state": "ENABLED",
        "variants": ON_OFF,
        "defaultVariant": "off",
        "metadata": {"expires": "2020-01-01", "owner": "growth"},
    }
    document["flags"]["future-promo"] = {
        "state": "ENABLED",
        "variants": ON_OFF,
        "defaultVariant": "off",
        "metadata": {"expires": "2999-12-31", "owner": "growth"},
    }
    document["flags"]["no-date"] = {
        "state": "ENABLED",
        "variants": ON_OFF,
        "defaultVariant": "off",
        "metadata": {"expires": "someday"},
    }
    return document


def test_source_metrics_follow_the_file_source(
    registry: CollectorRegistry, make_source: MakeSource, write_file: WriteFile
) -> None:
    path = write_file("flags.json", _expiring_document("s1"))
    before = time.time()
    source = make_source(path, poll_interval=0)
    PrometheusTelemetry(registry=registry, sources=[source])
    name = source.flagset.source
    assert name
    good = source.flagset.version_label

    def value(metric: str, **labels: str) -> float | None:
        return registry.get_sample_value(metric, {"source": name, **labels})

    assert value("flagwire_flagset_info", version=good) == 1
    assert value("flagwire_source_up") == 1
    assert value("flagwire_source_failures_total") == 0
    loaded = value("flagwire_flagset_last_load_timestamp_seconds")
    assert loaded is not None and before - 1 <= loaded <= time.time() + 1

    # An invalid edit: the last good flag set stays in force, the source is down.
    write_file("flags.json", '{"flags": {"broken": ')
    assert source.refresh() is False
    assert value("flagwire_source_up") == 0
    assert value("flagwire_source_failures_total") == 1
    assert value("flagwire_flagset_info", version=good) == 1
    assert value("flagwire_flagset_last_load_timestamp_seconds") == loaded

    # A valid edit: up again, a new version.
    time.sleep(0.01)
    write_file("flags.json", _expiring_document("s2"))
    assert source.refresh() is True
    assert source.flagset.version_label != good
    assert value("flagwire_source_up") == 1
    assert value("flagwire_source_failures_total") == 1
    assert value("flagwire_flagset_info", version=source.flagset.version_label) == 1
    assert value("flagwire_flagset_info", version=good) is None
    reloaded = value("flagwire_flagset_last_load_timestamp_seconds")
    assert reloaded is not None and reloaded >= loaded


def test_expiring_flags(registry: CollectorRegistry) -> None:
    flagset = FlagSet.from_mapping(_expiring_document("e1"), source="expiring.json")
    PrometheusTelemetry(registry=registry, sources=[StaticSource(flagset)])
    expiry = by_labels(
        registry, "flagwire_flag_expiry_timestamp_seconds", ("source", "flag", "owner")
    )
    # Expired (and expiring within 30 days) flags have a series; 2999 is too far to matter.
    assert expiry == {
        ("expiring.json", "old-promo", "growth"): 1577923199.0,  # 2020-01-01T23:59:59Z
    }
    assert registry.get_sample_value("flagwire_flags_expired", {"source": "expiring.json"}) == 1


def test_flags_expiring_within_30_days_have_a_series_and_far_ones_none(
    registry: CollectorRegistry,
) -> None:
    import datetime as dt

    soon = (dt.date.today() + dt.timedelta(days=10)).isoformat()
    later = (dt.date.today() + dt.timedelta(days=40)).isoformat()
    flag = {"state": "ENABLED", "variants": {"on": True}, "defaultVariant": "on"}
    document = {
        "flags": {
            "soon": {**flag, "metadata": {"expires": soon, "owner": "a"}},
            "later": {**flag, "metadata": {"expires": later, "owner": "b"}},
        }
    }
    flagset = FlagSet.from_mapping(document, source="window.json")
    PrometheusTelemetry(registry=registry, sources=[StaticSource(flagset)])
    expiry = by_labels(
        registry, "flagwire_flag_expiry_timestamp_seconds", ("source", "flag", "owner")
    )
    assert set(expiry) == {("window.json", "soon", "a")}
    assert registry.get_sample_value("flagwire_flags_expired", {"source": "window.json"}) == 0


def test_sources_added_later_are_exported(registry: CollectorRegistry) -> None:
    telemetry = PrometheusTelemetry(registry=registry)
    assert samples(registry, "flagwire_source_up") == {}
    telemetry.sources.add(StaticSource(FLAGSET))
    name = {"source": FLAGSET.source or ""}
    assert registry.get_sample_value("flagwire_source_up", name) == 1
    assert registry.get_sample_value("flagwire_flags_expired", name) == 0


# -- OpenTelemetry: flags on the server span ----------------------------------------------------


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def traced_service(
    framework: str,
    telemetry: Sequence[Telemetry],
    tracer_provider: TracerProvider | None,
    **options: Any,
) -> Service:
    """The framework's app, instrumented by OpenTelemetry's ASGI middleware or Flask
    instrumentation (not at all with no provider)."""
    app = BUILDERS[framework](telemetry, **options)
    if tracer_provider is None:
        return Service(framework, app)
    if framework == "flask":
        FlaskInstrumentor().instrument_app(  # type: ignore[no-untyped-call]
            app, tracer_provider=tracer_provider
        )
        return Service(framework, app)
    return Service(framework, OpenTelemetryMiddleware(app, tracer_provider=tracer_provider))


def server_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]


def flag_events(span: ReadableSpan) -> dict[str, dict[str, Any]]:
    """The span's ``feature_flag.evaluation`` events by flag key (each key once)."""
    events = [e for e in span.events if e.name == EVENT_NAME]
    by_key = {str((e.attributes or {})[FLAG_KEY]): dict(e.attributes or {}) for e in events}
    assert len(by_key) == len(events), "one event per decided flag"
    return by_key


OTEL_FRAMEWORKS = ["fastapi", "flask"]


@pytest.mark.parametrize("framework", OTEL_FRAMEWORKS)
def test_server_span_has_one_event_per_decided_flag(
    framework: str, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    service = traced_service(framework, [OTelTelemetry()], tracer_provider)
    calls = [Call("GET", f"/items/{i}", user_headers(i)) for i in range(12)]
    calls.append(Call("GET", "/mistyped", user_headers(99)))
    calls.append(Call("GET", "/plain", user_headers(98)))
    replies = service.send(calls)
    assert all(r.status == 200 for r in replies)
    spans = server_spans(exporter)
    assert len(spans) == len(calls)
    # The SDK exports in end order: the same order the requests were sent in.
    for call, reply, span in zip(calls, replies, spans, strict=True):
        assert span.attributes is not None
        assert span.attributes.get("http.target", call.path) == call.path
        events = flag_events(span)
        decided: dict[str, str | None] = reply.body["decided"]
        assert set(events) == set(decided)
        for key, variant in decided.items():
            event = events[key]
            assert event[PROVIDER_NAME] == "flagwire"
            if call.path == "/mistyped" and key == "banner":
                # Read as a boolean, the string flag served the code's default: the span
                # says so (not the variant the decision held).
                assert event[RESULT_REASON] == "error"
                assert event[ERROR_TYPE] == "type_mismatch"
                assert RESULT_VARIANT not in event
                assert SPAN_ATTRIBUTE_PREFIX + key not in span.attributes
                continue
            assert event[RESULT_REASON] == reply.body["reasons"][key].lower()
            assert event[FLAGSET_VERSION] == FLAGSET.version_label
            if key in FLAGSET:  # the set a flag belongs to (a missing flag belongs to none)
                assert event[FLAGSET_ID] == "shop"
            assert PROPAGATED_ATTRIBUTE not in event
            if variant is None:
                # conditionally required without a variant: the value served (the default)
                assert event[RESULT_VALUE] == {"missing-flag": False}[key]
                assert RESULT_VARIANT not in event
                assert SPAN_ATTRIBUTE_PREFIX + key not in span.attributes
            else:
                assert RESULT_VALUE not in event  # opt-in with a variant
                assert event[RESULT_VARIANT] == variant
                assert span.attributes[SPAN_ATTRIBUTE_PREFIX + key] == variant
        if "missing-flag" in decided:
            assert events["missing-flag"][ERROR_TYPE] == "flag_not_found"
            assert events["missing-flag"][RESULT_REASON] == "error"
        else:
            assert all(ERROR_TYPE not in e for e in events.values())
        served_default = {"banner"} if call.path == "/mistyped" else set()
        flag_attributes = {k for k in span.attributes if k.startswith(SPAN_ATTRIBUTE_PREFIX)}
        assert flag_attributes == {
            SPAN_ATTRIBUTE_PREFIX + k
            for k, v in decided.items()
            if v is not None and k not in served_default
        }


@pytest.mark.parametrize("framework", OTEL_FRAMEWORKS)
def test_span_events_on_a_failing_request(
    framework: str,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = traced_service(framework, [OTelTelemetry()], tracer_provider)
    with caplog.at_level(logging.ERROR):
        (reply,) = service.send([Call("GET", "/boom", user_headers(1))])
    assert reply.status == 500
    (span,) = server_spans(exporter)
    assert set(flag_events(span)) == {"banner"}
    assert span.attributes is not None
    assert span.attributes[SPAN_ATTRIBUTE_PREFIX + "banner"] == "red"


@pytest.mark.parametrize("framework", OTEL_FRAMEWORKS)
def test_rule_error_and_disabled_flag_events(
    framework: str, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    service = traced_service(framework, [OTelTelemetry()], tracer_provider)
    replies = service.send([Call("GET", "/many", user_headers(1, **{"x-color": "purple"}))])
    assert replies[0].status == 200
    (span,) = server_spans(exporter)
    events = flag_events(span)
    assert list(events) == MANY
    assert events["echo"][ERROR_TYPE] == "general"
    assert events["echo"][RESULT_REASON] == "error"
    assert RESULT_VARIANT not in events["echo"]
    assert events["retired"][RESULT_REASON] == "disabled"
    assert ERROR_TYPE not in events["retired"]


@pytest.mark.parametrize("framework", OTEL_FRAMEWORKS)
def test_values_only_with_record_values(
    framework: str, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    service = traced_service(framework, [OTelTelemetry(record_values=True)], tracer_provider)
    service.send([Call("GET", "/many", user_headers(4))])  # user 4 is on the beta plan
    (span,) = server_spans(exporter)
    events = flag_events(span)
    assert events["banner"][RESULT_VALUE] == "#f00"
    assert events["new-checkout"][RESULT_VALUE] is True
    assert events["ranking"][RESULT_VALUE] in {"classic", "vector", "hybrid"}
    assert RESULT_VALUE not in events["retired"]  # no variant, no value


@pytest.mark.parametrize("framework", OTEL_FRAMEWORKS)
def test_max_flags_on_a_span(
    framework: str, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    service = traced_service(framework, [OTelTelemetry(max_flags=2)], tracer_provider)
    service.send([Call("GET", "/many", user_headers(4))])
    (span,) = server_spans(exporter)
    assert list(flag_events(span)) == MANY[:2]


@pytest.mark.parametrize("framework", OTEL_FRAMEWORKS)
def test_a_propagated_decision_is_marked(
    framework: str, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    keys = [PROPAGATION_KEY]
    service = traced_service(
        framework, [OTelTelemetry()], tracer_provider, propagation=Propagation(keys=keys)
    )
    user = "user-0007"
    local = FLAGSET.evaluate("ranking", {"targetingKey": user}).variant
    upstream = next(v for v in sorted(VARIANTS["ranking"]) if v != local)
    members = Propagation(keys=keys).encode({"ranking": upstream}, user, "upstream-9")
    headers = {"x-user-id": user, "baggage": ",".join(members)}
    (reply,) = service.send([Call("GET", "/items/1", headers)])
    assert reply.status == 200
    assert reply.body["decided"]["ranking"] == upstream
    assert reply.body["reasons"]["ranking"] == Reason.PROPAGATED.value
    (span,) = server_spans(exporter)
    events = flag_events(span)
    assert events["ranking"][PROPAGATED_ATTRIBUTE] is True
    assert events["ranking"][RESULT_VARIANT] == upstream
    assert events["ranking"][RESULT_REASON] == "propagated"
    assert PROPAGATED_ATTRIBUTE not in events["new-checkout"]  # decided here
    assert span.attributes is not None
    assert span.attributes[SPAN_ATTRIBUTE_PREFIX + "ranking"] == upstream


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_without_instrumentation_nothing_breaks(
    framework: str, exporter: InMemorySpanExporter, registry: CollectorRegistry
) -> None:
    prometheus = PrometheusTelemetry(registry=registry)
    service = traced_service(framework, [OTelTelemetry(), prometheus], None)
    replies = service.send([Call("GET", "/many", user_headers(i)) for i in range(3)])
    assert [r.status for r in replies] == [200] * 3
    assert exporter.get_finished_spans() == ()
    # The other telemetry still sees every request.
    assert sum(evaluations(registry).values()) == 3 * len(MANY)


class BrokenTelemetry:
    def __init__(self) -> None:
        self.calls = 0

    def record(self, request: RequestRecord) -> None:
        self.calls += 1
        raise RuntimeError("telemetry backend is down")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_failing_telemetry_is_logged_and_the_request_succeeds(
    framework: str,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = BrokenTelemetry()
    prometheus = PrometheusTelemetry(registry=registry)
    otel_framework = framework if framework != "starlette" else "fastapi"
    service = traced_service(otel_framework, [broken, OTelTelemetry(), prometheus], tracer_provider)
    with caplog.at_level(logging.ERROR, logger="flagwire"):
        replies = service.send([Call("GET", "/items/5", user_headers(i)) for i in range(3)])
    assert [r.status for r in replies] == [200] * 3
    assert broken.calls == 3
    failures = [r for r in caplog.records if r.name == "flagwire" and "telemetry" in r.getMessage()]
    assert len(failures) == 3
    assert all(r.exc_info is not None and r.exc_info[0] is RuntimeError for r in failures)
    # The telemetries after the broken one still recorded every request.
    assert sum(evaluations(registry).values()) == 3 * 2
    assert all(set(flag_events(s)) == {"new-checkout", "ranking"} for s in server_spans(exporter))


def test_otel_telemetry_alone_outside_any_request() -> None:
    # No current span at all: record() is a no-op, not an error.
    OTelTelemetry().record(_record(_decisions("banner", "missing-flag")))


def test_flask_route_label_in_before_request_reads_is_the_rule(
    registry: CollectorRegistry,
) -> None:
    # A flag read before the view (in before_request) is still labelled with the URL rule.
    app = flask_app([PrometheusTelemetry(registry=registry)])

    @app.before_request
    def early() -> None:
        if flask_request.path.startswith("/items/"):
            current_flags().string("banner", "")

    replies = drive_flask(app, [Call("GET", f"/items/{i}", user_headers(i)) for i in range(4)])
    assert all(r.status == 200 for r in replies)
    assert by_labels(registry, DURATION + "_count", ("flag", "route")) == {
        ("banner", "/items/<int:item_id>"): 4,
        ("new-checkout", "/items/<int:item_id>"): 4,
        ("ranking", "/items/<int:item_id>"): 4,
    }


def test_otel_metrics_have_the_meaning_of_the_prometheus_metrics() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from flagwire import RequestFlags, StaticSource
    from flagwire.otel import OTelMetricsTelemetry

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    expired = FlagSet.from_mapping(
        {
            "flags": {
                "old": {
                    "state": "ENABLED",
                    "variants": {"on": True},
                    "defaultVariant": "on",
                    "metadata": {"expires": "2020-01-01", "owner": "team-a"},
                },
            }
        },
        source="old.json",
    )
    telemetry = OTelMetricsTelemetry(meter_provider=provider, sources=[StaticSource(expired)])
    flags = RequestFlags(expired, {"targetingKey": "u1"})
    flags.boolean("old")
    flags.string("missing")
    telemetry.record(
        RequestRecord(dict(flags.evaluated()), "GET", "/x", 503, 0.25, expired.version_label)
    )

    points: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points[metric.name] = [
                    (dict(p.attributes or {}), getattr(p, "value", getattr(p, "count", None)))
                    for p in metric.data.data_points
                ]
    assert (
        {"flag": "old", "variant": "on", "method": "GET", "route": "/x", "status_class": "5xx"},
        1,
    ) in points["flagwire.request.duration"]
    assert ({"flag": "_unknown", "variant": "_none", "reason": "ERROR"}, 1) in points[
        "flagwire.evaluations"
    ]
    assert points["flagwire.evaluation.errors"] == [
        ({"flag": "_unknown", "error_code": "FLAG_NOT_FOUND"}, 1)
    ]
    assert points["flagwire.source.up"] == [({"source": "old.json"}, 1)]
    assert points["flagwire.flags.expired"] == [({"source": "old.json"}, 1)]


def test_otel_telemetry_opens_its_own_server_span_without_instrumentation() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    async def item(request: Any) -> PlainTextResponse:
        return PlainTextResponse(current_flags().string("banner", "?"))

    app = Starlette(routes=[Route("/items/{item_id}", item)])
    app.add_middleware(
        FlagwireMiddleware,
        source=FLAGSET,
        propagation=False,
        telemetry=[OTelTelemetry(server_spans=True, tracer_provider=provider)],
    )

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/items/7")).status_code == 200

    asyncio.run(run())
    (span,) = exporter.get_finished_spans()
    assert span.kind is SpanKind.SERVER
    assert span.name == "GET /items/{item_id}"
    assert span.attributes is not None
    assert span.attributes["http.route"] == "/items/{item_id}"
    assert span.attributes["http.response.status_code"] == 200
    assert [e.attributes[FLAG_KEY] for e in span.events if e.attributes] == ["banner"]

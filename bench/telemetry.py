"""Per-request cost of flagwire's telemetry, next to OpenTelemetry's own, in one run.

Drives a hello-world Starlette app through ASGI, no sockets (the scope and helpers of
``bench/middleware.py``). Four variants:

* **bare**: the app alone;
* **bare + otel**: the app wrapped by OpenTelemetry's ``OpenTelemetryMiddleware``;
* **otel + flagwire, telemetry off**: wrapped the same way, with flagwire's middleware
  and the handler reading 10 flags (5 rule flags, 5 fractional canaries);
* **otel + flagwire, full telemetry**: the same, with ``telemetry=[OTelTelemetry(),
  PrometheusTelemetry(registry=CollectorRegistry())]`` (10 span events, 10 span
  attributes, 10 histogram observations, 10 counter increments per request).

The tracer provider is the SDK's, sampling everything (spans are recording, so
``OTelTelemetry`` does its work), with a span processor that drops the finished spans
(``--processor memory``: an in-memory exporter, cleared between rounds). Two more lines
show each telemetry alone, for scale. Rounds are interleaved and the best round of each
variant is kept, since these machines are noisy.

    python bench/telemetry.py            # print the table
    python bench/telemetry.py --check    # also exit 1 if the bar is missed

Bar (issue 13): (full telemetry - telemetry off) <= 0.25 x (bare + otel - bare): flagwire's
telemetry costs at most a quarter of what OpenTelemetry's ASGI instrumentation itself costs
per request.
Times are the process's CPU time by default (``--clock wall`` for ``perf_counter``): on a
shared machine, time spent descheduled would otherwise swamp these differences.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from flagwire._telemetry import Telemetry
from flagwire.asgi import FlagwireMiddleware
from flagwire.otel import EVENT_NAME, SPAN_ATTRIBUTE_PREFIX, OTelTelemetry
from flagwire.prometheus import PrometheusTelemetry

# bench/middleware.py: its flags, context extractor, ASGI scope and round (this script's
# directory is on sys.path when it is run as ``python bench/telemetry.py``).
from middleware import EXTRACT, FLAGSET, SCOPE, TEN, _receive, _send, read_flags

MAX_SHARE: Final = 0.25
"""The bar: flagwire's telemetry costs at most this share of OpenTelemetryMiddleware's."""

BARE: Final = "bare"
BARE_OTEL: Final = "bare + otel"
OFF: Final = "otel + flagwire, telemetry off"
FULL: Final = "otel + flagwire, full telemetry"
OTEL_ONLY: Final = "otel + flagwire, OTelTelemetry only"
PROMETHEUS_ONLY: Final = "otel + flagwire, Prometheus only"


class DropSpans(SpanProcessor):
    """Finished spans go nowhere (the SpanProcessor interface's methods do nothing)."""


def tracer_provider(processor: str) -> tuple[TracerProvider, Callable[[], None]]:
    """An SDK provider and a function that empties what it keeps between rounds."""
    provider = TracerProvider()
    if processor == "memory":
        exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        return provider, exporter.clear
    provider.add_span_processor(DropSpans())
    return provider, lambda: None


def starlette_app(keys: Sequence[str] | None, telemetry: Sequence[Telemetry] = ()) -> Any:
    """Hello world; with ``keys``, flagwire's middleware and a handler reading them."""

    async def hello(request: Request) -> PlainTextResponse:
        if keys:
            read_flags(list(keys))
        return PlainTextResponse("hello")

    middleware = (
        []
        if keys is None
        else [
            Middleware(
                FlagwireMiddleware,
                source=FLAGSET,
                context=EXTRACT,
                propagation=False,
                telemetry=telemetry,
            )
        ]
    )
    return Starlette(routes=[Route("/", hello)], middleware=middleware)


def build(provider: TracerProvider) -> dict[str, Any]:
    def traced(app: Any) -> Any:
        return OpenTelemetryMiddleware(app, tracer_provider=provider)

    def prometheus() -> PrometheusTelemetry:
        return PrometheusTelemetry(registry=CollectorRegistry())

    return {
        BARE: starlette_app(None),
        BARE_OTEL: traced(starlette_app(None)),
        OFF: traced(starlette_app(TEN)),
        FULL: traced(starlette_app(TEN, [OTelTelemetry(), prometheus()])),
        OTEL_ONLY: traced(starlette_app(TEN, [OTelTelemetry()])),
        PROMETHEUS_ONLY: traced(starlette_app(TEN, [prometheus()])),
    }


CLOCKS: Final[dict[str, Callable[[], float]]] = {
    "cpu": time.process_time,
    "wall": time.perf_counter,
}


def asgi_round(app: Any, n: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per request over ``n`` requests (``bench/middleware.py``'s, with a clock)."""

    async def run() -> float:
        start = clock()
        for _ in range(n):
            await app(dict(SCOPE), _receive, _send)
        return (clock() - start) / n

    return asyncio.run(run())


def check() -> str | None:
    """Before timing: full telemetry really puts 10 events and 10 span attributes on the
    server span and counts 10 evaluations. Returns what is wrong, or None."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    registry = CollectorRegistry()
    telemetry: list[Telemetry] = [OTelTelemetry(), PrometheusTelemetry(registry=registry)]
    app = OpenTelemetryMiddleware(starlette_app(TEN, telemetry), tracer_provider=provider)
    asgi_round(app, 1)
    provider.shutdown()
    servers = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    if len(servers) != 1:
        return f"expected 1 server span, got {len(servers)}"
    span = servers[0]
    events = [e for e in span.events if e.name == EVENT_NAME]
    flagged = [k for k in span.attributes or {} if k.startswith(SPAN_ATTRIBUTE_PREFIX)]
    if len(events) != len(TEN) or len(flagged) != len(TEN):
        return f"expected {len(TEN)} events and attributes, got {len(events)}, {len(flagged)}"
    total = sum(
        sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == "flagwire_evaluations_total"
    )
    if total != len(TEN):
        return f"expected {len(TEN)} evaluations counted, got {total}"
    return None


def measure(
    apps: dict[str, Any],
    n: int,
    rounds: int,
    between: Callable[[], None],
    clock: Callable[[], float],
) -> dict[str, float]:
    """Seconds per request, the best of ``rounds`` interleaved rounds of ``n`` each."""
    for app in apps.values():
        asgi_round(app, max(50, n // 10))  # warm up: caches, metric children, code paths
    between()
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, app in apps.items():
            elapsed = asgi_round(app, n, clock)
            between()
            best[name] = min(best.get(name, elapsed), elapsed)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the bar is missed")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument(
        "--processor",
        choices=["drop", "memory"],
        default="drop",
        help="what the tracer provider does with finished spans",
    )
    parser.add_argument(
        "--clock",
        choices=list(CLOCKS),
        default="cpu",
        help="cpu: this process's CPU time (steadier on a shared machine); wall: perf_counter",
    )
    args = parser.parse_args()

    problem = check()
    if problem is not None:
        print(f"FAIL: the full-telemetry app does not record what it should: {problem}")
        return 1
    provider, between = tracer_provider(args.processor)
    best = measure(build(provider), args.requests, args.rounds, between, CLOCKS[args.clock])
    print(f"clock: {args.clock}, {args.rounds} rounds x {args.requests} requests, best round")
    bare = best[BARE]
    print(f"{'variant':38} {'us/request':>11} {'x bare':>8}")
    for name, seconds in best.items():
        print(f"{name:38} {seconds * 1e6:11.2f} {seconds / bare:8.3f}")

    otel_cost = best[BARE_OTEL] - best[BARE]
    telemetry_cost = best[FULL] - best[OFF]
    print()
    print(f"{'OpenTelemetryMiddleware (bare + otel - bare)':52} {otel_cost * 1e6:8.2f} us")
    print(f"{'flagwire telemetry (full - off)':52} {telemetry_cost * 1e6:8.2f} us")
    print(f"{'  of which OTelTelemetry alone':52} {(best[OTEL_ONLY] - best[OFF]) * 1e6:8.2f} us")
    print(
        f"{'  of which PrometheusTelemetry alone':52} "
        f"{(best[PROMETHEUS_ONLY] - best[OFF]) * 1e6:8.2f} us"
    )
    share = telemetry_cost / otel_cost if otel_cost > 0 else float("inf")
    passed = share <= MAX_SHARE
    print()
    print(
        f"{'PASS' if passed else 'FAIL'}  full telemetry - off <= {MAX_SHARE} x "
        f"(otel - bare): {share:.3f}"
    )
    provider.shutdown()
    return 0 if passed or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())

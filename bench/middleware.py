"""Per-request cost of flagwire's middleware, as ratios to the bare app in the same run.

Drives a hello-world Starlette app (through ASGI) and Flask app (through WSGI) directly,
no sockets: bare, and with flagwire evaluating 0, 1 and 10 flags (5 rule flags and 5
fractional canaries; telemetry off). Rounds are interleaved and the best round of each
variant is kept, since these machines are noisy.

    python bench/middleware.py            # print the table
    python bench/middleware.py --check    # also exit 1 if a bar is missed

Bars: Starlette with no flag evaluated <= 1.25x bare; Starlette with 10 flags <= 2.0x;
Flask with 10 flags <= 1.25x.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from werkzeug.test import EnvironBuilder

from flagwire import FlagSet, context, current_flags
from flagwire.asgi import FlagwireMiddleware as AsgiMiddleware
from flagwire.flask import Flagwire

RULE_FLAGS = [f"rule-{i}" for i in range(5)]
CANARY_FLAGS = [f"canary-{i}" for i in range(5)]
ONE = ["canary-0"]
TEN = RULE_FLAGS + CANARY_FLAGS


def flag_document() -> dict[str, Any]:
    flags: dict[str, Any] = {}
    for i, key in enumerate(RULE_FLAGS):
        flags[key] = {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {
                "if": [
                    {
                        "or": [
                            {"in": [{"var": "plan"}, ["beta", "enterprise"]]},
                            {"sem_ver": [{"var": "appVersion"}, ">=", f"3.{i}.0"]},
                        ]
                    },
                    "on",
                    "off",
                ]
            },
        }
    for i, key in enumerate(CANARY_FLAGS):
        flags[key] = {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {
                "if": [
                    {"==": [{"var": "plan"}, "internal"]},
                    "on",
                    {"fractional": [["on", 10 * (i + 1)], ["off", 100 - 10 * (i + 1)]]},
                ]
            },
        }
    return {"flags": flags}


FLAGSET = FlagSet.from_mapping(flag_document())
EXTRACT = context.headers(
    {"x-user-id": "targetingKey", "x-plan": "plan", "x-app-version": "appVersion"}
)
HEADERS = [
    ("host", "bench.local"),
    ("user-agent", "bench/1.0"),
    ("accept", "*/*"),
    ("x-user-id", "user-1234"),
    ("x-plan", "free"),
    ("x-app-version", "3.1.4"),
]


def read_flags(keys: list[str]) -> None:
    flags = current_flags()
    for key in keys:
        flags.boolean(key, False)


# -- Starlette ------------------------------------------------------------------------------


def starlette_app(keys: list[str] | None) -> Any:
    async def hello(request: Request) -> PlainTextResponse:
        if keys:
            read_flags(keys)
        return PlainTextResponse("hello")

    middleware = (
        [] if keys is None else [Middleware(AsgiMiddleware, source=FLAGSET, context=EXTRACT)]
    )
    return Starlette(routes=[Route("/", hello)], middleware=middleware)


SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/",
    "raw_path": b"/",
    "root_path": "",
    "query_string": b"",
    "headers": [(k.encode(), v.encode()) for k, v in HEADERS],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 80),
}


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: dict[str, Any]) -> None:
    return None


def asgi_round(app: Any, n: int) -> float:
    async def run() -> float:
        start = time.perf_counter()
        for _ in range(n):
            await app(dict(SCOPE), _receive, _send)
        return (time.perf_counter() - start) / n

    return asyncio.run(run())


# -- Flask ----------------------------------------------------------------------------------


def flask_app(keys: list[str] | None) -> Flask:
    app = Flask("bench")

    @app.get("/")
    def hello() -> str:
        if keys:
            read_flags(keys)
        return "hello"

    if keys is not None:
        Flagwire(app, source=FLAGSET, context=EXTRACT)
    return app


ENVIRON = EnvironBuilder(path="/", headers=HEADERS).get_environ()


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return None


def wsgi_round(app: Flask, n: int) -> float:
    wsgi = app.wsgi_app
    start = time.perf_counter()
    for _ in range(n):
        body: Iterable[bytes] = wsgi(dict(ENVIRON), _start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return (time.perf_counter() - start) / n


# -- measurement ----------------------------------------------------------------------------


def measure(
    variants: dict[str, tuple[Callable[[Any, int], float], Any]], n: int, rounds: int
) -> dict[str, float]:
    for runner, app in variants.values():
        runner(app, max(50, n // 10))  # warm up
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, (runner, app) in variants.items():
            elapsed = runner(app, n)
            best[name] = min(best.get(name, elapsed), elapsed)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a bar is missed")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=1500)
    args = parser.parse_args()

    variants: dict[str, tuple[Callable[[Any, int], float], Any]] = {
        "starlette bare": (asgi_round, starlette_app(None)),
        "starlette + flagwire, 0 flags": (asgi_round, starlette_app([])),
        "starlette + flagwire, 1 flag": (asgi_round, starlette_app(ONE)),
        "starlette + flagwire, 10 flags": (asgi_round, starlette_app(TEN)),
        "flask bare": (wsgi_round, flask_app(None)),
        "flask + flagwire, 0 flags": (wsgi_round, flask_app([])),
        "flask + flagwire, 1 flag": (wsgi_round, flask_app(ONE)),
        "flask + flagwire, 10 flags": (wsgi_round, flask_app(TEN)),
    }
    best = measure(variants, args.requests, args.rounds)
    print(f"{'variant':34} {'us/request':>11} {'x bare':>8}")
    for name, seconds in best.items():
        base = best["starlette bare" if name.startswith("starlette") else "flask bare"]
        print(f"{name:34} {seconds * 1e6:11.2f} {seconds / base:8.3f}")

    bars = [
        ("starlette, 0 flags <= 1.25x", "starlette + flagwire, 0 flags", "starlette bare", 1.25),
        ("starlette, 10 flags <= 2.0x", "starlette + flagwire, 10 flags", "starlette bare", 2.0),
        ("flask, 10 flags <= 1.25x", "flask + flagwire, 10 flags", "flask bare", 1.25),
    ]
    ok = True
    print()
    for label, name, base, limit in bars:
        ratio = best[name] / best[base]
        passed = ratio <= limit
        ok = ok and passed
        print(f"{'PASS' if passed else 'FAIL'}  {label}: {ratio:.3f}")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())

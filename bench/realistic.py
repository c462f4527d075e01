"""An app written the ordinary way, as ratios to the bare app in the same run.

A plain-function extractor reading request headers, ``get()`` for every flag, and ten
realistic flags: a kill switch, ``$ref`` evaluators, ``sem_ver`` and ``ends_with``/
``starts_with`` against context values, ``in`` lists, nested ``if`` for a string flag,
and ``fractional`` bucketing by ``cat`` of ``$flagd.flagKey`` or a tenant and the
targeting key. Starlette (through ASGI) and Flask (through WSGI), no sockets; rounds are
interleaved and the best round of each is kept (see ``middleware.py``).

    python bench/realistic.py            # print the table
    python bench/realistic.py --check    # also exit 1 if a bar is missed

Bars (issue 13): 10 flags <= 2.0x bare Starlette and <= 1.25x bare Flask.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from flask import Flask
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from flagwire import FlagSet, current_flags
from flagwire.asgi import FlagwireMiddleware
from flagwire.flask import Flagwire
from middleware import asgi_round, measure, wsgi_round

ON_OFF = {"on": True, "off": False}
DOCUMENT: dict[str, Any] = {
    "$evaluators": {
        "is-staff": {"ends_with": [{"var": "email"}, "@example.com"]},
        "modern-app": {"sem_ver": [{"var": "appVersion"}, ">=", "3.0.0"]},
    },
    "flags": {
        "kill-payments": {"state": "ENABLED", "variants": ON_OFF, "defaultVariant": "off"},
        "staff-tools": {
            "state": "ENABLED",
            "variants": ON_OFF,
            "defaultVariant": "off",
            "targeting": {"if": [{"$ref": "is-staff"}, "on", "off"]},
        },
        "new-search": {
            "state": "ENABLED",
            "variants": ON_OFF,
            "defaultVariant": "off",
            "targeting": {
                "if": [
                    {"and": [{"$ref": "modern-app"}, {"in": [{"var": "plan"}, ["pro", "team"]]}]},
                    "on",
                    "off",
                ]
            },
        },
        "new-checkout": {
            "state": "ENABLED",
            "variants": ON_OFF,
            "defaultVariant": "off",
            "targeting": {
                "fractional": [
                    {"cat": [{"var": "$flagd.flagKey"}, {"var": "targetingKey"}]},
                    ["on", 25],
                    ["off", 75],
                ]
            },
        },
        "pricing-page": {
            "state": "ENABLED",
            "variants": {"a": "classic", "b": "compact"},
            "defaultVariant": "a",
            "targeting": {
                "fractional": [
                    {"cat": [{"var": "tenant"}, "-", {"var": "targetingKey"}]},
                    ["a", 50],
                    ["b", 50],
                ]
            },
        },
        "canary-api": {
            "state": "ENABLED",
            "variants": ON_OFF,
            "defaultVariant": "off",
            "targeting": {
                "if": [{"$ref": "is-staff"}, "on", {"fractional": [["on", 10], ["off", 90]]}]
            },
        },
        "region": {
            "state": "ENABLED",
            "variants": {"eu": "eu", "na": "na", "row": "row"},
            "defaultVariant": "row",
            "targeting": {
                "if": [
                    {"==": [{"var": "country"}, "DE"]},
                    "eu",
                    {"if": [{"in": [{"var": "country"}, ["US", "CA"]]}, "na", "row"]},
                ]
            },
        },
        "page-size": {
            "state": "ENABLED",
            "variants": {"v1": 20, "v2": 50},
            "defaultVariant": "v1",
            "targeting": {"if": [{"sem_ver": [{"var": "appVersion"}, "^", "3.1.0"]}, "v2", "v1"]},
        },
        "admin-banner": {
            "state": "ENABLED",
            "variants": ON_OFF,
            "defaultVariant": "off",
            "targeting": {"if": [{"starts_with": [{"var": "email"}, "admin"]}, "on", "off"]},
        },
        "theme": {
            "state": "ENABLED",
            "variants": {"light": {"bg": "#fff"}, "dark": {"bg": "#000"}},
            "defaultVariant": "light",
        },
    },
}
FLAGSET = FlagSet.from_mapping(DOCUMENT)
KEYS = list(DOCUMENT["flags"])
DEFAULTS: dict[str, Any] = {
    "pricing-page": "classic",
    "region": "row",
    "page-size": 20,
    "theme": {},
}
HEADERS = [
    ("host", "bench.local"),
    ("user-agent", "bench/1.0"),
    ("accept", "*/*"),
    ("x-user-id", "user-1234"),
    ("x-email", "jo@customer.test"),
    ("x-plan", "pro"),
    ("x-app-version", "3.1.4"),
    ("x-country", "DE"),
    ("x-tenant", "acme"),
]


def extract(request: Any) -> dict[str, Any]:
    """How users write an extractor: a plain function of the framework's request."""
    headers = request.headers
    return {
        "targetingKey": headers.get("x-user-id"),
        "email": headers.get("x-email"),
        "plan": headers.get("x-plan"),
        "appVersion": headers.get("x-app-version"),
        "country": headers.get("x-country"),
        "tenant": headers.get("x-tenant"),
    }


def read_flags() -> list[Any]:
    flags = current_flags()
    return [flags.get(key, DEFAULTS.get(key, False)) for key in KEYS]


def starlette_app(with_flags: bool) -> Any:
    async def hello(request: Request) -> PlainTextResponse:
        if with_flags:
            read_flags()
        return PlainTextResponse("hello")

    middleware = [Middleware(FlagwireMiddleware, source=FLAGSET, context=extract)]
    return Starlette(routes=[Route("/", hello)], middleware=middleware if with_flags else [])


def flask_app(with_flags: bool) -> Flask:
    app = Flask("bench")

    @app.get("/")
    def hello() -> str:
        if with_flags:
            read_flags()
        return "hello"

    if with_flags:
        Flagwire(app, source=FLAGSET, context=extract)
    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a bar is missed")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=1500)
    args = parser.parse_args()

    import middleware

    middleware.HEADERS[:] = HEADERS
    middleware.SCOPE["headers"] = [(k.encode(), v.encode()) for k, v in HEADERS]
    middleware.ENVIRON.update(
        {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in HEADERS if k != "host"}
    )
    variants: dict[str, tuple[Callable[[Any, int], float], Any]] = {
        "starlette bare": (asgi_round, starlette_app(False)),
        "starlette + flagwire, 10 flags": (asgi_round, starlette_app(True)),
        "flask bare": (wsgi_round, flask_app(False)),
        "flask + flagwire, 10 flags": (wsgi_round, flask_app(True)),
    }
    best = measure(variants, args.requests, args.rounds)
    print(f"{'variant (plain extractor, get())':34} {'us/request':>11} {'x bare':>8}")
    for name, seconds in best.items():
        base = best["starlette bare" if name.startswith("starlette") else "flask bare"]
        print(f"{name:34} {seconds * 1e6:11.2f} {seconds / base:8.3f}")
    ok = True
    print()
    for label, name, base, limit in [
        ("starlette, 10 flags <= 2.0x", "starlette + flagwire, 10 flags", "starlette bare", 2.0),
        ("flask, 10 flags <= 1.25x", "flask + flagwire, 10 flags", "flask bare", 1.25),
    ]:
        ratio = best[name] / best[base]
        ok = ok and ratio <= limit
        print(f"{'PASS' if ratio <= limit else 'FAIL'}  {label}: {ratio:.3f}")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())

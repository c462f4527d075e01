"""A one-file Django site for ``tests/test_django.py`` (in-process) and its e2e servers
(``django_wsgi:app`` under gunicorn, ``django_asgi:app`` under uvicorn).

Configured by the environment: ``FLAGWIRE_FLAGS`` (the flag file; without it the tests
override ``settings.FLAGWIRE``), ``FLAGWIRE_PROPAGATION_KEYS``. The user is whoever
header ``x-user-id`` says (a stand-in for ``AuthenticationMiddleware``: a lazy
``request.user`` and an ``auser()``), with ``x-plan`` as their plan.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from typing import Any

import django
from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.template import engines
from django.urls import path
from django.utils.functional import SimpleLazyObject

import flagwire
from flagwire.propagation import outbound_baggage

if not settings.configured:
    flags_file = os.environ.get("FLAGWIRE_FLAGS")
    settings.configure(
        DEBUG=False,
        SECRET_KEY="flagwire-tests",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["flagwire.django"],
        MIDDLEWARE=[f"{__name__}.HeaderUserMiddleware", "flagwire.django.FlagwireMiddleware"],
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates"}],
        FLAGWIRE=(
            {
                "FLAGS_FILE": flags_file,
                "USER_ATTRIBUTES": {"plan": "plan"},
                "TELEMETRY": ["flagwire.otel.OTelTelemetry"]
                if os.environ.get("SPANS_FILE")
                else [],
            }
            if flags_file
            else {"SOURCE": flagwire.FlagSet.empty(source="unset")}
        ),
        LOGGING_CONFIG=None,
    )
    django.setup()


class User:
    """What ``django.contrib.auth`` would attach: a primary key, a plan."""

    is_authenticated = True

    def __init__(self, pk: str, plan: str | None) -> None:
        self.pk, self.plan = pk, plan


class Anonymous:
    is_authenticated = False
    pk = None


class HeaderUserMiddleware:
    """``request.user`` (lazy, like Django's) and ``request.auser()`` from headers."""

    sync_capable = async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)  # returns get_response's coroutine: async too

    def __call__(self, request: HttpRequest) -> Any:
        def load() -> Any:
            found = request.headers.get("x-user-id")
            return User(found, request.headers.get("x-plan")) if found else Anonymous()

        def guarded() -> Any:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return load()
            # Django's lazy user queries the database: not allowed in the event loop.
            raise RuntimeError("request.user evaluated in async code; use auser()")

        async def auser() -> Any:
            return load()

        request.user = SimpleLazyObject(guarded)  # type: ignore[attr-defined]
        request.auser = auser  # type: ignore[attr-defined]
        return self.get_response(request)


def _answer(request: HttpRequest) -> dict[str, Any]:
    flags = flagwire.current_flags()
    color = flags.details("color", "none")
    return {
        "same": flags is getattr(request, "flags", None),
        "user": flags.context.get("targetingKey"),
        "rollout": flags.boolean("rollout", False),
        "color": color.value,
        "reason": color.reason.value,
        "version": flags.flagset.version_label,
        "outbound": outbound_baggage("http://next.internal/"),
    }


def hop(request: HttpRequest) -> JsonResponse:
    return JsonResponse(_answer(request))


async def ahop(request: HttpRequest) -> JsonResponse:
    await asyncio.sleep(0)
    return JsonResponse(_answer(request))


def user_page(request: HttpRequest, pk: int) -> JsonResponse:
    return JsonResponse({"rollout": flagwire.current_flags().boolean("rollout", False)})


def stream(request: HttpRequest) -> StreamingHttpResponse:
    def body() -> Iterator[str]:
        for _ in range(2):
            yield flagwire.current_flags().details("color", "none").value + "\n"

    return StreamingHttpResponse(body())


PAGE = engines["django"].from_string(
    "{% load flagwire %}{% flag 'color' 'none' as c %}color={{ c }};"
    "rollout={% flag 'rollout' False %};missing={% flag 'missing' 'dflt' %};"
    "broken={% flag 'broken' 'safe' %}"
)


def page(request: HttpRequest) -> HttpResponse:
    return HttpResponse(PAGE.render({}, request))


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True, "id": os.environ.get("CHAIN_ID")})


urlpatterns = [
    path("hop", hop),
    path("ahop", ahop),
    path("users/<int:pk>/", user_page),
    path("stream", stream),
    path("page", page),
    path("healthz", healthz),
]

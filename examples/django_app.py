"""A minimal one-file Django service with flagwire.

Run it:  ``gunicorn --chdir examples -b 127.0.0.1:8003 django_app:app`` (WSGI)
    or:  ``uvicorn --app-dir examples --port 8003 django_app:asgi`` (ASGI)
then:    ``curl -H 'x-user-id: alice' -H 'x-plan: beta' localhost:8003/checkout``

The flag file is ``examples/flags.yaml`` (or ``$FLAGWIRE_FLAGS``). A real project keeps the
settings in ``settings.py`` and uses ``django.contrib.auth`` (flagwire's default context is
``request.user``); here the user comes from headers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import django
from django.conf import settings
from django.core.asgi import get_asgi_application
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template import engines
from django.urls import path

from flagwire import context

settings.configure(
    DEBUG=False,
    SECRET_KEY="example-only",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["flagwire.django"],  # {% load flagwire %} and `manage.py check`
    MIDDLEWARE=["flagwire.django.FlagwireMiddleware"],
    TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates"}],
    FLAGWIRE={
        "FLAGS_FILE": os.environ.get("FLAGWIRE_FLAGS", Path(__file__).with_name("flags.yaml")),
        "CONTEXT": [context.headers({"x-user-id": "targetingKey", "x-plan": "plan"})],
    },
)
django.setup()

BANNER = engines["django"].from_string(
    "{% load flagwire %}{% flag 'new-checkout' False as new %}"
    "<p>{% if new %}New checkout{% else %}Classic checkout{% endif %}</p>"
)


def checkout(request: HttpRequest) -> JsonResponse:
    flags: Any = request.flags  # type: ignore[attr-defined]
    return JsonResponse({"new_checkout": flags.boolean("new-checkout", False)})


async def checkout_async(request: HttpRequest) -> JsonResponse:
    return checkout(request)  # same flags in async views


def banner(request: HttpRequest) -> HttpResponse:
    return HttpResponse(BANNER.render({}, request))


urlpatterns = [
    path("checkout", checkout),
    path("checkout-async", checkout_async),
    path("banner", banner),
]
app = get_wsgi_application()
asgi = get_asgi_application()

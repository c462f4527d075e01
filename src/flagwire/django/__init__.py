"""Django: request-scoped flags for sync and async views, configured from settings.

::

    # settings.py
    INSTALLED_APPS = [..., "flagwire.django"]       # template tags and the system check
    MIDDLEWARE = [
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "flagwire.django.FlagwireMiddleware",       # after the authentication middleware
    ]
    FLAGWIRE = {"FLAGS_FILE": BASE_DIR / "flags.yaml"}

    # views.py
    def checkout(request):
        if request.flags.boolean("new-checkout", False): ...

In a request, the flags are ``request.flags`` and :func:`flagwire.current_flags` (in sync
views under WSGI and ASGI, in async views, and in streamed response bodies). The context
comes from ``request.user`` by default (:func:`user`); ``settings.FLAGWIRE`` is described
in :mod:`flagwire.django.conf`. Telemetry's route label is the URL pattern
(``users/<int:pk>/``), never the raw path.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any

from flagwire._errors import missing_extra
from flagwire._integration import Binding, BoundRequestFlags, aiterate_with, iterate_with
from flagwire._request.scope import _current

try:
    from asgiref.sync import iscoroutinefunction, markcoroutinefunction
    from django.http import HttpRequest, HttpResponseBase
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise missing_extra(exc, "flagwire.django", "Django", "django") from exc

from .conf import Config, binding, user

__all__ = ["FlagwireMiddleware", "user"]

logger = logging.getLogger("flagwire")

GetResponse = Callable[[HttpRequest], Any]


class FlagwireMiddleware:
    """Django middleware: each request gets its own pinned, lazily decided flags.

    Sync and async capable: Django runs it without a thread hop under WSGI and ASGI. Put
    it after ``AuthenticationMiddleware`` so ``request.user`` is there.

    Raises:
        ConfigError: ``settings.FLAGWIRE`` is invalid (``manage.py check`` says why).
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.config, self.binding = binding()
        self._needs_user = self.config.needs_user
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self._async:
            return self.__acall__(request)
        flags = BoundRequestFlags(self.binding, request)
        request.flags = flags  # type: ignore[attr-defined]
        started = perf_counter()
        token = _current.set(flags)
        try:
            response = self.get_response(request)
        finally:
            _current.reset(token)
        return self._finish(request, response, flags, started)

    async def __acall__(self, request: HttpRequest) -> Any:
        flags = BoundRequestFlags(self.binding, request)
        request.flags = flags  # type: ignore[attr-defined]
        started = perf_counter()
        if self._needs_user:
            await _resolve_user(request)
        token = _current.set(flags)
        try:
            get_response: Callable[[HttpRequest], Awaitable[Any]] = self.get_response
            response = await get_response(request)
        finally:
            _current.reset(token)
        return self._finish(request, response, flags, started)

    def process_view(
        self, request: HttpRequest, view: Callable[..., Any], args: Any, kwargs: Any
    ) -> None:
        """Under WSGI, resolve the user ahead for an async view (it runs in an event loop,
        where Django's lazy ``request.user`` cannot query the database)."""
        if self._needs_user and not self._async and iscoroutinefunction(view):
            try:
                request._flagwire_user = getattr(request, "user", None)  # type: ignore[attr-defined]
                bool(getattr(request._flagwire_user, "is_authenticated", False))  # type: ignore[attr-defined]
            except Exception:
                logger.exception("flagwire: request.user failed; the context has no user")
                request._flagwire_user = None  # type: ignore[attr-defined]

    def _finish(
        self,
        request: HttpRequest,
        response: HttpResponseBase,
        flags: BoundRequestFlags,
        started: float,
    ) -> HttpResponseBase:
        if getattr(response, "streaming", False):
            content = response.streaming_content  # type: ignore[attr-defined]
            wrapped = (
                aiterate_with(flags, content)
                if getattr(response, "is_async", False)
                else iterate_with(flags, content)
            )
            response.streaming_content = wrapped  # type: ignore[attr-defined]
        _add_cookie(request, response, flags, self.config)
        binding: Binding = self.binding
        if binding.telemetry:
            match = getattr(request, "resolver_match", None)
            route = getattr(match, "route", None) or ""
            method = request.method or ""
            binding.record(flags, method, route, response.status_code, perf_counter() - started)
        return response


async def _resolve_user(request: HttpRequest) -> None:
    auser = getattr(request, "auser", None)
    if auser is None:
        return
    try:
        request._flagwire_user = await auser()  # type: ignore[attr-defined]
    except Exception:  # a broken auth backend never fails the request over a flag
        logger.exception("flagwire: request.auser() failed; the context has no user")


def _add_cookie(
    request: HttpRequest, response: HttpResponseBase, flags: BoundRequestFlags, config: Config
) -> None:
    new_id = flags.new_anonymous_id
    if new_id is None or config.anonymous_cookie is None:
        return
    flags.new_anonymous_id = None
    response.set_cookie(
        config.anonymous_cookie,
        new_id,
        max_age=config.cookie_max_age,
        path="/",
        samesite="Lax",
        httponly=True,
        secure=request.is_secure(),
    )

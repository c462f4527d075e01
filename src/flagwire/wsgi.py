"""WSGI middleware for any WSGI app (for Flask, prefer :mod:`flagwire.flask`).

::

    from flagwire.wsgi import FlagwireMiddleware
    app = FlagwireMiddleware(app, source=FileSource("flags.yaml"),
                             context=context.headers({"x-user-id": "targetingKey"}))

Extractors receive the WSGI ``environ``. The request's flags are current while the app
runs and while it produces the response body (each step of it), and the anonymous-id
cookie is added to the response headers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from time import perf_counter
from types import TracebackType
from typing import Any

from ._engine.flagset import FlagSet
from ._integration import (
    DEFAULT_COOKIE,
    ONE_YEAR,
    Binding,
    BoundRequestFlags,
    ContextSpec,
    iterate_with,
)
from ._propagation.policy import Propagation
from ._request.flags import RequestFlags
from ._request.scope import _current
from ._sources.base import Source
from ._telemetry import Telemetry

__all__ = ["ENVIRON_KEY", "STARTED_KEY", "FlagwireMiddleware", "handle"]

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

ENVIRON_KEY = "flagwire.flags"
"""Where the request's :class:`~flagwire.RequestFlags` is in the WSGI environ."""
STARTED_KEY = "flagwire.started"
"""``perf_counter()`` at the start of the request, when telemetry is on."""


class FlagwireMiddleware:
    """Request-scoped flags for a WSGI app.

    Args:
        app: The WSGI app.
        source: A :class:`~flagwire.Source` or a :class:`~flagwire.FlagSet`.
        context: An extractor (``environ -> mapping``) or a sequence of them; default:
            ``environ["flagwire.user"]`` through :func:`flagwire.context.user`.
        anonymous_cookie: Cookie name for anonymous visitors' stable ``targetingKey``,
            or ``None``.
        cookie_max_age: The anonymous cookie's lifetime in seconds.
        propagation: How assignments travel in ``baggage`` to and from other services
            (:class:`~flagwire.Propagation`); default: from ``$FLAGWIRE_PROPAGATION_KEYS``;
            ``False`` to neither honour nor send any.
        telemetry: Where each finished request's decided flags are recorded (when the
            body is closed; the route label is empty: plain WSGI has no route templates).
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        source: Source | FlagSet,
        context: ContextSpec = None,
        anonymous_cookie: str | None = DEFAULT_COOKIE,
        cookie_max_age: int = ONE_YEAR,
        propagation: Propagation | bool | None = None,
        telemetry: Sequence[Telemetry] = (),
    ) -> None:
        self.app = app
        self.binding = Binding(
            source,
            context,
            anonymous_cookie=anonymous_cookie,
            cookie_max_age=cookie_max_age,
            propagation=propagation,
            telemetry=telemetry,
        )

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        return handle(self.app, self.binding, environ, start_response)


def handle(
    app: WSGIApp, binding: Binding, environ: dict[str, Any], start_response: StartResponse
) -> Iterable[bytes]:
    """Run one WSGI request with its own flags, at ``environ["flagwire.flags"]`` and
    current while the app runs and while it produces the body. With telemetry, the request
    is recorded when the body is closed (route ``""``: WSGI has no templates)."""
    flags = BoundRequestFlags(binding, environ)
    environ[ENVIRON_KEY] = flags
    if binding.telemetry:
        return _handle_watched(app, binding, environ, start_response, flags)
    token = _current.set(flags)
    try:
        if binding.cookie_name is None:
            body = app(environ, start_response)
        else:

            def start(
                status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
            ) -> Callable[[bytes], object]:
                if flags.new_anonymous_id is not None:
                    headers = _with_cookie(headers, flags, binding, environ)
                if exc_info is None:
                    return start_response(status, headers)
                return start_response(status, headers, exc_info)

            body = app(environ, start)
    finally:
        _current.reset(token)
    return _FlagsBody(body, flags)


def _with_cookie(
    headers: list[tuple[str, str]],
    flags: BoundRequestFlags,
    binding: Binding,
    environ: dict[str, Any],
) -> list[tuple[str, str]]:
    new_id = flags.new_anonymous_id
    if new_id is None:
        return headers
    flags.new_anonymous_id = None
    secure = environ.get("wsgi.url_scheme") == "https"
    return [*headers, ("Set-Cookie", binding.set_cookie_value(new_id, secure=secure))]


def _handle_watched(
    app: WSGIApp,
    binding: Binding,
    environ: dict[str, Any],
    start_response: StartResponse,
    flags: BoundRequestFlags,
) -> Iterable[bytes]:
    """:func:`handle` with telemetry: the status is watched, the request recorded."""
    environ[STARTED_KEY] = perf_counter()
    seen_status = [500]
    token = _current.set(flags)

    def start(
        status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], object]:
        seen_status[0] = int(status[:3]) if status[:3].isdigit() else 500
        if flags.new_anonymous_id is not None:
            headers = _with_cookie(headers, flags, binding, environ)
        if exc_info is None:
            return start_response(status, headers)
        return start_response(status, headers, exc_info)

    def finish() -> None:
        binding.record(
            flags,
            environ.get("REQUEST_METHOD", ""),
            "",
            seen_status[0],
            perf_counter() - environ[STARTED_KEY],
        )

    try:
        body = app(environ, start)
    except BaseException:
        finish()
        raise
    finally:
        _current.reset(token)
    return _FlagsBody(body, flags, finish)


class _FlagsBody:
    """The app's response body, produced with the request's flags current.

    The flags are made current around each step of the body and its ``close()``, not
    left set between steps: a server or test client that never closes the body leaks
    nothing into the thread. A class, not a generator, so ``close()`` reaches the app's
    iterable even if the body was never iterated (PEP 3333).
    """

    __slots__ = ("_body", "_closed", "_flags", "_on_close")

    def __init__(
        self,
        body: Iterable[bytes],
        flags: RequestFlags,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._body = body
        self._flags = flags
        self._closed = False
        self._on_close = on_close

    def __iter__(self) -> Iterator[bytes]:
        return iterate_with(self._flags, self._body)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        close = getattr(self._body, "close", None)
        try:
            if close is not None:
                token = _current.set(self._flags)  # the app's close() is the app's code too
                try:
                    close()
                finally:
                    _current.reset(token)
        finally:
            if self._on_close is not None:
                self._on_close()

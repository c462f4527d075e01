"""WSGI middleware for any WSGI app (for Flask, prefer :mod:`flagwire.flask`).

::

    from flagwire.wsgi import FlagwireMiddleware
    app = FlagwireMiddleware(app, source=FileSource("flags.yaml"),
                             context=context.headers({"x-user-id": "targetingKey"}))

Extractors receive the WSGI ``environ``. The request's flags stay current while the
response body is iterated, and the anonymous-id cookie is added to the response headers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from contextvars import Token
from types import TracebackType
from typing import Any

from ._flagset import FlagSet
from ._integration import DEFAULT_COOKIE, ONE_YEAR, Binding, BoundRequestFlags, ContextSpec
from ._request import RequestFlags, _current
from ._sources import Source

__all__ = ["ENVIRON_KEY", "FlagwireMiddleware"]

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

ENVIRON_KEY = "flagwire.flags"
"""Where the request's :class:`~flagwire.RequestFlags` is in the WSGI environ."""


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
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        source: Source | FlagSet,
        context: ContextSpec = None,
        anonymous_cookie: str | None = DEFAULT_COOKIE,
        cookie_max_age: int = ONE_YEAR,
    ) -> None:
        self.app = app
        self.binding = Binding(
            source, context, anonymous_cookie=anonymous_cookie, cookie_max_age=cookie_max_age
        )

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        flags = BoundRequestFlags(self.binding, environ)
        environ[ENVIRON_KEY] = flags
        token = _current.set(flags)
        binding = self.binding

        def start(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            new_id = flags.new_anonymous_id
            if new_id is not None:
                flags.new_anonymous_id = None
                secure = environ.get("wsgi.url_scheme") == "https"
                headers = [
                    *headers,
                    ("Set-Cookie", binding.set_cookie_value(new_id, secure=secure)),
                ]
            if exc_info is None:
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        try:
            body = self.app(environ, start if binding.cookie_name else start_response)
        except BaseException:
            _current.reset(token)
            raise
        return _ClosingBody(body, token)


class _ClosingBody:
    """The app's response body, keeping the request's flags current until it is closed.

    A class, not a generator: a server may close the body without iterating it, and the
    app's ``close()`` and the reset of the flags must still happen (PEP 3333).
    """

    __slots__ = ("_body", "_closed", "_token")

    def __init__(self, body: Iterable[bytes], token: Token[RequestFlags | None]) -> None:
        self._body = body
        self._token = token
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._body
        finally:  # exhausted (or abandoned): release now, the server's close() is a no-op
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            # ValueError: closed in another context than the one that started it.
            with suppress(ValueError):
                _current.reset(self._token)

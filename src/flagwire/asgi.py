"""Pure ASGI middleware for Starlette, FastAPI and any ASGI app.

::

    from flagwire import FileSource, context
    from flagwire.asgi import FlagwireMiddleware

    app.add_middleware(
        FlagwireMiddleware,
        source=FileSource("flags.yaml"),
        context=context.headers({"x-user-id": "targetingKey"}),
    )

Each HTTP request gets its own :class:`~flagwire.RequestFlags` — one pinned flag set,
a context built lazily from a Starlette ``Request`` — reachable with
:func:`flagwire.current_flags` anywhere in the request's code (a context variable, which
asyncio tasks and Starlette's thread pool inherit). Lifespan and websocket scopes pass
straight through.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from time import perf_counter
from typing import Any

from ._engine.flagset import FlagSet
from ._errors import missing_extra
from ._integration import DEFAULT_COOKIE, ONE_YEAR, Binding, BoundRequestFlags, ContextSpec
from ._propagation.policy import Propagation
from ._request.scope import _current
from ._sources.base import Source
from ._telemetry import Telemetry, method_label

try:
    from starlette.datastructures import Headers
    from starlette.requests import Request
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise missing_extra(exc, "flagwire.asgi", "Starlette", "fastapi") from exc

__all__ = ["FlagwireMiddleware"]

logger = logging.getLogger("flagwire")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _IndexedHeaders(Headers):
    """Starlette's ``Headers``, with the lookups extractors make answered from a dict of
    the raw headers built on the first one (Starlette's scan the raw list per lookup; an
    extractor makes several). Values are decoded only when asked for."""

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._list = raw
        self._index: dict[bytes, bytes] | None = None

    def _indexed(self) -> dict[bytes, bytes]:
        # ASGI header names are lower-case; reversed, so that the first of a repeated
        # header wins, as in Starlette's own lookup.
        index = self._index = dict(reversed(self._list))
        return index

    def get(self, key: str, default: Any = None) -> Any:
        value = (self._index or self._indexed()).get(_NAMES.get(key) or _name(key))
        return default if value is None else value.decode("latin-1")

    def __getitem__(self, key: str) -> str:
        value = (self._index or self._indexed()).get(_NAMES.get(key) or _name(key))
        if value is None:
            raise KeyError(key)
        return value.decode("latin-1")

    def __contains__(self, key: Any) -> bool:
        return isinstance(key, str) and (
            (_NAMES.get(key) or _name(key)) in (self._index or self._indexed())
        )


_NAMES: dict[str, bytes] = {}  # header names as extractors write them -> as ASGI sends them


def _name(key: str) -> bytes:
    name = key.lower().encode("latin-1")
    if len(_NAMES) < 1024:  # the names in an app's code: few, and the same every request
        _NAMES[key] = name
    return name


class ExtractorRequest(Request):
    """The Starlette ``Request`` a plain-function extractor receives.

    A ``Request`` in every way, built from the scope alone, whose ``headers`` answer
    ``get``, ``[]`` and ``in`` from a dict made once per request.
    """

    @property
    def headers(self) -> Headers:
        headers: Headers | None = self.__dict__.get("_headers")
        if headers is None:
            raw = self.scope["headers"]
            headers = self._headers = _IndexedHeaders(raw if type(raw) is list else list(raw))
        return headers


class FlagwireMiddleware:
    """Request-scoped flags for an ASGI app.

    Args:
        app: The ASGI app.
        source: A :class:`~flagwire.Source` (e.g. :class:`~flagwire.FileSource`) or a
            :class:`~flagwire.FlagSet`. Build it before the app starts: this middleware
            loads nothing itself (Starlette creates it lazily, at the first request).
        context: An extractor (``Request -> mapping``) or a sequence of them; default:
            the authenticated user (:func:`flagwire.context.user`).
        anonymous_cookie: Cookie name for anonymous visitors' stable ``targetingKey``,
            or ``None`` for no cookie.
        cookie_max_age: The anonymous cookie's lifetime in seconds.
        propagation: How assignments travel in ``baggage`` to and from other services
            (:class:`~flagwire.Propagation`); default: from ``$FLAGWIRE_PROPAGATION_KEYS``;
            ``False`` to neither honour nor send any.
        telemetry: Where each finished request's decided flags are recorded
            (:class:`~flagwire.otel.OTelTelemetry`,
            :class:`~flagwire.prometheus.PrometheusTelemetry`); the route label is the
            Starlette route's path template.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        source: Source | FlagSet,
        context: ContextSpec = None,
        anonymous_cookie: str | None = DEFAULT_COOKIE,
        cookie_max_age: int = ONE_YEAR,
        propagation: Propagation | bool | None = None,
        telemetry: Sequence[Telemetry] = (),
    ) -> None:
        self.app = app
        self.binding = binding = Binding(
            source,
            context,
            anonymous_cookie=anonymous_cookie,
            cookie_max_age=cookie_max_age,
            propagation=propagation,
            telemetry=telemetry,
        )
        if not binding.reads_raw:  # user extractors get a Starlette Request
            binding.adapt = ExtractorRequest
        self._reported = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        binding = self.binding
        outer = _current.get()
        if (
            isinstance(outer, BoundRequestFlags)
            and outer._binding is not binding
            and self._nested(outer._binding)
        ):
            await self.app(scope, receive, send)  # the outer one already does it all
            return
        flags = BoundRequestFlags(binding, scope)
        # Not stored in the scope: the context variable is the one way to the flags, and
        # growing the scope dict costs more than the rest of this method.
        token = _current.set(flags)
        try:
            if binding.telemetry:
                await self._with_telemetry(scope, receive, send, flags)
            elif binding.cookie_name is None:
                await self.app(scope, receive, send)
            else:

                def send_with_cookie(message: Message) -> Awaitable[None]:
                    # A plain function returning send's awaitable: no extra coroutine per
                    # message. Adds the cookie if this request made a new anonymous id.
                    if flags.new_anonymous_id is not None:
                        _add_cookie(message, flags, binding, scope)
                    return send(message)

                await self.app(scope, receive, send_with_cookie)
        finally:
            _current.reset(token)

    def _nested(self, outer: Binding) -> bool:
        """Report (once) that this middleware runs inside another; whether to step aside
        (both serve the same source: the middleware was added twice)."""
        twice = outer.source is self.binding.source
        if not self._reported:
            self._reported = True
            logger.error(
                "flagwire: FlagwireMiddleware runs inside another FlagwireMiddleware%s. "
                "Add it once per app (app.add_middleware(FlagwireMiddleware, ...) once).",
                " with the same source: the inner one steps aside" if twice else "",
            )
        return twice

    async def _with_telemetry(
        self, scope: Scope, receive: Receive, send: Send, flags: BoundRequestFlags
    ) -> None:
        binding = self.binding
        state = [500, False]  # status (if the app fails before it responds), recorded
        started = perf_counter()

        def record() -> None:
            state[1] = True
            route = getattr(scope.get("route"), "path", "")
            binding.record(
                flags, scope.get("method", ""), route, int(state[0]), perf_counter() - started
            )

        def send_and_watch(message: Message) -> Awaitable[None]:
            kind = message["type"]
            if kind == "http.response.start":
                state[0] = message["status"]
                if flags.new_anonymous_id is not None:
                    _add_cookie(message, flags, binding, scope)
            elif kind == "http.response.body" and not message.get("more_body", False):
                # Before the last body message goes out: an instrumentation outside this
                # middleware (OpenTelemetry's ASGI) ends its server span when it does.
                record()
            return send(message)

        span = _open_span(binding, scope)
        if span is None:
            try:
                await self.app(scope, receive, send_and_watch)
            finally:
                if not state[1]:
                    record()
            return
        with span as current:  # no instrumentation made one: flagwire's own server span
            try:
                await self.app(scope, receive, send_and_watch)
            finally:
                if not state[1]:
                    record()
                route = getattr(scope.get("route"), "path", "")
                if route:
                    current.update_name(f"{method_label(scope.get('method', ''))} {route}")
                    current.set_attribute("http.route", route)
                current.set_attribute("http.response.status_code", int(state[0]))


def _open_span(binding: Binding, scope: Scope) -> Any:
    for sink in binding.telemetry:
        opener = getattr(sink, "open_span", None)
        if opener is not None:
            span = opener(scope.get("method", ""), scope)
            if span is not None:
                return span
    return None


def _add_cookie(message: Message, flags: BoundRequestFlags, binding: Binding, scope: Scope) -> None:
    new_id = flags.new_anonymous_id
    if new_id is None or message["type"] != "http.response.start":
        return
    flags.new_anonymous_id = None
    cookie = binding.set_cookie_value(new_id, secure=scope.get("scheme") == "https")
    headers = list(message.get("headers", ()))
    headers.append((b"set-cookie", cookie.encode("latin-1")))
    message["headers"] = headers

"""Send the request's flags with httpx, without OpenTelemetry.

::

    import httpx
    from flagwire.httpx import FlagwireTransport, AsyncFlagwireTransport

    client = httpx.Client(transport=FlagwireTransport())
    aclient = httpx.AsyncClient(transport=AsyncFlagwireTransport())

or, as event hooks: ``httpx.Client(event_hooks={"request": [request_hook]})`` and
``httpx.AsyncClient(event_hooks={"request": [async_request_hook]})``.

Only destinations the :class:`~flagwire.Propagation` allows get flagwire's members; the
app's own ``baggage`` members always pass. The transports send a copy of the request with
the flags, leaving the client's request as it was, so a redirect that goes out through
another mount (a plain transport for another origin) carries none of them; the event hooks
run again on every redirect hop.
"""

from __future__ import annotations

from ._errors import missing_extra
from .propagation import outbound_baggage, without_anonymous_cookie

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise missing_extra(exc, "flagwire.httpx", "httpx", "demo") from exc

__all__ = ["AsyncFlagwireTransport", "FlagwireTransport", "async_request_hook", "request_hook"]


def _fix(headers: httpx.Headers, host: str) -> bool:
    """Put the flags in ``headers`` and drop the anonymous-id cookie; whether it changed."""
    changed = False
    for name, value in (
        ("baggage", outbound_baggage(host, headers.get("baggage"))),
        ("cookie", without_anonymous_cookie(headers.get("cookie"))),
    ):
        if value == headers.get(name):
            continue
        changed = True
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    return changed


def request_hook(request: httpx.Request) -> None:
    """An httpx request event hook adding the current request's flags to ``baggage``
    (and dropping flagwire's anonymous-id cookie, which a shared client may have stored)."""
    _fix(request.headers, request.url.host)


def _with_flags(request: httpx.Request) -> httpx.Request:
    """``request`` itself if its headers stay as they are, else a copy with the flags (the
    client builds a redirect from its own request, which must not carry them on)."""
    headers = request.headers.copy()
    if not _fix(headers, request.url.host):
        return request
    return httpx.Request(
        request.method,
        request.url,
        headers=headers,
        stream=request.stream,
        extensions=request.extensions,
    )


async def async_request_hook(request: httpx.Request) -> None:
    """:func:`request_hook` for ``httpx.AsyncClient``."""
    request_hook(request)


class FlagwireTransport(httpx.BaseTransport):
    """Wraps a transport (default ``httpx.HTTPTransport()``) to add the flags."""

    def __init__(self, transport: httpx.BaseTransport | None = None) -> None:
        self._transport = transport or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._transport.handle_request(_with_flags(request))

    def close(self) -> None:
        self._transport.close()


class AsyncFlagwireTransport(httpx.AsyncBaseTransport):
    """Wraps an async transport (default ``httpx.AsyncHTTPTransport()``) to add the flags."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._transport = transport or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._transport.handle_async_request(_with_flags(request))

    async def aclose(self) -> None:
        await self._transport.aclose()

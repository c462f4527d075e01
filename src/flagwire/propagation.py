"""Carry a request's flags to the services and jobs it calls.

Configure once per process (or let the middleware read ``$FLAGWIRE_PROPAGATION_KEYS``)::

    import flagwire

    propagation = flagwire.Propagation(keys=["..."], allowed_hosts=["*.internal"])
    flagwire.set_default_propagation(propagation)

Outbound HTTP: with OpenTelemetry's instrumentation, add flagwire's propagator
(:mod:`flagwire.otel`); without it, use :mod:`flagwire.httpx` or :mod:`flagwire.requests`;
or call :func:`outbound_baggage` yourself. Work that leaves the request: :func:`bind` for
threads and tasks, :func:`job_headers` / :func:`flags_from_headers` for queued jobs.
"""

from __future__ import annotations

import functools
import inspect
import urllib.request
from collections.abc import Callable, Mapping, MutableMapping
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit

from ._engine.flagset import FlagSet
from ._propagation.baggage import Propagated, merge_baggage
from ._propagation.destinations import DEFAULT_ALLOWED_HOSTS
from ._propagation.policy import Propagation, default_propagation, set_default_propagation
from ._propagation.signing import KeyRing
from ._request.flags import RequestFlags
from ._request.scope import activate, current_flags
from ._sources.base import Source

__all__ = [
    "ANONYMOUS_COOKIE",
    "DEFAULT_ALLOWED_HOSTS",
    "KeyRing",
    "Propagated",
    "Propagation",
    "RedirectHandler",
    "bind",
    "default_propagation",
    "flags_from_headers",
    "host_of",
    "inject",
    "job_headers",
    "outbound_baggage",
    "redirect_baggage",
    "set_default_propagation",
    "without_anonymous_cookie",
]

F = TypeVar("F", bound=Callable[..., Any])


def host_of(destination: str | None) -> str | None:
    """The host of a URL (``http://payments:8000/x`` -> ``payments``), or the host given."""
    if not destination:
        return None
    if "://" in destination:
        try:
            return urlsplit(destination).hostname
        except ValueError:  # an invalid IPv6 literal: no host anyone may send to
            return None
    return destination


def outbound_baggage(
    destination: str | None,
    existing: str | None = None,
    *,
    flags: RequestFlags | None = None,
    propagation: Propagation | None = None,
) -> str | None:
    """The ``baggage`` value for a request to ``destination`` (a URL or a host).

    ``existing`` (the app's own baggage) keeps every member that is not flagwire's. An
    allowed destination also gets the current request's signed assignments; any other gets
    no flagwire member at all. ``None`` means: send no ``baggage`` header.
    """
    propagation = propagation or default_propagation()
    ours: list[str] = []
    if propagation.enabled and propagation.allows(host_of(destination)):
        assignments, targeting_key, version = (flags or current_flags()).outbound()
        ours = propagation.encode(assignments, targeting_key, version, existing)
    return merge_baggage(existing, ours)


def inject(
    headers: MutableMapping[str, str],
    destination: str | None,
    *,
    flags: RequestFlags | None = None,
    propagation: Propagation | None = None,
) -> None:
    """Set (or remove) the ``baggage`` header of an outgoing request, in place (and drop
    flagwire's anonymous-id cookie from its ``Cookie`` header).

    The header is right for ``destination`` only. A client that follows redirects and
    copies the request's headers to the next hop (urllib does, and so do requests and httpx
    without flagwire's adapters) would hand the targeting key and assignments to wherever
    the redirect points. So with ``inject()``, either do not follow redirects, or strip
    flagwire's members on each hop with :func:`redirect_baggage` -- for urllib, build the
    opener with :class:`RedirectHandler`:
    ``urllib.request.build_opener(flagwire.propagation.RedirectHandler())``.
    (:mod:`flagwire.httpx`, :mod:`flagwire.requests` and :mod:`flagwire.otel` do this
    themselves.)
    """
    existing = headers.get("baggage")
    value = outbound_baggage(destination, existing, flags=flags, propagation=propagation)
    if value is not None:
        headers["baggage"] = value
    elif existing is not None:
        del headers["baggage"]
    for name in [n for n in headers if n.lower() == "cookie"]:
        cookie = without_anonymous_cookie(headers[name])
        if cookie is None:
            del headers[name]
        else:
            headers[name] = cookie


ANONYMOUS_COOKIE = "flagwire_id"


def without_anonymous_cookie(cookie: str | None) -> str | None:
    """A ``Cookie`` header without flagwire's anonymous-id cookie (``None`` if nothing is
    left). A service that calls another must not carry a browser's anonymous id, nor one
    the downstream set on a shared client: every user would become that one visitor."""
    if not cookie or ANONYMOUS_COOKIE not in cookie:
        return cookie
    kept = [
        part
        for part in cookie.split(";")
        if part.strip() and part.split("=", 1)[0].strip() != ANONYMOUS_COOKIE
    ]
    return ";".join(kept).strip() or None


def redirect_baggage(
    existing: str | None, target: str | None, *, propagation: Propagation | None = None
) -> str | None:
    """The ``baggage`` a redirect to ``target`` (a URL or host) may carry on from the
    previous hop: all of it for an allowed destination, else no flagwire member."""
    propagation = propagation or default_propagation()
    if propagation.allows(host_of(target)):
        return existing
    return merge_baggage(existing, ())


class RedirectHandler(urllib.request.HTTPRedirectHandler):
    """urllib's redirect handler, minus flagwire's members for a non-allowed target."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            for name, value in list(new.header_items()):
                if name.lower() != "baggage":
                    continue
                kept = redirect_baggage(value, newurl)
                new.remove_header(name)
                if kept is not None:
                    new.add_header(name, kept)
        return new


def job_headers(
    flags: RequestFlags | None = None, *, propagation: Propagation | None = None
) -> dict[str, str]:
    """Headers to enqueue with a job, so the worker decides like this request did.

    No destination check: a queue is yours. Empty without keys or without decisions.
    """
    propagation = propagation or default_propagation()
    assignments, targeting_key, version = (flags or current_flags()).outbound()
    value = merge_baggage(None, propagation.encode(assignments, targeting_key, version))
    return {"baggage": value} if value else {}


def flags_from_headers(
    headers: Mapping[str, str],
    source: Source | FlagSet,
    context: Mapping[str, Any] | None = None,
    *,
    propagation: Propagation | None = None,
) -> RequestFlags:
    """A worker's flags for a job enqueued with :func:`job_headers`.

    Trusted assignments are honoured (for flags this flag set has, enabled, with that
    variant); the targeting key is restored unless ``context`` has one.
    """
    propagation = propagation or default_propagation()
    raw = next((v for k, v in headers.items() if k.lower() == "baggage"), None)
    inbound = propagation.decode(raw)
    flagset = source if isinstance(source, FlagSet) else source.flagset
    merged = dict(context or {})
    if inbound.trusted and inbound.targeting_key and not merged.get("targetingKey"):
        merged["targetingKey"] = inbound.targeting_key
    honour = inbound.trusted and merged.get("targetingKey") == inbound.targeting_key
    return RequestFlags(flagset, merged, upstream=inbound.assignments if honour else None)


def bind(fn: F) -> F:
    """``fn`` running with the current request's flags, wherever it is called later.

    For thread pools, ``loop.run_in_executor``, callbacks: ``pool.submit(bind(work))``.
    Works for plain and ``async`` functions (asyncio tasks already inherit the flags).
    """
    flags = current_flags()
    # The request's context is built here, where the request is: a thread has no Flask
    # request context (nor a framework request) for an extractor to read later.
    flags._ensure_context()
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            with activate(flags):
                return await fn(*args, **kwargs)

        return run_async  # type: ignore[return-value]

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with activate(flags):
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]

"""What every integration shares: a :class:`Binding` of source, context and cookie.

Framework-free: the ASGI, WSGI, Django and gRPC middleware, the Flask extension and the
Celery worker hooks each hold one binding and create a :class:`BoundRequestFlags` per
request (or task, or call).
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, TypeVar

from ._engine.flagset import FlagSet
from ._errors import ConfigError
from ._propagation.baggage import PREFIX
from ._propagation.policy import Propagation, RateLimitedLog, default_propagation
from ._propagation.signing import KEYS_ENV
from ._request.flags import _NOT_YET, RequestFlags
from ._request.scope import _current, default_source, set_default_source
from ._sources.base import Source, as_source
from ._telemetry import RequestRecord, Telemetry, method_label, record_all
from .context import Extractor, compose, header, reads_raw, request_cookies, user

__all__ = ["Binding", "BoundRequestFlags", "ContextSpec", "aiterate_with", "iterate_with"]

T = TypeVar("T")

ContextSpec = Extractor | Sequence[Extractor] | None
"""An extractor, several (composed in order), or None for the default (:func:`user`)."""


def extractors(context: ContextSpec) -> tuple[Extractor, ...]:
    """The extractors a :data:`ContextSpec` names.

    Raises:
        ConfigError: It is not an extractor or a sequence of them (a dict of header names,
            say: that is ``context.headers({...})``).
    """
    if context is None:
        return (user(),)
    if isinstance(context, Mapping):
        msg = (
            f"context={dict(context)!r} is a mapping, not an extractor: to read these "
            f"request headers write context=flagwire.context.headers({dict(context)!r}) "
            "(or context.cookies / context.query for cookies and query parameters)"
        )
        raise ConfigError(msg)
    chain = (
        tuple(context)
        if isinstance(context, Sequence) and not isinstance(context, str)
        else (context,)
    )
    for extractor in chain:
        if not callable(extractor):
            msg = (
                f"context must be an extractor (a callable taking the request and returning "
                f"a mapping) or a sequence of them, not {type(extractor).__name__} "
                f"{extractor!r}; see flagwire.context.headers, cookies, query, user"
            )
            raise ConfigError(msg)
    if not chain:
        raise ConfigError("context=[] names no extractor; leave it out for the default (user)")
    return chain


logger = logging.getLogger("flagwire")

_VALID_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
DEFAULT_COOKIE = "flagwire_id"
ONE_YEAR = 365 * 24 * 3600


class Binding:
    """An app's flag source, context extraction and anonymous-id cookie.

    Args:
        source: A :class:`~flagwire.Source` or a :class:`~flagwire.FlagSet`.
        context: How to build the evaluation context from the framework's request.
        anonymous_cookie: The cookie that keeps an anonymous visitor's ``targetingKey``
            stable across requests (so they stay in one bucket of a rollout), or ``None``
            to set no cookie (such visitors then get no ``targetingKey``).
        cookie_max_age: The cookie's lifetime in seconds.
        make_default: Make ``source`` what :func:`current_flags` uses outside requests,
            if nothing else is.
        propagation: How assignments travel between services in ``baggage``
            (:class:`~flagwire.Propagation`); default: the process-wide one, configured
            from ``$FLAGWIRE_PROPAGATION_KEYS``; ``False`` for none.
        telemetry: Where each finished request's decisions are recorded
            (:class:`~flagwire.otel.OTelTelemetry`,
            :class:`~flagwire.prometheus.PrometheusTelemetry`).
    """

    __slots__ = (
        "_requests",
        "adapt",
        "cookie_attributes",
        "cookie_name",
        "extract",
        "fresh",
        "propagation",
        "reads_raw",
        "source",
        "telemetry",
        "unverifiable",
    )

    def __init__(
        self,
        source: Source | FlagSet,
        context: ContextSpec = None,
        *,
        anonymous_cookie: str | None = DEFAULT_COOKIE,
        cookie_max_age: int = ONE_YEAR,
        make_default: bool = True,
        propagation: Propagation | bool | None = None,
        telemetry: Sequence[Telemetry] = (),
    ) -> None:
        self.source = as_source(source)
        self.telemetry = tuple(telemetry)
        if propagation is None or propagation is True:
            propagation = default_propagation()
        self.propagation: Propagation | None = propagation or None
        self.unverifiable = False
        """Propagation is wanted but has no keys: inbound flagwire baggage is warned of."""
        self._requests = itertools.count()
        if self.propagation is not None:
            self.propagation.explain_disabled()
            if not self.propagation.enabled:
                self.propagation = None
                self.unverifiable = True
        chain = extractors(context)
        # One extractor is called directly (build_context catches its errors); several
        # are composed, each failing on its own.
        self.extract: Extractor = chain[0] if len(chain) == 1 else compose(*chain)
        self.reads_raw = reads_raw(self.extract)
        # compose() and flagwire's own extractors return a new dict on every call.
        self.fresh = len(chain) > 1 or self.reads_raw
        self.adapt: Callable[[Any], Any] | None = None
        """Turns the integration's raw request into what extractors receive (set by it)."""
        self.cookie_name = anonymous_cookie
        self.cookie_attributes = f"Path=/; Max-Age={int(cookie_max_age)}; SameSite=Lax; HttpOnly"
        if make_default and default_source() is None:
            set_default_source(self.source)

    def sample(self) -> bool:
        """True for one request in 64 (a thread-safe counter: ``count`` is atomic)."""
        return next(self._requests) % 64 == 0

    def record(
        self, flags: RequestFlags, method: str, route: str, status: int, duration: float
    ) -> None:
        """Hand a finished request to the telemetry (if it decided any flag): what the
        code ran on (type mismatches included) and the events it tracked."""
        if not flags._memo or not self.telemetry:
            return
        targeting_key = (flags._context or {}).get("targetingKey")
        record_all(
            self.telemetry,
            RequestRecord(
                flags.served(),
                method_label(method),  # bounded: a client can send any method it likes
                route,
                status,
                duration,
                flags.flagset.version_label,
                flags.reads(),
                targeting_key if isinstance(targeting_key, str) else None,
                flags.take_tracked(),
            ),
        )

    def set_cookie_value(self, anonymous_id: str, *, secure: bool) -> str:
        """The ``Set-Cookie`` header value for a new anonymous id."""
        value = f"{self.cookie_name}={anonymous_id}; {self.cookie_attributes}"
        return value + "; Secure" if secure else value


class BoundRequestFlags(RequestFlags):
    """Request flags whose context is built, on first use, from the framework's request."""

    __slots__ = ("_binding", "_raw")
    new_anonymous_id: str | None = None
    """A new anonymous id this request made, until it is sent back in a cookie."""

    def __init__(self, binding: Binding, raw: Any) -> None:
        self.flagset = binding.source.flagset  # pinned for the whole request
        self._deciders = _NOT_YET  # until the context is built
        self._context = None
        self._memo = {}
        self._binding = binding
        self._raw = raw

    def _receive(self, propagation: Propagation, raw: str, context: dict[str, Any]) -> None:
        """Honour a trusted upstream's assignments (and targeting key) from ``baggage``."""
        inbound = propagation.decode(raw)
        if not inbound.trusted:
            return
        local = context.get("targetingKey")
        if local and local != inbound.targeting_key:
            # Decided for someone else than this request's subject: decide here instead.
            logger.debug("flagwire: upstream assignments for another targeting key ignored")
            return
        if not local and inbound.targeting_key:
            context["targetingKey"] = inbound.targeting_key
        self._upstream = dict(inbound.assignments)

    def _new_anonymous_id(self, new_id: str) -> None:
        self.new_anonymous_id = new_id

    def _build_context(self) -> tuple[dict[str, Any], str | None]:
        """Run the extractors; give an anonymous visitor a stable ``targetingKey``."""
        binding = self._binding
        adapt = binding.adapt
        raw, self._raw = self._raw, None  # no reference cycle with a WSGI environ
        request = raw if adapt is None else adapt(raw)
        extract = binding.extract
        try:
            found = extract(request)
        except Exception:  # a broken extractor never fails the request
            logger.exception("flagwire: context extractor %r failed", extract)
            found = None
        if type(found) is dict:
            # flagwire's own extractors return a new dict every time; a user's may hand
            # out a shared one: our own copy.
            context = found if binding.fresh else found.copy()
        elif isinstance(found, Mapping):
            context = dict(found)  # our own copy: the extractor may hand out a shared dict
        else:
            if found is not None:
                logger.error(
                    "flagwire: context extractor %r returned %s, not a mapping",
                    extract,
                    type(found).__name__,
                )
            context = {}
        cookie_name = binding.cookie_name
        # Inbound baggage matters to trusted propagation and to the anonymous id; without
        # keys it only feeds a warning, for which one request in 64 is enough (the header
        # scan is a good part of a request's cost).
        raw_baggage = None
        if (
            binding.propagation is not None
            or not context.get("targetingKey")
            or (binding.unverifiable and binding.sample())
        ):
            raw_baggage = header(request, "baggage")
        from_service = raw_baggage is not None and PREFIX in raw_baggage
        kept = None
        if cookie_name is not None and (from_service or not context.get("targetingKey")):
            kept = request_cookies(request).get(cookie_name)
        if from_service:
            propagation = binding.propagation
            if kept is not None:
                # flagwire's anonymous cookie: a browser, not a service. A browser that
                # replays a captured header must not take over that user's key.
                logger.debug("flagwire: inbound baggage ignored: the %s cookie came", cookie_name)
            elif propagation is not None:
                self._receive(propagation, raw_baggage, context)  # type: ignore[arg-type]
            elif binding.unverifiable:
                _warn_unverifiable()
        if cookie_name is None or context.get("targetingKey"):
            return context, None
        if kept is not None and _VALID_ID.fullmatch(kept):
            context["targetingKey"] = kept
            return context, None
        if from_service:  # a service's call: no anonymous id, and no cookie to keep
            return context, None
        new = secrets.token_urlsafe(16)  # none yet, or tampered with: sent back to the client
        context["targetingKey"] = new
        return context, new


def iterate_with(
    flags: RequestFlags,
    iterable: Iterable[T],
    on_end: Callable[[BaseException | None], None] | None = None,
) -> Iterator[T]:
    """``iterable``'s items, each produced with ``flags`` current (a streamed response).

    The flags are current around each step only, never left set between steps, so a
    consumer that stops early leaks nothing. ``on_end`` gets the exception that ended the
    iteration, if any, once it ends (or is closed).
    """
    iterator: Iterator[T] | None = None
    failure: BaseException | None = None
    try:
        while True:
            token = _current.set(flags)
            try:
                if iterator is None:
                    iterator = iter(iterable)
                item = next(iterator)
            except StopIteration:
                return
            finally:
                _current.reset(token)
            yield item
    except BaseException as exc:
        failure = exc
        raise
    finally:
        if on_end is not None:
            on_end(failure)


async def aiterate_with(
    flags: RequestFlags,
    iterable: AsyncIterable[T],
    on_end: Callable[[BaseException | None], None] | None = None,
) -> AsyncIterator[T]:
    """:func:`iterate_with` for an async iterable."""
    iterator: AsyncIterator[T] | None = None
    failure: BaseException | None = None
    try:
        while True:
            token = _current.set(flags)
            try:
                if iterator is None:
                    iterator = aiter(iterable)
                item = await anext(iterator)
            except StopAsyncIteration:
                return
            finally:
                _current.reset(token)
            yield item
    except BaseException as exc:
        failure = exc
        raise
    finally:
        if on_end is not None:
            on_end(failure)


def _warn_unverifiable() -> None:
    _warn(
        "flagwire: a request carried flagwire baggage (fw.* members) but this service has "
        "no propagation keys, so it cannot verify them and decides every flag itself (users "
        "may see other variants than upstream). Set %s to the upstream service's keys (the "
        "same comma-separated secrets on every service), or pass propagation=False to say "
        "that this service decides alone",
        KEYS_ENV,
    )


_warn = RateLimitedLog()

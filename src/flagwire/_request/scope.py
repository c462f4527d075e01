"""Where the current request's flags are: :func:`current_flags`, :func:`activate`,
the default source used outside requests, and :func:`track` for the current request."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from types import MappingProxyType
from typing import Any

from flagwire._engine.flagset import FlagSet
from flagwire._sources.base import Source
from flagwire._types import Context

from .flags import RequestFlags

__all__ = [
    "EMPTY_FLAGSET",
    "activate",
    "add_resolver",
    "current_flags",
    "default_source",
    "request_flags",
    "set_default_source",
    "track",
]

_EMPTY: Any = MappingProxyType({})


def track(event: str, value: float | None = None) -> None:
    """Record that ``event`` happened in the current request, for every flag it decides.

    The same as ``current_flags().track(event, value)``: see :meth:`RequestFlags.track`.
    """
    current_flags().track(event, value)


_current: ContextVar[RequestFlags | None] = ContextVar("flagwire.current_flags", default=None)
_default_source: Source | None = None


_resolvers: tuple[Callable[[], RequestFlags | None], ...] = ()


def add_resolver(resolve: Callable[[], RequestFlags | None]) -> None:
    """Another place :func:`current_flags` looks when no flags are current (for
    frameworks that keep request state of their own, like Flask's request context)."""
    global _resolvers
    if resolve not in _resolvers:
        _resolvers = (*_resolvers, resolve)


def set_default_source(source: Source | None) -> None:
    """The source :func:`current_flags` uses outside a request.

    The middleware and the Flask extension set it to their source when none is set.
    """
    global _default_source
    _default_source = source


def default_source() -> Source | None:
    """The source :func:`current_flags` uses outside a request, if any."""
    return _default_source


def request_flags() -> RequestFlags | None:
    """The current request's flags, or ``None`` outside a request."""
    flags = _current.get()
    if flags is not None:
        return flags
    for resolve in _resolvers:  # e.g. Flask's request context
        flags = resolve()
        if flags is not None:
            return flags
    return None


def current_flags(context: Context | None = None) -> RequestFlags:
    """The flags of the current request.

    Inside a request handled by flagwire's middleware (and in code it calls, tasks it
    starts and threads that copy its context), this is the request's
    :class:`RequestFlags`: one pinned flag set, one context, memoised decisions.

    Outside a request it returns a *fresh* :class:`RequestFlags` over the default source's
    current flag set (see :func:`set_default_source`) with ``context`` (or an empty
    context): nothing is memoised across calls there, and with no source at all every
    flag gives its default with ``FLAG_NOT_FOUND``.

    Args:
        context: Used only outside a request.
    """
    flags = request_flags()
    if flags is not None:
        return flags
    source = _default_source
    flagset = source.flagset if source is not None else EMPTY_FLAGSET
    fresh = RequestFlags(flagset, context or _EMPTY)
    fresh._detached = True
    return fresh


@contextmanager
def activate(flags: RequestFlags) -> Iterator[RequestFlags]:
    """Make ``flags`` the current flags for the duration of a ``with`` block."""
    token: Token[RequestFlags | None] = _current.set(flags)
    try:
        yield flags
    finally:
        _current.reset(token)


EMPTY_FLAGSET = FlagSet.empty(source="<no flag source configured>")

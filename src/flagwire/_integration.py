"""What every web integration shares: a :class:`Binding` of source, context and cookie.

Framework-free: the ASGI middleware, the WSGI middleware and the Flask extension each
hold one binding and create a :class:`BoundRequestFlags` per request.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from ._flagset import FlagSet
from ._request import RequestFlags, default_source, set_default_source
from ._sources import Source, as_source
from .context import Extractor, compose, reads_raw, request_cookies, user

__all__ = ["Binding", "BoundRequestFlags", "ContextSpec"]

ContextSpec = Extractor | Sequence[Extractor] | None
"""An extractor, several (composed in order), or None for the default (:func:`user`)."""

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
    """

    __slots__ = ("adapt", "cookie_attributes", "cookie_name", "extract", "reads_raw", "source")

    def __init__(
        self,
        source: Source | FlagSet,
        context: ContextSpec = None,
        *,
        anonymous_cookie: str | None = DEFAULT_COOKIE,
        cookie_max_age: int = ONE_YEAR,
        make_default: bool = True,
    ) -> None:
        self.source = as_source(source)
        if context is None:
            context = user()
        self.extract: Extractor = compose(
            *(context if isinstance(context, Sequence) else (context,))
        )
        self.reads_raw = reads_raw(self.extract)
        self.adapt: Callable[[Any], Any] | None = None
        """Turns the integration's raw request into what extractors receive (set by it)."""
        self.cookie_name = anonymous_cookie
        self.cookie_attributes = f"Path=/; Max-Age={int(cookie_max_age)}; SameSite=Lax; HttpOnly"
        if make_default and default_source() is None:
            set_default_source(self.source)

    def build_context(self, request: Any, flags: BoundRequestFlags) -> dict[str, Any]:
        """Run the extractors; give an anonymous visitor a stable ``targetingKey``."""
        found = self.extract(request)
        context = found if type(found) is dict else dict(found or {})
        if context.get("targetingKey") or self.cookie_name is None:
            return context
        kept = request_cookies(request).get(self.cookie_name)
        if kept is not None and _VALID_ID.fullmatch(kept):
            context["targetingKey"] = kept
        else:  # none yet, or tampered with: a new one, sent back with the response
            new = secrets.token_urlsafe(16)
            context["targetingKey"] = new
            flags.new_anonymous_id = new
        return context

    def set_cookie_value(self, anonymous_id: str, *, secure: bool) -> str:
        """The ``Set-Cookie`` header value for a new anonymous id."""
        value = f"{self.cookie_name}={anonymous_id}; {self.cookie_attributes}"
        return value + "; Secure" if secure else value


class BoundRequestFlags(RequestFlags):
    """Request flags whose context is built, on first use, from the framework's request."""

    __slots__ = ("_binding", "_raw", "new_anonymous_id")

    def __init__(self, binding: Binding, raw: Any) -> None:
        self.flagset = binding.source.flagset  # pinned for the whole request
        self._context = None
        self._memo = {}
        self._binding = binding
        self._raw = raw
        self.new_anonymous_id: str | None = None

    def _build_context(self) -> dict[str, Any]:
        binding = self._binding
        adapt = binding.adapt
        return binding.build_context(self._raw if adapt is None else adapt(self._raw), self)

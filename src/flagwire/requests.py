"""Send the request's flags with requests, without OpenTelemetry.

::

    import requests
    from flagwire.requests import install

    session = install(requests.Session())   # mounts FlagwireAdapter for http and https

Only destinations the :class:`~flagwire.Propagation` allows get flagwire's members; the
app's own ``baggage`` members always pass. Importing this module also makes every
``requests`` session drop flagwire's members when it follows a redirect to a destination
that is not allowed (in ``Session.rebuild_auth``, where requests drops credentials), so a
plain adapter mounted for another origin, or OpenTelemetry's requests instrumentation
(which does not propagate on redirect hops), never forwards them.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ._errors import missing_extra
from .propagation import outbound_baggage, redirect_baggage, without_anonymous_cookie

try:
    import requests
    from requests.adapters import HTTPAdapter
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise missing_extra(exc, "flagwire.requests", "requests", "requests") from exc

__all__ = ["FlagwireAdapter", "guard_redirects", "install"]


class FlagwireAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` that adds the current request's flags to ``baggage`` (and drops
    flagwire's anonymous-id cookie, which a shared session may have stored)."""

    def add_headers(self, request: requests.PreparedRequest, **kwargs: Any) -> None:
        super().add_headers(request, **kwargs)
        headers = request.headers
        raw = headers.get("baggage")
        existing = raw.decode("latin-1") if isinstance(raw, bytes) else raw
        url = request.url.decode("latin-1") if isinstance(request.url, bytes) else request.url
        value = outbound_baggage(urlsplit(url or "").hostname, existing)
        if value is not None:
            headers["baggage"] = value
        elif existing is not None:
            del headers["baggage"]
        cookie = headers.get("Cookie")
        if isinstance(cookie, str):
            kept = without_anonymous_cookie(cookie)
            if kept is None:
                del headers["Cookie"]
            else:
                headers["Cookie"] = kept


def install(session: requests.Session, **adapter_options: Any) -> requests.Session:
    """Mount :class:`FlagwireAdapter` on ``session`` for http and https; returns it."""
    adapter = FlagwireAdapter(**adapter_options)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def guard_redirects() -> None:
    """Make ``requests`` drop flagwire's baggage members on redirects to destinations that
    are not allowed (idempotent; done when this module is imported)."""
    session_class: Any = requests.Session
    if getattr(session_class.rebuild_auth, "_flagwire", False):
        return
    original = session_class.rebuild_auth

    def rebuild_auth(
        self: requests.Session, prepared_request: requests.PreparedRequest, response: Any
    ) -> None:
        original(self, prepared_request, response)
        headers = prepared_request.headers
        raw = headers.get("baggage")
        if raw is None:
            return
        existing = raw.decode("latin-1") if isinstance(raw, bytes) else raw
        url = prepared_request.url
        kept = redirect_baggage(existing, url.decode("latin-1") if isinstance(url, bytes) else url)
        if kept is None:
            del headers["baggage"]
        else:
            headers["baggage"] = kept

    rebuild_auth._flagwire = True  # type: ignore[attr-defined]
    session_class.rebuild_auth = rebuild_auth


guard_redirects()

"""Send the request's flags with requests, without OpenTelemetry.

::

    import requests
    from flagwire.requests import install

    session = install(requests.Session())   # mounts FlagwireAdapter for http and https

Only destinations the :class:`~flagwire.Propagation` allows get flagwire's members; the
app's own ``baggage`` members always pass.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ._errors import missing_extra
from .propagation import outbound_baggage

try:
    import requests
    from requests.adapters import HTTPAdapter
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise missing_extra(exc, "flagwire.requests", "requests", "requests") from exc

__all__ = ["FlagwireAdapter", "install"]


class FlagwireAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` that adds the current request's flags to ``baggage``."""

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


def install(session: requests.Session, **adapter_options: Any) -> requests.Session:
    """Mount :class:`FlagwireAdapter` on ``session`` for http and https; returns it."""
    adapter = FlagwireAdapter(**adapter_options)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session

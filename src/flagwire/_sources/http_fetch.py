"""What :class:`~flagwire.HttpSource` needs of HTTP: display URLs without secrets, Basic
auth from userinfo, the document format and charset from the response, a fetch's outcome."""

from __future__ import annotations

import base64
import urllib.parse
from email.message import Message

__all__ = ["Fetched", "charset", "display_url", "failure_reason", "format_for", "without_userinfo"]

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


def display_url(url: str) -> str:
    """The URL without credentials or query string (signed URLs carry secrets there)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def without_userinfo(url: str, headers: dict[str, str]) -> str:
    """The URL without ``user:password@``, which becomes Basic auth in ``headers``."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url
    if not any(name.lower() == "authorization" for name in headers):
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def format_for(content_type: str | None, url: str) -> str | None:
    """``"json"``/``"yaml"`` from the Content-Type or the URL suffix; None to guess."""
    if content_type:
        media = content_type.split(";", 1)[0].strip().lower()
        if media == "application/json" or media.endswith("+json"):
            return "json"
        if media in YAML_TYPES or media.endswith("+yaml"):
            return "yaml"
    path = urllib.parse.urlsplit(url).path.lower()
    if path.endswith(".json"):
        return "json"
    if path.endswith((".yaml", ".yml")):
        return "yaml"
    return None


def charset(content_type: str | None) -> str:
    if not content_type:
        return "utf-8"
    message = Message()
    message["content-type"] = content_type
    return message.get_content_charset() or "utf-8"


class Fetched:
    """One fetch's outcome: a new document, or ``not_modified``."""

    __slots__ = ("body", "content_type", "etag", "last_modified", "not_modified")

    def __init__(
        self,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        etag: str | None = None,
        last_modified: str | None = None,
        not_modified: bool = False,
    ) -> None:
        self.body = body
        self.content_type = content_type
        self.etag = etag
        self.last_modified = last_modified
        self.not_modified = not_modified


def failure_reason(reason: object, timeout: float) -> str:
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return f"timed out after {timeout} s"
    if isinstance(reason, BaseException):
        return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
    return str(reason)

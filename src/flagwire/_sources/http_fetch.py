"""What :class:`~flagwire.HttpSource` needs of HTTP: display URLs without secrets, Basic
auth from userinfo, the document format and charset from the response, a fetch's outcome,
and an opener that keeps a fetch's deadline, its secrets and its size.

- :class:`Deadline`: one whole fetch (connect, headers, body, redirects) ends at its
  deadline: every socket the fetch opens is shut down then, however slowly the server
  trickles bytes.
- Redirects to another origin (scheme, host, port) carry none of the caller's headers
  (``Authorization``, API keys, cookies): only flagwire's own.
- :func:`read_body`: the body, decompressed as it arrives, refused past ``max_bytes``
  (compressed or not), so a gzip bomb costs at most ``max_bytes`` of memory.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
import zlib
from email.message import Message
from http.client import HTTPException
from typing import IO, Any

from flagwire._errors import SourceError

__all__ = [
    "Deadline",
    "Fetched",
    "TooLarge",
    "build_opener",
    "charset",
    "display_url",
    "failure_reason",
    "fetch",
    "format_for",
    "read_body",
    "without_userinfo",
]

_SAFE_ACROSS_ORIGINS = frozenset(
    {"user-agent", "accept", "accept-encoding", "if-none-match", "if-modified-since"}
)


class Deadline:
    """Shuts down every socket of the current fetch when its time is up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer: threading.Timer | None = None
        self.fired = False

    def start(self, seconds: float) -> None:
        with self._lock:
            self.fired = False
            self._sockets = []
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with self._lock:
            self._sockets = []

    def watch(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            if not self.fired:
                self._sockets.append(sock)
                return
        _shut(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed: nothing to cut off
        sock.shutdown(socket.SHUT_RDWR)


def _watched(base: type[http.client.HTTPConnection], deadline: Deadline) -> Any:
    class Watched(base):  # type: ignore[valid-type,misc]
        def connect(self) -> None:
            super().connect()
            deadline.watch(self.sock)

    return Watched


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self._connection = _watched(http.client.HTTPConnection, deadline)

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self._connection = _watched(http.client.HTTPSConnection, deadline)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req, context=self._context)  # type: ignore[attr-defined]


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or ""), port


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """urllib copies every header to a redirect target: not to another origin here."""

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
        if new is not None and _origin(new.full_url) != _origin(req.full_url):
            for name, _ in list(new.header_items()):
                if name.lower() not in _SAFE_ACROSS_ORIGINS:
                    new.remove_header(name)
        return new


def build_opener(deadline: Deadline) -> urllib.request.OpenerDirector:
    """urllib's opener (proxies from the environment included) with the deadline on its
    sockets and no caller header on a redirect to another origin."""
    return urllib.request.build_opener(
        _HTTPHandler(deadline), _HTTPSHandler(deadline), _RedirectHandler()
    )


class TooLarge(Exception):
    """The body is larger than allowed (compressed or decompressed)."""


def read_body(response: Any, *, gzipped: bool, max_bytes: int) -> bytes:
    """The body as it arrives, decompressed if ``gzipped``, never more than ``max_bytes``.

    Raises:
        TooLarge: The body (as sent, or decompressed) is larger than ``max_bytes``.
        zlib.error, EOFError: A gzip body that is not one.
    """
    length = response.headers.get("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) > max_bytes:
        raise TooLarge
    read = getattr(response, "read1", None) or response.read
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzipped else None
    chunks: list[bytes] = []
    received = produced = 0
    while chunk := read(65536):
        received += len(chunk)
        if received > max_bytes:
            raise TooLarge
        if decoder is None:
            chunks.append(chunk)
            continue
        data = chunk
        while data:
            out = decoder.decompress(data, max_bytes + 1 - produced)
            produced += len(out)
            if produced > max_bytes:
                raise TooLarge
            chunks.append(out)
            data = decoder.unconsumed_tail
            if decoder.eof:
                break
    if decoder is not None:
        if not decoder.eof:
            raise EOFError("the gzip stream ended early")
    elif not chunks:
        return b""
    return b"".join(chunks)


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


def fetch(
    opener: urllib.request.OpenerDirector,
    deadline: Deadline,
    request: urllib.request.Request,
    *,
    timeout: float,
    max_bytes: int,
    display_url: str,
) -> Fetched:
    """One fetch of ``request``, all of it within ``timeout`` seconds.

    Raises:
        SourceError: Any failure, in words: HTTP status, network, stalled, too large.
    """
    deadline.start(timeout)
    try:
        with opener.open(request, timeout=timeout) as response:
            headers = response.headers
            gzipped = (headers.get("Content-Encoding") or "").strip().lower() == "gzip"
            body = read_body(response, gzipped=gzipped, max_bytes=max_bytes)
    except urllib.error.HTTPError as exc:
        with exc:  # close its response, or it leaks a socket
            if exc.code == 304 and not deadline.fired:
                return Fetched(not_modified=True)
            if not deadline.fired:
                raise SourceError(f"{display_url}: HTTP {exc.code} {exc.reason}".rstrip()) from None
        raise _stalled(display_url, timeout) from None
    except TooLarge:
        raise SourceError(
            f"{display_url}: the document is larger than max_bytes "
            f"({max_bytes} bytes, decompressed size included); refused"
        ) from None
    except (zlib.error, EOFError) as exc:
        if deadline.fired:
            raise _stalled(display_url, timeout) from None
        raise SourceError(f"{display_url}: bad gzip body: {exc}") from exc
    except urllib.error.URLError as exc:
        if deadline.fired:
            raise _stalled(display_url, timeout) from None
        reason = failure_reason(exc.reason, timeout)
        raise SourceError(f"{display_url}: cannot fetch: {reason}") from exc
    except (OSError, HTTPException, ValueError) as exc:
        if deadline.fired:
            raise _stalled(display_url, timeout) from None
        reason = failure_reason(exc, timeout)
        raise SourceError(f"{display_url}: cannot fetch: {reason}") from exc
    finally:
        deadline.stop()
    if deadline.fired:  # the body may look whole: the socket was shut under it
        raise _stalled(display_url, timeout)
    return Fetched(
        body=body,
        content_type=headers.get("Content-Type"),
        etag=headers.get("ETag"),
        last_modified=headers.get("Last-Modified"),
    )


def _stalled(display_url: str, timeout: float) -> SourceError:
    return SourceError(
        f"{display_url}: stalled: timed out after {timeout} s (the deadline "
        "of the whole fetch: connecting, the headers, redirects and the body)"
    )

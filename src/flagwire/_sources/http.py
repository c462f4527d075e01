"""A flag set fetched over HTTP(S): :class:`HttpSource`.

One flag file (flagd's JSON or YAML format) is served from a central place -- a static
HTTP server such as nginx, an object store bucket, or flagd's HTTP sync endpoint -- and
every service polls it. Only the standard library is used (:mod:`urllib.request`).

How a kill switch reaches every service, and how fast
-----------------------------------------------------

Flip the flag in the central file (for example ``"state": "DISABLED"``, or its
``defaultVariant`` to ``"off"``) and publish it. Each service's :class:`HttpSource` polls
the URL from a daemon thread every ``interval`` seconds, jittered by ``± jitter`` so that
a fleet does not poll in lock-step. A poll that sees the new document swaps it in
atomically; the next flag evaluation in that process uses it. So, while the server is
healthy, **every service applies the flip within ``interval * (1 + jitter) + timeout``
seconds at worst** (the longest wait before the next poll, plus the longest a fetch may
wait on the network); with a responsive server the fetch itself takes milliseconds, so in
practice the bound is ``interval * (1 + jitter)`` plus a round trip.

For kill switches, use ``interval`` 2-5 seconds: with the defaults (``jitter=0.2``,
``timeout=2.0``) ``interval=2`` gives a worst case of 4.4 s and ``interval=5`` 8 s.
Polling that often is cheap: requests are conditional (``If-None-Match`` with the ETag,
``If-Modified-Since`` with the Last-Modified date of the document in force), so an
unchanged file costs the server a ``304 Not Modified`` with no body, and costs the
service no parsing and no swap. 1000 services polling every 2 s are 500 small requests
per second, which any static file server or CDN serves easily.

While the server fails, a service backs off exponentially (``interval`` doubled on every
consecutive failure, up to ``max_backoff``; reset by the first success), keeps the last
good flag set, and reports the failure in :attr:`HttpSource.status` (``ok`` False,
``last_error``), which the Prometheus and OpenTelemetry collectors export. Keep
``max_backoff`` small (e.g. 30 s) where kill switches matter: it bounds how long a service
that saw the server fail takes to see a flip made after the server recovers.

There is no push channel (server-sent events, flagd's gRPC sync stream): it would shave
the polling interval off the delay at the cost of a long-lived connection per process, a
reconnect protocol and a dependency or a hand-written SSE client. Polling with conditional
requests gives a bounded, documented delay with the standard library alone, so push is
deliberately not implemented.

Offline mode
------------

With ``cache_path``, every good document fetched is also written to that file (atomically:
a temporary file then :func:`os.replace`), with its ETag, Last-Modified date, URL and fetch
time in ``<cache_path>.meta.json``. A service that starts while the server is down serves
the cached flag set: ``status.ok`` is False and ``status.last_error`` says why, but the
flags are those of the last good fetch (``status.last_good_load`` is when that fetch
happened), not the code defaults. An invalid document (bad JSON or YAML, an invalid flag
set) never replaces the flag set in force and is never written to the cache.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import json
import logging
import os
import random
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import replace
from datetime import datetime, timezone
from email.message import Message
from http.client import HTTPException
from pathlib import Path
from typing import Any

from flagwire._engine.flagset import FlagSet
from flagwire._errors import ConfigError, FlagsetError, SourceError

from .base import _PollingSource

__all__ = ["HttpSource"]

logger = logging.getLogger("flagwire")

_MAX_BYTES = 16 * 1024 * 1024
"""A flag file larger than this is refused (a misconfigured URL, not a flag file)."""

_USER_AGENT = "flagwire-http-source/1"
_ACCEPT = "application/json, application/yaml;q=0.9, text/yaml;q=0.9, */*;q=0.1"
_YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _display_url(url: str) -> str:
    """The URL without credentials or query string (signed URLs carry secrets there)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def _without_userinfo(url: str, headers: dict[str, str]) -> str:
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


def _format_for(content_type: str | None, url: str) -> str | None:
    """``"json"``/``"yaml"`` from the Content-Type or the URL suffix; None to guess."""
    if content_type:
        media = content_type.split(";", 1)[0].strip().lower()
        if media == "application/json" or media.endswith("+json"):
            return "json"
        if media in _YAML_TYPES or media.endswith("+yaml"):
            return "yaml"
    path = urllib.parse.urlsplit(url).path.lower()
    if path.endswith(".json"):
        return "json"
    if path.endswith((".yaml", ".yml")):
        return "yaml"
    return None


def _charset(content_type: str | None) -> str:
    if not content_type:
        return "utf-8"
    message = Message()
    message["content-type"] = content_type
    return message.get_content_charset() or "utf-8"


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class _Fetched:
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


class HttpSource(_PollingSource):
    """A flagd flag file fetched over HTTP(S) and polled for changes.

    The first fetch happens in the constructor (it waits at most about ``timeout``
    seconds); then a daemon thread polls every ``interval * (1 ± jitter)`` seconds with
    conditional requests. A valid new document replaces the flag set in one atomic swap;
    a ``304 Not Modified`` keeps the flag set in force and counts as a success; a failed
    fetch or an invalid document keeps the last good flag set, is logged, and is reported
    in :attr:`status`. See the module documentation for kill-switch timing.

    Args:
        url: The flag file's URL (``http://``, ``https://``; ``file://`` works too, without
            conditional requests). Credentials in the URL and its query string are never
            logged.
        interval: Seconds between polls; ``0`` disables polling (call :meth:`refresh`).
        jitter: The relative spread of the interval: each wait is drawn from
            ``interval * (1 - jitter)`` to ``interval * (1 + jitter)``. In ``[0, 1)``.
        timeout: Seconds a fetch may wait on the network (connecting, and each read);
            the whole body must also arrive within it.
        cache_path: A file to keep the last good document in, for offline starts.
        strict: Raise at start-up if neither the server nor the cache gives a valid flag
            set. Otherwise start with an empty flag set (every flag gives its code
            default), log a loud warning, and keep polling.
        headers: Extra request headers (``Authorization``, ...). Never logged.
        max_backoff: The longest wait between polls while the server keeps failing.
        fractional: Force the fractional algorithm (``"v2"``/``"v3"``).

    Raises:
        SourceError: In strict mode, when no valid flag set could be loaded.
        ConfigError: An argument is out of range.
    """

    def __init__(
        self,
        url: str,
        *,
        interval: float = 10.0,
        jitter: float = 0.2,
        timeout: float = 2.0,
        cache_path: str | os.PathLike[str] | None = None,
        strict: bool = False,
        headers: dict[str, str] | None = None,
        max_backoff: float = 300.0,
        fractional: str | None = None,
    ) -> None:
        if interval < 0:
            raise ConfigError(f"interval must be >= 0 seconds, not {interval!r}")
        if not 0 <= jitter < 1:
            raise ConfigError(f"jitter must be in [0, 1), not {jitter!r}")
        if timeout <= 0:
            raise ConfigError(f"timeout must be > 0 seconds, not {timeout!r}")
        if max_backoff < interval:
            raise ConfigError(
                f"max_backoff ({max_backoff!r} s) must be at least interval ({interval!r} s)"
            )
        if fractional is not None and fractional not in ("v2", "v3"):
            raise ConfigError(f'fractional must be "v2" or "v3", not {fractional!r}')
        self.url = url
        self.display_url = _display_url(url)
        super().__init__(self.display_url)
        self.interval = float(interval)
        self.jitter = float(jitter)
        self.timeout = float(timeout)
        self.max_backoff = float(max_backoff)
        self.cache_path = None if cache_path is None else Path(cache_path)
        self._headers = dict(headers or {})
        self._request_url = _without_userinfo(url, self._headers)
        self._fractional = fractional
        self._random = random.Random()
        self._opener = urllib.request.build_opener()
        # The validators of the document in force (never of a rejected one).
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.consecutive_failures = 0
        self.not_modified_count = 0
        """How many polls the server answered ``304 Not Modified``."""
        self.next_delay = self.compute_delay(0)
        """Seconds until the next poll, as computed after the latest one."""
        self.from_cache = False
        """True while the flag set in force came from the cache, not from the server."""

        cache_problem = self._load_cache()
        first_error = self._poll()
        if first_error is not None and len(self.flagset) == 0 and not self.from_cache:
            reason = f"no flag set: {first_error}"
            if cache_problem:
                reason += f"; cache: {cache_problem}"
            if strict:
                raise SourceError(reason) from first_error
            logger.warning(
                "flagwire: starting with NO FLAGS: %s. Every flag gives its code default "
                "until the server answers (use strict=True to fail instead).",
                reason,
            )
        elif first_error is not None and self.from_cache:
            logger.warning(
                "flagwire: OFFLINE: %s; serving the cached flag set %s from %s, fetched %s",
                first_error,
                self.flagset.version_label,
                self.cache_path,
                self._status.last_good_load,
            )
        if self.interval > 0:
            self._start_polling()

    # -- status helpers ----------------------------------------------------------------

    @property
    def age(self) -> float | None:
        """Seconds since the server last confirmed the flag set in force, or None."""
        last = self._status.last_good_load
        return None if last is None else (_now() - last).total_seconds()

    def is_stale(self, max_age: float) -> bool:
        """True if the server has not confirmed the flag set for ``max_age`` seconds."""
        age = self.age
        return age is None or age > max_age

    def compute_delay(self, failures: int) -> float:
        """The wait before the next poll after ``failures`` consecutive failures.

        ``interval`` after a success, ``interval * 2**failures`` after failures (capped at
        ``max_backoff``), each spread by ``± jitter``; never more than ``max_backoff``.
        """
        spread = 1 + self._random.uniform(-self.jitter, self.jitter)
        if failures <= 0:
            return self.interval * spread
        base = min(self.interval * float(2 ** min(failures, 62)), self.max_backoff)
        return min(base * spread, self.max_backoff)

    # -- fetching ------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Fetch now. Returns True if a new flag set is in force."""
        with self._refresh_lock:  # not interleaved with the poller's fetch
            before = self.flagset
            self._poll()
            return self.flagset.digest != before.digest

    def _poll(self) -> Exception | None:
        """Fetch once, apply the outcome and schedule the next poll; the error, if any."""
        with self._refresh_lock:
            try:
                self._fetch_and_apply()
            except (FlagsetError, SourceError) as exc:
                error: Exception = exc
            except Exception as exc:  # never let a surprise kill the poller
                error = SourceError(f"{self.display_url}: {type(exc).__name__}: {exc}")
            else:
                self.consecutive_failures = 0
                self.next_delay = self.compute_delay(0)
                return None
            self.consecutive_failures += 1
            self.next_delay = self.compute_delay(self.consecutive_failures)
            self._reject(error)
            return error

    def _fetch_and_apply(self) -> None:
        fetched = self._fetch()
        if fetched.not_modified:
            if self.etag is None and self.last_modified is None:
                raise SourceError(f"{self.display_url}: 304 Not Modified to a plain request")
            self.not_modified_count += 1
            self._confirm()
            return
        fmt = _format_for(fetched.content_type, self.url)
        try:
            text = fetched.body.decode(_charset(fetched.content_type))
        except (UnicodeDecodeError, LookupError) as exc:
            raise FlagsetError(f"cannot decode the document: {exc}", path=self.display_url) from exc
        flagset = FlagSet.from_text(
            text, format=fmt, source=self.display_url, fractional=self._fractional
        )
        self.etag = fetched.etag
        self.last_modified = fetched.last_modified
        self._accept(flagset)
        self.from_cache = False
        self._write_cache(fetched.body, fmt)

    def _fetch(self) -> _Fetched:
        request = urllib.request.Request(self._request_url, method="GET")
        request.add_header("User-Agent", _USER_AGENT)
        request.add_header("Accept", _ACCEPT)
        request.add_header("Accept-Encoding", "gzip")
        for name, value in self._headers.items():
            request.add_header(name, value)
        if self.etag is not None:
            request.add_header("If-None-Match", self.etag)
        if self.last_modified is not None:
            request.add_header("If-Modified-Since", self.last_modified)
        deadline = time.monotonic() + self.timeout
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                headers = response.headers
                chunks: list[bytes] = []
                size = 0
                while chunk := response.read(65536):
                    size += len(chunk)
                    if size > _MAX_BYTES:
                        raise SourceError(
                            f"{self.display_url}: the document is larger than {_MAX_BYTES} bytes"
                        )
                    if time.monotonic() > deadline:
                        raise SourceError(
                            f"{self.display_url}: timed out after {self.timeout} s reading "
                            "the document"
                        )
                    chunks.append(chunk)
        except urllib.error.HTTPError as exc:
            with exc:  # close its response, or it leaks a socket
                if exc.code == 304:
                    return _Fetched(not_modified=True)
                raise SourceError(
                    f"{self.display_url}: HTTP {exc.code} {exc.reason}".rstrip()
                ) from None
        except urllib.error.URLError as exc:
            reason = _reason(exc.reason, self.timeout)
            raise SourceError(f"{self.display_url}: cannot fetch: {reason}") from exc
        except (OSError, HTTPException, ValueError) as exc:
            reason = _reason(exc, self.timeout)
            raise SourceError(f"{self.display_url}: cannot fetch: {reason}") from exc
        body = b"".join(chunks)
        if (headers.get("Content-Encoding") or "").strip().lower() == "gzip":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError) as exc:
                raise SourceError(f"{self.display_url}: bad gzip body: {exc}") from exc
        return _Fetched(
            body=body,
            content_type=headers.get("Content-Type"),
            etag=headers.get("ETag"),
            last_modified=headers.get("Last-Modified"),
        )

    def _confirm(self) -> None:
        """The server confirmed the flag set in force (a 304): a success, without a swap."""
        with self._lock:
            self._status = replace(
                self._status,
                ok=True,
                last_good_load=_now(),
                last_error=None,
                last_error_time=None,
            )
        self.from_cache = False

    # -- the on-disk cache -------------------------------------------------------------

    @property
    def _meta_path(self) -> Path | None:
        if self.cache_path is None:
            return None
        return self.cache_path.with_name(self.cache_path.name + ".meta.json")

    def _write_cache(self, body: bytes, fmt: str | None) -> None:
        meta_path = self._meta_path
        if self.cache_path is None or meta_path is None:
            return
        meta = {
            "url": self.display_url,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "format": fmt,
            "fetched_at": (self._status.last_good_load or _now()).isoformat(),
            "sha256": hashlib.sha256(body).hexdigest(),
        }
        try:
            _write_atomically(self.cache_path, body)
            _write_atomically(meta_path, json.dumps(meta, indent=2).encode())
        except OSError as exc:
            logger.warning("flagwire: cannot write the flag cache %s: %s", self.cache_path, exc)

    def _load_cache(self) -> str | None:
        """Put the cached flag set in force, if there is a valid one; else the problem."""
        meta_path = self._meta_path
        if self.cache_path is None or meta_path is None:
            return None
        try:
            body = self.cache_path.read_bytes()
        except FileNotFoundError:
            return f"{self.cache_path} does not exist"
        except OSError as exc:
            return f"cannot read {self.cache_path}: {exc}"
        meta: dict[str, Any] = {}
        try:
            loaded = json.loads(meta_path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                meta = loaded
        except (OSError, ValueError):
            logger.warning("flagwire: %s is missing or unreadable; ignoring it", meta_path)
        if meta.get("url") not in (None, self.display_url):
            problem = f"{self.cache_path} holds flags of {meta.get('url')}, not {self.display_url}"
            logger.warning("flagwire: ignoring the flag cache: %s", problem)
            return problem
        fmt = meta.get("format")
        try:
            flagset = FlagSet.from_text(
                body.decode("utf-8"),
                format=fmt if fmt in ("json", "yaml") else None,
                source=self.display_url,
                fractional=self._fractional,
            )
        except (FlagsetError, UnicodeDecodeError) as exc:
            problem = f"{self.cache_path} is invalid: {exc}"
            logger.warning("flagwire: ignoring the flag cache: %s", problem)
            return problem
        # Conditional requests only if the validators belong to this very body.
        if meta.get("sha256") == hashlib.sha256(body).hexdigest():
            etag, last_modified = meta.get("etag"), meta.get("last_modified")
            self.etag = etag if isinstance(etag, str) else None
            self.last_modified = last_modified if isinstance(last_modified, str) else None
        fetched_at: datetime | None = None
        if isinstance(meta.get("fetched_at"), str):
            try:
                fetched_at = datetime.fromisoformat(meta["fetched_at"])
            except ValueError:
                fetched_at = None
        if fetched_at is None:
            fetched_at = datetime.fromtimestamp(self.cache_path.stat().st_mtime, timezone.utc)
        self._accept(flagset)
        with self._lock:  # the flags are as fresh as that fetch, not as this start-up
            self._status = replace(self._status, last_good_load=fetched_at)
        self.from_cache = True
        return None

    # -- the poller ----------------------------------------------------------------------

    _refresh_lock_type = threading.RLock  # refresh() and the poller share the fetch

    @property
    def _join_timeout(self) -> float:  # type: ignore[override]
        return self.timeout + 5

    def _delay(self) -> float:
        return self.next_delay

    def _thread_name(self) -> str:
        return f"flagwire-http:{self.display_url}"

    def _after_fork(self) -> None:
        self._random = random.Random()  # children must not poll in lock-step
        super()._after_fork()

    def __repr__(self) -> str:
        return f"<HttpSource {self.display_url} {self._status.version} ok={self._status.ok}>"


def _reason(reason: object, timeout: float) -> str:
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return f"timed out after {timeout} s"
    if isinstance(reason, BaseException):
        return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
    return str(reason)

"""A flag set fetched over HTTP(S): :class:`HttpSource`.

One flag file (flagd's JSON or YAML format) is served from a central place -- a static
HTTP server such as nginx, an object store bucket, or flagd's HTTP sync endpoint -- and
every service polls it. Only the standard library is used (:mod:`urllib.request`).

How a kill switch reaches every service, and how fast
-----------------------------------------------------

Each service polls the URL from a daemon thread every ``interval`` seconds, jittered by
``± jitter`` so a fleet does not poll in lock-step, with conditional requests
(``If-None-Match``, ``If-Modified-Since``: an unchanged file costs a ``304`` and no
parsing). A poll that sees the new document swaps it in atomically. ``timeout`` is the
deadline of one whole fetch (connecting, headers, redirects, the whole body): a server
that trickles bytes is cut off then and the fetch reported in :attr:`HttpSource.status`
as stalled. So while the server answers at all, **every service applies a flip within
``interval * (1 + jitter) + timeout`` seconds at worst**; with the defaults
(``jitter=0.2``, ``timeout=2.0``) ``interval=2`` gives 4.4 s. Use 2-5 s for kill switches.

While the server fails, a service backs off exponentially (``interval`` doubled on every
consecutive failure, up to ``max_backoff``; reset by the first success), keeps the last
good flag set, and reports the failure in :attr:`HttpSource.status` (``ok`` False,
``last_error``). Keep ``max_backoff`` small (e.g. 30 s) where kill switches matter.

A document is read as it arrives and refused past ``max_bytes`` (16 MiB by default),
decompressed size included; credentials (``headers``, URL userinfo) never go to a
redirect target on another origin.

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

import logging
import os
import random
import threading
import urllib.parse
import urllib.request
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from flagwire._errors import ConfigError, FlagsetError, SourceError

from .base import load_text
from .cache import DocumentCache
from .http_fetch import (
    Deadline,
    Fetched,
    build_opener,
    charset,
    display_url,
    fetch,
    format_for,
    without_userinfo,
)
from .polling import PollingSource

__all__ = ["HttpSource"]

logger = logging.getLogger("flagwire")

MAX_BYTES = 16 * 1024 * 1024
"""The default cap on a document, decompressed size included (a misconfigured URL or a
gzip bomb, not a flag file)."""

_USER_AGENT = "flagwire-http-source/1"
_ACCEPT = "application/json, application/yaml;q=0.9, text/yaml;q=0.9, */*;q=0.1"


def _now() -> datetime:
    return datetime.now(timezone.utc)


class HttpSource(PollingSource):
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
        timeout: The deadline of one whole fetch, in seconds: connecting, the headers,
            redirects and the whole body. A server that trickles bytes is cut off then,
            and the fetch is reported in :attr:`status` as stalled.
        cache_path: A file to keep the last good document in, for offline starts.
        strict: Raise at start-up if neither the server nor the cache gives a valid flag
            set. Otherwise start with an empty flag set (every flag gives its code
            default), log a loud warning, and keep polling.
        headers: Extra request headers (``Authorization``, ...). Never logged, and never
            sent to a redirect target on another origin (nor are URL credentials).
        max_backoff: The longest wait between polls while the server keeps failing.
        fractional: Force the fractional algorithm (``"v2"``/``"v3"``).
        max_bytes: The largest document accepted, as sent and decompressed (gzip): a
            larger one is refused, read no further, and reported in :attr:`status`.

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
        max_bytes: int = MAX_BYTES,
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
        if max_bytes <= 0:
            raise ConfigError(f"max_bytes must be > 0, not {max_bytes!r}")
        if fractional is not None and fractional not in ("v2", "v3"):
            raise ConfigError(f'fractional must be "v2" or "v3", not {fractional!r}')
        self.url = url
        self.display_url = display_url(url)
        super().__init__(self.display_url)
        self.interval = float(interval)
        self.jitter = float(jitter)
        self.timeout = float(timeout)
        self.max_backoff = float(max_backoff)
        self.cache_path = None if cache_path is None else Path(cache_path)
        self._cache = None if cache_path is None else DocumentCache(cache_path, self.display_url)
        self._headers = dict(headers or {})
        self._request_url = without_userinfo(url, self._headers)
        self._fractional = fractional
        self._random = random.Random()
        self.max_bytes = int(max_bytes)
        self._deadline = Deadline()
        self._opener = build_opener(self._deadline)
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
        self._report_start(first_error, cache_problem, strict=strict, peer="the server")
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
        fmt = format_for(fetched.content_type, self.url)
        try:
            text = fetched.body.decode(charset(fetched.content_type))
        except (UnicodeDecodeError, LookupError) as exc:
            raise FlagsetError(f"cannot decode the document: {exc}", path=self.display_url) from exc
        flagset = load_text(text, format=fmt, source=self.display_url, fractional=self._fractional)
        self.etag = fetched.etag
        self.last_modified = fetched.last_modified
        self._accept(flagset)
        self.from_cache = False
        self._write_cache(fetched.body, fmt)

    def _fetch(self) -> Fetched:
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
        return fetch(
            self._opener,
            self._deadline,
            request,
            timeout=self.timeout,
            max_bytes=self.max_bytes,
            display_url=self.display_url,
        )

    def _confirm(self) -> None:
        """The server confirmed the flag set in force (a 304): a success, without a swap."""
        super()._confirm()
        self.from_cache = False

    # -- the on-disk cache -------------------------------------------------------------

    def _write_cache(self, body: bytes, fmt: str | None) -> None:
        if self._cache is not None:
            self._cache.write(
                body,
                format=fmt,
                fetched_at=self._status.last_good_load or _now(),
                validators={"etag": self.etag, "last_modified": self.last_modified},
            )

    def _load_cache(self) -> str | None:
        """Put the cached flag set in force, if there is a valid one; else the problem."""
        if self._cache is None:
            return None
        cached = self._cache.read(("etag", "last_modified"))
        if isinstance(cached, str):
            return cached
        try:
            flagset = load_text(
                cached.text,
                format=cached.format,
                source=self.display_url,
                fractional=self._fractional,
            )
        except FlagsetError as exc:
            return self._cache.invalid(exc)
        # Conditional requests only if the validators belong to this very body.
        self.etag = cached.validators.get("etag")
        self.last_modified = cached.validators.get("last_modified")
        self._accept(flagset)
        with self._lock:  # the flags are as fresh as that fetch, not as this start-up
            self._status = replace(self._status, last_good_load=cached.fetched_at)
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

"""A flag set pushed through Redis: :class:`RedisSource` (extra ``flagwire[redis]``).

``flagwire publish`` (or :func:`flagwire._control.publish.publish`) writes a validated
document under ``key`` and notifies the change channel in one atomic step; every
:class:`RedisSource` is subscribed to that channel, reads the new document when notified
and swaps it in, so a change reaches every worker of every service in milliseconds.

While Redis is down each service keeps the flag set in force, reports the outage in
:attr:`RedisSource.status`, reconnects with jittered exponential backoff (up to
``max_backoff``) and, because pub/sub drops what is published while a subscriber is away,
reads the document again as soon as it is back. A slow periodic read
(``resync_interval``) is the safety net for anything else missed. With ``cache_path``, the
last good document is also kept on disk (shared with :class:`~flagwire.HttpSource`), so a
service that starts while Redis is down serves it instead of the code defaults.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from flagwire._engine.flagset import FlagSet
from flagwire._errors import ConfigError, FlagsetError, SourceError

from .cache import DocumentCache
from .polling import PollingSource
from .redis_client import RedisKeys, connect, display_redis_url, require_redis

__all__ = ["RedisSource"]

logger = logging.getLogger("flagwire")

_FIRST_RETRY = 0.05
"""Seconds before the first reconnection attempt (doubled per failure, to max_backoff)."""
_LISTEN_SLICE = 0.25
"""The longest the listener waits on the channel before it checks for close()."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


class RedisSource(PollingSource):
    """A flag document in Redis, pushed to this process on every change.

    The first read happens in the constructor (it waits at most about ``timeout`` seconds);
    then a daemon thread subscribes to the key's change channel, reads the document again
    on every notification, on every reconnection and every ``resync_interval`` seconds. A
    valid new document replaces the flag set in one atomic swap; an invalid one (written to
    the key by hand, say) is logged and reported in :attr:`status` and changes nothing.

    Args:
        url: ``redis://[[USER]:PASSWORD@]HOST:PORT/DB``, ``rediss://`` (TLS), ``unix://``,
            ``redis+sentinel://HOST:PORT,HOST:PORT/SERVICE[/DB]`` or
            ``redis+cluster://HOST:PORT``. Its credentials are never logged.
        key: The key holding the flag document (``flagwire publish --key``).
        cache_path: A file to keep the last good document in, for starts while Redis is
            down.
        strict: Raise at start-up if neither Redis nor the cache gives a valid flag set.
            Otherwise start with an empty flag set (every flag gives its code default),
            log a loud warning, and keep trying.
        timeout: Seconds to wait for Redis to connect or answer.
        resync_interval: Seconds between the safety-net reads; ``0`` disables them.
        max_backoff: The longest wait between reconnection attempts while Redis is down:
            it bounds how long after Redis is back a change reaches this process.
        jitter: The relative spread of each wait, in ``[0, 1)``.
        fractional: Force the fractional algorithm (``"v2"``/``"v3"``).

    Raises:
        SourceError: In strict mode, when no valid flag set could be loaded.
        ConfigError: An argument is out of range, or the URL is not a Redis URL.
        ImportError: redis-py is not installed (``pip install "flagwire[redis]"``).
    """

    def __init__(
        self,
        url: str,
        *,
        key: str = "flagwire:flags",
        cache_path: str | os.PathLike[str] | None = None,
        strict: bool = False,
        timeout: float = 2.0,
        resync_interval: float = 30.0,
        max_backoff: float = 1.0,
        jitter: float = 0.2,
        fractional: str | None = None,
    ) -> None:
        require_redis()
        if timeout <= 0:
            raise ConfigError(f"timeout must be > 0 seconds, not {timeout!r}")
        if resync_interval < 0:
            raise ConfigError(f"resync_interval must be >= 0 seconds, not {resync_interval!r}")
        if max_backoff < _FIRST_RETRY:
            raise ConfigError(f"max_backoff must be >= {_FIRST_RETRY} s, not {max_backoff!r}")
        if not 0 <= jitter < 1:
            raise ConfigError(f"jitter must be in [0, 1), not {jitter!r}")
        if fractional is not None and fractional not in ("v2", "v3"):
            raise ConfigError(f'fractional must be "v2" or "v3", not {fractional!r}')
        self.url = url
        self.display_url = display_redis_url(url)
        self.keys = RedisKeys.for_key(key)
        self.key = key
        super().__init__(f"{self.display_url} key {key}")
        self.timeout = float(timeout)
        self.resync_interval = float(resync_interval)
        self.max_backoff = float(max_backoff)
        self.jitter = float(jitter)
        self.cache_path = None if cache_path is None else Path(cache_path)
        self._cache = None if cache_path is None else DocumentCache(cache_path, self._name)
        self._fractional = fractional
        self._random = random.Random()
        self._client: Any = None
        self._client_pid = 0
        self._pubsub: Any = None
        self._document: bytes | None = None  # the raw document in force
        self.revision: int | None = None
        """The store revision of the flag set in force (``flagwire history``), if known."""
        self.from_cache = False
        """True while the flag set in force came from the cache, not from Redis."""
        self.connected = False
        """True while subscribed to the change channel."""
        self.reconnects = 0
        """How many times the subscription was re-established after a failure."""

        self._redis()  # a bad URL raises here; no connection is made yet
        cache_problem = self._load_cache()
        first_error = self._refresh()
        self._report_start(first_error, cache_problem, strict=strict, peer="Redis")
        self._start_polling()

    # -- reading -------------------------------------------------------------------------

    def _redis(self) -> Any:
        """This process's client (a forked child never uses its parent's connections)."""
        if self._client is None or self._client_pid != os.getpid():
            self._client = connect(self.url, timeout=self.timeout)
            self._client_pid = os.getpid()
        return self._client

    def refresh(self) -> bool:
        """Read the document now. Returns True if a new flag set is in force."""
        before = self.flagset
        self._refresh()
        return self.flagset.digest != before.digest

    def _refresh(self) -> Exception | None:
        """Read once and apply the outcome; the error, if any (already reported)."""
        redis = require_redis()
        try:
            self._read()
        except (FlagsetError, SourceError) as exc:
            error: Exception = exc
        except (redis.RedisError, OSError) as exc:
            error = SourceError(f"{self._name}: cannot read: {type(exc).__name__}: {exc}")
        except Exception as exc:  # never let a surprise kill the listener
            error = SourceError(f"{self._name}: {type(exc).__name__}: {exc}")
        else:
            return None
        self._reject(error)
        return error

    def _read(self) -> None:
        """Read the document and its revision; swap in a valid new flag set.

        Raises:
            FlagsetError: The document is not a valid flag set.
            SourceError: The key is missing or holds something else.
            redis.RedisError: Redis cannot be reached.
        """
        with self._refresh_lock:
            document, revision = self._redis().mget([self.keys.document, self.keys.revision])
            if document is None:
                raise SourceError(
                    f"{self._name}: the key {self.key!r} does not exist; publish a flag set "
                    f"with: flagwire publish FILE --redis URL --key {self.key}"
                )
            if document == self._document:
                self._confirm()
                self.from_cache = False
                self._set_revision(revision)
                return
            try:
                text = document.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise FlagsetError(
                    f"the document under {self.key!r} is not UTF-8: {exc}", path=self._name
                ) from exc
            flagset = FlagSet.from_text(text, source=self._name, fractional=self._fractional)
            self._accept(flagset)
            self._document = document
            self.from_cache = False
            self._set_revision(revision)
            if self._cache is not None:
                self._cache.write(
                    document,
                    format=None,
                    fetched_at=self._status.last_good_load or _now(),
                    validators={"revision": None if revision is None else revision.decode()},
                )

    def _set_revision(self, revision: bytes | None) -> None:
        self.revision = int(revision) if revision is not None and revision.isdigit() else None

    def _load_cache(self) -> str | None:
        """Put the cached flag set in force, if there is a valid one; else the problem."""
        if self._cache is None:
            return None
        cached = self._cache.read(("revision",))
        if isinstance(cached, str):
            return cached
        try:
            flagset = FlagSet.from_text(
                cached.text, format=cached.format, source=self._name, fractional=self._fractional
            )
        except FlagsetError as exc:
            return self._cache.invalid(exc)
        self._accept(flagset)
        with self._lock:  # the flags are as fresh as that read, not as this start-up
            self._status = replace(self._status, last_good_load=cached.fetched_at)
        self._document = cached.text.encode("utf-8")
        self._set_revision(cached.validators.get("revision", "").encode())
        self.from_cache = True
        return None

    # -- the listener --------------------------------------------------------------------

    def backoff(self, failures: int) -> float:
        """The wait before reconnection attempt number ``failures`` (jittered)."""
        base = min(_FIRST_RETRY * float(2 ** min(failures, 30)), self.max_backoff)
        return base * (1 + self._random.uniform(-self.jitter, self.jitter))

    def _next_resync(self) -> float:
        if self.resync_interval <= 0:
            return float("inf")
        spread = 1 + self._random.uniform(-self.jitter, self.jitter)
        return time.monotonic() + self.resync_interval * spread

    def _run(self) -> None:
        redis = require_redis()
        failures = 0
        while not self._stop.is_set():
            try:
                self._listen()
            except (redis.RedisError, OSError, SourceError) as exc:
                if self._stop.is_set():
                    break
                failures += 1
                self.connected = False
                error = SourceError(f"{self._name}: disconnected: {type(exc).__name__}: {exc}")
                # Logged once per outage (and then every 100 attempts): status says the rest.
                self._reject(error, log=failures % 100 == 1)
                self._stop.wait(self.backoff(failures))
                if failures == 1:
                    self.reconnects += 1
                continue
            except Exception:  # never let a surprise kill the listener
                logger.exception("flagwire: %s: the Redis listener failed", self._name)
                failures += 1
                self._stop.wait(self.backoff(failures))
                continue
            failures = 0
        self.connected = False

    def _listen(self) -> None:
        """Subscribe, read (messages were lost while away), then read on every message."""
        pubsub = self._redis().pubsub()
        self._pubsub = pubsub
        try:
            pubsub.subscribe(self.keys.channel)
            # Wait for Redis to confirm the subscription before reading: then nothing
            # published after the read can be missed.
            deadline = time.monotonic() + self.timeout
            while True:
                message = pubsub.get_message(timeout=self.timeout)
                if message is not None and message["type"] == "subscribe":
                    break
                if time.monotonic() > deadline:
                    raise SourceError(f"{self._name}: Redis did not confirm the subscription")
            self.connected = True
            self._read_or_report()
            resync_at = self._next_resync()
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=_LISTEN_SLICE)
                if message is not None and message["type"] == "message":
                    while pubsub.get_message(timeout=0) is not None:
                        pass  # many changes at once: one read gives the latest
                    self._read_or_report()
                elif time.monotonic() >= resync_at:
                    self._read_or_report()
                    resync_at = self._next_resync()
        finally:
            self._pubsub = None
            try:
                pubsub.close()
            except Exception:  # the connection may be half-dead already
                logger.debug("flagwire: closing the Redis subscription failed", exc_info=True)

    def _read_or_report(self) -> None:
        """Read; a bad document is reported, a connection error goes to the caller."""
        try:
            self._read()
        except (FlagsetError, SourceError) as exc:
            self._reject(exc)

    def _thread_name(self) -> str:
        return f"flagwire-redis:{self._name}"

    @property
    def _join_timeout(self) -> float:  # type: ignore[override]
        return self.timeout + _LISTEN_SLICE + 1

    def _after_fork(self) -> None:
        # The parent's connections stay the parent's: this process makes its own.
        self._client = None
        self._pubsub = None
        self.connected = False
        self._random = random.Random()
        super()._after_fork()

    def close(self) -> None:
        """Unsubscribe and stop the listener thread."""
        super().close()
        if self._client is not None and self._client_pid == os.getpid():
            try:
                self._client.close()
            except Exception:
                logger.debug("flagwire: closing the Redis client failed", exc_info=True)

    def __repr__(self) -> str:
        return f"<RedisSource {self._name} {self._status.version} ok={self._status.ok}>"

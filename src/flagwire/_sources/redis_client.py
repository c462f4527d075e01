"""What the Redis source and the publisher share: the guarded ``redis`` import, clients for
plain, Sentinel and Cluster URLs, URLs without credentials, and the layout of the keys.

The keys of one flag set (``key`` is ``flagwire:flags`` by default)::

    <key>                     the flag document (JSON), what every service reads
    {<key>}:revision          the store's revision counter, bumped by every publish
    {<key>}:history           a stream: one entry per publish (revision, digest, author, ...)
    {<key>}:changes           the pub/sub channel a publish notifies (the new revision)

The braces are a Redis Cluster hash tag: all four hash to the slot of ``<key>``, so one Lua
script may touch them all. (A ``key`` with a hash tag of its own keeps it.)
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from flagwire._errors import ConfigError

from .http_fetch import display_url

__all__ = ["RedisKeys", "connect", "display_redis_url", "require_redis"]

_INSTALL = 'pip install -e ".[redis]"'
_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel", "redis+cluster")


def require_redis() -> ModuleType:
    """The ``redis`` module (redis-py), or an ImportError naming the extra to install."""
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        raise ImportError(
            f"flagwire's Redis support needs redis-py: {_INSTALL} (or pip install "
            f"'flagwire[redis]')"
        ) from exc
    return redis


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """The Redis keys and channel of one flag set (see the module documentation)."""

    document: str
    revision: str
    history: str
    channel: str

    @classmethod
    def for_key(cls, key: str) -> RedisKeys:
        if not key or key.isspace():
            raise ConfigError("the Redis key must not be empty (default: flagwire:flags)")
        tag = key if re.search(r"\{[^{}]+\}", key) else "{" + key + "}"
        return cls(key, f"{tag}:revision", f"{tag}:history", f"{tag}:changes")


def display_redis_url(url: str) -> str:
    """The URL without password, user or query (what logs, errors and metrics show)."""
    parts = urllib.parse.urlsplit(url)
    if "," in parts.netloc:  # Sentinel: several hosts, which urlsplit cannot parse
        hosts = parts.netloc.rsplit("@", 1)[-1]
        return urllib.parse.urlunsplit((parts.scheme, hosts, parts.path, "", ""))
    return display_url(url)


def _check_scheme(url: str) -> str:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in _SCHEMES:
        raise ConfigError(
            f"{display_redis_url(url)!r} is not a Redis URL: use redis://HOST:PORT/DB, "
            "rediss:// (TLS), unix:///PATH, redis+sentinel://HOST:PORT,HOST:PORT/SERVICE/DB "
            "or redis+cluster://HOST:PORT"
        )
    return scheme


def _sentinel(url: str, scheme: str, options: dict[str, Any]) -> Any:
    redis = require_redis()
    from redis.sentinel import Sentinel

    parts = urllib.parse.urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    segments = [s for s in parts.path.split("/") if s]
    if not segments:
        raise ConfigError(
            f"{display_redis_url(url)!r}: name the Sentinel service: "
            "redis+sentinel://HOST:PORT,HOST:PORT/SERVICE[/DB]"
        )
    addresses = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ConfigError(f"{display_redis_url(url)!r}: {host!r} is not HOST:PORT")
        addresses.append((name.strip("[]"), int(port)))
    db = int(segments[1]) if len(segments) > 1 and segments[1].isdigit() else 0
    secret = {
        "username": urllib.parse.unquote(user) or None,
        "password": urllib.parse.unquote(password) or None,
    }
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        addresses,
        sentinel_kwargs={**secret, "socket_timeout": options["socket_timeout"]},
        ssl=scheme.startswith("rediss"),
        **secret,
        **options,
    )
    client = sentinel.master_for(segments[0], db=db, redis_class=redis.Redis)  # type: ignore[no-untyped-call]
    return client


def connect(url: str, *, timeout: float) -> Any:
    """A redis-py client for ``url`` (no connection is made until the first command).

    ``redis://``, ``rediss://`` and ``unix://`` give a :class:`redis.Redis`;
    ``redis+sentinel://h1:26379,h2:26379/SERVICE[/DB]`` the master Sentinel names (it follows
    fail-overs); ``redis+cluster://HOST:PORT`` a :class:`redis.cluster.RedisCluster`.
    """
    scheme = _check_scheme(url)
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "socket_keepalive": True,
        "health_check_interval": 10,
        "decode_responses": False,
    }
    if scheme.endswith("+sentinel"):
        return _sentinel(url, scheme, options)
    redis = require_redis()
    if scheme == "redis+cluster":
        from redis.cluster import RedisCluster

        options.pop("health_check_interval")
        return RedisCluster.from_url("redis" + url[len("redis+cluster") :], **options)
    return redis.Redis.from_url(url, **options)

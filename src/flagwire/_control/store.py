"""The flag store in Redis: the document, its revision, the history stream, the channel.

One Lua script is the only writer: it checks that the store is still at the revision (and
the document) the publisher read, then writes the document, bumps the revision, appends the
history entry and notifies the channel -- all or nothing, so two publishers at once can
never lose an update (the second is told to retry) and a subscriber notified of a revision
always reads it. The key layout is in :mod:`flagwire._sources.redis_client`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from flagwire._errors import ConflictError, SourceError
from flagwire._sources.redis_client import RedisKeys, connect, display_redis_url, require_redis

__all__ = ["ConflictError", "FlagStore", "HistoryEntry", "Stored"]

HISTORY_LENGTH: Final = 1000
"""About how many history entries are kept (older ones are trimmed, and cannot be rolled
back to)."""

# KEYS: document, revision, history. ARGV: expected revision, expected sha1 of the current
# document ("" for none), new document, channel, history length, then field/value pairs.
_PUBLISH: Final = """
local revision = tonumber(redis.call('GET', KEYS[2]) or '0')
local current = redis.call('GET', KEYS[1])
local sha = ''
if current then sha = redis.sha1hex(current) end
if revision ~= tonumber(ARGV[1]) or sha ~= ARGV[2] then
    return {0, revision}
end
revision = revision + 1
redis.call('SET', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], revision)
local entry = {'revision', tostring(revision)}
for i = 6, #ARGV do entry[#entry + 1] = ARGV[i] end
entry[#entry + 1] = 'document'
entry[#entry + 1] = ARGV[3]
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', unpack(entry))
redis.call('PUBLISH', ARGV[4], tostring(revision))
return {1, revision}
"""


@dataclass(frozen=True, slots=True)
class Stored:
    """What the store holds now.

    Attributes:
        revision: The store's revision (0 before the first publish).
        document: The document under the key, or ``None`` if there is none.
    """

    revision: int
    document: bytes | None

    @property
    def sha1(self) -> str:
        return "" if self.document is None else hashlib.sha1(self.document).hexdigest()


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One recorded change (``flagwire history``).

    Attributes:
        id: The stream entry id (``<ms>-<n>``, Redis server time).
        revision: The store revision the change produced.
        fields: ``action``, ``digest``, ``version``, ``time``, ``author``, ``message``, ...
        document: The document published (what a rollback republishes).
    """

    id: str
    revision: int
    fields: Mapping[str, str]
    document: bytes

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "revision": self.revision, **self.fields}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class FlagStore:
    """One flag set in Redis: read it, write it with compare-and-set, read its history.

    Args:
        url: A Redis URL (see :class:`~flagwire.RedisSource`); credentials never logged.
        key: The key holding the document.
        timeout: Seconds to wait for Redis.
    """

    def __init__(self, url: str, *, key: str = "flagwire:flags", timeout: float = 5.0) -> None:
        self.url = url
        self.display_url = display_redis_url(url)
        self.key = key
        self.keys = RedisKeys.for_key(key)
        self._client: Any = connect(url, timeout=timeout)
        self._script: Any = None

    @property
    def name(self) -> str:
        return f"{self.display_url} key {self.key}"

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        redis = require_redis()
        try:
            return fn(*args)
        except (redis.RedisError, OSError) as exc:
            raise SourceError(f"{self.name}: cannot {what}: {type(exc).__name__}: {exc}") from exc

    def read(self) -> Stored:
        """The document and revision in the store now."""
        document, revision = self._call(
            "read", self._client.mget, [self.keys.document, self.keys.revision]
        )
        return Stored(int(revision or 0), document)

    def write(self, document: bytes, *, expected: Stored, fields: Mapping[str, str]) -> int:
        """Write ``document`` if the store still holds ``expected``; the new revision.

        Raises:
            ConflictError: The store changed since ``expected`` was read.
            SourceError: Redis cannot be reached.
        """
        if self._script is None:
            self._script = self._client.register_script(_PUBLISH)
        pairs = [part for name, value in fields.items() for part in (name, value)]
        keys = [self.keys.document, self.keys.revision, self.keys.history]
        args = [
            expected.revision,
            expected.sha1,
            document,
            self.keys.channel,
            HISTORY_LENGTH,
            *pairs,
        ]
        written, revision = self._call("publish", self._script, keys, args)
        if not written:
            raise ConflictError(self.key, expected.revision, int(revision))
        return int(revision)

    def history(self, limit: int | None = None) -> list[HistoryEntry]:
        """The recorded changes, oldest first (the latest ``limit`` if given)."""
        if limit is None:
            raw = self._call("read the history", self._client.xrange, self.keys.history)
        else:
            raw = self._call(
                "read the history",
                lambda: list(reversed(self._client.xrevrange(self.keys.history, count=limit))),
            )
        entries = []
        for entry_id, data in raw:
            fields = {_text(k): v for k, v in data.items()}
            document = fields.pop("document", b"")
            revision = int(_text(fields.pop("revision", b"0")))
            entries.append(
                HistoryEntry(
                    _text(entry_id),
                    revision,
                    {k: _text(v) for k, v in fields.items()},
                    document if isinstance(document, bytes) else str(document).encode(),
                )
            )
        return entries

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> FlagStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

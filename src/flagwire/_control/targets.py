"""Where the guard reads the flag set in force and writes its changes: Redis through the
publish path (compare-and-set, history, notification), or a flag file written atomically.

Both refuse a change made against a flag set that is no longer in force
(:class:`ConflictError`): the guard judges again at the next interval.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from flagwire._engine.definitions import parse_document, parse_text
from flagwire._engine.flagset import FlagSet
from flagwire._errors import ConflictError, FlagsetError, SourceError
from flagwire._sources.cache import write_atomically

from .publish import commit, encode, killed, plan_kill, plan_publish, validated
from .store import FlagStore, Stored

__all__ = ["FileTarget", "RedisTarget", "Snapshot", "Target"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The flag set in force, the document it came from, and what a write must still find.

    Attributes:
        flagset: The flag set.
        raw: Its document, parsed.
        token: The store's :class:`Stored`, or the file's bytes.
        revision: The store's revision (None for a file).
    """

    flagset: FlagSet
    raw: Mapping[str, Any]
    token: Any
    revision: int | None


class Target(Protocol):
    """Reads and writes one flag set."""

    name: str

    def read(self) -> Snapshot: ...

    def write(
        self, snapshot: Snapshot, raw: Mapping[str, Any], *, fields: Mapping[str, str], message: str
    ) -> int | None: ...

    def kill(self, snapshot: Snapshot, flag: str, *, message: str) -> int | None: ...


class RedisTarget:
    """The flag set in Redis; every change is a recorded revision (``flagwire history``)."""

    def __init__(self, store: FlagStore, *, author: str) -> None:
        self.store = store
        self.name = store.name
        self.author = author

    def read(self) -> Snapshot:
        stored = self.store.read()
        if stored.document is None:
            raise SourceError(f"{self.name}: the key holds no flag set (flagwire publish FILE)")
        try:
            text = stored.document.decode("utf-8")
            flagset = FlagSet.from_text(text, format="json", source=self.name)
        except (UnicodeDecodeError, FlagsetError) as exc:
            raise SourceError(f"{self.name}: the flag set in force is invalid: {exc}") from exc
        return Snapshot(flagset, json.loads(text), stored, stored.revision)

    def _commit(self, snapshot: Snapshot, plan: Any, fields: Mapping[str, str], msg: str) -> int:
        expected: Stored = snapshot.token
        if plan.stored != expected:
            raise ConflictError(self.store.key, expected.revision, plan.stored.revision)
        plan = dataclasses.replace(plan, fields={**plan.fields, **fields})
        return commit(self.store, plan, author=self.author, message=msg).revision

    def write(
        self, snapshot: Snapshot, raw: Mapping[str, Any], *, fields: Mapping[str, str], message: str
    ) -> int:
        plan = plan_publish(self.store, raw)
        return self._commit(snapshot, plan, {"file": "", **fields}, message)

    def kill(self, snapshot: Snapshot, flag: str, *, message: str) -> int:
        return self._commit(snapshot, plan_kill(self.store, flag), {"by": "guard"}, message)


class FileTarget:
    """A flag file (JSON or YAML, kept in its format), replaced atomically; no history
    beyond the guard's log and metrics (use Redis for ``flagwire history``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self.yaml = self.path.suffix.lower() in (".yaml", ".yml")

    def _bytes(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise SourceError(f"{self.name}: cannot read: {exc}") from exc

    def read(self) -> Snapshot:
        data = self._bytes()
        try:
            text = data.decode("utf-8")
            raw = parse_text(text, self.name)
            flagset = FlagSet(parse_document(raw, source=self.name, text=text))
        except (UnicodeDecodeError, FlagsetError) as exc:
            raise SourceError(f"{self.name}: the flag file is invalid: {exc}") from exc
        return Snapshot(flagset, raw, data, None)

    def write(
        self, snapshot: Snapshot, raw: Mapping[str, Any], *, fields: Mapping[str, str], message: str
    ) -> None:
        validated(parse_document(json.loads(json.dumps(raw)), source=self.name))
        if self._bytes() != snapshot.token:
            raise ConflictError(self.name, 0, 1)
        if self.yaml:
            data = yaml.safe_dump(raw, sort_keys=False, allow_unicode=True).encode("utf-8")
        else:
            data = encode(raw)
        write_atomically(self.path, data)

    def kill(self, snapshot: Snapshot, flag: str, *, message: str) -> None:
        raw, _ = killed(snapshot.raw, snapshot.flagset, flag, where=self.name)
        self.write(snapshot, raw, fields={}, message=message)

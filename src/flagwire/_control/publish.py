"""Publishing a flag set is one validated, atomic, recorded step.

Each change is planned, then committed::

    plan = plan_publish(store, "flags.yaml")   # validate, read what is in force
    ...                                        # show what it does: plan.old -> plan.new
    commit(store, plan, message="...")         # compare-and-set, history, notify

:func:`commit` writes only if the store still holds what the plan read, so a change is
always reviewed against the version it replaces; :class:`ConflictError` says to plan again.
:func:`publish`, :func:`kill` and :func:`rollback` do both steps for tools (the guard).
"""

from __future__ import annotations

import copy
import getpass
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from flagwire._engine.definitions import FlagsetDocument, parse_document, read_document
from flagwire._engine.flagset import FlagSet
from flagwire._errors import ConfigError, FlagsetError, SourceError

from .store import ConflictError, FlagStore, HistoryEntry, Stored

__all__ = [
    "Plan",
    "Published",
    "commit",
    "default_author",
    "encode",
    "kill",
    "killed",
    "plan_kill",
    "plan_publish",
    "plan_rollback",
    "publish",
    "rollback",
    "validated",
]


@dataclass(frozen=True, slots=True)
class Plan:
    """A validated change, and what it replaces.

    Attributes:
        stored: What the store held when the plan was made (the compare-and-set's expectation).
        old: The flag set in force then, or ``None`` (no document, or an invalid one).
        old_problem: Why ``old`` is ``None``, if the key holds something.
        new: The flag set to publish.
        document: The document to write (JSON).
        fields: What the history entry records besides author, time and message.
    """

    stored: Stored
    old: FlagSet | None
    old_problem: str | None
    new: FlagSet
    document: bytes
    fields: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Published:
    """A change in force: its ``revision``, the one it replaced, and the history fields."""

    revision: int
    previous: int
    flagset: FlagSet
    fields: Mapping[str, str]


def default_author() -> str:
    """``$FLAGWIRE_AUTHOR``, else ``user@host``."""
    author = os.environ.get("FLAGWIRE_AUTHOR", "").strip()
    if author:
        return author
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _in_force(store: FlagStore) -> tuple[Stored, FlagSet | None, str | None]:
    stored = store.read()
    if stored.document is None:
        return stored, None, None
    try:
        old = FlagSet.from_text(stored.document.decode("utf-8"), source=store.name)
    except (FlagsetError, UnicodeDecodeError) as exc:
        return stored, None, f"the document under {store.key!r} is invalid: {exc}"
    return stored, old, None


def validated(document: FlagsetDocument) -> FlagSet:
    """The document's flag set, if it has no problems (broken rules, a broken plan).

    Raises:
        FlagsetError: It has problems.
    """
    new = FlagSet(document)
    if new.problems:
        raise FlagsetError(
            "refusing to publish a flag set with broken rules: " + "; ".join(new.problems),
            path=document.source,
        )
    return new


def encode(raw: Mapping[str, Any]) -> bytes:
    """A document as published: indented JSON, UTF-8."""
    return (json.dumps(raw, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8")


def _plan(store: FlagStore, document: FlagsetDocument, fields: Mapping[str, str]) -> Plan:
    new = validated(document)
    stored, old, problem = _in_force(store)
    return Plan(stored, old, problem, new, encode(document.raw), dict(fields))


def plan_publish(store: FlagStore, flags: str | os.PathLike[str] | Mapping[str, Any]) -> Plan:
    """Validate a flag file (or an already parsed document) and read what is in force.

    Raises:
        FlagsetError: The document is not a valid flag set, or has broken rules.
        SourceError: Redis cannot be reached.
    """
    if isinstance(flags, Mapping):
        document = parse_document(copy.deepcopy(dict(flags)), source="<document>")
    else:
        document, _ = read_document(Path(flags))
    return _plan(store, document, {"action": "publish", "file": str(document.source or "")})


def killed(
    raw: Mapping[str, Any],
    flagset: FlagSet,
    flag: str,
    *,
    variant: str | None = None,
    disable: bool = False,
    where: str = "",
) -> tuple[dict[str, Any], str]:
    """The document ``raw`` (of ``flagset``) with ``flag`` killed, and what it now serves.

    Raises:
        ConfigError: The flag or variant does not exist.
    """
    definition = flagset.definition(flag)
    if definition is None:
        raise ConfigError(
            f"{where}: there is no flag {flag!r} in the flag set in force "
            f"(flags: {', '.join(sorted(flagset)) or 'none'})"
        )
    if variant is not None and variant not in definition.variants:
        raise ConfigError(
            f"{where}: flag {flag!r} has no variant {variant!r} "
            f"(variants: {', '.join(definition.variants)})"
        )
    document = copy.deepcopy(dict(raw))
    entry = document["flags"][flag]
    entry.pop("targeting", None)
    if variant is not None:
        entry["state"], entry["defaultVariant"] = "ENABLED", variant
        served = variant
    elif disable or definition.default_variant is None:
        entry["state"] = "DISABLED"
        served = "(disabled: code default)"
    else:
        served = definition.default_variant
    return document, served


def plan_kill(
    store: FlagStore, flag: str, *, variant: str | None = None, disable: bool = False
) -> Plan:
    """Serve ``variant`` of ``flag`` to everyone (its targeting dropped).

    Without ``variant``: its ``defaultVariant`` to everyone, or, with ``disable`` or when it
    has no default variant, disable it (every caller gets its code default).

    Raises:
        ConfigError: The flag or variant does not exist in the flag set in force.
        SourceError: Redis cannot be reached, or holds no valid flag set to change.
    """
    stored, old, problem = _in_force(store)
    if old is None:
        raise SourceError(
            f"{store.name}: no valid flag set to change: "
            f"{problem or 'the key does not exist (flagwire publish FILE first)'}"
        )
    assert stored.document is not None
    raw, served = killed(
        json.loads(stored.document), old, flag, variant=variant, disable=disable, where=store.name
    )
    document = parse_document(raw, source=store.name)
    fields = {"action": "kill", "flag": flag, "variant": served}
    return Plan(stored, old, None, validated(document), encode(raw), fields)


def plan_rollback(store: FlagStore, to: int | None = None) -> Plan:
    """Republish revision ``to`` (default: the one before the revision in force).

    Raises:
        ConfigError: That revision is not in the history (never made, or trimmed).
        FlagsetError: Its document no longer validates (a newer flagwire's rules).
    """
    stored = store.read()
    target = stored.revision - 1 if to is None else to
    entries: list[HistoryEntry] = [e for e in store.history() if e.revision == target]
    if not entries:
        raise ConfigError(
            f"{store.name}: revision {target} is not in the history "
            f"({store.keys.history}); flagwire history lists the revisions there"
        )
    document = parse_document(
        json.loads(entries[-1].document), source=f"{store.name} revision {target}"
    )
    return _plan(store, document, {"action": "rollback", "rollback_to": str(target)})


def commit(
    store: FlagStore, plan: Plan, *, author: str | None = None, message: str = ""
) -> Published:
    """Write the plan's document if the store still holds what the plan read.

    The history entry records ``author`` (default :func:`default_author`), ``message``, the
    time, the digest and version label, and the plan's fields; subscribers are notified.

    Raises:
        ConflictError: Someone published meanwhile; nothing was written.
        SourceError: Redis cannot be reached.
    """
    fields = {
        **plan.fields,
        "digest": plan.new.digest,
        "version": plan.new.version_label,
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "author": author or default_author(),
        "message": message,
        "previous": str(plan.stored.revision),
    }
    revision = store.write(plan.document, expected=plan.stored, fields=fields)
    return Published(revision, plan.stored.revision, plan.new, fields)


def publish(
    store: FlagStore,
    flags: str | os.PathLike[str] | Mapping[str, Any],
    *,
    author: str | None = None,
    message: str = "",
) -> Published:
    """Validate and publish a flag file (or document) in one step (no retry on conflict)."""
    return commit(store, plan_publish(store, flags), author=author, message=message)


def kill(
    store: FlagStore,
    flag: str,
    *,
    variant: str | None = None,
    disable: bool = False,
    author: str | None = None,
    message: str = "",
    attempts: int = 5,
) -> Published:
    """Break glass: :func:`plan_kill` and :func:`commit`, re-planned on a conflict (a kill
    applies to whatever is in force)."""
    for attempt in range(attempts):
        plan = plan_kill(store, flag, variant=variant, disable=disable)
        try:
            return commit(store, plan, author=author, message=message)
        except ConflictError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def rollback(
    store: FlagStore, to: int | None = None, *, author: str | None = None, message: str = ""
) -> Published:
    """Republish an earlier revision (:func:`plan_rollback` and :func:`commit`)."""
    return commit(store, plan_rollback(store, to), author=author, message=message)

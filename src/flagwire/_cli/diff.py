"""What a change to a flag file does, as ``flagwire diff`` reports it.

Per flag: added or removed; state, ``defaultVariant`` and variant changes; the share of
each variant in every ``fractional`` rule before and after; whether the rest of the
targeting changed; metadata changes. And, for a sample of synthetic users (targeting keys
``user-0`` ... ``user-N-1``, evaluated with both flag sets), who moves from which variant
to which.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from flagwire._engine.definitions import FlagDefinition
from flagwire._engine.flagset import FlagSet
from flagwire._engine.fractions import fractional_shares

__all__ = ["DEFAULT_SAMPLE", "Change", "FlagDiff", "diff"]

DEFAULT_SAMPLE: Final = 1000
_WEIGHT: Final = "<weight>"


@dataclass(frozen=True, slots=True)
class Change:
    """One change to one flag."""

    kind: str
    detail: str
    before: Any = None
    after: Any = None
    subject: str | None = None
    """The variant (variant-*) or metadata key (metadata) the change is about."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "detail": self.detail,
            "before": self.before,
            "after": self.after,
        }
        if self.subject is not None:
            out["variant" if self.kind.startswith("variant") else "key"] = self.subject
        return out


@dataclass(slots=True)
class FlagDiff:
    """Everything that changed about one flag."""

    flag: str
    status: str  # "added", "removed" or "changed"
    changes: list[Change]
    moves: dict[tuple[str | None, str | None], int] = field(default_factory=dict)
    """(old variant, new variant) -> users, for the users whose variant changed."""

    @property
    def moved(self) -> int:
        return sum(self.moves.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "flag": self.flag,
            "status": self.status,
            "changes": [c.to_dict() for c in self.changes],
            "moves": [
                {"from": old, "to": new, "count": count} for (old, new), count in self.moves.items()
            ],
            "moved": self.moved,
        }


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _percent(share: float) -> str:
    return f"{round(share, 2):g}%"


def fractionals(rule: Any) -> list[Any]:
    """The arguments of every ``fractional`` in a rule, in document order."""
    found: list[Any] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for op, raw in node.items():
                if op == "fractional" and len(node) == 1:
                    found.append(raw)
                walk(raw)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(rule)
    return found


def _mask_weights(node: Any) -> Any:
    """The rule with literal fractional weights blanked (to see other changes)."""
    if isinstance(node, dict):
        if len(node) == 1 and isinstance(node.get("fractional"), list):
            return {
                "fractional": [
                    [_mask_weights(a[0]), _WEIGHT]
                    if isinstance(a, list)
                    and len(a) == 2
                    and isinstance(a[1], int)
                    and not isinstance(a[1], bool)
                    else _mask_weights(a)
                    for a in node["fractional"]
                ]
            }
        return {k: _mask_weights(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_mask_weights(item) for item in node]
    return node


def _rollout_changes(old: Any, new: Any) -> list[Change]:
    before_all, after_all = fractionals(old), fractionals(new)
    if len(before_all) != len(after_all):
        return []
    changes = []
    for i, (a, b) in enumerate(zip(before_all, after_all, strict=True)):
        before, after = fractional_shares(a), fractional_shares(b)
        if before is None or after is None or before == after:
            continue
        names = list(dict.fromkeys([*before, *after]))
        parts = [
            f"{name} {_percent(before.get(name, 0.0))} -> {_percent(after.get(name, 0.0))}"
            for name in names
            if before.get(name, 0.0) != after.get(name, 0.0)
        ]
        where = f"fractional #{i + 1}: " if len(before_all) > 1 else ""
        changes.append(
            Change(
                "rollout",
                where + ", ".join(parts),
                {k: round(v, 4) for k, v in before.items()},
                {k: round(v, 4) for k, v in after.items()},
            )
        )
    return changes


def _describe(definition: FlagDefinition) -> str:
    default = definition.default_variant
    return (
        f"{definition.state}, default "
        f"{'-' if default is None else json.dumps(default)}, "
        f"variants {', '.join(definition.variants)}"
        + (", with targeting" if definition.targeting else "")
    )


def _flag_changes(old: FlagDefinition, new: FlagDefinition) -> list[Change]:
    changes: list[Change] = []
    if old.state != new.state:
        changes.append(Change("state", f"{old.state} -> {new.state}", old.state, new.state))
    if old.default_variant != new.default_variant:
        changes.append(
            Change(
                "default-variant",
                f"{_dump(old.default_variant)} -> {_dump(new.default_variant)}",
                old.default_variant,
                new.default_variant,
            )
        )
    for name, value in old.variants.items():
        if name not in new.variants:
            changes.append(
                Change("variant-removed", f'"{name}" ({_dump(value)})', value, None, name)
            )
        elif new.variants[name] != value or type(new.variants[name]) is not type(value):
            after = new.variants[name]
            changes.append(
                Change(
                    "variant-changed",
                    f'"{name}": {_dump(value)} -> {_dump(after)}',
                    value,
                    after,
                    name,
                )
            )
    for name, value in new.variants.items():
        if name not in old.variants:
            changes.append(Change("variant-added", f'"{name}" ({_dump(value)})', None, value, name))
    changes.extend(_rollout_changes(old.targeting, new.targeting))
    if _mask_weights(old.targeting) != _mask_weights(new.targeting):
        changes.append(Change("targeting", "targeting rule changed", old.targeting, new.targeting))
    for key in dict.fromkeys([*old.metadata, *new.metadata]):
        before, after = old.metadata.get(key), new.metadata.get(key)
        if before != after:
            changes.append(
                Change("metadata", f"{key}: {_dump(before)} -> {_dump(after)}", before, after, key)
            )
    return changes


def sample_contexts(sample: int) -> list[dict[str, Any]]:
    """The synthetic users: ``{"targetingKey": "user-i"}`` for i in ``range(sample)``."""
    return [{"targetingKey": f"user-{i}"} for i in range(sample)]


def moves(
    old: FlagSet, new: FlagSet, key: str, contexts: Sequence[dict[str, Any]]
) -> dict[tuple[str | None, str | None], int]:
    """(old variant, new variant) -> users, for the users whose variant changes."""
    counts: Counter[tuple[str | None, str | None]] = Counter()
    for context in contexts:
        before = old.evaluate(key, context).variant
        after = new.evaluate(key, context).variant
        if before != after:
            counts[before, after] += 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], str(item[0]))))


def diff(old: FlagSet, new: FlagSet, *, sample: int = DEFAULT_SAMPLE) -> list[FlagDiff]:
    """What changed between two flag sets, flag by flag (old file order, then added)."""
    contexts = sample_contexts(sample)
    found: list[FlagDiff] = []
    for key in old:
        before = old.definition(key)
        assert before is not None
        after = new.definition(key)
        if after is None:
            found.append(FlagDiff(key, "removed", [Change("removed", _describe(before))]))
            continue
        changes = _flag_changes(before, after)
        if changes:
            found.append(FlagDiff(key, "changed", changes, moves(old, new, key, contexts)))
    for key in new:
        if key in old:
            continue
        after = new.definition(key)
        assert after is not None
        found.append(FlagDiff(key, "added", [Change("added", _describe(after))]))
    return found


def format_text(found: Sequence[FlagDiff], sample: int) -> list[str]:
    """The diff as lines for people."""
    if not found:
        return ["no changes"]
    lines = []
    for flag in found:
        if flag.status != "changed":
            lines.append(f"{flag.flag}: {flag.status} ({flag.changes[0].detail})")
            continue
        lines.append(f"{flag.flag}: changed")
        lines.extend(f"  {c.kind}: {c.detail}" for c in flag.changes)
        if sample:
            if not flag.moves:
                lines.append(f"  moves: none of {sample} sample users changes variant")
            for (a, b), count in flag.moves.items():
                lines.append(
                    f"  moves: {a or '(no variant)'} -> {b or '(no variant)'}: {count} of "
                    f"{sample} sample users ({_percent(count * 100 / sample)})"
                )
    return lines

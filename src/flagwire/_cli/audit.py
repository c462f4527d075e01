"""Flag hygiene, as ``flagwire audit`` reports it.

Each flag is checked for: an ``expires`` date in the past (always an error) or within a few
days; a missing ``owner`` or ``expires`` (an error when the policy requires it, else a
warning); variants its targeting can never choose; and a rollout that is complete (one
variant for everyone), so the flag is ready to remove.

The targeting analysis is static and conservative: it reads the JsonLogic and collects
what the rule can return in result positions (``if`` branches, ``and``/``or`` operands,
``fractional`` bucket variants, literals). Anything computed there (``var``, ``cat``,
``substr``, ...) makes the analysis give up for that flag rather than guess.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Final

from flagwire._engine.definitions import FlagDefinition
from flagwire._engine.expiry import expiry_date
from flagwire._engine.flagd_ops import fraction_weight
from flagwire._engine.flagset import FlagSet
from flagwire._engine.fractions import (
    MAX_WEIGHT_SUM,
    fraction_pairs,
    literal_name,
)
from flagwire._engine.variant_names import unknown_variant_names
from flagwire._types import MetadataValue

__all__ = [
    "DEFAULT_EXPIRING_WITHIN",
    "REQUIRABLE",
    "Finding",
    "audit",
    "rule_outcomes",
]

ERROR: Final = "error"
WARNING: Final = "warning"
DEFAULT_EXPIRING_WITHIN: Final = 14
REQUIRABLE: Final = ("owner", "expires", "description", "kind", "services")
"""The metadata fields ``--require`` accepts."""
LONG_LIVED_KINDS: Final = frozenset({"ops", "permission"})
"""Kinds that are static by design (kill switches, entitlements): never "rolled out"."""

# Operations whose result is always a boolean (so the variant "true" or "false"); the
# custom ones may also give null (the default variant).
_BOOLEAN_OPS: Final = frozenset(
    {"==", "!=", "===", "!==", "<", ">", "<=", ">=", "!", "!!", "in", "all", "some", "none"}
)
_MAYBE_BOOLEAN_OPS: Final = frozenset({"sem_ver", "starts_with", "ends_with"})

Outcomes = frozenset[str | None]
"""Variant names a rule can return; ``None`` stands for null (the default variant)."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing ``flagwire audit`` reports about one flag."""

    file: str
    flag: str
    kind: str
    detail: str
    owner: str | None
    severity: str

    def to_dict(self) -> dict[str, str | None]:
        return {
            "file": self.file,
            "flag": self.flag,
            "kind": self.kind,
            "detail": self.detail,
            "owner": self.owner,
            "severity": self.severity,
        }


# -- what a rule can return ----------------------------------------------------------


def _fractional_outcomes(args: Sequence[Any]) -> Outcomes | None:
    fractions = fraction_pairs(args)
    if fractions is None:
        return None
    names: set[str | None] = set()
    total = 0
    weights_known = True
    for variant, weight in fractions:
        if isinstance(variant, (dict, list)):
            return None  # a computed variant name
        if isinstance(weight, (dict, list)):
            weights_known = False  # a computed weight: any of these may be chosen
        elif (whole := fraction_weight(weight)) is None:
            return frozenset({None})  # as flagd: a malformed fraction gives null
        elif whole <= 0:
            continue  # a zero share is never chosen
        else:
            total += whole
        names.add(None if variant is None else literal_name(variant))
    if weights_known and not 0 < total <= MAX_WEIGHT_SUM:
        return frozenset({None})
    # (A context without a targeting key also gets null; that is the default variant,
    # which counts as reachable anyway, and does not make a 100% rollout partial.)
    return frozenset(names)


def rule_outcomes(rule: Any) -> Outcomes | None:
    """Every variant name a targeting rule can return, or ``None`` if that is unknowable.

    ``None`` in the result stands for a null result (the default variant). The answer
    may hold names that are not variants (those evaluations are errors).
    """
    if rule is None:
        return frozenset({None})
    if isinstance(rule, (bool, str, int, float)):
        return frozenset({literal_name(rule)})
    if not isinstance(rule, dict) or len(rule) != 1:
        return None  # an array or an object: a computed value
    op, raw = next(iter(rule.items()))
    args = raw if isinstance(raw, list) else [raw]
    if op in ("if", "?:"):
        results = [args[i] for i in range(1, len(args), 2)]
        if len(args) % 2:
            results.append(args[-1])  # the else branch
        return _union([*results, None] if len(args) % 2 == 0 else results)
    if op in ("and", "or"):
        return _union(args or [None])
    if op == "fractional":
        return _fractional_outcomes(args)
    if op in _BOOLEAN_OPS:
        return frozenset({"true", "false"})
    if op in _MAYBE_BOOLEAN_OPS:
        return frozenset({"true", "false", None})
    return None


def _union(rules: Iterable[Any]) -> Outcomes | None:
    found: set[str | None] = set()
    for rule in rules:
        outcomes = rule_outcomes(rule)
        if outcomes is None:
            return None
        found |= outcomes
    return frozenset(found)


def chosen_variants(definition: FlagDefinition) -> frozenset[str | None] | None:
    """The variants an enabled flag's rule can give (``None``: the caller's default), or
    ``None`` if the targeting returns computed values (or is not a rule at all).

    A ``fractional`` counts only its buckets: that a context without a targeting key gets
    the default variant does not make a 100% rollout partial.
    """
    targeting = definition.targeting
    if not targeting:
        outcomes: Outcomes | None = frozenset({None})
    elif isinstance(targeting, dict):
        outcomes = rule_outcomes(targeting)
    else:
        return None  # not a rule: every evaluation is PARSE_ERROR (validate says so)
    if outcomes is None:
        return None
    default = definition.default_variant
    return frozenset(default if name is None else name for name in outcomes)


def _rollout_detail(definition: FlagDefinition, variant: str) -> str:
    targeting = definition.targeting
    if not targeting:
        how = "static (no targeting)"
    elif isinstance(targeting, dict) and "fractional" in targeting:
        how = f'fractional gives 100% to "{variant}"'
    else:
        how = f'every branch of the targeting chooses "{variant}"'
    return f'everyone gets "{variant}": {how}; ready to remove'


# -- the audit -------------------------------------------------------------------------


def _text(value: MetadataValue | None) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def audit(
    flagset: FlagSet,
    *,
    file: str,
    today: date,
    expiring_within: int = DEFAULT_EXPIRING_WITHIN,
    require: Sequence[str] = (),
) -> list[Finding]:
    """The findings for every flag of ``flagset`` (in file order).

    Args:
        flagset: The flags.
        file: The file name to put on each finding.
        today: The day to judge expiry against.
        expiring_within: Report flags that expire within this many days (as warnings).
        require: Metadata fields (of :data:`REQUIRABLE`) whose absence is an error.
            A missing ``owner`` or ``expires`` is always reported, as a warning when not
            required.
    """
    findings: list[Finding] = []
    default_owner = _text(flagset.metadata.get("owner"))
    for key in flagset:
        definition = flagset.definition(key)
        if definition is None:  # pragma: no cover - iteration gives only known keys
            continue
        metadata = definition.metadata
        owner = _text(metadata.get("owner")) or default_owner

        def add(kind: str, detail: str, severity: str, key: str = key, owner: Any = owner) -> None:
            findings.append(Finding(file, key, kind, detail, owner, severity))

        # Expiry.
        raw_expires = _text(metadata.get("expires"))
        expires = expiry_date(raw_expires)
        if raw_expires is not None and expires is None:
            add(
                "bad-expires",
                f"expires {raw_expires!r} is not an ISO date (YYYY-MM-DD)",
                ERROR if "expires" in require else WARNING,
            )
        elif expires is not None:
            days = (expires - today).days
            if days < 0:
                ago = f"{-days} day{'s' if days != -1 else ''} ago"
                add("expired", f"expired on {expires.isoformat()} ({ago})", ERROR)
            elif days <= expiring_within:
                when = "today" if days == 0 else f"in {days} day{'s' if days != 1 else ''}"
                add("expiring", f"expires on {expires.isoformat()} ({when})", WARNING)

        # Required (or expected) metadata.
        for field in REQUIRABLE:
            if field == "owner":
                present = owner is not None
            elif field == "expires":
                present = raw_expires is not None
            else:
                present = _text(metadata.get(field)) is not None
            required = field in require
            if present or not (required or field in ("owner", "expires")):
                continue
            note = "required" if required else "not required, but every flag should have one"
            add(f"missing-{field}", f"no metadata.{field} ({note})", ERROR if required else WARNING)

        # Targeting.
        if isinstance(definition.targeting, dict):
            at = f"flags.{key}.targeting"
            for problem in unknown_variant_names(definition.targeting, definition.variants, at):
                add("unknown-variant", problem, ERROR)
        if not definition.enabled:
            continue
        chosen = chosen_variants(definition)
        if chosen is None:
            continue
        variants = definition.variants
        if len(chosen) == 1:
            [only] = chosen
            if only is not None and only in variants:
                if str(metadata.get("kind", "")) not in LONG_LIVED_KINDS:
                    add("rolled-out", _rollout_detail(definition, only), WARNING)
                continue
        for name in variants:
            if name not in chosen and name != definition.default_variant:
                add(
                    "unreachable-variant",
                    f'variant "{name}" can never be chosen (not the defaultVariant, '
                    "not a possible result of the targeting)",
                    WARNING,
                )
    return findings


def broken(findings: Iterable[Finding]) -> bool:
    """Whether the findings break the policy (any error)."""
    return any(f.severity == ERROR for f in findings)


def format_table(findings: Sequence[Finding]) -> list[str]:
    """The findings as aligned lines for people (a header first)."""
    header = ("FILE", "FLAG", "FINDING", "DETAIL", "OWNER")
    rows = [header] + [
        (
            f.file,
            f.flag,
            f.kind if f.severity != ERROR else f"{f.kind} (error)",
            f.detail,
            f.owner or "-",
        )
        for f in findings
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return [
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    ]


def summary(findings: Sequence[Finding], flags: int, files: int) -> str:
    errors = sum(1 for f in findings if f.severity == ERROR)
    warnings = len(findings) - errors
    verdict = "policy broken" if errors else "ok"
    return (
        f"{len(findings)} finding{'s' if len(findings) != 1 else ''} "
        f"({errors} error{'s' if errors != 1 else ''}, "
        f"{warnings} warning{'s' if warnings != 1 else ''}) in {flags} "
        f"flag{'s' if flags != 1 else ''}, {files} file{'s' if files != 1 else ''}: {verdict}"
    )


def parse_require(text: str) -> tuple[str, ...]:
    """``"owner,expires"`` -> ``("owner", "expires")``; raises ``ValueError`` otherwise."""
    fields = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [f for f in fields if f not in REQUIRABLE]
    if unknown:
        raise ValueError(
            f"unknown field {', '.join(unknown)} (choose from {', '.join(REQUIRABLE)})"
        )
    return fields

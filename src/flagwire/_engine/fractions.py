"""What a ``fractional``'s literal arguments say: its ``(variant, weight)`` pairs and each
variant's share, read statically (the audit, the diff, the report's sample-ratio check and
the rollout plan all read a split this way)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from .flagd_ops import fraction_weight

__all__ = ["MAX_WEIGHT_SUM", "fraction_pairs", "fractional_shares", "literal_name"]

MAX_WEIGHT_SUM: Final = 2_147_483_647
"""The largest total weight flagd accepts."""


def literal_name(value: Any) -> str:
    """The variant name a literal result selects (as evaluation names it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def fraction_pairs(args: Sequence[Any]) -> list[tuple[Any, Any]] | None:
    """The ``(variant, weight)`` expressions of a ``fractional``'s arguments.

    ``None`` when an argument is not a literal ``[variant]`` / ``[variant, weight]`` pair
    (then what it holds is only known at evaluation time).
    """
    rest = args[1:] if args and not isinstance(args[0], list) else args
    found = []
    for item in rest:
        if not isinstance(item, list) or not 1 <= len(item) <= 2:
            return None
        found.append((item[0], item[1] if len(item) == 2 else 1))
    return found


def fractional_shares(args: Any) -> dict[str, float] | None:
    """Each variant's share (percent) of a ``fractional``'s arguments, from its weights.

    ``None`` if a variant or weight is computed, or the weights are malformed.
    """
    if not isinstance(args, list):
        return None
    fractions = fraction_pairs(args)
    if not fractions:
        return None
    weights: dict[str, int] = {}
    for variant, weight in fractions:
        whole = fraction_weight(weight)
        if not isinstance(variant, (str, bool, int, float)) or whole is None:
            return None
        name = literal_name(variant)
        weights[name] = weights.get(name, 0) + max(0, whole)
    total = sum(weights.values())
    if not 0 < total <= MAX_WEIGHT_SUM:
        return None
    return {name: weight * 100 / total for name, weight in weights.items()}

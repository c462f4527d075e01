"""The guard's changes to a flag document: a new step, a stamp, a pause.

Each function takes the document as parsed (a dict, never changed) and returns a new one
with the flag's ``fractional`` weights and the guard's own metadata keys (``guard.step``,
``guard.since``, ``guard.paused``) set; the caller publishes it through the validated path.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from flagwire._engine.fractions import fraction_pairs, literal_name
from flagwire._engine.rollout import (
    PAUSED_KEY,
    SINCE_KEY,
    STEP_KEY,
    RolloutPlan,
    find_fractionals,
    format_since,
)
from flagwire._errors import ConfigError

__all__ = ["format_share", "with_pause", "with_share", "with_stamp"]


def format_share(share: float) -> str:
    """``5%``, ``0.5%``: a share as the log and the history say it."""
    return f"{share:g}%"


def _flag(document: Mapping[str, Any], plan: RolloutPlan) -> tuple[dict[str, Any], Any]:
    raw = copy.deepcopy(dict(document))
    entry = raw.get("flags", {}).get(plan.flag)
    if not isinstance(entry, dict):
        raise ConfigError(f"flag {plan.flag!r} is not in the document")
    return raw, entry


def _stamp(entry: dict[str, Any], share: float, now: float) -> None:
    metadata = entry.setdefault("metadata", {})
    metadata[STEP_KEY] = int(share) if float(share).is_integer() else share
    metadata[SINCE_KEY] = format_since(now)


def with_stamp(document: Mapping[str, Any], plan: RolloutPlan, share: float, now: float) -> Any:
    """The document with ``guard.step = share`` and ``guard.since = now`` (the bake and the
    judgement's data start there)."""
    raw, entry = _flag(document, plan)
    _stamp(entry, share, now)
    return raw


def with_share(document: Mapping[str, Any], plan: RolloutPlan, share: float, now: float) -> Any:
    """The document with ``share`` percent of the split to the rolled-out variant, the rest
    to the control, stamped at ``now`` and no longer paused.

    Raises:
        ConfigError: The flag's own targeting holds no such ``fractional`` (it is in
            ``$evaluators``, or the flag changed since it was judged).
    """
    raw, entry = _flag(document, plan)
    found = next(find_fractionals(entry.get("targeting")), None)
    args = None if found is None else found["fractional"]
    pairs = fraction_pairs(args) if isinstance(args, list) else None
    if found is None or pairs is None:
        msg = (
            f"flag {plan.flag!r}: no fractional in its own targeting to change (one in "
            f"$evaluators is shared; move it into the flag)"
        )
        raise ConfigError(msg)
    assert isinstance(args, list)
    # Whole percents when the share is whole (as people write them), else basis points.
    scale = 1 if float(share).is_integer() else 100
    weights = {plan.variant: round(share * scale), plan.control: round((100 - share) * scale)}
    bucketing = args[: len(args) - len(pairs)]
    found["fractional"] = [
        *bucketing,
        *([variant, weights[literal_name(variant)]] for variant, _ in pairs),
    ]
    _stamp(entry, share, now)
    entry["metadata"].pop(PAUSED_KEY, None)
    return raw


def with_pause(document: Mapping[str, Any], plan: RolloutPlan, reason: str) -> Any:
    """The document with ``guard.paused = reason`` (the guard holds the flag until a
    person removes the key)."""
    raw, entry = _flag(document, plan)
    entry.setdefault("metadata", {})[PAUSED_KEY] = reason
    return raw

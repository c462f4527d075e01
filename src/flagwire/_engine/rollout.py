"""A progressive rollout's plan, in a flag's ``metadata`` (read by ``flagwire guard``).

flagd accepts only strings, numbers and booleans in metadata, so the plan is a set of
dotted keys next to ``owner`` and ``expires``::

    "metadata": {
        "rollout.variant": "on", "rollout.control": "off", "rollout.steps": "1,5,25,50,100",
        "rollout.bake": 600, "guard.min_requests": 500, "guard.window": 300,
        "guard.error_rate_increase": 0.01, "guard.p95_ratio": 1.25, "guard.action": "rollback"
    }

and the flag's targeting holds one ``fractional`` over exactly those two variants, whose
weights the guard changes. The guard also writes three keys of its own: ``guard.step``
and ``guard.since`` (the step in force and when it began; the bake and the judgement's
data start there) and ``guard.paused`` (why it paused; a person removes it to resume).
A flag without ``rollout.steps`` (or any other plan key) has no plan; ``rollout.control``
alone only names the report's control.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final

from flagwire._types import MetadataValue

from .definitions import FlagDefinition
from .fractions import fraction_pairs, fractional_shares, literal_name

__all__ = [
    "ACTIONS",
    "PAUSED_KEY",
    "PLAN_KEYS",
    "SINCE_KEY",
    "STEP_KEY",
    "RolloutPlan",
    "RolloutState",
    "find_fractionals",
    "format_since",
    "parse_plan",
    "plan_problems",
    "rollout_state",
    "variant_share",
]

ACTIONS: Final = ("rollback", "kill", "pause")
"""What the guard does to a regressed rollout: all traffic to the control, the flag's
kill state (as ``flagwire kill``), or hold the step and alert."""

_DEFAULTS: Final[Mapping[str, float | str]] = {
    "rollout.bake": 600.0,
    "guard.error_rate_increase": 0.01,
    "guard.p95_ratio": 1.25,
    "guard.min_requests": 500.0,
    "guard.window": 300.0,
    "guard.alpha": 0.05,
    "guard.action": "rollback",
}
_NUMBERS: Final = tuple(k for k, v in _DEFAULTS.items() if not isinstance(v, str))
PLAN_KEYS: Final = frozenset({"rollout.variant", "rollout.steps", *_DEFAULTS})
"""The keys that make a plan (``rollout.control`` is shared with ``flagwire report``)."""
STEP_KEY: Final = "guard.step"
SINCE_KEY: Final = "guard.since"
PAUSED_KEY: Final = "guard.paused"


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    """A flag's rollout plan and guard limits.

    Attributes:
        flag: The flag key.
        variant: The variant being rolled out.
        control: The variant it is judged against (everyone else gets it).
        steps: The rolled-out variant's share at each step, percent, increasing.
        bake: Seconds a step must run healthy before the next.
        error_rate_increase: The largest tolerated absolute 5xx-rate increase over control.
        p95_ratio: The largest tolerated ratio of the variant's p95 latency to control's.
        min_requests: Requests each variant needs before any judgement.
        window: Seconds of data one judgement sequence gathers before a fresh one starts.
        alpha: The false-positive rate of the whole rollout (A/A rolled back at most this
            often).
        action: ``rollback``, ``kill`` or ``pause``.
    """

    flag: str
    variant: str
    control: str
    steps: tuple[float, ...]
    bake: float = 600.0
    error_rate_increase: float = 0.01
    p95_ratio: float = 1.25
    min_requests: float = 500.0
    window: float = 300.0
    alpha: float = 0.05
    action: str = "rollback"

    def next_step(self, share: float) -> float | None:
        """The first step above ``share``, or None when the plan is complete."""
        return next((s for s in self.steps if s > share + 1e-9), None)


@dataclass(frozen=True, slots=True)
class RolloutState:
    """What the guard last wrote into the flag's metadata.

    Attributes:
        step: The share (percent) in force when ``since`` was stamped.
        since: Unix time that step began.
        paused: Why the guard paused the rollout, if it did.
    """

    step: float | None
    since: float | None
    paused: str | None


def _number(metadata: Mapping[str, MetadataValue], key: str, problems: list[str]) -> float:
    value = metadata.get(key, _DEFAULTS[key])
    number = _as_float(value)
    if number is None or not number > 0:
        problems.append(f"{key} must be a positive number, not {value!r}")
        return float(_DEFAULTS[key])
    return number


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _steps(value: MetadataValue | None, problems: list[str]) -> tuple[float, ...]:
    if value is None:
        problems.append('rollout.steps is missing (percent per step, e.g. "1,5,25,50,100")')
        return ()
    parts = [p.strip() for p in str(value).split(",")]
    steps = [_as_float(p) for p in parts]
    if not parts or any(s is None or not 0 < s <= 100 for s in steps):
        problems.append(f"rollout.steps must be percents in (0, 100], comma-separated: {value!r}")
        return ()
    found = tuple(s for s in steps if s is not None)
    if any(b <= a for a, b in itertools.pairwise(found)):
        problems.append(f"rollout.steps must increase: {value!r}")
        return ()
    return found


def find_fractionals(rule: Any) -> Iterator[dict[str, Any]]:
    """Every ``{"fractional": ...}`` object in a JsonLogic rule, outermost first."""
    if isinstance(rule, dict):
        if "fractional" in rule:
            yield rule
        for value in rule.values():
            yield from find_fractionals(value)
    elif isinstance(rule, list):
        for item in rule:
            yield from find_fractionals(item)


def _split_problem(definition: FlagDefinition, variant: str, control: str) -> str | None:
    if not definition.targeting:
        return None  # static (or killed): nothing to step; the guard holds
    found = list(find_fractionals(definition.targeting))
    if len(found) != 1:
        return f"the targeting must hold exactly one fractional, not {len(found)}"
    args = found[0]["fractional"]
    pairs = fraction_pairs(args) if isinstance(args, list) else None
    names = None if pairs is None else {literal_name(v) for v, _ in pairs}
    if names != {variant, control} or fractional_shares(args) is None:
        return (
            f"the fractional must split literal weights between exactly {variant!r} and "
            f"{control!r} (it has {sorted(names) if names is not None else 'computed parts'})"
        )
    return None


def parse_plan(definition: FlagDefinition) -> tuple[RolloutPlan | None, list[str]]:
    """The flag's plan (None without plan keys) and its problems (then the plan is None)."""
    meta = definition.metadata
    if not PLAN_KEYS & meta.keys():
        return None, []
    problems: list[str] = []
    names = {}
    for key in ("rollout.variant", "rollout.control"):
        name = meta.get(key)
        if name is None:
            problems.append(f"{key} is missing")
        elif str(name) not in definition.variants:
            variants = ", ".join(definition.variants)
            problems.append(f"{key} {name!r} is not a variant (variants: {variants})")
        names[key] = str(name)
    variant, control = names["rollout.variant"], names["rollout.control"]
    if not problems and variant == control:
        problems.append("rollout.variant and rollout.control must differ")
    steps = _steps(meta.get("rollout.steps"), problems)
    numbers = {key: _number(meta, key, problems) for key in _NUMBERS}
    if numbers["guard.alpha"] >= 1:
        problems.append(f"guard.alpha must be below 1, not {numbers['guard.alpha']!r}")
    action = str(meta.get("guard.action", _DEFAULTS["guard.action"]))
    if action not in ACTIONS:
        problems.append(f"guard.action must be one of {', '.join(ACTIONS)}, not {action!r}")
    if not problems and (split := _split_problem(definition, variant, control)):
        problems.append(split)
    if problems:
        return None, problems
    plan = RolloutPlan(
        definition.key, variant, control, steps,
        bake=numbers["rollout.bake"],
        error_rate_increase=numbers["guard.error_rate_increase"],
        p95_ratio=numbers["guard.p95_ratio"],
        min_requests=numbers["guard.min_requests"],
        window=numbers["guard.window"],
        alpha=numbers["guard.alpha"],
        action=action,
    )  # fmt: skip
    return plan, []


def plan_problems(definition: FlagDefinition) -> list[str]:
    """The plan's problems, each ``flag "KEY": rollout plan: ...`` (for ``FlagSet.problems``)."""
    _, problems = parse_plan(definition)
    return [f'flag "{definition.key}": rollout plan: {p}' for p in problems]


def variant_share(definition: FlagDefinition, plan: RolloutPlan) -> float | None:
    """The rolled-out variant's share of the split in percent; None when the flag is
    disabled or has no targeting (killed, or not being rolled out)."""
    if not definition.enabled or not definition.targeting:
        return None
    found = next(find_fractionals(definition.targeting), None)
    shares = None if found is None else fractional_shares(found["fractional"])
    return None if shares is None else shares.get(plan.variant, 0.0)


def rollout_state(metadata: Mapping[str, MetadataValue]) -> RolloutState:
    """The guard's own keys (unreadable values count as absent: the guard stamps anew)."""
    since_raw = metadata.get(SINCE_KEY)
    since: float | None = None
    if isinstance(since_raw, str):
        try:
            parsed = datetime.fromisoformat(since_raw.replace("Z", "+00:00"))
            since = (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()
        except ValueError:
            since = None
    paused = metadata.get(PAUSED_KEY)
    return RolloutState(
        _as_float(metadata.get(STEP_KEY)),
        since,
        None if paused in (None, "", False) else str(paused),
    )


def format_since(at: float) -> str:
    """``guard.since`` as written: an ISO 8601 UTC time to the second."""
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")

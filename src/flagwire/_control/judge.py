"""The guard's judgement: is the rolled-out variant worse than the control?

It is checked every interval, so a fresh p-value each tick would roll back a healthy
rollout sooner or later (a day of one-minute looks at 5% each is certain to). Instead each
judgement is a look at a *confidence sequence* (:mod:`flagwire._analysis.sequential`),
which holds at every look at once:

* Within a step, data accumulate from the step's start in *sequences* of ``guard.window``
  seconds: sequence ``k`` covers ``[since + (k-1)*window, now]``. A fresh sequence every
  window keeps a late regression from being diluted by a long healthy past.
* Sequence ``k`` of a step is run at level ``alpha * 6 / (pi**2 * k**2)`` (the levels of
  all sequences sum to ``alpha``), divided by the steps that are judged and by the two
  metrics: by Ville's inequality and the union bound, an A/A rollout is rolled back with
  probability at most ``guard.alpha`` over its whole life, however often it is looked at.
* **Errors**: rolled back when the sequence's lower bound for the 5xx-rate difference
  exceeds ``guard.error_rate_increase``.
* **Latency**: rolled back when the variant's p95 exceeds ``guard.p95_ratio`` times the
  control's *and* the share of variant requests slower than that bound (read at the first
  histogram bucket at or above it) is above the control's share, by the sequence's lower
  bound. Identical variants have identical shares above any bound, so this is as honest
  as the error test; a slower variant has more of its requests above it.

Nothing is judged before each variant has ``guard.min_requests`` requests in the sequence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from flagwire._analysis.figures import VariantFigures
from flagwire._analysis.sequential import Sequential
from flagwire._analysis.stats import Comparison, compare_proportions
from flagwire._engine.rollout import RolloutPlan

__all__ = ["HEALTHY", "REGRESSED", "THIN", "Verdict", "judge", "sequence_alpha", "sequence_of"]

THIN: Final = "thin"
HEALTHY: Final = "healthy"
REGRESSED: Final = "regressed"
_METRICS: Final = 2


@dataclass(frozen=True, slots=True)
class Verdict:
    """One judgement.

    Attributes:
        outcome: ``thin`` (too few requests), ``healthy`` or ``regressed``.
        reasons: Why it regressed (or is thin), with the numbers.
        figures: Both variants' numbers in one line.
        alpha: The level this look was made at.
    """

    outcome: str
    reasons: tuple[str, ...]
    figures: str
    alpha: float

    def describe(self) -> str:
        """``reasons; figures`` as the log and the history say it."""
        return "; ".join([*self.reasons, self.figures])


def sequence_of(plan: RolloutPlan, since: float, now: float) -> tuple[int, float]:
    """The current sequence's number (1, 2, ...) and start time within the step."""
    k = max(0, math.floor((now - since) / plan.window))
    return k + 1, since + k * plan.window


def sequence_alpha(plan: RolloutPlan, k: int) -> float:
    """The level of one metric's test in sequence ``k`` of a step."""
    judged_steps = max(1, sum(1 for s in plan.steps if s < 100))
    return plan.alpha * 6 / (math.pi**2 * k * k) / judged_steps / _METRICS


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{1000 * seconds:.0f}ms"


def _summary(name: str, f: VariantFigures) -> str:
    rate = f.errors_5xx / f.requests if f.requests else 0.0
    return f"{name}: {f.requests:.0f} req, 5xx {_pct(rate)}, p95 {_ms(f.latency_quantile(0.95))}"


def _cumulative_at(buckets: Sequence[tuple[float, float]], le: float) -> float:
    return next((count for bound, count in buckets if bound == le), math.nan)


def _latency_test(
    plan: RolloutPlan,
    control: VariantFigures,
    variant: VariantFigures,
    alpha: float,
    sequential: Sequential,
) -> str | None:
    c95, v95 = control.latency_quantile(0.95), variant.latency_quantile(0.95)
    if c95 is None or v95 is None or c95 <= 0 or v95 <= plan.p95_ratio * c95:
        return None
    bound = plan.p95_ratio * c95
    le = next((b for b, _ in control.latency_buckets if b >= bound and math.isfinite(b)), None)
    if le is None:
        return None
    n_c, n_v = control.latency_buckets[-1][1], variant.latency_buckets[-1][1]
    above_c = n_c - _cumulative_at(control.latency_buckets, le)
    above_v = n_v - _cumulative_at(variant.latency_buckets, le)
    if not (n_c > 0 and n_v > 0 and math.isfinite(above_c) and math.isfinite(above_v)):
        return None
    comp = compare_proportions(
        max(0.0, above_c), n_c, max(0.0, above_v), n_v, alpha=alpha, sequential=sequential
    )
    if comp.difference_ci.low <= 0:
        return None
    return (
        f"p95 {_ms(v95)} vs {_ms(c95)} (x{v95 / c95:.2f} > x{plan.p95_ratio:g} allowed); "
        f"slower than {_ms(le)}: {_pct(comp.variant)} vs {_pct(comp.control)} "
        f"(difference at least {_pct(comp.difference_ci.low)})"
    )


def _error_test(
    plan: RolloutPlan,
    control: VariantFigures,
    variant: VariantFigures,
    alpha: float,
    sequential: Sequential,
) -> str | None:
    comp: Comparison = compare_proportions(
        min(control.errors_5xx, control.requests), control.requests,
        min(variant.errors_5xx, variant.requests), variant.requests,
        alpha=alpha, sequential=sequential,
    )  # fmt: skip
    if comp.difference_ci.low <= plan.error_rate_increase:
        return None
    return (
        f"5xx {_pct(comp.variant)} vs {_pct(comp.control)} (increase at least "
        f"{_pct(comp.difference_ci.low)} > {_pct(plan.error_rate_increase)} allowed)"
    )


def judge(plan: RolloutPlan, figures: Sequence[VariantFigures], *, sequence: int) -> Verdict:
    """Judge the plan's variant against its control on one sequence's figures.

    Args:
        plan: The rollout plan (variants and limits).
        figures: Per-variant figures over the sequence so far (others are ignored).
        sequence: The sequence's number within the step (1, 2, ...).

    Returns:
        The verdict.
    """
    by_name = {f.variant: f for f in figures}
    control = by_name.get(plan.control) or VariantFigures(plan.control, 0.0)
    variant = by_name.get(plan.variant) or VariantFigures(plan.variant, 0.0)
    line = f"{_summary(plan.variant, variant)}; {_summary(plan.control, control)}"
    alpha = sequence_alpha(plan, sequence)
    short = [
        f"{f.variant} has {f.requests:.0f} of {plan.min_requests:g} requests"
        for f in (variant, control)
        if f.requests < plan.min_requests
    ]
    if short:
        return Verdict(THIN, (f"too little data: {', '.join(short)}",), line, alpha)
    sequential = Sequential(tuning_samples=4 * plan.min_requests)
    found = [
        reason
        for test in (_error_test, _latency_test)
        if (reason := test(plan, control, variant, alpha, sequential)) is not None
    ]
    return Verdict(REGRESSED if found else HEALTHY, tuple(found), line, alpha)

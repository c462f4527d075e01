"""Simulated rollouts for the guard's judgement (``tests/test_guard_judge.py`` and
``bench/guard_false_positives.py``): per-tick request counts, 5xx and latency histograms
for a control and a variant, fed to :func:`flagwire._control.judge.judge` as the guard
feeds it (one sequence of ``window`` seconds after another, each judged at every tick).

Latency is log-normal with a per-tick shock shared by both arms (a slow minute is slow
for everyone) and bucketed into flagwire's default histogram buckets.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

from flagwire._analysis.figures import VariantFigures
from flagwire._control.judge import REGRESSED, judge
from flagwire._engine.rollout import RolloutPlan

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
_LOG_BUCKETS = np.log(np.array(BUCKETS))


@dataclass(frozen=True)
class Arm:
    error_rate: float = 0.01
    median: float = 0.030  # seconds
    sigma: float = 0.6


def _bucket_probabilities(arm: Arm, shock: float) -> np.ndarray:
    z = (_LOG_BUCKETS - math.log(arm.median) - shock) / arm.sigma
    cdf = special.ndtr(z)
    return np.diff(np.concatenate([[0.0], cdf, [1.0]]))


def _figures(name: str, requests: int, errors: int, counts: np.ndarray) -> VariantFigures:
    cumulative = np.cumsum(counts)
    buckets = [(le, float(c)) for le, c in zip(BUCKETS, cumulative[:-1], strict=True)]
    buckets.append((math.inf, float(cumulative[-1])))
    return VariantFigures(name, float(requests), float(errors), tuple(buckets))


def run(
    plan: RolloutPlan,
    *,
    ticks: int,
    interval: float,
    requests_per_tick: int,
    share: float,
    control: Arm,
    variant: Arm,
    rng: np.random.Generator,
    shock_sigma: float = 0.3,
    judgement: Callable[..., Any] | None = None,
) -> int | None:
    """The first tick (1-based) the guard judges the variant regressed, or None."""
    per_sequence = max(1, round(plan.window / interval))
    arms = ((plan.control, control, 1 - share / 100), (plan.variant, variant, share / 100))
    totals = {name: [0, 0, np.zeros(len(BUCKETS) + 1)] for name, _, _ in arms}
    for tick in range(ticks):
        if tick % per_sequence == 0:
            totals = {name: [0, 0, np.zeros(len(BUCKETS) + 1)] for name, _, _ in arms}
        shock = rng.normal(0.0, shock_sigma)
        for name, arm, fraction in arms:
            n = int(rng.binomial(requests_per_tick, fraction))
            total = totals[name]
            total[0] += n
            total[1] += int(rng.binomial(n, arm.error_rate))
            total[2] = total[2] + rng.multinomial(n, _bucket_probabilities(arm, shock))
        figures = [_figures(name, t[0], t[1], t[2]) for name, t in totals.items()]
        if judgement is None:
            outcome = judge(plan, figures, sequence=tick // per_sequence + 1).outcome
        else:
            outcome = judgement(plan, figures, sequence=tick // per_sequence + 1)
        if outcome == REGRESSED:
            return tick + 1
    return None


def naive_judge(plan: RolloutPlan, figures: list[VariantFigures], *, sequence: int) -> str:
    """What the guard must not do: a fresh fixed-horizon test at ``plan.alpha`` every tick
    (the 5xx difference's 1 - alpha interval above ``guard.error_rate_increase``)."""
    from flagwire._analysis.stats import compare_proportions

    by_name = {f.variant: f for f in figures}
    c, v = by_name[plan.control], by_name[plan.variant]
    if min(c.requests, v.requests) < plan.min_requests:
        return "thin"
    comp = compare_proportions(c.errors_5xx, c.requests, v.errors_5xx, v.requests,
                               alpha=2 * plan.alpha)  # one-sided at alpha  # fmt: skip
    return REGRESSED if comp.difference_ci.low > plan.error_rate_increase else "healthy"

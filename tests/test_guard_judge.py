"""The guard's judgement: the verdicts on clear cases, and by simulation that checking it
every interval keeps the false-positive rate (where a fresh test each tick does not) while
a bad variant is caught as soon as there is enough data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flagwire._control.judge import HEALTHY, REGRESSED, THIN, judge, sequence_alpha, sequence_of
from flagwire._engine.rollout import RolloutPlan
from guard_simulation import Arm, naive_judge, run
from guard_support import figures

PLAN = RolloutPlan("new-checkout", "on", "off", (1, 5, 25, 50, 100))


def test_too_few_requests_is_thin_whatever_the_numbers() -> None:
    verdict = judge(PLAN, [figures("on", 499, 499), figures("off", 9000)], sequence=1)
    assert verdict.outcome == THIN
    assert "on has 499 of 500 requests" in verdict.describe()


def test_a_failing_variant_regresses_with_the_numbers() -> None:
    verdict = judge(PLAN, [figures("on", 600, 60), figures("off", 12000, 12)], sequence=1)
    assert verdict.outcome == REGRESSED
    assert "5xx 10.00% vs 0.10%" in verdict.describe()


def test_a_slow_variant_regresses_on_latency() -> None:
    verdict = judge(PLAN, [figures("on", 600, slow=0.5), figures("off", 12000)], sequence=1)
    assert verdict.outcome == REGRESSED
    (reason,) = verdict.reasons
    assert reason.startswith("p95 ") and "> x1.25 allowed" in reason


def test_small_differences_within_the_limits_are_healthy() -> None:
    # 0.6 points more errors (under the 1-point limit), a few more slow requests.
    found = [figures("on", 5000, 80, slow=0.01), figures("off", 50000, 500, slow=0.005)]
    assert judge(PLAN, found, sequence=1).outcome == HEALTHY


def test_sequences_and_their_levels() -> None:
    assert sequence_of(PLAN, 1000.0, 1000.0) == (1, 1000.0)
    assert sequence_of(PLAN, 1000.0, 1299.0) == (1, 1000.0)
    assert sequence_of(PLAN, 1000.0, 1899.0) == (3, 1600.0)
    total = sum(sequence_alpha(PLAN, k) for k in range(1, 200_000))
    # Four judged steps, two metrics each: the whole rollout spends at most alpha.
    assert 0.0499 < total * 4 * 2 < 0.05
    assert math.isclose(sequence_alpha(PLAN, 1), 0.05 * 6 / math.pi**2 / 8)


def _false_rollbacks(plan: RolloutPlan, runs: int, **kwargs: object) -> int:
    rng = np.random.default_rng(20261126)
    return sum(
        run(plan, ticks=1440, interval=60, requests_per_tick=3000, share=25,
            control=Arm(), variant=Arm(), rng=rng, **kwargs) is not None  # type: ignore[arg-type]
        for _ in range(runs)
    )  # fmt: skip


def test_an_aa_rollout_checked_every_minute_for_a_day_stays_within_alpha() -> None:
    # No margin on errors (any increase counts) and alpha 0.3, so that a leaky test would
    # show in 40 days; the bench (bench/guard_false_positives.py) runs the defaults.
    plan = RolloutPlan("f", "on", "off", (1, 5, 25, 50, 100), alpha=0.3, error_rate_increase=0)
    runs = 40
    found = _false_rollbacks(plan, runs)
    # P(Binomial(40, 0.3) >= 19) < 0.5%: more would mean the guarantee does not hold.
    assert found < 19, f"{found} of {runs} A/A days rolled back"


def test_a_fresh_test_every_tick_would_roll_an_aa_rollout_back() -> None:
    plan = RolloutPlan("f", "on", "off", (1, 5, 25, 50, 100), alpha=0.05, error_rate_increase=0)
    assert _false_rollbacks(plan, 10, judgement=naive_judge) >= 8


@pytest.mark.parametrize(("share", "reached"), [(5, 4), (25, 1)])
def test_a_bad_variant_is_caught_as_soon_as_min_requests_is_reached(
    share: int, reached: int
) -> None:
    rng = np.random.default_rng(5)
    bad = Arm(error_rate=0.10, median=0.150)  # 5x slower, fails 10%
    for _ in range(20):
        tick = run(PLAN, ticks=30, interval=60, requests_per_tick=3000, share=share,
                   control=Arm(), variant=bad, rng=rng)  # fmt: skip
        # 3000 a tick at 5%: 150 on the variant, min_requests (500) at tick 4.
        assert tick is not None and reached <= tick <= reached + 2

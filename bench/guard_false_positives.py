"""How often the guard rolls back an A/A rollout, and how fast it catches a bad one.

Simulates (``tests/guard_simulation.py``) a day of one-minute ticks at one step with
``guard.window`` 300 s, identical variants (1% 5xx, log-normal latency with a per-minute
shock shared by both), and counts the runs the guard judged "regressed" at any tick; the
same with a fresh fixed-horizon test each tick, for contrast; and, for a variant 5x slower
failing 10%, the ticks from ``guard.min_requests`` to the rollback.

    PYTHONPATH=src:tests python bench/guard_false_positives.py [RUNS]
"""

from __future__ import annotations

import sys
import time

import numpy as np

from flagwire._engine.rollout import RolloutPlan
from guard_simulation import Arm, naive_judge, run

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 500
TICKS = 1440


def rate(plan: RolloutPlan, share: float, runs: int, **kwargs: object) -> float:
    rng = np.random.default_rng(20260101)
    hits = sum(
        run(plan, ticks=TICKS, interval=60, requests_per_tick=3000, share=share,
            control=Arm(), variant=Arm(), rng=rng, **kwargs) is not None  # type: ignore[arg-type]
        for _ in range(runs)
    )  # fmt: skip
    return hits / runs


def main() -> None:
    steps = (1, 5, 25, 50, 100)
    for alpha, margin in ((0.05, 0.01), (0.05, 0.0), (0.2, 0.0)):
        plan = RolloutPlan("f", "on", "off", steps, alpha=alpha, error_rate_increase=margin)
        started = time.perf_counter()
        found = rate(plan, 25, RUNS)
        took = time.perf_counter() - started
        print(f"A/A, alpha {alpha}, error margin {margin}: rolled back in {found:.3%} of "
              f"{RUNS} days of {TICKS} ticks ({took:.0f}s)")  # fmt: skip
    plan = RolloutPlan("f", "on", "off", steps, alpha=0.05, error_rate_increase=0.0)
    naive = rate(plan, 25, min(RUNS, 100), judgement=naive_judge)
    print(f"A/A, a fresh one-sided 5% test each tick: rolled back in {naive:.1%} of days")
    rng = np.random.default_rng(7)
    bad = Arm(error_rate=0.10, median=0.150)
    plan = RolloutPlan("f", "on", "off", steps)
    delays = [
        run(plan, ticks=60, interval=60, requests_per_tick=3000, share=5, control=Arm(),
            variant=bad, rng=rng)
        for _ in range(200)
    ]  # fmt: skip
    # 5% of 3000 a tick: min_requests (500) is reached at tick 4.
    print(
        f"5x slower, 10% 5xx at 5%: rolled back at tick {sorted(delays)[::50]} "
        f"(quartiles; min_requests reached at tick 4)"
    )


if __name__ == "__main__":
    main()

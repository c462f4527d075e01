"""Time per flag evaluation: flagwire, flagd's reference evaluator, and hand-written Python.

Four flags, each evaluated for a varied set of users (so fractional hashes differ):

* ``static``  no targeting: the default variant;
* ``rule``    ``if`` + ``and`` of ``in`` and ``==`` on two context attributes;
* ``ref``     the same rule through ``$evaluators`` / ``$ref``;
* ``canary``  one ``if`` plus a ``fractional`` 10/90 split.

Three implementations of each: (i) flagwire's ``FlagSet.evaluate``; (ii) the reference,
``openfeature-flagd-core``'s ``FlagdCore.resolve_boolean_value``; (iii) the same decision
written by hand in Python, the floor (the canary hashes with mmh3 exactly as flagd does).
All three must agree on every (value, variant) before anything is timed.

Each (implementation, flag) is timed with :mod:`timeit`: one loop evaluates every
context once; the number of loops per repeat is calibrated so a repeat lasts about
``--target-ms``. The ``--repeat`` repeats are interleaved (round 1 of every pair, then
round 2, ...) so that a noisy moment on a shared machine hits all of them alike. The min
and the median per evaluation are reported; ratios use the min (timeit's advice: the min
is the least disturbed run).

    python bench/evaluate.py            # print the table and PASS/FAIL
    python bench/evaluate.py --check    # also exit 1 if a bar is missed

Bars: reference/flagwire >= 10 for the three rule flags; flagwire/hand-written <= 4 for
the canary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import mmh3

from flagwire import FlagSet, FlagType

FLAGS: Final = ("static", "rule", "ref", "canary")
RULE_FLAGS: Final = ("rule", "ref", "canary")
MIN_REFERENCE_RATIO: Final = 10.0
MAX_CANARY_FLOOR_RATIO: Final = 4.0

DACH: Final = ["DE", "AT", "CH"]
_DACH_PRO: Final = {"and": [{"in": [{"var": "country"}, DACH]}, {"==": [{"var": "plan"}, "pro"]}]}
DOCUMENT: Final[dict[str, Any]] = {
    "$evaluators": {"dach-pro": _DACH_PRO},
    "flags": {
        "static": {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "on",
        },
        "rule": {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {"if": [_DACH_PRO, "on", "off"]},
        },
        "ref": {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {"if": [{"$ref": "dach-pro"}, "on", "off"]},
        },
        "canary": {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {
                "if": [
                    {"==": [{"var": "tier"}, "beta"]},
                    "on",
                    {"fractional": [["on", 10], ["off", 90]]},
                ]
            },
        },
    },
}

Result = tuple[Any, str | None]
"""(value, variant) of one evaluation."""


def make_contexts(users: int) -> list[dict[str, Any]]:
    """Many distinct users, a realistic mix of countries, plans and tiers."""
    countries = ["DE", "US", "FR", "AT", "GB", "CH", "JP", "BR"]
    plans = ["free", "pro", "team", "pro", "enterprise"]
    return [
        {
            "targetingKey": f"user-{i:06d}",
            "country": countries[i % len(countries)],
            "plan": plans[(i * 7) % len(plans)],
            "tier": "beta" if i % 20 == 0 else "ga",
            "appVersion": f"5.{i % 4}.{i % 10}",
        }
        for i in range(users)
    ]


# -- (iii) the floor: the same decisions written by hand ----------------------------------

_DACH_SET: Final = frozenset(DACH)
_ON: Final[Result] = (True, "on")
_OFF: Final[Result] = (False, "off")


def hand_static(ctx: dict[str, Any]) -> Result:
    return _ON


def hand_rule(ctx: dict[str, Any]) -> Result:
    if ctx.get("country") in _DACH_SET and ctx.get("plan") == "pro":
        return _ON
    return _OFF


def hand_canary(ctx: dict[str, Any]) -> Result:
    if ctx.get("tier") == "beta":
        return _ON
    targeting_key = ctx.get("targetingKey")
    if not targeting_key:
        return _OFF  # flagd: no bucketing value, null, so the default variant
    h = mmh3.hash("canary" + targeting_key, signed=False)
    bucket = (h * 100) >> 32
    return _ON if bucket < 10 else _OFF


HAND: Final[dict[str, Callable[[dict[str, Any]], Result]]] = {
    "static": hand_static,
    "rule": hand_rule,
    "ref": hand_rule,  # $ref is resolved when the flag set is loaded: the same decision
    "canary": hand_canary,
}


# -- timing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    min_ns: float
    median_ns: float


class Benchmark:
    """One timed loop; ``loop`` performs ``evaluations`` evaluations per call."""

    def __init__(self, loop: Callable[[], object], evaluations: int, target_ms: float) -> None:
        self.timer = timeit.Timer(loop)
        self.evaluations = evaluations
        self.runs: list[float] = []
        loop()  # warm up (caches, lazily built code)
        number = 1
        while self.timer.timeit(number) * 1000 < target_ms / 4 and number < 1 << 20:
            number *= 2
        per_loop = self.timer.timeit(number) / number
        self.number = max(1, round(target_ms / 1000 / max(per_loop, 1e-9)))

    def run_once(self) -> None:
        seconds = self.timer.timeit(self.number)
        self.runs.append(seconds / self.number / self.evaluations * 1e9)

    def timing(self) -> Timing:
        return Timing(min(self.runs), statistics.median(self.runs))


def flagwire_loop(
    flags: FlagSet, key: str, contexts: Sequence[dict[str, Any]]
) -> Callable[[], None]:
    evaluate = flags.evaluate
    boolean = FlagType.BOOLEAN

    def loop() -> None:
        for ctx in contexts:
            evaluate(key, ctx, False, flag_type=boolean)

    return loop


def reference_loop(core: Any, key: str, contexts: Sequence[Any]) -> Callable[[], None]:
    resolve = core.resolve_boolean_value

    def loop() -> None:
        for ctx in contexts:
            resolve(key, False, ctx)

    return loop


def hand_loop(
    fn: Callable[[dict[str, Any]], Result], contexts: Sequence[dict[str, Any]]
) -> Callable[[], None]:
    def loop() -> None:
        for ctx in contexts:
            fn(ctx)

    return loop


def disagreements_between(
    flags: FlagSet, core: Any, contexts: Sequence[dict[str, Any]], reference_contexts: Sequence[Any]
) -> list[str]:
    """Every (flag, context) on which the three implementations do not agree."""
    found = []
    for key in FLAGS:
        for ctx, ref_ctx in zip(contexts, reference_contexts, strict=True):
            a = flags.evaluate(key, ctx, False, flag_type=FlagType.BOOLEAN)
            r = core.resolve_boolean_value(key, False, ref_ctx)
            hand = HAND[key](ctx)
            if not ((a.value, a.variant) == (r.value, r.variant) == hand):
                found.append(
                    f"{key} {ctx}: flagwire {a.value, a.variant}, "
                    f"reference {r.value, r.variant}, hand-written {hand}"
                )
    return found


# -- main -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a bar is missed")
    parser.add_argument("--users", type=int, default=2000, help="distinct contexts (2000)")
    parser.add_argument("--repeat", type=int, default=15, help="interleaved repeats (15)")
    parser.add_argument(
        "--target-ms", type=float, default=40.0, help="duration of one repeat in ms (40)"
    )
    args = parser.parse_args(argv)

    try:
        from openfeature.contrib.tools.flagd.core import FlagdCore
        from openfeature.evaluation_context import EvaluationContext
    except ImportError:
        print(
            "the reference evaluator is not installed: pip install 'openfeature-flagd-core==1.0.0'"
            " (or flagwire[bench])",
            file=sys.stderr,
        )
        return 1

    contexts = make_contexts(args.users)
    reference_contexts = [
        EvaluationContext(
            ctx["targetingKey"], {k: v for k, v in ctx.items() if k != "targetingKey"}
        )
        for ctx in contexts
    ]
    flags = FlagSet.from_mapping(DOCUMENT)
    core = FlagdCore()
    core.set_flags(json.dumps(DOCUMENT))  # FlagdCore edits the dicts it is given

    # All three must make the same decisions, or the comparison means nothing.
    disagreements = disagreements_between(flags, core, contexts, reference_contexts)
    if disagreements:
        print("the implementations disagree, so nothing is timed:", *disagreements[:10], sep="\n  ")
        print("FAIL")
        return 1 if args.check else 0

    on = sum(flags.evaluate("canary", ctx, False).value is True for ctx in contexts)
    print(
        f"{args.users} contexts, {args.repeat} interleaved repeats of ~{args.target_ms:g} ms; "
        f"canary on for {on / len(contexts):.1%} of them (10% split + 5% beta)"
    )
    print()
    header = (
        f"{'flag':<8} {'flagwire ns':>12} {'reference ns':>13} {'hand ns':>9}"
        f" {'ref/flagwire':>13} {'flagwire/hand':>14}   (min; median)"
    )
    print(header)
    print("-" * len(header))
    n = len(contexts)
    benchmarks = {
        (key, impl): Benchmark(loop, n, args.target_ms)
        for key in FLAGS
        for impl, loop in (
            ("flagwire", flagwire_loop(flags, key, contexts)),
            ("reference", reference_loop(core, key, reference_contexts)),
            ("hand", hand_loop(HAND[key], contexts)),
        )
    }
    for _ in range(args.repeat):
        for benchmark in benchmarks.values():
            benchmark.run_once()
    failures = []
    for key in FLAGS:
        ours = benchmarks[key, "flagwire"].timing()
        theirs = benchmarks[key, "reference"].timing()
        floor = benchmarks[key, "hand"].timing()
        speedup = theirs.min_ns / ours.min_ns
        overhead = ours.min_ns / floor.min_ns
        marks = []
        if key in RULE_FLAGS and speedup < MIN_REFERENCE_RATIO:
            marks.append(f"ref/flagwire < {MIN_REFERENCE_RATIO:g}")
            failures.append(f"{key}: reference/flagwire {speedup:.1f} < {MIN_REFERENCE_RATIO:g}")
        if key == "canary" and overhead > MAX_CANARY_FLOOR_RATIO:
            marks.append(f"flagwire/hand > {MAX_CANARY_FLOOR_RATIO:g}")
            failures.append(
                f"{key}: flagwire/hand-written {overhead:.2f} > {MAX_CANARY_FLOOR_RATIO:g}"
            )
        print(
            f"{key:<8} {ours.min_ns:>12.0f} {theirs.min_ns:>13.0f} {floor.min_ns:>9.0f}"
            f" {speedup:>13.1f} {overhead:>14.2f}"
            f"   ({ours.median_ns:.0f} / {theirs.median_ns:.0f} / {floor.median_ns:.0f})"
            + (f"  <- {', '.join(marks)}" if marks else "")
        )
    print()
    print(
        f"bars: reference/flagwire >= {MIN_REFERENCE_RATIO:g} for {', '.join(RULE_FLAGS)}; "
        f"flagwire/hand-written <= {MAX_CANARY_FLOOR_RATIO:g} for canary"
    )
    if failures:
        print("FAIL: " + "; ".join(failures))
        return 1 if args.check else 0
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())

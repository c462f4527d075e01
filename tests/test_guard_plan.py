"""The rollout plan in flag metadata: parsed, validated with the flag set (so ``flagwire
validate`` reports it and ``publish`` refuses it), and the guard's document changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flagwire import FlagSet
from flagwire._cli.main import main
from flagwire._control.plan import with_pause, with_share, with_stamp
from flagwire._engine.rollout import parse_plan, rollout_state, variant_share
from guard_support import guarded_document


def _plan_of(document: dict[str, Any]) -> Any:
    definition = FlagSet.from_mapping(document).definition("new-checkout")
    assert definition is not None
    return definition, *parse_plan(definition)


def test_a_valid_plan_parses_with_its_limits() -> None:
    definition, plan, problems = _plan_of(guarded_document(5, **{"guard.action": "kill"}))
    assert problems == []
    assert plan.steps == (1, 5, 25, 50, 100)
    assert (plan.variant, plan.control, plan.action) == ("on", "off", "kill")
    assert (plan.bake, plan.min_requests, plan.window) == (600, 500, 300)
    assert variant_share(definition, plan) == 5
    assert plan.next_step(5) == 25
    assert plan.next_step(7) == 25  # between steps: the next one up
    assert plan.next_step(100) is None
    assert FlagSet.from_mapping(guarded_document()).problems == ()


def test_a_flag_without_plan_keys_has_no_plan() -> None:
    document = guarded_document()
    document["flags"]["new-checkout"]["metadata"] = {"rollout.control": "off"}  # report only
    assert _plan_of(document)[1:] == (None, [])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"rollout.steps": "5,1,100"}, "rollout.steps must increase"),
        ({"rollout.steps": "0,50"}, "rollout.steps must be percents"),
        ({"rollout.steps": "1,five"}, "rollout.steps must be percents"),
        ({"rollout.steps": None}, "rollout.steps is missing"),
        ({"rollout.variant": "blue"}, "rollout.variant 'blue' is not a variant"),
        ({"rollout.control": None}, "rollout.control is missing"),
        ({"rollout.control": "on"}, "must differ"),
        ({"rollout.bake": -5}, "rollout.bake must be a positive number"),
        ({"guard.min_requests": "many"}, "guard.min_requests must be a positive number"),
        ({"guard.action": "panic"}, "guard.action must be one of rollback, kill, pause"),
        ({"guard.alpha": 1.5}, "guard.alpha must be below 1"),
    ],
)
def test_plan_problems_are_flag_set_problems(change: dict[str, Any], expected: str) -> None:
    problems = FlagSet.from_mapping(guarded_document(**change)).problems
    assert len(problems) == 1, problems
    assert problems[0].startswith('flag "new-checkout": rollout plan: ')
    assert expected in problems[0]


@pytest.mark.parametrize(
    "targeting",
    [
        {"fractional": [["on", 5], ["off", 90], ["dark", 5]]},  # a third variant
        {"if": [True, {"fractional": [["on", 5], ["off", 95]]},
                {"fractional": [["on", 1], ["off", 99]]}]},  # two of them
        {"fractional": [["on", {"var": "pct"}], ["off", 95]]},  # a computed weight
        {"if": [{"==": [{"var": "plan"}, "beta"]}, "on", "off"]},  # no fractional
    ],
)  # fmt: skip
def test_the_targeting_must_split_the_two_variants(targeting: Any) -> None:
    document = guarded_document(targeting=targeting)
    document["flags"]["new-checkout"]["variants"]["dark"] = False
    (problem,) = FlagSet.from_mapping(document).problems
    assert "rollout plan: the" in problem and "fractional" in problem


def test_a_split_behind_a_segment_rule_and_a_killed_flag_are_valid() -> None:
    segment = {"if": [{"==": [{"var": "plan"}, "staff"]}, "on",
                      {"fractional": [{"var": "email"}, ["on", 5], ["off", 95]]}]}  # fmt: skip
    definition, plan, problems = _plan_of(guarded_document(targeting=segment))
    assert problems == [] and variant_share(definition, plan) == 5
    killed = guarded_document()
    del killed["flags"]["new-checkout"]["targeting"]
    definition, plan, problems = _plan_of(killed)
    assert problems == [] and variant_share(definition, plan) is None


def test_flagwire_validate_reports_a_broken_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(guarded_document(**{"rollout.steps": "50,25"})))
    assert main(["validate", str(path)]) == 1
    assert "rollout plan: rollout.steps must increase" in capsys.readouterr().out
    path.write_text(json.dumps(guarded_document()))
    assert main(["validate", str(path)]) == 0


def test_with_share_rewrites_the_weights_and_stamps() -> None:
    segment = {"if": [{"==": [{"var": "plan"}, "staff"]}, "on",
                      {"fractional": [{"var": "email"}, ["off", 95], ["on", 5]]}]}  # fmt: skip
    document = guarded_document(targeting=segment, **{"guard.paused": "was slow"})
    _, plan, _ = _plan_of(document)
    new = with_share(document, plan, 25, now=1_800_000_000)
    flag = new["flags"]["new-checkout"]
    assert flag["targeting"]["if"][2] == {"fractional": [{"var": "email"}, ["off", 75], ["on", 25]]}
    assert flag["metadata"]["guard.step"] == 25
    assert flag["metadata"]["guard.since"] == "2027-01-15T08:00:00+00:00"
    assert "guard.paused" not in flag["metadata"]
    assert document["flags"]["new-checkout"]["metadata"]["guard.paused"] == "was slow"  # a copy
    half = with_share(document, plan, 0.5, now=0)["flags"]["new-checkout"]["targeting"]
    assert half["if"][2]["fractional"][1:] == [["off", 9950], ["on", 50]]  # basis points
    state = rollout_state(FlagSet.from_mapping(new).definition("new-checkout").metadata)  # type: ignore[union-attr]
    assert (state.step, state.since, state.paused) == (25, 1_800_000_000, None)


def test_stamp_and_pause_change_only_metadata() -> None:
    document = guarded_document(5)
    _, plan, _ = _plan_of(document)
    stamped = with_stamp(document, plan, 5, now=100)["flags"]["new-checkout"]
    assert stamped["targeting"] == document["flags"]["new-checkout"]["targeting"]
    assert (stamped["metadata"]["guard.step"], stamped["metadata"]["guard.since"]) == (
        5, "1970-01-01T00:01:40+00:00")  # fmt: skip
    paused = with_pause(document, plan, "p95 x5")
    assert rollout_state(paused["flags"]["new-checkout"]["metadata"]).paused == "p95 x5"
    assert FlagSet.from_mapping(paused).problems == ()

"""flagd's Go evaluator unit tests, replayed as data against flagwire.

Upstream: ``open-feature/flagd`` at ``bbb05d4b`` (2026-07-31), ``core/pkg/evaluator/``.
Each case names its Go test function and sub-test. flagwire follows the daemon (``v2``
bucketing, the algorithm flagd's Go evaluator implements); where the Python and
JavaScript SDK cores disagree with it, the daemon wins (``notes/agreement.md``).
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

import pytest

from flagwire import FlagSet, RequestFlags
from flagwire._engine import flagd_ops

COLORS: Final = {"red": "#FF0000", "blue": "#0000FF", "green": "#00FF00", "yellow": "#FFFF00"}
MATCH: Final = "TARGETING_MATCH"
DEFAULT: Final = "DEFAULT"


class GoCase(NamedTuple):
    go_test: str
    flag_key: str
    targeting: Any
    context: dict[str, Any]
    variant: str
    reason: str
    default_variant: str = "red"
    variants: dict[str, Any] = COLORS


def _faas(then: Any) -> dict[str, Any]:
    return {"if": [{"in": ["@faas.com", {"var": ["email"]}]}, then, None]}


_QUARTERS: Final = [["red", 25], ["blue", 25], ["green", 25], ["yellow", 25]]
_HEADER = _faas(
    {"fractional": [{"cat": [{"var": "$flagd.flagKey"}, {"var": "email"}]}, *_QUARTERS]}
)
_SEEDED = _faas({"fractional": [{"cat": ["my-seed", {"var": "email"}]}, *_QUARTERS]})
_NESTED_IF = {
    "fractional": [
        "email",
        [{"if": [{"in": ["us", {"var": "locale"}]}, "red", "blue"]}, 25],
        ["green", 75],
    ]
}
_NESTED_FRACTIONAL = {
    "fractional": ["email", [{"fractional": ["tier", *_QUARTERS]}, 25], ["green", 75]]
}
_DYNAMIC = {
    "fractional": [
        "email",
        ["red", {"var": "redWeight"}],
        ["blue", {"var": "blueWeight"}],
        ["green", {"var": "greenWeight"}],
    ]
}
_FALLBACK_VARIANTS: Final = {"one": "one", "two": "two", "fallback": "fallback"}

# fractional_test.go: TestFractionalEvaluation, TestFractionalEvaluationNegativeClamping,
# TestFractionalEvaluationWithNestedJSONLogic,
# TestFractionalEvaluation_ErrorFallbackWhenUsedDirectly
FRACTIONAL_CASES: Final = {
    "rachel": GoCase(
        "TestFractionalEvaluation/rachel@faas.com",
        "headerColor",
        _HEADER,
        {"email": "rachel@faas.com"},
        "blue",
        MATCH,
    ),
    "monica": GoCase(
        "TestFractionalEvaluation/monica@faas.com",
        "headerColor",
        _HEADER,
        {"email": "monica@faas.com"},
        "yellow",
        MATCH,
    ),
    "joey": GoCase(
        "TestFractionalEvaluation/joey@faas.com",
        "headerColor",
        _HEADER,
        {"email": "joey@faas.com"},
        "red",
        MATCH,
    ),
    "ross": GoCase(
        "TestFractionalEvaluation/ross@faas.com",
        "headerColor",
        _HEADER,
        {"email": "ross@faas.com"},
        "blue",
        MATCH,
    ),
    "rachel-seed": GoCase(
        "TestFractionalEvaluation/rachel@faas.com with custom seed",
        "customSeededHeaderColor",
        _SEEDED,
        {"email": "rachel@faas.com"},
        "green",
        MATCH,
    ),
    "monica-seed": GoCase(
        "TestFractionalEvaluation/monica@faas.com with custom seed",
        "customSeededHeaderColor",
        _SEEDED,
        {"email": "monica@faas.com"},
        "red",
        MATCH,
    ),
    "joey-seed": GoCase(
        "TestFractionalEvaluation/joey@faas.com with custom seed",
        "customSeededHeaderColor",
        _SEEDED,
        {"email": "joey@faas.com"},
        "blue",
        MATCH,
    ),
    "ross-seed": GoCase(
        "TestFractionalEvaluation/ross@faas.com with custom seed",
        "customSeededHeaderColor",
        _SEEDED,
        {"email": "ross@faas.com"},
        "green",
        MATCH,
    ),
    "other-key": GoCase(
        "TestFractionalEvaluation/ross@faas.com with different flag key",
        "footerColor",
        _faas({"fractional": [{"var": "email"}, *_QUARTERS]}),
        {"email": "ross@faas.com"},
        "red",
        MATCH,
    ),
    "non-even": GoCase(
        "TestFractionalEvaluation/non even split",
        "headerColor",
        _faas({"fractional": ["email", ["red", 50], ["blue", 25], ["green", 25]]}),
        {"email": "test4@faas.com"},
        "green",
        MATCH,
    ),
    "no-email": GoCase(
        "TestFractionalEvaluation/fallback to default variant if no email provided",
        "headerColor",
        {"fractional": [{"var": "email"}, *_QUARTERS]},
        {},
        "red",
        DEFAULT,
    ),
    "non-percentage": GoCase(
        "TestFractionalEvaluation/get variant for non-percentage weight values",
        "headerColor",
        {"fractional": [{"var": "email"}, ["red", 25], ["blue", 25]]},
        {"email": "foo@foo.com"},
        "blue",
        MATCH,
    ),
    "no-weights": GoCase(
        "TestFractionalEvaluation/get variant for non-specified weight values",
        "headerColor",
        {"fractional": [{"var": "email"}, ["red"], ["blue"]]},
        {"email": "foo@foo.com"},
        "blue",
        MATCH,
    ),
    "shorthand": GoCase(
        "TestFractionalEvaluation/default to targetingKey if no bucket key provided",
        "headerColor",
        {"fractional": [["blue", 50], ["green", 50]]},
        {"targetingKey": "foo@foo.com"},
        "green",
        MATCH,
    ),
    "missing-email": GoCase(
        "TestFractionalEvaluation/missing email - parser should ignore nil/missing custom"
        " variables and continue",
        "headerColor",
        {"fractional": [{"var": "email"}, ["red", 50], ["blue", 50]]},
        {"targetingKey": "foo@foo.com"},
        "blue",
        MATCH,
    ),
    "null-key": GoCase(
        "TestFractionalEvaluation/null targetingKey returns default variant",
        "headerColor",
        {"fractional": [["blue", 50], ["green", 50]]},
        {"targetingKey": None},
        "red",
        DEFAULT,
    ),
    "missing-key": GoCase(
        "TestFractionalEvaluation/missing targetingKey returns default variant",
        "headerColor",
        {"fractional": [["blue", 50], ["green", 50]]},
        {},
        "red",
        DEFAULT,
    ),
    "empty-key": GoCase(
        "TestFractionalEvaluation/empty targetingKey returns default variant",
        "headerColor",
        {"fractional": [["blue", 50], ["green", 50]]},
        {"targetingKey": ""},
        "red",
        DEFAULT,
    ),
    "single": GoCase(
        "TestFractionalEvaluation/single-entry always returns the sole variant",
        "headerColor",
        {"fractional": [["blue", 1]]},
        {"targetingKey": "any-user"},
        "blue",
        MATCH,
    ),
    "single-by": GoCase(
        "TestFractionalEvaluation/single-entry with explicit bucket-by always returns the sole"
        " variant",
        "headerColor",
        {"fractional": [{"var": "email"}, ["green", 100]]},
        {"email": "any@user.com"},
        "green",
        MATCH,
    ),
    "single-shorthand": GoCase(
        "TestFractionalEvaluation/single-entry shorthand without weight always returns the sole"
        " variant",
        "headerColor",
        {"fractional": [["yellow"]]},
        {"targetingKey": "any-user"},
        "yellow",
        MATCH,
    ),
    "clamping": GoCase(
        "TestFractionalEvaluationNegativeClamping",
        "clampedWeightFlag",
        {"fractional": [["red", -1000], ["green", 1]]},
        {"targetingKey": "some-targeting-key"},
        "green",
        MATCH,
        default_variant="blue",
    ),
    "nested-if-us": GoCase(
        "TestFractionalEvaluationWithNestedJSONLogic/nested if - us locale in second bucket"
        " returns static variant",
        "nestedIfVariant",
        _NESTED_IF,
        {"email": "rachel@faas.com", "locale": "us"},
        "green",
        MATCH,
    ),
    "nested-if-ca": GoCase(
        "TestFractionalEvaluationWithNestedJSONLogic/nested if - non-us locale in second bucket"
        " returns static value",
        "nestedIfVariant",
        _NESTED_IF,
        {"email": "rachel@faas.com", "locale": "ca"},
        "green",
        MATCH,
    ),
    "nested-fractional": GoCase(
        "TestFractionalEvaluationWithNestedJSONLogic/nested fractional in second bucket returns"
        " one of variants",
        "nestedFractional",
        _NESTED_FRACTIONAL,
        {"email": "rachel@faas.com", "tier": "premium"},
        "green",
        MATCH,
    ),
    # Go's context numbers are float64: 0.0 and 1.0 are weights (item 1 of issue 12).
    "weights-blue": GoCase(
        "TestFractionalEvaluationWithNestedJSONLogic/weights computed from context variables",
        "dynamicWeights",
        _DYNAMIC,
        {"email": "test_a@faas.com", "redWeight": 0.0, "blueWeight": 1.0, "greenWeight": 0.0},
        "blue",
        MATCH,
    ),
    "weights-red": GoCase(
        "TestFractionalEvaluationWithNestedJSONLogic/weights computed: red",
        "dynamicWeights",
        _DYNAMIC,
        {"email": "test_a@faas.com", "redWeight": 1.0, "blueWeight": 0.0, "greenWeight": 0.0},
        "red",
        MATCH,
    ),
    "weights-green": GoCase(
        "TestFractionalEvaluationWithNestedJSONLogic/weights computed: green",
        "dynamicWeights",
        _DYNAMIC,
        {"email": "test_a@faas.com", "redWeight": 0.0, "blueWeight": 0.0, "greenWeight": 1.0},
        "green",
        MATCH,
    ),
    "fallback-missing": GoCase(
        "TestFractionalEvaluation_ErrorFallbackWhenUsedDirectly/missing bucket key falls back",
        "fractional-op-error-fallback",
        {"fractional": [{"var": "missing_key"}, ["one", 50], ["two", 50]]},
        {},
        "fallback",
        DEFAULT,
        default_variant="fallback",
        variants=_FALLBACK_VARIANTS,
    ),
    "fallback-zero": GoCase(
        "TestFractionalEvaluation_ErrorFallbackWhenUsedDirectly/all zero weights fall back",
        "fractional-op-error-fallback",
        {"fractional": [{"var": "targetingKey"}, ["one", 0], ["two", 0]]},
        {"targetingKey": "any-user"},
        "fallback",
        DEFAULT,
        default_variant="fallback",
        variants=_FALLBACK_VARIANTS,
    ),
}


def _flagset(case: GoCase) -> FlagSet:
    flag = {
        "state": "ENABLED",
        "defaultVariant": case.default_variant,
        "variants": case.variants,
        "targeting": case.targeting,
    }
    return FlagSet.from_mapping({"flags": {case.flag_key: flag}})


@pytest.mark.parametrize("case", list(FRACTIONAL_CASES.values()), ids=list(FRACTIONAL_CASES))
def test_go_fractional_case(case: GoCase) -> None:
    flags = _flagset(case)
    got = flags.evaluate(case.flag_key, case.context, "caller-default")
    assert (got.variant, got.reason.value, got.error_code) == (case.variant, case.reason, None)
    assert got.value == case.variants[case.variant]
    assert RequestFlags(flags, case.context).details(case.flag_key, "caller-default") == got


# semver_test.go: TestSemVerOperator_Compare (None: Go reports an error, sem_ver gives null)
SEMVER_CASES: Final = [
    ("invalid version", "invalid", ">", "v1.0.0", None),
    ("preview version vs non preview version", "v1.0.0-preview.1.2", ">", "v1.0.0", False),
    ("preview version vs preview version", "v1.0.0-preview.1.3", ">", "v1.0.0-preview.1.2", True),
    ("no prefixed v left greater", "0.0.1", ">", "v0.0.2", False),
    ("no prefixed v right greater", "v0.0.1", ">", "0.0.2", False),
    ("no prefixed v right equals", "v0.0.1", "=", "0.0.1", True),
    ("uppercase V prefix equals lowercase or no prefix", "V1.0.0", "=", "1.0.0", True),
    ("no prefixed v both", "0.0.1", ">", "0.0.2", False),
    ("invalid operator", "v0.0.1", "", "v0.0.2", None),
    ("less with large number", "v1234.0.1", "<", "v1235.0.2", True),
    ("less", "v0.0.1", "<", "v0.0.2", True),
    ("no minor version", "v1.0", "<", "v1.2", True),
    ("not less", "v0.0.1", "<", "v0.0.1", False),
    ("less or equal", "v0.0.1", "<=", "v0.0.2", True),
    ("less or equal 2", "v0.0.1", "<=", "v0.0.1", True),
    ("equal", "v0.0.1", "=", "v0.0.1", True),
    ("not equal", "v0.0.2", "=", "v0.0.1", False),
    ("unequal", "v0.0.2", "!=", "v0.0.1", True),
    ("not unequal", "v0.0.1", "!=", "v0.0.1", False),
    ("greater or equal 1", "v0.0.2", ">=", "v0.0.1", True),
    ("greater or equal 2", "v0.0.1", ">=", "v0.0.1", True),
    ("not greater or equal", "v0.0.1", ">=", "v0.0.2", False),
    ("greater", "v0.0.2", ">", "v0.0.1", True),
    ("not greater", "v0.0.1", ">", "v0.0.1", False),
    ("matching major version", "v1.3.4", "^", "v1.5.3", True),
    ("not matching major version", "v2.1.1", "^", "v1.1.1", False),
    ("matching minor version", "v1.3.4", "~", "v1.3.1", True),
    ("not matching minor version", "v2.2.1", "~", "v2.1.1", False),
]


@pytest.mark.parametrize(
    ("left", "op", "right", "want"), [c[1:] for c in SEMVER_CASES], ids=[c[0] for c in SEMVER_CASES]
)
def test_go_sem_ver_compare_case(left: str, op: str, right: str, want: bool | None) -> None:
    assert flagd_ops.sem_ver([left, op, right]) is want


# -- the daemon's behaviour beyond its unit tests (issue 12, items 1-4) -------------------


def _one(targeting: Any, fractional: str | None = None) -> FlagSet:
    flag = {
        "state": "ENABLED",
        "defaultVariant": "off",
        "variants": {"on": True, "off": False},
        "targeting": targeting,
    }
    return FlagSet.from_mapping({"flags": {"f": flag}}, fractional=fractional)


def _agreed(flags: FlagSet, context: dict[str, Any]) -> tuple[Any, str | None, str, Any]:
    got = flags.evaluate("f", context, False)
    assert RequestFlags(flags, context).details("f", False) == got
    code = None if got.error_code is None else got.error_code.value
    return got.value, got.variant, got.reason.value, code


@pytest.mark.parametrize("fractional", ["v2", "v3"])
@pytest.mark.parametrize(
    "targeting",
    [
        {"fractional": [["on", 100.0], ["off", 0.0]]},
        {"fractional": [{"var": "email"}, ["on", 100.0], ["off", 0]]},
        {"fractional": [["on", {"var": "w"}], ["off", 0]]},
        {"fractional": ["fixed", ["on", {"var": "w"}], ["off", {"var": "z"}]]},
    ],
)
def test_integral_float_weights_are_weights(targeting: Any, fractional: str) -> None:
    # Go parses every weight as a float64 and accepts it when it is a whole number.
    context = {"targetingKey": "u1", "email": "a@b.c", "w": 10.0, "z": 0.0}
    assert _agreed(_one(targeting, fractional), context) == (True, "on", MATCH, None)


@pytest.mark.parametrize("weight", [50.5, True, "10"])
def test_other_weights_still_give_the_default(weight: Any) -> None:
    flags = _one({"fractional": [["on", weight], ["off", 0]]})
    assert _agreed(flags, {"targetingKey": "u1"}) == (False, "off", DEFAULT, None)


@pytest.mark.parametrize("fractional", ["v2", "v3"])
@pytest.mark.parametrize("key", [42, 1.5, True, ["a"], {"id": "a"}])
def test_non_string_targeting_key_gives_the_default_variant(key: Any, fractional: str) -> None:
    flags = _one({"fractional": [["on", 50], ["off", 50]]}, fractional)
    assert _agreed(flags, {"targetingKey": key}) == (False, "off", DEFAULT, None)
    nested = _one({"if": [True, {"fractional": [["on", 50], ["off", 50]]}, "on"]}, fractional)
    assert _agreed(nested, {"targetingKey": key}) == (False, "off", DEFAULT, None)


def test_null_bucketing_value_in_v3_gives_the_default() -> None:
    # flagd's ADR fractional-non-string-rand-units: v3 rejects null as the bucketing value.
    flags = _one({"fractional": [{"var": "email"}, ["on", 50], ["off", 50]]}, "v3")
    assert _agreed(flags, {"targetingKey": "foo@foo.com"}) == (False, "off", DEFAULT, None)


@pytest.mark.parametrize("op", ["<", "<=", ">", ">="])
@pytest.mark.parametrize(("left", "right"), [(None, "abc"), ("abc", None), (None, "")])
def test_ordering_between_null_and_a_string_is_numeric(op: str, left: Any, right: Any) -> None:
    # JavaScript (and Go's jsonlogic) compare null and a string as numbers: 0 and NaN.
    want = right == "" and op in ("<=", ">=")  # Number("") is 0
    rule = {"if": [{op: [{"var": "a"}, {"var": "b"}]}, "on", "off"]}
    context = {"a": left, "b": right} if left is not None else {"b": right}
    if right is None:
        context = {"a": left}
    got = _agreed(_one(rule), context)
    assert got == (want, "on" if want else "off", MATCH, None)


def test_ordering_between_null_and_a_numeric_string() -> None:
    rule = {"if": [{"<": [{"var": "missing"}, "5"]}, "on", "off"]}
    assert _agreed(_one(rule), {}) == (True, "on", MATCH, None)


def test_cat_formats_booleans_as_javascript() -> None:
    rule = {
        "if": [
            {"==": [{"cat": [True, "/", False, "/", {"var": "b"}]}, "true/false/true"]},
            "on",
            "off",
        ]
    }
    assert _agreed(_one(rule), {"b": True}) == (True, "on", MATCH, None)


def test_flags_as_an_array_of_flag_objects() -> None:
    # flagd PR #1797: "flags": [{"key": ..., "state": ...}, ...]
    doc = {
        "flags": [
            {"key": "a", "state": "ENABLED", "variants": {"on": True}, "defaultVariant": "on"},
            {"key": "b", "state": "DISABLED", "variants": {"x": "x"}, "defaultVariant": "x"},
        ]
    }
    flags = FlagSet.from_mapping(doc)
    assert sorted(flags) == ["a", "b"]
    assert flags.evaluate("a", {}, False).value is True

"""The generated rules pick the same fractional bucket as flagd's arithmetic, at every edge.

The generator compares the hash with precomputed limits instead of computing
``(hash * total) >> 32``; here the hash is replaced by chosen values (each limit and its
neighbours) and every pick is checked against :meth:`Bucketer.pick`.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flagwire import FlagSet, RequestFlags
from flagwire._engine import flagd_ops as cops

NAMES = ["a", "b", "c", "d", "e", "f"]


def _flagset(weights: list[int], hashed: list[int], monkeypatch: pytest.MonkeyPatch) -> FlagSet:
    def fake_hash(key: Any, seed: int = 0, signed: bool = True) -> int:
        return hashed[0]

    monkeypatch.setattr(cops, "_hash", fake_hash)
    doc = {
        "flags": {
            "split": {
                "state": "ENABLED",
                "variants": {name: name for name in NAMES},
                "defaultVariant": "a",
                "targeting": {"fractional": [[NAMES[i], w] for i, w in enumerate(weights)]},
            }
        }
    }
    return FlagSet.from_mapping(doc)


def _edges(weights: list[int]) -> list[int]:
    total = sum(weights)
    hashes = {0, 2**32 - 1}
    end = 0
    for w in weights:
        end += w
        limit = -(-(end << 32) // total)
        hashes.update(h for h in (limit - 1, limit, limit + 1) if 0 <= h < 2**32)
    return sorted(hashes)


@settings(max_examples=150, deadline=None)
@given(weights=st.lists(st.integers(0, 10_000), min_size=1, max_size=6))
def test_generated_buckets_match_flagd_arithmetic_at_every_edge(weights: list[int]) -> None:
    if sum(weights) == 0:
        weights = [*weights[:-1], 1]
    bucketer = cops.Bucketer.parse([[NAMES[i], w] for i, w in enumerate(weights)])
    assert bucketer is not None
    with pytest.MonkeyPatch.context() as monkeypatch:
        hashed = [0]
        flagset = _flagset(weights, hashed, monkeypatch)
        for h in _edges(weights):
            hashed[0] = h
            expected = bucketer.pick(h)
            context = {"targetingKey": "someone"}
            assert flagset.evaluate("split", context).variant == expected, (h, weights)
            assert RequestFlags(flagset, context).string("split") == expected, (h, weights)


def test_big_totals_keep_exact_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    weights = [cops.MAX_WEIGHT_SUM - 7, 7]
    hashed = [0]
    flagset = _flagset(weights, hashed, monkeypatch)
    bucketer = cops.Bucketer.parse([["a", weights[0]], ["b", weights[1]]])
    assert bucketer is not None
    for h in _edges(weights):
        hashed[0] = h
        assert flagset.evaluate("split", {"targetingKey": "x"}).variant == bucketer.pick(h)


# -- bucketing expressions and cat: generated, and the same as the closures ---------------------

BUCKETING_RULES = {
    "by-flag-and-user": {
        "fractional": [
            {"cat": [{"var": "$flagd.flagKey"}, {"var": "targetingKey"}]},
            ["on", 25],
            ["off", 75],
        ]
    },
    "by-tenant": {
        "fractional": [
            {"cat": [{"var": "tenant"}, "-", {"var": "targetingKey"}]},
            ["a", 30],
            ["b", 30],
            ["c", 40],
        ]
    },
    "by-var": {"fractional": [{"var": "email"}, ["on", 50], ["off", 50]]},
    "cat-of-everything": {
        "if": [
            {
                "==": [
                    {"cat": [1, True, None, 2.5, {"var": "n"}, {"var": "flag"}]},
                    "1truenull2.57true",
                ]
            },
            "on",
            "off",
        ]
    },
}
CONTEXTS: list[dict[str, Any]] = [
    {},
    {"targetingKey": "u1"},
    {"targetingKey": "u2", "tenant": "acme", "email": "a@b.c"},
    {"targetingKey": "", "tenant": "", "email": ""},
    {"targetingKey": 7, "tenant": None, "email": 3},
    {"targetingKey": "u3", "tenant": ["x"], "email": None, "n": 7, "flag": True},
    *({"targetingKey": f"user-{i}", "tenant": f"t{i % 3}", "email": f"{i}@x"} for i in range(200)),
]


def _document() -> dict[str, Any]:
    variants = {"on": "on", "off": "off", "a": "a", "b": "b", "c": "c"}
    return {
        "flags": {
            key: {
                "state": "ENABLED",
                "variants": variants,
                "defaultVariant": "off",
                "targeting": rule,
            }
            for key, rule in BUCKETING_RULES.items()
        }
    }


@pytest.mark.parametrize("fractional", ["v2", "v3"])
def test_bucketing_expressions_and_cat_are_generated_code(fractional: str) -> None:
    flagset = FlagSet.from_mapping(_document(), fractional=fractional)
    for key in BUCKETING_RULES:
        flagset.decide(key, {})
        decider = flagset._deciders[key]
        assert decider.__code__.co_filename == f"<flagwire decider {key}>", key
        closures = [n for n in decider.__code__.co_names if re.fullmatch(r"_c\d+", n)]
        assert closures == [], key  # the generator's names for closure calls


@pytest.mark.parametrize("fractional", ["v2", "v3"])
def test_generated_bucketing_agrees_with_the_closure_compiler(fractional: str) -> None:
    from flagwire._engine.compiler import compile_rule

    flagset = FlagSet.from_mapping(_document(), fractional=fractional)
    for key, rule in BUCKETING_RULES.items():
        # trace= makes compile_rule build closures only (explain's path).
        closures = compile_rule(rule, flag_key=key, fractional=fractional, trace=[])
        for context in CONTEXTS:
            expected = closures(dict(context))
            decided = RequestFlags(flagset, context).details(key)
            assert decided.variant == (expected or "off") or (
                expected is None and decided.variant == "off"
            ), (key, context, expected, decided)

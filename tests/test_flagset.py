"""Evaluating flags: reasons, error codes, types, context, metadata, explain."""

from __future__ import annotations

import gc
import json
import time
from collections import ChainMap, UserDict
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest

from flagwire import (
    Assignment,
    ErrorCode,
    EvaluationError,
    FlagSet,
    FlagsetError,
    FlagType,
    FlagwireError,
    Reason,
    RequestFlags,
)

# -- reasons ---------------------------------------------------------------------------------


def test_flag_without_targeting_is_static(flags: FlagSet) -> None:
    a = flags.evaluate("static-bool", {"targetingKey": "u1"}, False)

    assert (a.key, a.value, a.variant, a.reason) == ("static-bool", True, "on", Reason.STATIC)
    assert a.error_code is None
    assert a.error_message is None
    assert not a.is_error


def test_static_flag_returns_the_same_prebuilt_assignment(flags: FlagSet) -> None:
    a = flags.evaluate("static-bool")
    b = flags.evaluate("static-bool", {"targetingKey": "someone-else"}, True)

    assert a is b


def test_an_empty_targeting_rule_means_static(flags: FlagSet) -> None:
    a = flags.evaluate("static-empty-rule", {"name": "bob"}, True)

    assert (a.value, a.variant, a.reason) == (False, "off", Reason.STATIC)


def test_targeting_match(flags: FlagSet) -> None:
    a = flags.evaluate("greeting", {"name": "bob"}, "hi")

    assert (a.value, a.variant, a.reason, a.error_code) == (
        "bye",
        "bye",
        Reason.TARGETING_MATCH,
        None,
    )


@pytest.mark.parametrize("context", [{"name": "alice"}, {}, None])
def test_targeting_null_gives_the_default_variant(
    flags: FlagSet, context: dict[str, Any] | None
) -> None:
    a = flags.evaluate("greeting", context, "hi")

    assert (a.value, a.variant, a.reason, a.error_code) == ("hello", "hello", Reason.DEFAULT, None)


def test_multi_branch_if_picks_the_first_true_condition(flags: FlagSet) -> None:
    assert flags.evaluate("tiers", {"plan": "enterprise", "seats": 50}).variant == "gold"
    assert flags.evaluate("tiers", {"plan": "team", "seats": 50}).variant == "silver"
    assert flags.evaluate("tiers", {"plan": "team", "seats": 2}).variant == "bronze"


def test_disabled_flag_gives_the_callers_default(flags: FlagSet) -> None:
    a = flags.evaluate("disabled", {"targetingKey": "u1"}, False)

    assert (a.value, a.variant, a.reason, a.error_code) == (False, None, Reason.DISABLED, None)
    assert not a.is_error
    assert flags.boolean("disabled", False) is False
    assert flags.evaluate("disabled", None, "any default").value == "any default"


def test_no_default_variant_gives_the_callers_default(flags: FlagSet) -> None:
    static = flags.evaluate("no-default", None, True)
    targeted = flags.evaluate("no-default-targeted", {"vip": False}, True)

    for a in (static, targeted):
        assert (a.value, a.variant, a.reason, a.error_code) == (True, None, Reason.DEFAULT, None)
    match = flags.evaluate("no-default-targeted", {"vip": True}, False)
    assert (match.value, match.variant, match.reason) == (True, "on", Reason.TARGETING_MATCH)


def test_unknown_flag_is_flag_not_found(flags: FlagSet) -> None:
    a = flags.evaluate("nope", {"targetingKey": "u1"}, "fallback")

    assert (a.key, a.value, a.variant, a.reason, a.error_code) == (
        "nope",
        "fallback",
        None,
        Reason.ERROR,
        ErrorCode.FLAG_NOT_FOUND,
    )
    assert a.is_error
    assert a.error_message is not None
    assert '"nope"' in a.error_message
    assert flags.string("nope", "fallback") == "fallback"


# -- types -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("getter", "key", "default", "expected"),
    [
        ("boolean", "static-bool", False, True),
        ("string", "greeting", "hi", "hello"),
        ("integer", "retries", 0, 3),
        ("float", "ratio", 0.0, 0.5),
        ("object", "layout", {}, {"columns": 3}),
    ],
)
def test_typed_getter_returns_a_value_of_its_type(
    flags: FlagSet, getter: str, key: str, default: Any, expected: Any
) -> None:
    value = getattr(flags, getter)(key, default)

    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("getter", "key", "default"),
    [
        ("boolean", "greeting", False),
        ("boolean", "retries", True),
        ("string", "static-bool", "dflt"),
        ("string", "retries", "dflt"),
        ("integer", "ratio", -1),
        ("integer", "static-bool", -1),  # a bool is not an integer
        ("integer", "greeting", -1),
        ("float", "greeting", -1.5),
        ("float", "static-bool", -1.5),  # nor a float
        ("object", "greeting", {"d": 1}),
        ("object", "retries", ["d"]),
    ],
)
def test_typed_getter_gives_the_default_on_type_mismatch(
    flags: FlagSet, getter: str, key: str, default: Any
) -> None:
    assert getattr(flags, getter)(key, default) == default


def test_typed_getters_pass_the_context(flags: FlagSet) -> None:
    assert flags.string("greeting", "hi", {"name": "bob"}) == "bye"
    assert flags.object("layout", {}, {"list": True}) == ["a", "b"]
    assert flags.boolean("no-default-targeted", False, {"vip": True}) is True
    assert flags.boolean("no-default-targeted", False, {"vip": False}) is False


@pytest.mark.parametrize(
    ("key", "flag_type"),
    [
        ("static-bool", FlagType.STRING),
        ("static-bool", FlagType.INTEGER),
        ("static-bool", FlagType.FLOAT),
        ("static-bool", FlagType.OBJECT),
        ("greeting", FlagType.BOOLEAN),
        ("retries", FlagType.STRING),
        ("ratio", FlagType.INTEGER),
        ("layout", FlagType.STRING),
    ],
)
def test_evaluate_with_flag_type_reports_type_mismatch(
    flags: FlagSet, key: str, flag_type: FlagType
) -> None:
    a = flags.evaluate(key, None, "dflt", flag_type=flag_type)

    assert (a.value, a.variant, a.reason, a.error_code) == (
        "dflt",
        None,
        Reason.ERROR,
        ErrorCode.TYPE_MISMATCH,
    )
    assert a.error_message is not None
    assert flag_type.value in a.error_message


@pytest.mark.parametrize(
    ("key", "default"),
    [
        ("static-bool", "text"),
        ("static-bool", 0),
        ("static-bool", 0.0),
        ("static-bool", {}),
        ("greeting", False),
        ("retries", True),  # a bool default expects a boolean flag
        ("retries", "3"),
        ("ratio", 1),
        ("layout", "grid"),
    ],
)
def test_the_defaults_type_is_the_expected_type(flags: FlagSet, key: str, default: Any) -> None:
    a = flags.evaluate(key, None, default)

    assert a.error_code is ErrorCode.TYPE_MISMATCH
    assert a.value == default
    assert type(a.value) is type(default)


def test_a_none_default_checks_no_type(flags: FlagSet) -> None:
    for key in ("static-bool", "greeting", "retries", "ratio", "layout"):
        assert flags.evaluate(key).error_code is None


def test_an_explicit_flag_type_wins_over_the_defaults_type(flags: FlagSet) -> None:
    a = flags.evaluate("retries", None, "not-an-int", flag_type=FlagType.INTEGER)

    assert (a.value, a.variant, a.error_code) == (3, "few", None)


def test_float_getter_converts_an_integer_variant(flags: FlagSet) -> None:
    whole = flags.float("ratio", 0.0, {"whole": True})
    retries = flags.float("retries", 0.0)

    assert whole == 1.0
    assert type(whole) is float
    assert retries == 3.0
    assert type(retries) is float


def test_float_type_converts_an_integer_variant_and_keeps_the_reason(flags: FlagSet) -> None:
    explicit = flags.evaluate("retries", None, None, flag_type=FlagType.FLOAT)
    inferred = flags.evaluate("ratio", {"whole": True}, 0.0)

    assert (explicit.value, explicit.variant, explicit.reason) == (3.0, "few", Reason.STATIC)
    assert type(explicit.value) is float
    assert (inferred.value, inferred.variant, inferred.reason) == (
        1.0,
        "whole",
        Reason.TARGETING_MATCH,
    )
    assert type(inferred.value) is float
    # The prebuilt integer assignment is untouched.
    assert type(flags.evaluate("retries", None, 0).value) is int


# -- failing rules never raise -----------------------------------------------------------------


def test_a_rule_that_raises_gives_general_error(flags: FlagSet) -> None:
    a = flags.evaluate("divide", {"targetingKey": "u1"}, True)

    assert (a.value, a.variant, a.reason, a.error_code) == (
        True,
        None,
        Reason.ERROR,
        ErrorCode.GENERAL,
    )
    assert a.error_message is not None
    assert "ZeroDivisionError" in a.error_message
    assert flags.boolean("divide", True) is True
    explained, steps = flags.explain("divide", {}, True)
    assert explained.error_code is ErrorCode.GENERAL
    assert steps


def test_a_rule_choosing_an_unknown_variant_gives_general_error(flags: FlagSet) -> None:
    a = flags.evaluate("stray-variant", {"stray": True}, True)

    assert (a.value, a.variant, a.reason, a.error_code) == (
        True,
        None,
        Reason.ERROR,
        ErrorCode.GENERAL,
    )
    assert a.error_message is not None
    assert "purple" in a.error_message
    assert flags.evaluate("stray-variant", {"stray": False}, True).variant == "off"


# -- context ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_context",
    [
        pytest.param(MappingProxyType, id="MappingProxyType"),
        pytest.param(UserDict, id="UserDict"),
        pytest.param(ChainMap, id="ChainMap"),
        pytest.param(dict, id="dict"),
    ],
)
def test_any_mapping_works_as_context(flags: FlagSet, make_context: Any) -> None:
    bob: Mapping[str, Any] = make_context({"name": "bob", "targetingKey": "u1"})
    alice: Mapping[str, Any] = make_context({"name": "alice"})

    assert flags.evaluate("greeting", bob, "hi").variant == "bye"
    assert flags.evaluate("greeting", alice, "hi").variant == "hello"
    assert flags.string("greeting", "hi", bob) == "bye"
    assert flags.evaluate("static-bool", bob, False).value is True
    assert flags.explain("greeting", bob, "hi")[0].variant == "bye"


def test_evaluation_does_not_modify_the_context(flags: FlagSet) -> None:
    context = {"name": "bob", "targetingKey": "u1"}
    for key in flags:
        flags.evaluate(key, context)
        flags.explain(key, context)

    assert context == {"name": "bob", "targetingKey": "u1"}


def test_flagd_flag_key_is_in_the_context(flags: FlagSet) -> None:
    a = flags.evaluate("self-aware", {}, False)

    assert (a.value, a.variant, a.reason) == (True, "on", Reason.TARGETING_MATCH)


def test_flagd_timestamp_is_now_in_seconds(flags: FlagSet) -> None:
    now = int(time.time())

    assert flags.evaluate("time-gate", {"since": now - 5}).variant == "on"
    assert flags.evaluate("time-gate", {"since": now + 5}).variant == "off"


def test_the_context_cannot_override_flagd_values(flags: FlagSet) -> None:
    fake = {"$flagd": {"flagKey": "other", "timestamp": 0}, "since": int(time.time()) - 5}

    assert flags.evaluate("self-aware", fake).variant == "on"
    assert flags.evaluate("time-gate", fake).variant == "on"


# -- metadata -----------------------------------------------------------------------------------


def test_flag_metadata_is_merged_over_flag_set_metadata(flags: FlagSet) -> None:
    a = flags.evaluate("owned", None, False)

    assert dict(a.flag_metadata) == {
        "version": "42",
        "owner": "payments",  # the flag wins
        "env": "prod",
        "ticket": 123,
        "temporary": True,
    }
    assert dict(flags.metadata) == {"version": "42", "owner": "platform", "env": "prod"}


def test_every_flag_assignment_carries_the_metadata(flags: FlagSet) -> None:
    set_metadata = {"version": "42", "owner": "platform", "env": "prod"}
    for a in (
        flags.evaluate("static-bool"),
        flags.evaluate("greeting", {"name": "bob"}),
        flags.evaluate("disabled", None, False),
        flags.evaluate("divide", None, False),
        flags.evaluate("static-bool", None, "mismatch"),
    ):
        assert dict(a.flag_metadata) == set_metadata, a


def test_flag_metadata_of_a_shared_assignment_is_read_only(flags: FlagSet) -> None:
    a = flags.evaluate("owned")

    with pytest.raises(TypeError):
        a.flag_metadata["owner"] = "mallory"  # type: ignore[index]
    assert flags.evaluate("owned").flag_metadata["owner"] == "payments"


# -- Assignment ---------------------------------------------------------------------------------


def test_to_dict_is_json_ready(flags: FlagSet) -> None:
    a = flags.evaluate("owned", None, False)

    d = a.to_dict()

    assert d == {
        "key": "owned",
        "value": True,
        "variant": "on",
        "reason": "STATIC",
        "error_code": None,
        "error_message": None,
        "flag_metadata": {
            "version": "42",
            "owner": "payments",
            "env": "prod",
            "ticket": 123,
            "temporary": True,
        },
        "flagset_version": flags.version_label,
    }
    assert json.loads(json.dumps(d)) == d


def test_to_dict_of_an_error(flags: FlagSet) -> None:
    d = flags.evaluate("missing", None, [1, 2]).to_dict()

    assert d["value"] == [1, 2]
    assert d["variant"] is None
    assert d["reason"] == "ERROR"
    assert d["error_code"] == "FLAG_NOT_FOUND"
    assert isinstance(d["error_message"], str)
    assert d["flag_metadata"] == {}
    assert d["flagset_version"] == flags.version_label
    json.dumps(d)


def test_raise_for_error_raises_evaluation_error(flags: FlagSet) -> None:
    a = flags.evaluate("static-bool", None, "mismatch")

    with pytest.raises(EvaluationError) as info:
        a.raise_for_error()

    assert isinstance(info.value, FlagwireError)
    assert info.value.assignment is a
    assert "static-bool" in str(info.value)
    assert "TYPE_MISMATCH" in str(info.value)


def test_raise_for_error_returns_a_good_assignment(flags: FlagSet) -> None:
    for a in (
        flags.evaluate("static-bool"),
        flags.evaluate("disabled", None, False),
        flags.evaluate("no-default", None, True),
    ):
        assert a.raise_for_error() is a


def test_assignment_is_immutable(flags: FlagSet) -> None:
    a = flags.evaluate("static-bool")

    with pytest.raises(AttributeError):
        a.value = False  # type: ignore[misc]
    assert isinstance(a, Assignment)


def test_enums_print_as_their_values() -> None:
    assert str(Reason.TARGETING_MATCH) == "TARGETING_MATCH"
    assert str(ErrorCode.TYPE_MISMATCH) == "TYPE_MISMATCH"
    assert str(FlagType.FLOAT) == "float"
    assert f"{Reason.STATIC}" == "STATIC"


# -- explain ------------------------------------------------------------------------------------


def test_explain_names_the_then_branch_taken(flags: FlagSet) -> None:
    a, steps = flags.explain("greeting", {"name": "bob"}, "hi")

    assert a == flags.evaluate("greeting", {"name": "bob"}, "hi")
    pointers = dict(steps)
    assert "targeting/if/0" in pointers
    assert pointers["targeting/if/0"].endswith("is True")
    assert steps[-1] == ("targeting", 'rule returned "bye"')


def test_explain_names_the_else_branch_taken(flags: FlagSet) -> None:
    a, steps = flags.explain("greeting", {"name": "alice"}, "hi")

    assert a.reason is Reason.DEFAULT
    pointers = dict(steps)
    assert pointers["targeting/if/0"].endswith("is False")
    assert "targeting/if/2" in pointers
    assert "else" in pointers["targeting/if/2"]
    assert steps[-1] == ("targeting", "rule returned null")


def test_explain_names_the_condition_that_matched_in_a_chain(flags: FlagSet) -> None:
    _, steps = flags.explain("tiers", {"plan": "team", "seats": 50})

    conditions = [(at, what) for at, what in steps if at.startswith("targeting/if/")]
    assert [at for at, _ in conditions] == ["targeting/if/0", "targeting/if/2"]
    assert conditions[0][1].endswith("is False")
    assert conditions[1][1].endswith("is True")
    assert steps[-1] == ("targeting", 'rule returned "silver"')


def test_explain_static_disabled_and_missing_flags(flags: FlagSet) -> None:
    static, static_steps = flags.explain("static-bool")
    disabled, disabled_steps = flags.explain("disabled", None, False)
    missing, missing_steps = flags.explain("missing", None, 1)

    assert static.reason is Reason.STATIC
    assert [at for at, _ in static_steps] == ["targeting"]
    assert disabled.reason is Reason.DISABLED
    assert [at for at, _ in disabled_steps] == ["state"]
    assert "DISABLED" in disabled_steps[0][1]
    assert missing.error_code is ErrorCode.FLAG_NOT_FOUND
    assert missing_steps == []


# -- lazy compilation and reuse ------------------------------------------------------------


def _many_flags(n: int, version: str = "1") -> dict[str, Any]:
    return {
        "metadata": {"version": version},
        "flags": {
            f"f{i}": {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "off",
                "targeting": {"if": [{"==": [{"var": "plan"}, f"p{i}"]}, "on", "off"]},
            }
            for i in range(n)
        },
    }


def test_a_flag_is_compiled_when_first_evaluated_not_at_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flagwire._engine import compiled

    calls: list[str] = []
    real = compiled.compile_rule

    def counting(logic: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["flag_key"])
        return real(logic, **kwargs)

    monkeypatch.setattr(compiled, "compile_rule", counting)
    flagset = FlagSet.from_mapping(_many_flags(500))
    assert calls == []
    assert flagset.boolean("f7", False, {"plan": "p7"}) is True
    assert flagset.boolean("f7", False, {"plan": "p8"}) is False
    assert calls == ["f7"]
    request = RequestFlags(flagset, {"plan": "p9"})
    assert request.boolean("f9") is True
    assert calls == ["f7", "f9"]


def test_rule_problems_are_found_at_load_without_compiling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flagwire._engine import compiled

    monkeypatch.setattr(compiled, "compile_rule", None)  # must not be called
    document = _many_flags(3)
    document["flags"]["f1"]["targeting"] = {"if": [{"bogus": [1]}, "on", "onn"]}
    flagset = FlagSet.from_mapping(document)
    assert any('unknown operation "bogus"' in p and '"f1"' in p for p in flagset.problems)
    assert any('chooses "onn"' in p for p in flagset.problems)


def test_a_flag_that_cannot_be_compiled_gives_parse_error_not_an_exception(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from flagwire._engine import compiled

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RecursionError("too deep")

    monkeypatch.setattr(compiled, "generate_decider", broken)
    flagset = FlagSet.from_mapping(_many_flags(2))
    assignment = flagset.evaluate("f0", {"plan": "p0"}, False)
    assert (assignment.value, assignment.error_code) == (False, ErrorCode.PARSE_ERROR)
    assert "could not be compiled" in (assignment.error_message or "")
    assert RequestFlags(flagset, {"plan": "p1"}).boolean("f1", True) is True
    assert "could not be compiled" in caplog.text


def test_a_reload_compiles_no_unchanged_flag_again() -> None:
    from flagwire._engine.codegen import compile_source

    first = FlagSet.from_mapping(_many_flags(50, version="1"))
    for i in range(50):
        first.boolean(f"f{i}", False, {"plan": "x"})
    before = compile_source.cache_info()
    changed = _many_flags(50, version="2")
    changed["flags"]["f3"]["targeting"]["if"][0]["=="][1] = "other"
    second = FlagSet.from_mapping(changed)
    for i in range(50):
        second.boolean(f"f{i}", False, {"plan": "x"})
    after = compile_source.cache_info()
    assert after.misses - before.misses == 2  # f3's rule and decider, nothing else
    assert after.hits - before.hits >= 2 * 49
    assert second.evaluate("f0", {"plan": "p0"}).flagset_version.startswith("2+")


def test_loading_pauses_the_cyclic_collector_and_resumes_it() -> None:
    seen: list[bool] = []
    document = {
        "flags": {"a": {"state": "ENABLED", "variants": {"on": True}, "defaultVariant": "on"}}
    }

    class Spy(dict[str, Any]):
        def items(self) -> Any:  # plain_copy reads the mapping while the load runs
            seen.append(gc.isenabled())
            return super().items()

    assert gc.isenabled()
    FlagSet.from_mapping(Spy(document))

    assert seen == [False]
    assert gc.isenabled()


def test_loading_leaves_a_collector_the_application_disabled_disabled() -> None:
    gc.disable()
    try:
        FlagSet.from_text('{"flags": {}}')
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_failed_load_resumes_the_collector() -> None:
    with pytest.raises(FlagsetError):
        FlagSet.from_text('{"flags": {"a": {"state": "ON"}}}')

    assert gc.isenabled()

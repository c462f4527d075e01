"""Per-request flags (``flagwire/_request.py``): :class:`RequestFlags`, ``current_flags``,
``set_default_source`` and ``activate``."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

import flagwire
from flagwire import (
    ErrorCode,
    FlagSet,
    FlagType,
    Reason,
    RequestFlags,
    StaticSource,
    current_flags,
)
from flagwire.wsgi import FlagwireMiddleware

Document = dict[str, Any]
WriteFile = Callable[..., Path]
MakeSource = Callable[..., flagwire.FileSource]

BETA = {"targetingKey": "u-1", "plan": "beta"}


# -- memoisation -----------------------------------------------------------------------------


def test_each_flag_is_evaluated_once_per_request(
    per_request_flags: FlagSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    for key in per_request_flags:  # compiled (flags compile on first use)
        per_request_flags.decide(key, {})
    deciders = per_request_flags._deciders  # the per-request path: key -> decide(context)

    def spy(key: str, decide: Callable[[dict[str, Any]], Any]) -> Callable[..., Any]:
        def counted(context: dict[str, Any]) -> Any:
            calls.append(key)
            return decide(context)

        return counted

    for key, decide in list(deciders.items()):
        monkeypatch.setitem(deciders, key, spy(key, decide))
    flags = RequestFlags(per_request_flags, BETA)

    flags.boolean("new-checkout")
    flags.get("new-checkout", True)
    flags.details("new-checkout", "x")
    flags.string("ranking", "classic")
    flags.string("ranking", "other")

    assert calls == ["new-checkout", "ranking"]


def test_get_with_another_default_never_changes_a_decided_value(
    per_request_flags: FlagSet,
) -> None:
    flags = RequestFlags(per_request_flags, BETA)

    assert flags.get("new-checkout", False) is True
    assert flags.get("new-checkout", "another type") == "another type"
    assert flags.get("new-checkout", 0) == 0
    assert flags.get("new-checkout") is True
    assert flags.get("new-checkout", False) is True
    assert flags.evaluated()["new-checkout"].variant == "on"


def test_a_mismatched_first_ask_does_not_poison_the_decision(per_request_flags: FlagSet) -> None:
    flags = RequestFlags(per_request_flags, BETA)

    assert flags.string("new-checkout", "nope") == "nope"
    assert flags.boolean("new-checkout", False) is True
    assert flags.details("new-checkout", False).variant == "on"


def test_defaults_are_substituted_per_call_where_no_variant_applies(
    per_request_flags: FlagSet,
) -> None:
    flags = RequestFlags(per_request_flags, BETA)

    assert flags.get("retired", "a") == "a"
    assert flags.get("retired", "b") == "b"
    assert flags.boolean("no-default", True) is True
    assert flags.boolean("no-default", False) is False
    assert flags.get("missing", 1) == 1
    assert flags.get("missing", 2) == 2
    decided = flags.evaluated()
    assert decided["retired"].reason is Reason.DISABLED
    assert decided["no-default"].reason is Reason.DEFAULT
    assert decided["missing"].error_code is ErrorCode.FLAG_NOT_FOUND


def test_get_without_default_gives_the_value_or_none(per_request_flags: FlagSet) -> None:
    flags = RequestFlags(per_request_flags, {"targetingKey": "u-4"})

    assert flags.get("new-checkout") is False
    assert flags.get("ranking") == "classic"
    assert flags.get("limits") == {"max": 3, "tags": ["a"]}
    assert flags.get("retries") == 3
    assert flags.get("retired") is None
    assert flags.get("no-default") is None
    assert flags.get("missing") is None


def test_get_converts_an_integer_to_float_for_a_float_default(per_request_flags: FlagSet) -> None:
    flags = RequestFlags(per_request_flags)

    value = flags.get("retries", 1.5)

    assert value == 3.0
    assert type(value) is float
    assert flags.get("retries", 1) == 3


# -- typed getters ---------------------------------------------------------------------------


def test_typed_getters_return_the_value_of_their_type(per_request_flags: FlagSet) -> None:
    flags = RequestFlags(per_request_flags, BETA)

    assert flags.boolean("new-checkout", False) is True
    assert flags.string("ranking", "x") in {"classic", "vector", "hybrid"}
    assert flags.integer("retries", 0) == 3
    number = flags.number("retries", 0.0)
    assert number == 3.0
    assert type(number) is float
    assert flags.object("limits", None) == {"max": 3, "tags": ["a"]}


@pytest.mark.parametrize(
    ("getter", "key", "default"),
    [
        ("boolean", "ranking", True),
        ("boolean", "retries", True),
        ("boolean", "limits", True),
        ("string", "new-checkout", "fallback"),
        ("string", "retries", "fallback"),
        ("integer", "new-checkout", 7),
        ("integer", "ranking", 7),
        ("integer", "limits", 7),
        ("number", "new-checkout", 7.5),
        ("number", "ranking", 7.5),
        ("object", "new-checkout", {"fallback": True}),
        ("object", "ranking", ["fallback"]),
    ],
)
def test_typed_getters_return_the_default_on_a_type_mismatch(
    per_request_flags: FlagSet, getter: str, key: str, default: Any
) -> None:
    flags = RequestFlags(per_request_flags, BETA)

    assert getattr(flags, getter)(key, default) == default
    # The decision stays: the flag still gives its own value to a caller of its type.
    assert flags.evaluated()[key].variant is not None
    assert flags.get(key) == flags.evaluated()[key].value


@pytest.mark.parametrize("getter", ["boolean", "string", "integer", "number", "object"])
@pytest.mark.parametrize("key", ["retired", "no-default", "missing"])
def test_typed_getters_return_the_default_where_no_variant_applies(
    per_request_flags: FlagSet, getter: str, key: str
) -> None:
    defaults: dict[str, Any] = {
        "boolean": True,
        "string": "s",
        "integer": 5,
        "number": 5.5,
        "object": {"d": 1},
    }
    flags = RequestFlags(per_request_flags, BETA)

    assert getattr(flags, getter)(key, defaults[getter]) == defaults[getter]


def test_typed_getters_have_falsy_defaults(per_request_flags: FlagSet) -> None:
    flags = RequestFlags(per_request_flags)

    assert flags.boolean("missing") is False
    assert flags.string("missing") == ""
    assert flags.integer("missing") == 0
    assert flags.number("missing") == 0.0
    assert flags.object("missing") is None


def test_integer_rejects_a_boolean_flag_and_number_rejects_it_too(
    per_request_flags: FlagSet,
) -> None:
    flags = RequestFlags(per_request_flags, BETA)

    assert flags.integer("new-checkout", 9) == 9
    assert flags.number("new-checkout", 9.0) == 9.0


def test_object_accepts_an_array_flag() -> None:
    flagset = FlagSet.from_mapping(
        {
            "flags": {
                "regions": {
                    "state": "ENABLED",
                    "variants": {"all": ["eu", "us"]},
                    "defaultVariant": "all",
                }
            }
        }
    )

    assert RequestFlags(flagset).object("regions", []) == ["eu", "us"]


# -- details ---------------------------------------------------------------------------------


def test_details_gives_the_full_assignment(per_request_flags: FlagSet) -> None:
    flags = RequestFlags(per_request_flags, BETA)

    found = flags.details("new-checkout", False)

    assert found.key == "new-checkout"
    assert found.value is True
    assert found.variant == "on"
    assert found.reason is Reason.TARGETING_MATCH
    assert found.error_code is None
    assert found.flagset_version == per_request_flags.version_label
    assert found.flag_metadata["owner"] == "web"


def test_details_reports_a_type_mismatch_while_the_decision_stays(
    per_request_flags: FlagSet,
) -> None:
    flags = RequestFlags(per_request_flags, BETA)
    assert flags.boolean("new-checkout", False) is True

    mismatch = flags.details("new-checkout", "fallback")

    assert mismatch.value == "fallback"
    assert mismatch.variant is None
    assert mismatch.reason is Reason.ERROR
    assert mismatch.error_code is ErrorCode.TYPE_MISMATCH
    assert mismatch.error_message is not None
    assert mismatch.is_error
    assert flags.details("new-checkout", False).variant == "on"
    assert flags.evaluated()["new-checkout"].reason is Reason.TARGETING_MATCH
    assert flags.boolean("new-checkout", False) is True


def test_details_checks_an_explicit_flag_type(per_request_flags: FlagSet) -> None:
    flags = RequestFlags(per_request_flags)

    mismatch = flags.details("retries", None, FlagType.STRING)
    as_float = flags.details("retries", None, FlagType.FLOAT)

    assert mismatch.error_code is ErrorCode.TYPE_MISMATCH
    assert mismatch.value is None
    assert as_float.value == 3.0
    assert type(as_float.value) is float
    assert as_float.error_code is None


def test_details_says_why_no_variant_applied(per_request_flags: FlagSet) -> None:
    flags = RequestFlags(per_request_flags, BETA)

    disabled = flags.details("retired", False)
    no_default = flags.details("no-default", True)
    missing = flags.details("missing", "d")

    assert (disabled.value, disabled.variant, disabled.reason) == (False, None, Reason.DISABLED)
    assert disabled.error_code is None
    assert (no_default.value, no_default.variant, no_default.reason) == (
        True,
        None,
        Reason.DEFAULT,
    )
    assert (missing.value, missing.reason, missing.error_code) == (
        "d",
        Reason.ERROR,
        ErrorCode.FLAG_NOT_FOUND,
    )


# -- evaluated -------------------------------------------------------------------------------


def test_evaluated_lists_decisions_in_the_order_made(per_request_flags: FlagSet) -> None:
    flags = RequestFlags(per_request_flags, BETA)
    assert dict(flags.evaluated()) == {}

    flags.object("limits")
    flags.boolean("new-checkout")
    flags.get("missing", 1)
    flags.boolean("retired", True)
    flags.object("limits")  # asking again does not reorder
    flags.string("new-checkout", "mismatch")

    decided = flags.evaluated()
    assert list(decided) == ["limits", "new-checkout", "missing", "retired"]
    assert decided["limits"].variant == "small"
    assert decided["new-checkout"].variant == "on"
    assert decided["new-checkout"].reason is Reason.TARGETING_MATCH
    assert decided["missing"].error_code is ErrorCode.FLAG_NOT_FOUND
    assert decided["retired"].reason is Reason.DISABLED


def test_evaluated_is_a_read_only_snapshot(per_request_flags: FlagSet) -> None:
    flags = RequestFlags(per_request_flags, BETA)
    flags.boolean("new-checkout")

    snapshot = flags.evaluated()
    flags.integer("retries")

    assert list(snapshot) == ["new-checkout"]
    assert list(flags.evaluated()) == ["new-checkout", "retries"]
    with pytest.raises(TypeError):
        snapshot["x"] = snapshot["new-checkout"]  # type: ignore[index]


# -- context ---------------------------------------------------------------------------------


def test_context_is_a_read_only_copy(per_request_flags: FlagSet) -> None:
    given = {"plan": "beta"}
    flags = RequestFlags(per_request_flags, given)
    given["plan"] = "free"

    assert dict(flags.context) == {"plan": "beta"}
    assert flags.boolean("new-checkout") is True
    with pytest.raises(TypeError):
        flags.context["plan"] = "free"  # type: ignore[index]


def test_no_context_is_an_empty_context(per_request_flags: FlagSet) -> None:
    flags = RequestFlags(per_request_flags)

    assert dict(flags.context) == {}
    assert flags.details("new-checkout", True).variant == "off"
    assert flags.details("ranking", "x").reason is Reason.DEFAULT


def _call_wsgi(app: FlagwireMiddleware, asks: Iterable[str]) -> RequestFlags:
    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"}
    environ["flagwire.test.asks"] = list(asks)
    body = app(environ, lambda status, headers, exc_info=None: lambda data: None)
    b"".join(body)
    flags: RequestFlags = environ["flagwire.flags"]
    return flags


def _asking_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    flags = current_flags()
    for key in environ["flagwire.test.asks"]:
        flags.get(key)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def test_context_is_built_lazily_and_once(per_request_flags: FlagSet) -> None:
    built: list[object] = []

    def extractor(request: Any) -> Mapping[str, Any]:
        built.append(request)
        return {"plan": "beta"}

    app = FlagwireMiddleware(_asking_app, source=per_request_flags, context=extractor)

    _call_wsgi(app, [])
    assert built == []

    flags = _call_wsgi(app, ["new-checkout", "ranking", "limits", "new-checkout"])
    flags.details("retired")
    flags.evaluated()
    assert len(built) == 1
    assert flags.evaluated()["new-checkout"].variant == "on"


def test_reading_the_context_builds_it(per_request_flags: FlagSet) -> None:
    built: list[object] = []

    def extractor(request: Any) -> Mapping[str, Any]:
        built.append(request)
        return {"plan": "beta", "targetingKey": "u-9"}

    app = FlagwireMiddleware(_asking_app, source=per_request_flags, context=extractor)
    flags = _call_wsgi(app, [])
    assert built == []

    assert dict(flags.context) == {"plan": "beta", "targetingKey": "u-9"}
    assert dict(flags.context) == {"plan": "beta", "targetingKey": "u-9"}
    assert len(built) == 1


def test_context_is_built_once_when_threads_of_one_request_race(
    per_request_flags: FlagSet,
) -> None:
    built: list[object] = []
    started = threading.Barrier(8)

    def extractor(request: Any) -> Mapping[str, Any]:
        built.append(request)
        return {"plan": "beta"}

    app = FlagwireMiddleware(_asking_app, source=per_request_flags, context=extractor)
    flags = _call_wsgi(app, [])
    seen: list[bool] = []

    def ask() -> None:
        started.wait(5)
        seen.append(flags.boolean("new-checkout"))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)

    assert seen == [True] * 8
    assert len(built) == 1


# -- current_flags outside a request ---------------------------------------------------------


def test_current_flags_without_a_source_gives_defaults_with_flag_not_found() -> None:
    flags = current_flags()

    assert flags.boolean("new-checkout", True) is True
    assert flags.get("anything", "d") == "d"
    found = flags.details("new-checkout", False)
    assert found.value is False
    assert found.reason is Reason.ERROR
    assert found.error_code is ErrorCode.FLAG_NOT_FOUND
    assert len(flags.flagset) == 0


def test_current_flags_outside_a_request_is_fresh_each_time(per_request_flags: FlagSet) -> None:
    flagwire.set_default_source(StaticSource(per_request_flags))
    first = current_flags({"plan": "beta"})
    first.boolean("new-checkout")

    second = current_flags()

    assert second is not first
    assert dict(second.evaluated()) == {}
    assert second.boolean("new-checkout") is False


def test_current_flags_uses_the_default_source(per_request_flags: FlagSet) -> None:
    flagwire.set_default_source(StaticSource(per_request_flags))

    flags = current_flags()

    assert flags.flagset is per_request_flags
    assert flags.boolean("new-checkout", True) is False
    assert flags.details("new-checkout", True).reason is Reason.TARGETING_MATCH


def test_current_flags_uses_a_given_context(per_request_flags: FlagSet) -> None:
    flagwire.set_default_source(StaticSource(per_request_flags))

    flags = current_flags({"plan": "beta", "targetingKey": "u-1"})

    assert flags.boolean("new-checkout", False) is True
    assert flags.context["targetingKey"] == "u-1"


def test_current_flags_follows_the_default_sources_updates(
    per_request_document: Document, write_file: WriteFile, make_source: MakeSource
) -> None:
    path = write_file("flags.json", per_request_document)
    source = make_source(path, poll_interval=0)
    flagwire.set_default_source(source)
    before = current_flags().flagset.version_label

    per_request_document["metadata"]["version"] = "r2-longer"
    write_file("flags.json", per_request_document)
    assert source.refresh()

    after = current_flags().flagset.version_label
    assert before != after
    assert after.startswith("r2-longer+")


def test_set_default_source_none_goes_back_to_no_flags(per_request_flags: FlagSet) -> None:
    flagwire.set_default_source(StaticSource(per_request_flags))
    flagwire.set_default_source(None)

    assert current_flags().details("new-checkout").error_code is ErrorCode.FLAG_NOT_FOUND


# -- activate --------------------------------------------------------------------------------


def test_activate_makes_flags_current_for_a_block(per_request_flags: FlagSet) -> None:
    flags = RequestFlags(per_request_flags, BETA)

    with flagwire.activate(flags) as active:
        assert active is flags
        assert current_flags() is flags
        assert current_flags({"plan": "free"}) is flags  # the context is for outside only
        assert current_flags().boolean("new-checkout") is True

    assert current_flags() is not flags


def test_activate_nests_and_restores(per_request_flags: FlagSet) -> None:
    outer = RequestFlags(per_request_flags, BETA)
    inner = RequestFlags(per_request_flags)

    with flagwire.activate(outer):
        with flagwire.activate(inner):
            assert current_flags() is inner
        assert current_flags() is outer


def test_activate_restores_after_an_exception(per_request_flags: FlagSet) -> None:
    flags = RequestFlags(per_request_flags)

    with pytest.raises(RuntimeError), flagwire.activate(flags):
        raise RuntimeError("boom")

    assert current_flags() is not flags


def test_activated_flags_flow_into_tasks_and_copied_contexts(per_request_flags: FlagSet) -> None:
    flags = RequestFlags(per_request_flags, BETA)
    seen: list[RequestFlags] = []

    async def task() -> None:
        seen.append(current_flags())

    async def main() -> None:
        await asyncio.create_task(task())
        await asyncio.to_thread(lambda: seen.append(current_flags()))

    with flagwire.activate(flags):
        asyncio.run(main())
        contextvars.copy_context().run(lambda: seen.append(current_flags()))

    assert seen == [flags, flags, flags]
    assert all(s is flags for s in seen)


def test_activate_does_not_leak_into_other_threads(per_request_flags: FlagSet) -> None:
    flags = RequestFlags(per_request_flags)
    seen: list[RequestFlags] = []

    with flagwire.activate(flags):
        thread = threading.Thread(target=lambda: seen.append(current_flags()))
        thread.start()
        thread.join(5)

    assert seen[0] is not flags


# -- small things ----------------------------------------------------------------------------


def test_contains_and_repr(per_request_flags: FlagSet) -> None:
    flags = RequestFlags(per_request_flags, BETA)
    flags.boolean("new-checkout")

    assert "new-checkout" in flags
    assert "missing" not in flags
    assert per_request_flags.version_label in repr(flags)
    assert "new-checkout" in repr(flags)


def test_request_flags_over_a_yaml_flag_set(tmp_path: Path, per_request_document: Document) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(yaml.safe_dump(per_request_document), encoding="utf-8")
    flags = RequestFlags(FlagSet.from_path(path), BETA)

    assert flags.boolean("new-checkout") is True
    assert flags.object("limits") == {"max": 3, "tags": ["a"]}


# -- flag problems are logged, once per flag and error ------------------------------------


@pytest.fixture
def fresh_problem_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flagwire._request.flags, "_LOGGED", set())


PROBLEMS = {
    "flags": {
        "text": {"state": "ENABLED", "variants": {"a": "alpha"}, "defaultVariant": "a"},
        "broken": {
            "state": "ENABLED",
            "variants": {"a": "alpha"},
            "defaultVariant": "a",
            "targeting": {"if": [{"starts_with": [{"var": "email"}, 7]}, "a", None]},
        },
    }
}


@pytest.mark.usefixtures("fresh_problem_log")
@pytest.mark.parametrize(
    ("ask", "code"),
    [
        (lambda f: f.boolean("missing", True), "FLAG_NOT_FOUND"),
        (lambda f: f.get("missing", "d"), "FLAG_NOT_FOUND"),
        (lambda f: f.boolean("text", True), "TYPE_MISMATCH"),
        (lambda f: f.details("text", 3).value, "TYPE_MISMATCH"),
    ],
)
def test_a_flag_problem_is_logged_once_with_flag_and_file(
    ask: Callable[[RequestFlags], Any], code: str, caplog: pytest.LogCaptureFixture
) -> None:
    flagset = FlagSet.from_mapping(PROBLEMS, source="checkout-flags.yaml")

    with caplog.at_level("WARNING", logger="flagwire"):
        for _ in range(3):  # three requests
            ask(RequestFlags(flagset, {"targetingKey": "u"}))

    problems = [r.getMessage() for r in caplog.records if code in r.getMessage()]
    assert len(problems) == 1, caplog.text
    assert "checkout-flags.yaml" in problems[0]
    assert ('"missing"' if code == "FLAG_NOT_FOUND" else '"text"') in problems[0]


@pytest.mark.usefixtures("fresh_problem_log")
def test_a_rule_error_is_logged_and_a_disabled_flag_is_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flagset = FlagSet.from_mapping(
        {
            "flags": {
                "off": {"state": "DISABLED", "variants": {"a": "x"}, "defaultVariant": "a"},
                "divides": {
                    "state": "ENABLED",
                    "variants": {"a": "x"},
                    "defaultVariant": "a",
                    "targeting": {"if": [{"/": [1, {"var": "n"}]}, "a", None]},
                },
            }
        },
        source="f.yaml",
    )
    flags = RequestFlags(flagset, {"n": 0})

    with caplog.at_level("WARNING", logger="flagwire"):
        assert flags.string("off", "d") == "d"
        assert flags.string("divides", "d") == "d"

    assert len(caplog.records) == 1, caplog.text
    assert '"divides"' in caplog.records[0].getMessage()
    assert flags.details("divides", "d").error_code is not None


@pytest.mark.parametrize("default", [None, False, True, 0, 1, 0.5, "", "x", {}, [], {"a": 1}])
def test_get_gives_what_details_gives_for_every_default_and_variant_type(default: object) -> None:
    values = {"b": True, "i": 3, "f": 2.5, "s": "on", "o": {"k": 1}, "l": [1, 2]}
    flagset = FlagSet.from_mapping(
        {
            "flags": {
                key: {"state": "ENABLED", "variants": {"v": value}, "defaultVariant": "v"}
                for key, value in values.items()
            }
            | {"off": {"state": "DISABLED", "variants": {"v": 1}, "defaultVariant": "v"}}
        }
    )
    for key in [*values, "off", "missing"]:
        fast, slow = RequestFlags(flagset, {}), RequestFlags(flagset, {})
        first = fast.get(key, default)
        assert first == slow.details(key, default).value, key
        assert type(first) is type(slow.details(key, default).value), key
        assert fast.get(key, default) == first  # the memo hit agrees with the first call

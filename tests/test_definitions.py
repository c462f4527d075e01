"""Loading and validating flagd flag-definition documents, versions and digests."""

from __future__ import annotations

import copy
import hashlib
import json
import random
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml

import flagwire
from flagwire import (
    ConfigError,
    ErrorCode,
    FlagSet,
    FlagsetError,
    FlagType,
    FlagwireError,
    Reason,
)
from flagwire._engine.definitions import RefSubstitution

Document = dict[str, Any]
WriteFile = Callable[[str, str | Mapping[str, Any]], Path]

CHECKOUT_YAML = """\
metadata:
  version: "2026.11.26-1"
flags:
  checkout-v2:
    state: ENABLED
    variants:
      on: true
      off: false
    defaultVariant: off
    targeting:
      if:
        - in: [{var: plan}, [beta]]
        - on
        - null
  banner:
    state: ENABLED
    variants:
      red: "#f00"
      blue: "#00f"
    defaultVariant: red
"""


def _line_containing(text: str, needle: str) -> int:
    """The 1-based number of the first line of ``text`` that contains ``needle``."""
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in the text")


def _assert_checkout_flagset(fs: FlagSet) -> None:
    assert sorted(fs) == ["banner", "checkout-v2"]
    assert len(fs) == 2
    assert fs.version == "2026.11.26-1"
    beta = fs.evaluate("checkout-v2", {"plan": "beta"}, False)
    assert (beta.value, beta.variant, beta.reason) == (True, "on", Reason.TARGETING_MATCH)
    free = fs.evaluate("checkout-v2", {"plan": "free"}, False)
    assert (free.value, free.variant, free.reason) == (False, "off", Reason.DEFAULT)
    banner = fs.evaluate("banner", None, "#000")
    assert (banner.value, banner.variant, banner.reason) == ("#f00", "red", Reason.STATIC)


# -- loading ------------------------------------------------------------------------------


def test_from_path_loads_json(write_file: WriteFile, checkout_document: Document) -> None:
    path = write_file("flags.json", checkout_document)

    fs = FlagSet.from_path(path)

    _assert_checkout_flagset(fs)
    assert fs.source == str(path)


def test_from_path_accepts_a_str_path(write_file: WriteFile, checkout_document: Document) -> None:
    path = write_file("flags.json", checkout_document)

    _assert_checkout_flagset(FlagSet.from_path(str(path)))


@pytest.mark.parametrize("name", ["flags.yaml", "flags.yml", "FLAGS.YAML"])
def test_from_path_loads_yaml(write_file: WriteFile, name: str) -> None:
    path = write_file(name, CHECKOUT_YAML)

    fs = FlagSet.from_path(path)

    _assert_checkout_flagset(fs)
    assert fs.source == str(path)


def test_yaml_and_json_of_the_same_document_load_the_same_flags(
    write_file: WriteFile, checkout_document: Document
) -> None:
    from_json = FlagSet.from_path(write_file("flags.json", checkout_document))
    from_yaml = FlagSet.from_path(write_file("flags.yaml", CHECKOUT_YAML))

    for key in from_json:
        assert from_json.definition(key) == from_yaml.definition(key)


@pytest.mark.parametrize(
    ("kind", "fmt"),
    [("json", "json"), ("json", None), ("yaml", "yaml"), ("yaml", None)],
)
def test_from_text_loads_json_and_yaml(
    checkout_document: Document, kind: str, fmt: str | None
) -> None:
    text = json.dumps(checkout_document, indent=2) if kind == "json" else CHECKOUT_YAML

    fs = FlagSet.from_text(text, format=fmt)

    _assert_checkout_flagset(fs)
    assert fs.source is None


def test_from_text_uses_the_source_name_to_pick_yaml() -> None:
    # Starts like neither JSON object nor array, but named .yml: read as YAML.
    fs = FlagSet.from_text(CHECKOUT_YAML, source="team/flags.yml")

    _assert_checkout_flagset(fs)
    assert fs.source == "team/flags.yml"


def test_from_mapping_loads_a_dict(checkout_document: Document) -> None:
    _assert_checkout_flagset(FlagSet.from_mapping(checkout_document, source="memory"))


def test_from_mapping_accepts_a_read_only_mapping(checkout_document: Document) -> None:
    # from_mapping takes a Mapping[str, Any]; a read-only view of a document is one.
    fs = FlagSet.from_mapping(MappingProxyType(checkout_document))

    _assert_checkout_flagset(fs)


def test_from_mapping_keeps_a_private_copy(checkout_document: Document) -> None:
    fs = FlagSet.from_mapping(checkout_document)

    checkout_document["flags"]["banner"]["variants"]["red"] = "#bad"
    checkout_document["flags"]["banner"]["defaultVariant"] = "blue"

    assert fs.evaluate("banner", None, "#000").value == "#f00"


def test_yaml_reads_on_off_yes_no_as_strings_and_true_false_as_booleans() -> None:
    text = """\
flags:
  dark-mode:
    state: ENABLED
    variants:
      on: true
      off: false
    defaultVariant: off
  answer:
    state: ENABLED
    variants:
      yes: True
      no: FALSE
    defaultVariant: yes
"""
    fs = FlagSet.from_text(text, format="yaml")

    dark = fs.definition("dark-mode")
    assert dark is not None
    assert dict(dark.variants) == {"on": True, "off": False}
    assert dark.default_variant == "off"
    a = fs.evaluate("dark-mode", None, True)
    assert (a.value, a.variant, a.reason) == (False, "off", Reason.STATIC)

    answer = fs.definition("answer")
    assert answer is not None
    assert dict(answer.variants) == {"yes": True, "no": False}
    assert fs.evaluate("answer", None, False).variant == "yes"


def test_yaml_loader_does_not_change_pyyaml_safe_loading() -> None:
    FlagSet.from_text("flags: {}\n", format="yaml")

    # The YAML 1.2 loader is a subclass: plain safe_load keeps YAML 1.1 booleans.
    assert yaml.safe_load("on: off") == {True: False}


@pytest.mark.parametrize("default_variant", ["null", "absent", "empty"])
def test_default_variant_may_be_null_or_absent(default_variant: str) -> None:
    flag: dict[str, Any] = {"state": "ENABLED", "variants": {"on": True, "off": False}}
    if default_variant == "null":
        flag["defaultVariant"] = None
    elif default_variant == "empty":
        flag["defaultVariant"] = ""

    fs = FlagSet.from_mapping({"flags": {"f": flag}})

    definition = fs.definition("f")
    assert definition is not None
    assert definition.default_variant is None
    a = fs.evaluate("f", None, True)
    assert (a.value, a.variant, a.reason, a.error_code) == (True, None, Reason.DEFAULT, None)


def test_an_empty_document_has_no_flags() -> None:
    for fs in (FlagSet.from_mapping({}), FlagSet.from_mapping({"flags": None})):
        assert len(fs) == 0
        assert fs.evaluate("x", None, 1).error_code is ErrorCode.FLAG_NOT_FOUND


# -- validation errors -------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _set(key: str, value: Any) -> Mutation:
    def mutate(flag: dict[str, Any]) -> None:
        flag[key] = value

    return mutate


def _delete(key: str) -> Mutation:
    def mutate(flag: dict[str, Any]) -> None:
        del flag[key]

    return mutate


# (mutation of flag "checkout-v2", what the message says, JSON path, text on the offending line)
STRUCTURAL_ERRORS: list[tuple[str, Mutation, str, str, str | None]] = [
    (
        "default-not-a-variant",
        _set("defaultVariant", "blue"),
        'defaultVariant "blue" is not one of variants [on, off]',
        "flags.checkout-v2.defaultVariant",
        '"defaultVariant": "blue"',
    ),
    (
        "missing-state",
        _delete("state"),
        "state is missing; it must be ENABLED or DISABLED",
        "flags.checkout-v2.state",
        None,
    ),
    (
        "invalid-state",
        _set("state", "ON"),
        'state is "ON"; it must be ENABLED or DISABLED',
        "flags.checkout-v2.state",
        '"state": "ON"',
    ),
    (
        "lowercase-state",
        _set("state", "enabled"),
        'state is "enabled"; it must be ENABLED or DISABLED',
        "flags.checkout-v2.state",
        '"state": "enabled"',
    ),
    (
        "missing-variants",
        _delete("variants"),
        "variants is missing",
        "flags.checkout-v2.variants",
        None,
    ),
    (
        "empty-variants",
        _set("variants", {}),
        "variants must be a non-empty object",
        "flags.checkout-v2.variants",
        '"variants": {}',
    ),
    (
        "variants-not-an-object",
        _set("variants", ["on", "off"]),
        "variants must be a non-empty object, not an array",
        "flags.checkout-v2.variants",
        '"variants": [',
    ),
    (
        "non-string-default-variant",
        _set("defaultVariant", 1),
        "defaultVariant must be a variant name or null, not a number",
        "flags.checkout-v2.defaultVariant",
        '"defaultVariant": 1',
    ),
    (
        "unknown-property",
        _set("colour", "red"),
        "unknown property colour",
        "flags.checkout-v2.colour",
        '"colour": "red"',
    ),
    (
        "nested-metadata-value",
        _set("metadata", {"owner": {"team": "payments"}}),
        'metadata "owner" must be a string, number or boolean, not an object',
        "flags.checkout-v2.metadata.owner",
        '"owner": {',
    ),
    (
        "metadata-not-an-object",
        _set("metadata", "payments"),
        "metadata must be an object, not a string",
        "flags.checkout-v2.metadata",
        '"metadata": "payments"',
    ),
]


def _broken_file(write_file: WriteFile, document: Document, mutate: Mutation) -> tuple[Path, str]:
    document = copy.deepcopy(document)
    mutate(document["flags"]["checkout-v2"])
    path = write_file("flags.json", document)
    return path, path.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("mutate", "problem", "pointer"),
    [pytest.param(m, problem, ptr, id=i) for i, m, problem, ptr, _ in STRUCTURAL_ERRORS],
)
def test_structural_error_names_file_flag_path_and_problem(
    write_file: WriteFile,
    checkout_document: Document,
    mutate: Mutation,
    problem: str,
    pointer: str,
) -> None:
    path, _ = _broken_file(write_file, checkout_document, mutate)

    with pytest.raises(FlagsetError) as info:
        FlagSet.from_path(path)

    error = info.value
    assert isinstance(error, ValueError)
    assert isinstance(error, FlagwireError)
    message = str(error)
    assert "flags.json" in message
    assert 'flag "checkout-v2"' in message
    assert problem in message
    assert pointer in message
    assert error.path == str(path)
    assert error.flag_key == "checkout-v2"
    assert error.pointer == pointer
    assert problem in error.message


def test_default_variant_error_reads_as_documented(
    write_file: WriteFile, checkout_document: Document
) -> None:
    path, text = _broken_file(write_file, checkout_document, _set("defaultVariant", "blue"))
    line = _line_containing(text, '"defaultVariant": "blue"')

    with pytest.raises(FlagsetError) as info:
        FlagSet.from_path(path)

    assert info.value.line == line
    assert str(info.value) == (
        f'{path}:{line}: flag "checkout-v2": defaultVariant "blue" is not one of variants '
        "[on, off] (at flags.checkout-v2.defaultVariant)"
    )


@pytest.mark.parametrize(
    ("mutate", "marker"),
    [pytest.param(m, marker, id=i) for i, m, _, _, marker in STRUCTURAL_ERRORS if marker],
)
def test_structural_error_line_is_the_offending_line(
    write_file: WriteFile, checkout_document: Document, mutate: Mutation, marker: str
) -> None:
    path, text = _broken_file(write_file, checkout_document, mutate)

    with pytest.raises(FlagsetError) as info:
        FlagSet.from_path(path)

    assert info.value.line == _line_containing(text, marker)
    assert f"flags.json:{info.value.line}:" in str(info.value)


@pytest.mark.parametrize("missing", ["state", "variants"])
def test_missing_property_line_is_within_the_flag(
    write_file: WriteFile, checkout_document: Document, missing: str
) -> None:
    # checkout-v2 comes first; the next flag (banner) has the property. The line must
    # not point into banner.
    path, text = _broken_file(write_file, checkout_document, _delete(missing))
    flag_line = _line_containing(text, '"checkout-v2": {')
    next_flag_line = _line_containing(text, '"banner": {')

    with pytest.raises(FlagsetError) as info:
        FlagSet.from_path(path)

    assert info.value.line is not None
    assert flag_line <= info.value.line < next_flag_line, str(info.value)


def test_yaml_error_line_is_the_offending_line(write_file: WriteFile) -> None:
    text = CHECKOUT_YAML.replace("defaultVariant: off", "defaultVariant: blue")
    path = write_file("flags.yaml", text)

    with pytest.raises(FlagsetError) as info:
        FlagSet.from_path(path)

    line = _line_containing(text, "defaultVariant: blue")
    assert info.value.line == line
    message = str(info.value)
    assert f"flags.yaml:{line}:" in message
    assert 'flag "checkout-v2"' in message
    assert 'defaultVariant "blue" is not one of variants [on, off]' in message
    assert "flags.checkout-v2.defaultVariant" in message


def test_flags_that_is_not_an_object_is_rejected(write_file: WriteFile) -> None:
    path = write_file("flags.json", {"flags": "on"})

    with pytest.raises(FlagsetError) as info:
        FlagSet.from_path(path)

    assert "flags must be an object or an array, not a string" in str(info.value)
    assert "flags.json" in str(info.value)
    assert info.value.pointer == "flags"


def test_a_flags_array_entry_without_a_key_is_rejected(write_file: WriteFile) -> None:
    path = write_file("flags.json", {"flags": [{"state": "ENABLED"}]})

    with pytest.raises(FlagsetError) as info:
        FlagSet.from_path(path)

    assert "needs a non-empty string key" in str(info.value)
    assert info.value.pointer == "flags[0].key"


def test_a_flag_defined_twice_in_a_flags_array_is_rejected() -> None:
    flag = {"key": "a", "state": "ENABLED", "variants": {"on": True}, "defaultVariant": "on"}
    with pytest.raises(FlagsetError, match='flag "a" is defined twice'):
        FlagSet.from_mapping({"flags": [flag, dict(flag)]})


def test_a_document_that_is_not_an_object_is_rejected() -> None:
    with pytest.raises(FlagsetError, match="must be an object, not an array"):
        FlagSet.from_text("[]", source="flags.json")


def test_flag_set_metadata_with_a_nested_value_is_rejected() -> None:
    with pytest.raises(FlagsetError) as info:
        FlagSet.from_mapping({"metadata": {"team": {"name": "x"}}, "flags": {}})

    assert info.value.pointer == "metadata.team"
    assert 'metadata "team" must be a string, number or boolean, not an object' in str(info.value)


def test_invalid_json_names_file_and_line(write_file: WriteFile) -> None:
    text = '{\n  "flags": {\n    "f": {\n      "state": ENABLED,\n      "variants": {}\n'
    path = write_file("flags.json", text)

    with pytest.raises(FlagsetError) as info:
        FlagSet.from_path(path)

    assert info.value.line == 4
    assert isinstance(info.value.__cause__, json.JSONDecodeError)
    message = str(info.value)
    assert message.startswith(f"{path}:4: ")
    assert "invalid JSON" in message


def test_invalid_yaml_names_file_and_line(write_file: WriteFile) -> None:
    text = "flags:\n  f:\n    state: ENABLED\n    variants: on: true\n"
    path = write_file("flags.yaml", text)

    with pytest.raises(FlagsetError) as info:
        FlagSet.from_path(path)

    assert info.value.line == 4
    message = str(info.value)
    assert message.startswith(f"{path}:4: ")
    assert "invalid YAML" in message
    assert "mapping values are not allowed here" in message


def test_invalid_text_without_a_source_is_named_flags() -> None:
    with pytest.raises(FlagsetError, match=r"^<flags>:1: invalid JSON"):
        FlagSet.from_text("{oops}", format="json")


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"

    with pytest.raises(FlagsetError) as info:
        FlagSet.from_path(path)

    assert info.value.path == str(path)
    assert str(info.value) == f"{path}: file not found"


# -- versions and digests ------------------------------------------------------------------


def test_version_is_the_flag_set_metadata_version(checkout_document: Document) -> None:
    fs = FlagSet.from_mapping(checkout_document)

    assert fs.version == "2026.11.26-1"
    assert fs.version_label == f"2026.11.26-1+{fs.digest}"


def test_a_numeric_metadata_version_becomes_a_string(checkout_document: Document) -> None:
    checkout_document["metadata"]["version"] = 7

    assert FlagSet.from_mapping(checkout_document).version == "7"


def test_version_is_none_without_metadata_version(checkout_document: Document) -> None:
    del checkout_document["metadata"]["version"]

    fs = FlagSet.from_mapping(checkout_document)

    assert fs.version is None
    assert fs.version_label == fs.digest


def test_digest_is_always_present(checkout_document: Document) -> None:
    for fs in (FlagSet.from_mapping(checkout_document), FlagSet.empty(), FlagSet.from_mapping({})):
        assert re.fullmatch(r"sha256:[0-9a-f]{12}", fs.digest), fs.digest


def test_digest_ignores_key_order_and_whitespace(checkout_document: Document) -> None:
    pretty = json.dumps(checkout_document, indent=4)
    compact = json.dumps(checkout_document, separators=(",", ":"))
    reordered = json.dumps(
        {
            "flags": {
                key: dict(reversed(list(flag.items())))
                for key, flag in reversed(list(checkout_document["flags"].items()))
            },
            "metadata": dict(reversed(list(checkout_document["metadata"].items()))),
        }
    )

    digests = {FlagSet.from_text(text).digest for text in (pretty, compact, reordered)}

    assert len(digests) == 1
    assert digests == {FlagSet.from_mapping(checkout_document).digest}


def test_digest_of_a_large_document_is_that_of_its_whole_canonical_json() -> None:
    # The digest is written in pieces of a few hundred flags: the pieces must join up to
    # exactly the canonical text of the document.
    document = {
        "flags": {
            f"flag-{i:04d}": {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "off" if i % 3 else "on",
                "metadata": {"owner": f"team-{i % 7}"},
            }
            for i in reversed(range(1001))
        },
        "metadata": {"version": "7"},
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()

    digest = FlagSet.from_mapping(document).digest

    assert digest == "sha256:" + hashlib.sha256(canonical).hexdigest()[:12]


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda d: d["flags"]["banner"]["variants"].update(red="#e00"), id="value"),
        pytest.param(lambda d: d["flags"]["banner"].update(defaultVariant="blue"), id="default"),
        pytest.param(lambda d: d["flags"]["banner"].update(state="DISABLED"), id="state"),
        pytest.param(lambda d: d["metadata"].update(owner="someone"), id="metadata"),
        pytest.param(lambda d: d["flags"].pop("banner"), id="flag-removed"),
    ],
)
def test_digest_changes_when_content_changes(
    checkout_document: Document, change: Callable[[Document], object]
) -> None:
    before = FlagSet.from_mapping(checkout_document)
    changed = copy.deepcopy(checkout_document)
    change(changed)

    after = FlagSet.from_mapping(changed)

    assert after.digest != before.digest
    assert after.version == before.version  # same metadata.version, different content
    assert after.version_label != before.version_label


def test_every_assignment_carries_the_version_label() -> None:
    fs = FlagSet.from_mapping(
        {
            "metadata": {"version": "v9"},
            "flags": {
                "static": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a"},
                "targeted": {
                    "state": "ENABLED",
                    "variants": {"a": 1, "b": 2},
                    "defaultVariant": "a",
                    "targeting": {"if": [{"var": "x"}, "b", None]},
                },
                "off": {"state": "DISABLED", "variants": {"a": 1}, "defaultVariant": "a"},
                "broken": {
                    "state": "ENABLED",
                    "variants": {"a": 1},
                    "defaultVariant": "a",
                    "targeting": {"nope": []},
                },
            },
        }
    )
    assignments = [
        fs.evaluate("static"),
        fs.evaluate("targeted", {"x": True}),
        fs.evaluate("targeted", {"x": False}),
        fs.evaluate("off", None, 0),
        fs.evaluate("broken", None, 0),
        fs.evaluate("static", None, "wrong type"),
        fs.evaluate("missing", None, 0),
        fs.explain("targeted", {"x": True})[0],
    ]

    assert fs.version_label.startswith("v9+sha256:")
    assert {a.flagset_version for a in assignments} == {fs.version_label}
    assert {a.reason for a in assignments} == {
        Reason.STATIC,
        Reason.TARGETING_MATCH,
        Reason.DEFAULT,
        Reason.DISABLED,
        Reason.ERROR,
    }


# -- fractional algorithm ------------------------------------------------------------------

SPLIT = {
    "state": "ENABLED",
    "variants": {"a": "a", "b": "b"},
    "defaultVariant": "a",
    "targeting": {"fractional": [["a", 50], ["b", 50]]},
}


def _split_document(metadata: dict[str, Any] | None = None) -> Document:
    document: Document = {"flags": {"split": copy.deepcopy(SPLIT)}}
    if metadata is not None:
        document["metadata"] = metadata
    return document


def _buckets(fs: FlagSet) -> list[str | None]:
    return [fs.evaluate("split", {"targetingKey": f"user-{i}"}, "").variant for i in range(200)]


def test_fractional_defaults_to_v2() -> None:
    assert FlagSet.from_mapping(_split_document()).fractional == "v2"
    assert FlagSet.empty().fractional == "v2"


def test_fractional_v3_from_flag_set_metadata() -> None:
    fs = FlagSet.from_mapping(_split_document({"flagwire.fractional": "v3"}))

    assert fs.fractional == "v3"


def test_fractional_v3_from_the_loader(write_file: WriteFile) -> None:
    document = _split_document()
    path = write_file("flags.json", document)

    loaded = [
        FlagSet.from_path(path, fractional="v3"),
        FlagSet.from_text(json.dumps(document), fractional="v3"),
        FlagSet.from_mapping(document, fractional="v3"),
    ]

    assert [fs.fractional for fs in loaded] == ["v3", "v3", "v3"]
    assert _buckets(loaded[0]) == _buckets(loaded[1]) == _buckets(loaded[2])


def test_the_loader_choice_wins_over_metadata() -> None:
    fs = FlagSet.from_mapping(_split_document({"flagwire.fractional": "v3"}), fractional="v2")

    assert fs.fractional == "v2"


def test_v2_and_v3_bucket_differently() -> None:
    v2 = FlagSet.from_mapping(_split_document())
    v3_meta = FlagSet.from_mapping(_split_document({"flagwire.fractional": "v3"}))
    v3_loader = FlagSet.from_mapping(_split_document(), fractional="v3")

    assert set(_buckets(v2)) == set(_buckets(v3_meta)) == {"a", "b"}
    assert _buckets(v3_meta) == _buckets(v3_loader)
    assert _buckets(v2) != _buckets(v3_meta)


@pytest.mark.parametrize("fractional", ["v1", "V3"])
def test_unknown_fractional_algorithm_from_the_loader_raises_config_error(
    fractional: str,
) -> None:
    with pytest.raises(ConfigError) as info:
        FlagSet.from_mapping(_split_document(None), fractional=fractional)

    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, flagwire.FlagwireError)
    assert "fractional" in str(info.value)


@pytest.mark.parametrize("value", ["v9", 3])
def test_unknown_fractional_algorithm_in_metadata_rejects_the_document(value: object) -> None:
    # A bad value inside the file is a problem of the file: a FlagsetError naming where.
    with pytest.raises(FlagsetError) as info:
        FlagSet.from_mapping(_split_document({"flagwire.fractional": value}), source="split.json")

    message = str(info.value)
    assert "split.json" in message
    assert "metadata.flagwire.fractional" in message
    assert json.dumps(value) in message


# -- problems in targeting rules -----------------------------------------------------------

BROKEN_RULES: Document = {
    "$evaluators": {"is-beta": {"in": [{"var": "plan"}, ["beta"]]}},
    "flags": {
        "dangling": {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {"if": [{"$ref": "is-gamma"}, "on", "off"]},
        },
        "unknown-op": {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {"if": [{"frobnicate": [{"var": "plan"}]}, "on", "off"]},
        },
        "unreached": {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {"if": [{"$ref": "is-beta"}, "on", {"frobnicate": []}]},
        },
        "fine": {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {"if": [{"$ref": "is-beta"}, "on", "off"]},
        },
    },
}


def test_problems_list_dangling_refs_and_unknown_operations() -> None:
    fs = FlagSet.from_mapping(BROKEN_RULES)  # does not raise

    assert len(fs) == 4
    problems = list(fs.problems)
    dangling = [p for p in problems if 'flag "dangling"' in p]
    unknown = [p for p in problems if 'flag "unknown-op"' in p]
    assert len(dangling) == 1
    assert "is-gamma" in dangling[0]
    assert "$ref" in dangling[0]
    assert len(unknown) == 1
    assert "frobnicate" in unknown[0]
    assert "unknown operation" in unknown[0]
    assert not [p for p in problems if 'flag "fine"' in p]


def test_a_valid_document_has_no_problems(checkout_document: Document) -> None:
    assert FlagSet.from_mapping(checkout_document).problems == ()


@pytest.mark.parametrize("key", ["dangling", "unknown-op"])
def test_evaluating_a_broken_rule_gives_parse_error_and_the_default(key: str) -> None:
    fs = FlagSet.from_mapping(BROKEN_RULES)

    a = fs.evaluate(key, {"plan": "beta"}, True)

    assert a.reason is Reason.ERROR
    assert a.error_code is ErrorCode.PARSE_ERROR
    assert a.value is True  # the caller's default, not the default variant (False)
    assert a.variant is None
    assert a.error_message
    assert fs.boolean(key, True, {"plan": "beta"}) is True


def test_a_broken_branch_that_is_not_reached_does_not_break_the_flag() -> None:
    fs = FlagSet.from_mapping(BROKEN_RULES)

    reached = fs.evaluate("unreached", {"plan": "beta"}, True, flag_type=FlagType.BOOLEAN)
    assert (reached.value, reached.variant, reached.error_code) == (True, "on", None)
    broken = fs.evaluate("unreached", {"plan": "free"}, True)
    assert broken.error_code is ErrorCode.PARSE_ERROR
    assert fs.evaluate("fine", {"plan": "beta"}, False).variant == "on"


def test_problems_in_a_file_do_not_stop_the_load(write_file: WriteFile) -> None:
    path = write_file("flags.json", BROKEN_RULES)

    fs = FlagSet.from_path(path)

    assert len(fs.problems) == 3
    assert fs.evaluate("dangling", None, True).error_code is ErrorCode.PARSE_ERROR


@pytest.mark.parametrize("targeting", [["on"], "on", 1, True], ids=repr)
def test_a_targeting_rule_that_is_not_an_object_is_a_parse_error(targeting: Any) -> None:
    # Listed as a problem, and (as for every problem) evaluating the flag gives
    # PARSE_ERROR and the caller's default, whatever the default's type.
    fs = FlagSet.from_mapping(
        {
            "flags": {
                "f": {
                    "state": "ENABLED",
                    "variants": {"on": True, "off": False},
                    "defaultVariant": "off",
                    "targeting": targeting,
                }
            }
        }
    )

    assert len(fs.problems) == 1
    assert 'flag "f"' in fs.problems[0]
    for default in (True, None, "text"):
        a = fs.evaluate("f", {"targetingKey": "u1"}, default)
        assert (a.reason, a.error_code, a.value) == (
            Reason.ERROR,
            ErrorCode.PARSE_ERROR,
            default,
        ), f"default={default!r}: {a}"
    typed = fs.evaluate("f", None, True, flag_type=FlagType.BOOLEAN)
    assert typed.error_code is ErrorCode.PARSE_ERROR
    assert fs.boolean("f", True) is True


def test_explain_of_a_targeting_rule_that_is_not_an_object_reports_the_error() -> None:
    fs = FlagSet.from_mapping(
        {
            "flags": {
                "f": {
                    "state": "ENABLED",
                    "variants": {"on": True, "off": False},
                    "defaultVariant": "off",
                    "targeting": ["on"],
                }
            }
        }
    )

    a, steps = fs.explain("f", {}, "text")  # a str default: not the hot path

    assert not any("default variant applies" in what for _, what in steps), steps
    assert a.error_code is ErrorCode.PARSE_ERROR


def _flagd_step_by_step(targeting: Any, evaluators: dict[str, Any]) -> Any:
    """flagd's substitution as flagd writes it: one evaluator after another, in order."""

    def replace(node: Any, name: str, rule: Any) -> Any:
        if isinstance(node, dict):
            if len(node) == 1 and node.get("$ref") == name:
                return copy.deepcopy(rule)
            return {k: replace(v, name, rule) for k, v in node.items()}
        if isinstance(node, list):
            return [replace(item, name, rule) for item in node]
        return node

    for name, rule in evaluators.items():
        targeting = replace(targeting, name, rule)
    return targeting


def test_ref_substitution_in_one_walk_equals_flagds_step_by_step() -> None:
    rng = random.Random(7)
    names = [f"e{i}" for i in range(6)]

    def node(depth: int) -> Any:
        roll = rng.random()
        if depth > 3 or roll < 0.25:
            return {"var": rng.choice(["a", "b"])}
        if roll < 0.55:
            return {"$ref": rng.choice([*names, "missing"])}
        return {rng.choice(["and", "or"]): [node(depth + 1) for _ in range(rng.randint(1, 3))]}

    for _ in range(300):
        order = rng.sample(names, k=len(names))
        evaluators = {name: node(1) for name in order}
        targeting = {"if": [node(0), "on", "off"]}
        expected = _flagd_step_by_step(copy.deepcopy(targeting), evaluators)
        assert RefSubstitution(evaluators)(targeting) == expected


def test_ref_substitution_is_linear_in_the_number_of_evaluators() -> None:
    # 2,000 evaluators, 2,000 flags each using one: step by step is 4 million node walks.
    evaluators = {f"e{i}": {"==": [{"var": "plan"}, f"p{i}"]} for i in range(2000)}
    substitute = RefSubstitution(evaluators)
    walked = 0
    original = substitute._walk

    def counting(node: Any, first: int) -> Any:
        nonlocal walked
        walked += 1
        return original(node, first)

    substitute._walk = counting  # type: ignore[method-assign]
    for i in range(2000):
        assert substitute({"if": [{"$ref": f"e{i}"}, "on", "off"]})["if"][0]["=="][1] == f"p{i}"
    assert walked < 2000 * 20


# -- variant names in rules that are not variants (issue 12, item 5) ----------------------


def _typo_document() -> dict[str, Any]:
    return {
        "flags": {
            "checkout": {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "off",
                "targeting": {
                    "if": [
                        {"==": [{"var": "tier"}, "gold"]},
                        "on",
                        {"fractional": [["onn", 20], ["off", 80]]},
                    ]
                },
            },
            "banner": {
                "state": "DISABLED",
                "variants": {"blue": "b", "green": "g"},
                "defaultVariant": "blue",
                "targeting": {"if": [{"var": "beta"}, "gren", {"or": [{"var": "x"}, "blue"]}]},
            },
        }
    }


def test_a_variant_name_that_is_not_a_variant_is_a_problem() -> None:
    problems = FlagSet.from_mapping(_typo_document()).problems
    assert len(problems) == 2
    checkout = next(p for p in problems if p.startswith('flag "checkout"'))
    assert "flags.checkout.targeting.if[2].fractional[0][0]" in checkout
    assert '"onn"' in checkout
    assert 'did you mean "on"?' in checkout
    banner = next(p for p in problems if p.startswith('flag "banner"'))
    assert "flags.banner.targeting.if[1]" in banner
    assert 'did you mean "green"?' in banner


def test_known_variant_names_and_computed_results_are_not_problems() -> None:
    doc = _typo_document()
    doc["flags"]["checkout"]["targeting"] = {
        "if": [{"var": "beta"}, {"var": "chosen"}, {"fractional": [["on", 1], ["off", 1]]}]
    }
    doc["flags"]["banner"]["targeting"] = {"if": [True, "green", None]}
    assert FlagSet.from_mapping(doc).problems == ()


def test_validate_reports_a_variant_typo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flagwire._cli.main import main

    path = tmp_path / "flags.json"
    path.write_text(json.dumps(_typo_document()), encoding="utf-8")
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert 'did you mean "on"?' in out
    assert "flags.checkout.targeting.if[2].fractional[0][0]" in out

"""Gherkin plumbing for ``tests/test_conformance.py``: the flagd test bed, run against flagwire.

This module knows how to

* read the test bed's ``.feature`` files with ``gherkin-official`` and expand them into
  pickles (one per scenario, or per example row of a Scenario Outline);
* decide, per pickle, which fractional algorithms it runs under (``@fractional-v2`` rows
  only under v2, ``@fractional-v3`` rows only under v3, untagged ones under both) or
  which explicit exclusion applies to it (the exclusion lists live in the test module);
* build the flag sets the scenarios ask for (``evaluator/flags/testkit-flags.json``, the
  merged ``allFlags.json``, or one ``flags/*.json`` picked by a ``selector`` option);
* run a pickle's steps against :class:`flagwire.FlagSet` and report every unmet
  expectation at once, with a one-line reproduction.

Nothing here is copied from the test bed: every feature and flag file is read from the
test-bed folder at test time.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, cast

from gherkin.parser import Parser
from gherkin.pickles.compiler import Compiler

from flagwire import Assignment, FlagSet, FlagType, RequestFlags

__all__ = [
    "FRACTIONAL_VERSIONS",
    "SUITES",
    "Case",
    "Excluded",
    "Pickle",
    "Plan",
    "load_flag_source",
    "merged_all_flags",
    "plan",
    "run_case",
]

FRACTIONAL_VERSIONS: tuple[str, ...] = ("v2", "v3")
"""The fractional algorithms flagwire implements; each scenario runs once per version."""

SUITES: dict[str, str] = {"evaluator": "evaluator/gherkin", "root": "gherkin"}
"""Test-id prefix of each suite, and the folder (inside the test bed) of its features."""

EVALUATOR_FLAGS = "evaluator/flags/testkit-flags.json"
"""What ``Given an evaluator`` loads."""

ALL_FLAGS = "flags/allFlags.json"
"""Upstream's name for the deep merge of every ``flags/*.json`` except ``selector-*``."""

PROVIDER_CONFIGS: dict[str, str] = {
    "stable": "launchpad/configs/default.json",
    "metadata": "launchpad/configs/metadata.json",
    "syncpayload": "launchpad/configs/sync-payload.json",
}
"""``Given a <kind> flagd provider`` -> the flagd start-up config that provider talks to.

The config gives the static context flagd injects (``context-value``) and, when the
scenario sets no ``selector`` option, the flag source (its first ``sources`` entry).
"""

_FLAG_TYPES: dict[str, FlagType] = {
    "Boolean": FlagType.BOOLEAN,
    "String": FlagType.STRING,
    "Integer": FlagType.INTEGER,
    "Float": FlagType.FLOAT,
    "Object": FlagType.OBJECT,
}

_MISSING: Any = object()


# -- pickles -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One pickle step: its text and, if it has one, its data table (rows of cells)."""

    text: str
    table: tuple[tuple[str, ...], ...] | None = None


@dataclass(frozen=True)
class Pickle:
    """One runnable scenario (an outline is expanded into one pickle per example row).

    Attributes:
        feature: ``<suite>/<file name>``, e.g. ``evaluator/fractional.feature``.
        path: The feature file.
        name: The scenario name (outline placeholders already substituted).
        line: The line of the example row (or of the scenario).
        tags: Feature, scenario and examples tags, e.g. ``@fractional-v2``.
        steps: Background steps followed by the scenario's.
        row: The example row's cells, in column order (empty for plain scenarios).
    """

    feature: str
    path: Path
    name: str
    line: int
    tags: frozenset[str]
    steps: tuple[Step, ...]
    row: tuple[str, ...] = ()


def _example_rows(document: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """Map each example row's AST id to its cells."""
    rows: dict[str, tuple[str, ...]] = {}
    feature = document.get("feature") or {}
    pending: list[Mapping[str, Any]] = list(feature.get("children", []))
    while pending:
        child = pending.pop()
        if "rule" in child:
            pending.extend(child["rule"].get("children", []))
            continue
        for examples in child.get("scenario", {}).get("examples", []):
            for row in examples.get("tableBody", []):
                rows[row["id"]] = tuple(cell["value"] for cell in row["cells"])
    return rows


def read_feature(path: Path, feature: str) -> list[Pickle]:
    """Parse one ``.feature`` file and expand it into pickles."""
    # gherkin's TypedDicts are looser than its runtime shapes: read them as plain JSON
    document: dict[str, Any] = dict(Parser().parse(path.read_text(encoding="utf-8")))
    document["uri"] = feature
    rows = _example_rows(document)
    compiled: list[dict[str, Any]] = cast(Any, Compiler().compile(cast(Any, document)))
    pickles: list[Pickle] = []
    for raw in compiled:
        steps = []
        for step in raw["steps"]:
            table = step.get("argument", {}).get("dataTable")
            cells = (
                None
                if table is None
                else tuple(tuple(c["value"] for c in r["cells"]) for r in table["rows"])
            )
            steps.append(Step(step["text"], cells))
        node_ids = raw["astNodeIds"]
        row = rows.get(node_ids[-1], ()) if len(node_ids) > 1 else ()
        pickles.append(
            Pickle(
                feature=feature,
                path=path,
                name=raw["name"],
                line=raw["location"]["line"],
                tags=frozenset(t["name"] for t in raw["tags"]),
                steps=tuple(steps),
                row=row,
            )
        )
    return pickles


def read_suite(testbed: Path, suite: str) -> list[Pickle]:
    """Every pickle of one suite's feature files, in file order."""
    folder = testbed / SUITES[suite]
    pickles: list[Pickle] = []
    for path in sorted(folder.glob("*.feature")):
        pickles.extend(read_feature(path, f"{suite}/{path.name}"))
    return pickles


# -- planning ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One pickle under one fractional algorithm: one pytest test."""

    pickle: Pickle
    fractional: str
    test_id: str
    testbed: Path


@dataclass(frozen=True)
class Excluded:
    """A pickle that is not run, and why."""

    pickle: Pickle
    reason: str


@dataclass
class Plan:
    """What runs and what does not, for a whole test bed.

    Attributes:
        cases: The tests, in file order.
        excluded: Pickles not run, each with its reason (from the explicit lists).
        unused_exclusions: Entries of the explicit lists that matched nothing (stale).
        out_of_scope_features: Feature files present in the test bed that are neither run
            nor listed as excluded (a new upstream file lands here and fails a test).
    """

    cases: list[Case] = field(default_factory=list)
    excluded: list[Excluded] = field(default_factory=list)
    unused_exclusions: list[str] = field(default_factory=list)
    out_of_scope_features: list[str] = field(default_factory=list)

    def counts(self) -> dict[tuple[str, str], int]:
        """Number of cases per (suite, fractional version)."""
        found: dict[tuple[str, str], int] = defaultdict(int)
        for case in self.cases:
            found[(case.pickle.feature.split("/")[0], case.fractional)] += 1
        return dict(found)


def _versions(tags: frozenset[str]) -> tuple[str, ...]:
    pinned = tuple(v for v in FRACTIONAL_VERSIONS if f"@fractional-{v}" in tags)
    return pinned or FRACTIONAL_VERSIONS


def _cell_label(cell: str, limit: int = 40) -> str:
    if cell == "":
        return "<empty>"
    if len(cell) > limit:
        return f"{cell[:20]}...({len(cell)} chars)"
    return cell


def _row_labels(pickles: Sequence[Pickle]) -> list[str]:
    """Short labels for example rows: the fewest leading cells that tell them apart."""
    if not pickles or not pickles[0].row:
        return ["" for _ in pickles]
    width = max(len(p.row) for p in pickles)
    for n in range(1, width + 1):
        labels = ["-".join(_cell_label(c) for c in p.row[:n]) for p in pickles]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{label}-L{p.line}" for label, p in zip(labels, pickles, strict=True)]


def plan(
    testbed: Path,
    *,
    root_features: Iterable[str],
    excluded_features: Mapping[str, str],
    excluded_scenarios: Mapping[tuple[str, str], str],
    excluded_tags: Mapping[str, str],
) -> Plan:
    """Sort every pickle of the test bed into cases and explicit exclusions.

    Args:
        testbed: The test-bed folder.
        root_features: Root-suite feature files (``root/<name>``) that concern evaluation.
        excluded_features: Feature files (``root/<name>``) not run at all, with the reason.
        excluded_scenarios: ``(feature, scenario name)`` not run, with the reason.
        excluded_tags: Tags whose pickles are not run (e.g. ``@fractional-v1``), with reason.
    """
    result = Plan()
    in_scope = set(root_features)
    used: set[str] = set()
    kept: dict[tuple[str, str, str], list[Pickle]] = defaultdict(list)
    for suite in SUITES:
        for pickle in read_suite(testbed, suite):
            if suite == "root" and pickle.feature not in in_scope:
                if pickle.feature in excluded_features:
                    used.add(pickle.feature)
                    result.excluded.append(Excluded(pickle, excluded_features[pickle.feature]))
                elif pickle.feature not in result.out_of_scope_features:
                    result.out_of_scope_features.append(pickle.feature)
                continue
            scenario_key = (pickle.feature, pickle.name)
            if scenario_key in excluded_scenarios:
                used.add(repr(scenario_key))
                result.excluded.append(Excluded(pickle, excluded_scenarios[scenario_key]))
                continue
            tag = next((t for t in sorted(pickle.tags) if t in excluded_tags), None)
            if tag is not None:
                used.add(tag)
                result.excluded.append(Excluded(pickle, f"{tag}: {excluded_tags[tag]}"))
                continue
            for version in _versions(pickle.tags):
                kept[(pickle.feature, pickle.name, version)].append(pickle)
    for (feature, name, version), pickles in kept.items():
        for pickle, label in zip(pickles, _row_labels(pickles), strict=True):
            inner = f"{version}-{label}" if label else version
            result.cases.append(Case(pickle, version, f"{feature}::{name}[{inner}]", testbed))
    order = {"evaluator": 0, "root": 1}
    result.cases.sort(
        key=lambda c: (order[c.pickle.feature.split("/")[0]], c.pickle.feature, c.pickle.line)
    )
    every = [
        *excluded_features,
        *(repr(k) for k in excluded_scenarios),
        *excluded_tags,
    ]
    result.unused_exclusions = [e for e in every if e not in used]
    return result


# -- flag sources --------------------------------------------------------------------------


def _deep_merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


@cache
def merged_all_flags(testbed: Path) -> Mapping[str, Any]:
    """``allFlags.json``: the deep merge of every ``flags/*.json`` except ``selector-*``."""
    merged: dict[str, Any] = {}
    for path in sorted((testbed / "flags").glob("*.json")):
        if not path.name.startswith("selector-"):
            _deep_merge(merged, json.loads(path.read_text(encoding="utf-8")))
    return merged


def source_file(testbed: Path, source: str) -> Path | None:
    """The single file a flag source reads (``None`` for the merged ``allFlags.json``)."""
    if source == ALL_FLAGS:
        return None
    if source.startswith("rawflags/"):
        return testbed / "flags" / source.removeprefix("rawflags/")
    return testbed / source


@cache
def load_flag_source(testbed: Path, source: str, fractional: str) -> FlagSet:
    """The flag set of one source, compiled once per fractional algorithm."""
    path = source_file(testbed, source)
    if path is None:
        return FlagSet.from_mapping(
            merged_all_flags(testbed), source="allFlags.json", fractional=fractional
        )
    return FlagSet.from_path(path, fractional=fractional)


@cache
def _provider_config(testbed: Path, kind: str) -> Mapping[str, Any]:
    if kind not in PROVIDER_CONFIGS:
        raise StepError(f'no flagd provider of kind "{kind}" (know {sorted(PROVIDER_CONFIGS)})')
    data: Mapping[str, Any] = json.loads(
        (testbed / PROVIDER_CONFIGS[kind]).read_text(encoding="utf-8")
    )
    return data


# -- values ----------------------------------------------------------------------------------


def parse_json_cell(text: str) -> Any:
    """A JSON table cell; the evaluator tables write quotes as ``\\"``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return json.loads(text.replace('\\"', '"'))


def parse_typed(type_name: str, text: str) -> Any:
    """A table or step value, read as the named type.

    String values are taken literally, backslashes included: ``A\\u0000B`` in the v3
    tables is eight characters, not ``"A\\x00B"``. The expected v3 buckets agree with the
    literal reading and not with the decoded one (checked against an independent
    murmur3 + canonical-CBOR implementation: literal gives bucket15/bucket7/bucket23 as
    expected, decoded gives bucket14/bucket16/bucket1).
    """
    if type_name == "String":
        return text
    if type_name == "Boolean":
        if text not in ("true", "false"):
            raise StepError(f"not a Boolean: {text!r}")
        return text == "true"
    if type_name == "Integer":
        return int(text)
    if type_name == "Float":
        return float(text)
    if type_name == "Object":
        return parse_json_cell(text)
    raise StepError(f"unknown value type {type_name!r}")


def strict_equal(expected: Any, got: Any) -> bool:
    """Equality that also compares JSON types (``1`` is not ``1.0`` is not ``True``)."""
    if type(expected) is not type(got):
        return False
    if isinstance(expected, dict):
        return expected.keys() == got.keys() and all(
            strict_equal(v, got[k]) for k, v in expected.items()
        )
    if isinstance(expected, list):
        return len(expected) == len(got) and all(
            strict_equal(a, b) for a, b in zip(expected, got, strict=True)
        )
    if isinstance(expected, float) and math.isnan(expected):
        return math.isnan(got)
    return bool(expected == got)


# -- running -------------------------------------------------------------------------------


class StepError(Exception):
    """A step this runner does not understand, or steps in an impossible order."""


@dataclass
class _State:
    testbed: Path
    fractional: str
    source: str | None = None
    selector: str | None = None
    provider: str | None = None
    type_name: str | None = None
    key: str | None = None
    default: Any = _MISSING
    context: dict[str, Any] = field(default_factory=dict)
    static_context: dict[str, Any] = field(default_factory=dict)
    evaluated_with: dict[str, Any] | None = None
    assignment: Assignment | None = None
    failures: list[str] = field(default_factory=list)

    # -- Given ---------------------------------------------------------------------------

    def evaluator(self) -> None:
        self.source = EVALUATOR_FLAGS

    def option(self, name: str, type_name: str, value: str) -> None:
        if name == "selector":
            self.selector = value
        # other options (cache, resolver, ...) configure a provider, not the evaluation

    def flagd_provider(self, kind: str) -> None:
        config = _provider_config(self.testbed, kind)
        self.provider = kind
        self.static_context = dict(config.get("context-value", {}))

    def flag(self, type_name: str, key: str, default: str) -> None:
        self.type_name = type_name
        self.key = key
        self.default = parse_typed(type_name, default)

    def context_key(self, key: str, type_name: str, value: str) -> None:
        self.context[key] = parse_typed(type_name, value)

    def targeting_key(self, value: str) -> None:
        self.context["targetingKey"] = value

    def nested(self, outer: str, inner: str, value: str) -> None:
        node = self.context.setdefault(outer, {})
        if not isinstance(node, dict):
            raise StepError(f"context key {outer!r} is not an object")
        node[inner] = value

    # -- When ----------------------------------------------------------------------------

    def flag_set_source(self) -> str:
        if self.provider is not None:
            if self.selector is not None:
                return self.selector
            config = _provider_config(self.testbed, self.provider)
            return str(config["sources"][0]["uri"])
        if self.source is None:
            raise StepError("no evaluator and no flagd provider before the evaluation")
        return self.source

    def evaluate(self) -> None:
        if self.key is None or self.type_name is None:
            raise StepError("the flag was evaluated before a flag was given")
        self.source = self.flag_set_source()
        flags = load_flag_source(self.testbed, self.source, self.fractional)
        # flagd merges its static context into the evaluation context (the caller wins)
        self.evaluated_with = {**self.static_context, **self.context}
        self.assignment = flags.evaluate(
            self.key,
            self.evaluated_with,
            self.default,
            flag_type=_FLAG_TYPES[self.type_name],
        )
        # The per-request path (generated deciders, memo, fit) must agree exactly.
        per_request = RequestFlags(flags, self.evaluated_with).details(
            self.key, self.default, flag_type=_FLAG_TYPES[self.type_name]
        )
        assert per_request == self.assignment, (per_request, self.assignment)

    # -- Then ----------------------------------------------------------------------------

    def _result(self) -> Assignment:
        if self.assignment is None:
            raise StepError("a Then step came before the flag was evaluated")
        return self.assignment

    def value_is(self, text: str) -> None:
        got = self._result().value
        assert self.type_name is not None
        expected = parse_typed(self.type_name, text)
        if not strict_equal(expected, got):
            self.failures.append(f"value: expected {expected!r}, got {got!r}")

    def reason_is(self, text: str) -> None:
        got = self._result().reason
        if str(getattr(got, "value", got)) != text:
            self.failures.append(f"reason: expected {text}, got {got}")

    def error_code_is(self, text: str) -> None:
        got = self._result().error_code
        got_text = "" if got is None else str(getattr(got, "value", got))
        if got_text != text:
            self.failures.append(f"error_code: expected {text or 'none'}, got {got_text or 'none'}")

    def metadata_contains(self, table: tuple[tuple[str, ...], ...]) -> None:
        metadata = self._result().flag_metadata
        header, *rows = table
        for row in rows:
            cells = dict(zip(header, row, strict=True))
            expected = parse_typed(cells["metadata_type"], cells["value"])
            got = metadata.get(cells["key"], _MISSING)
            if got is _MISSING:
                self.failures.append(f"metadata[{cells['key']!r}]: expected {expected!r}, absent")
            elif not strict_equal(expected, got):
                self.failures.append(
                    f"metadata[{cells['key']!r}]: expected {expected!r}, got {got!r}"
                )

    def metadata_empty(self) -> None:
        metadata = self._result().flag_metadata
        if len(metadata):
            self.failures.append(f"metadata: expected empty, got {dict(metadata)!r}")


_Q = r'"(.*?)"'  # a quoted step argument (not the last one)
_LAST = r'"(.*)"'  # the last quoted argument: may itself contain quotes (JSON)

_STEPS: list[tuple[re.Pattern[str], Callable[..., None]]] = [
    (re.compile(r"an evaluator"), _State.evaluator),
    (re.compile(rf"an option {_Q} of type {_Q} with value {_LAST}"), _State.option),
    (re.compile(r"an? (\w+) flagd provider"), _State.flagd_provider),
    (
        re.compile(rf"an? (\w+)-flag with key {_Q} and a (?:default|fallback) value {_LAST}"),
        _State.flag,
    ),
    (
        re.compile(rf"a context containing a key {_Q}, with type {_Q} and with value {_LAST}"),
        _State.context_key,
    ),
    (re.compile(rf"a context containing a targeting key with value {_LAST}"), _State.targeting_key),
    (
        re.compile(
            rf"a context containing a nested property with outer key {_Q} "
            rf"and inner key {_Q}, with value {_LAST}"
        ),
        _State.nested,
    ),
    (re.compile(r"the flag was evaluated with details"), _State.evaluate),
    (re.compile(rf"the resolved details value should be {_LAST}"), _State.value_is),
    (re.compile(rf"the reason should be {_LAST}"), _State.reason_is),
    (re.compile(rf"the error-code should be {_LAST}"), _State.error_code_is),
    (re.compile(r"the resolved metadata should contain"), _State.metadata_contains),
    (re.compile(r"the resolved metadata is empty"), _State.metadata_empty),
]


def _run_step(state: _State, step: Step) -> None:
    for pattern, handler in _STEPS:
        match = pattern.fullmatch(step.text)
        if match is None:
            continue
        args: list[Any] = list(match.groups())
        if step.table is not None:
            args.append(step.table)
        handler(state, *args)
        return
    raise StepError(f"no step definition matches {step.text!r}")


def _repro(state: _State) -> str:
    """A one-line reproduction with the public flagwire API."""
    assert state.source is not None
    path = source_file(state.testbed, state.source)
    if path is None:  # the merged set: the one flags/*.json that defines the flag will do
        path = next(
            (
                p
                for p in sorted((state.testbed / "flags").glob("*.json"))
                if not p.name.startswith("selector-")
                and state.key in json.loads(p.read_text(encoding="utf-8")).get("flags", {})
            ),
            None,
        )
    where = "<merged allFlags.json>" if path is None else str(path)
    type_name = _FLAG_TYPES[state.type_name or "String"].name
    return (
        f"FlagSet.from_path({where!r}, fractional={state.fractional!r})"
        f".evaluate({state.key!r}, {state.evaluated_with!r}, {state.default!r}, "
        f"flag_type=FlagType.{type_name})"
    )


def run_case(case: Case) -> None:
    """Run one case; raise ``AssertionError`` listing every unmet expectation."""
    state = _State(case.testbed, case.fractional)
    for step in case.pickle.steps:
        _run_step(state, step)
    if state.assignment is None:
        raise StepError("the scenario never evaluated a flag")
    if state.failures:
        got = state.assignment.to_dict()
        got.pop("flagset_version", None)
        lines = [
            f"{case.pickle.feature}:{case.pickle.line}: {case.pickle.name} "
            f"(fractional {case.fractional}, flags {state.source})",
            *(f"  - {failure}" for failure in state.failures),
            f"  assignment: {got}",
            f"  repro: {_repro(state)}",
        ]
        raise AssertionError("\n".join(lines))

"""Differential tests: flagwire against flagd's reference Python evaluator.

The reference is ``openfeature-flagd-core`` (``FlagdCore``, fractional "v2", JsonLogic by
``panzi-json-logic``). flagwire aims to be byte-compatible with it, so for every flag,
context and typed getter both must agree on the value (including its Python type: ``1``,
``1.0`` and ``True`` differ), the variant, the reason and the error code.

The only exceptions are the deliberate divergences in ``DIVERGENCES`` below, decided by
the owner. Each one is checked on its own against flagwire's documented behaviour
(``test_divergence_*``), and the comparisons step around exactly the cases it covers,
each through a helper that names it; everything else is compared exactly.

Four parts:

* realistic flag documents (``tests/fixtures/parity/*.flagd.json``) evaluated against a
  hand-written set of contexts: personas, many users (so fractional buckets vary),
  missing attributes, wrong types, numbers as strings, empty strings and unicode;
* ``CORNER_CASES``: minimal repros of every disagreement found (and fixed) so far;
* ``DIVERGENT_CASES``: minimal repros of the deliberate divergences, with what each side
  gives;
* hypothesis property tests over random JsonLogic rules built from the supported
  operations and random contexts (``log`` is left out: it writes to stdout), plus
  focused ones for ``fractional`` and ``sem_ver``.

The reference reads ``$flagd.timestamp`` from ``time.time()`` just as flagwire does;
both are evaluated under one patched clock so the comparison cannot straddle a second.

Where the reference does something that is clearly a bug of its own and it is not in
``DIVERGENCES``, the comparison is still made (flagwire aims to match it byte for byte);
``CORNER_CASES`` says which. Documents either side cannot load fail the test that needs
them, with the reason. The reference is part of the ``test`` extra: without it this
module fails to import rather than skip.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import OpenFeatureError

from flagwire import FlagSet, FlagType, RequestFlags
from reference_daemon import daemon_semantics

FIXTURES: Final = Path(__file__).parent / "fixtures" / "parity"
LAUNCH: Final = 1_767_225_600  # 2026-01-01T00:00:00Z, used by the timestamp flags
CLOCKS: Final = (LAUNCH - 3_600, LAUNCH + 3_600)
DEFAULTS: Final[Mapping[FlagType, Any]] = {
    FlagType.BOOLEAN: False,
    FlagType.STRING: "caller-default",
    FlagType.INTEGER: -1,
    FlagType.FLOAT: -1.5,
    FlagType.OBJECT: {"caller": "default"},
}


# -- deliberate divergences -------------------------------------------------------------


@dataclass(frozen=True)
class Divergence:
    """A case where flagwire deliberately does not follow the reference."""

    reference: str  # what the reference does
    flagwire: str  # what flagwire does instead (checked by test_divergence_*)
    reason: str  # why the owner decided so
    excluded: str  # how the comparisons below step around it


# The complete list. Anything else that differs from the reference is a bug.
DIVERGENCES: Final[Mapping[str, Divergence]] = {
    "float-getter-on-bool": Divergence(
        reference="the float getter on a flag whose resolved value is a bool returns 1.0 or"
        " 0.0 with the variant and reason: its type check is isinstance(value, (int, float)),"
        " which True passes, and resolve_float_value then converts it with float()",
        flagwire="reason ERROR, error_code TYPE_MISMATCH, variant None and the caller's"
        " default (as a float if it is an int, like every float-getter default)",
        reason="a bool is not a number: flagd's Go daemon and the OpenFeature spec report"
        " TYPE_MISMATCH with the caller's default",
        excluded="_float_getter_on_bool: where the reference resolved a variant whose value"
        " is a bool with the float getter, flagwire must give the outcome above and, with the"
        " boolean getter, the reference's variant, reason and value",
    ),
    "whole-data-identity": Divergence(
        reference='{"==": [{"var": ""}, {"var": ""}]} is true: a var whose key is null, ""'
        ' or "$flagd" (literal or computed) returns the very data object it was given,'
        " and JsonLogic == / != on objects compare identity",
        flagwire="each such var builds its own view of the data (flagwire does not copy the"
        " context up front), so == gives false and != gives true; the rule evaluates without"
        " error",
        reason="no realistic rule compares the whole context with itself, and copying every"
        " context on the hot path to keep that identity would cost every evaluation",
        excluded="_compares_whole_data: the random rules never compare (==, !=, ===, !==)"
        " two vars that may read the whole data",
    ),
    "escaped-evaluator-json": Divergence(
        reference="an evaluator whose JSON has a backslash escape (json.dumps writes"
        ' "Österreich" as "\\u00d6sterreich") cannot be loaded: set_flags substitutes'
        " $ref with re.sub and the JSON as the replacement, and raises re.error"
        " ('bad escape \\u')",
        flagwire="loads the document and evaluates the rule normally",
        reason="evaluators with non-ASCII text (market names, locales) are ordinary; $ref is"
        " a structural substitution in flagd's Go daemon",
        excluded="_reference_for_escaped_evaluators: such a fixture is compared against the"
        " reference on the same document with the evaluators inlined structurally",
    ),
    # The four below follow flagd's Go daemon where the SDK cores differ (issue 12).
    "fractional-daemon": Divergence(
        reference="a fractional weight that is a float (50.0, or 10.0 read from the context)"
        ' is invalid and fractional gives null; a null bucketing value ({"var": "email"}'
        " with no email) is taken as a bucket, so fractional gives null; a non-string"
        " targeting key makes flagKey + targetingKey raise TypeError (GENERAL)",
        flagwire="an integral float weight is that integer; a null bucketing value is skipped"
        " and the targeting key used instead (v2); a non-string targeting key gives the"
        " default variant (reason DEFAULT, no error)",
        reason="flagd's Go evaluator (core/pkg/evaluator/fractional.go) does each of these,"
        " and its unit tests check the first two",
        excluded="reference_daemon.daemon_fractional: the reference's fractional runs on the"
        " arguments as the daemon reads them (whole float weights as ints, a leading null"
        " dropped) and gives null for a non-string targeting key",
    ),
    "null-string-ordering": Divergence(
        reference='<, <=, > and >= between null and a string compare "null" with the string'
        ' as text, so {"<": [null, "x"]} is true',
        flagwire="they compare as JavaScript numbers (null is 0, the string Number(s), so a"
        ' non-numeric string gives false and "" is 0)',
        reason="flagd's Go jsonlogic, flagd's JavaScript core and json-logic-js agree",
        excluded="reference_daemon._daemon_ordering: a null and a string side by side are"
        " given to the reference's operation as those numbers",
    ),
    "cat-booleans": Divergence(
        reference='cat writes a boolean as Python does: "True" / "False"',
        flagwire='"true" / "false", as JavaScript and the daemon',
        reason="a cat result is usually compared with a literal written by someone who reads JSON",
        excluded="reference_daemon.daemon_cat: boolean arguments are given as those strings",
    ),
    "flags-array": Divergence(
        reference='a document whose "flags" is an array of flag objects (each with a "key")'
        " cannot be loaded",
        flagwire="loads it, as flagd does since its PR #1797 (a key defined twice is an error)",
        reason="flagd accepts the form, and files written for it must load",
        excluded="none needed: no fixture or random document uses the array form",
    ),
}


# -- running both evaluators ------------------------------------------------------------


def _typed(value: Any) -> Any:
    """A comparison key that tells ``1``, ``1.0`` and ``True`` apart (and NaN == NaN)."""
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return (type(value).__name__, value)
    if isinstance(value, float):
        return ("float", "nan" if math.isnan(value) else value)
    if isinstance(value, list | tuple):
        return ("list", tuple(_typed(v) for v in value))
    if isinstance(value, Mapping):
        return ("dict", tuple(sorted((str(k), _typed(v)) for k, v in value.items())))
    return (type(value).__name__, repr(value))


@dataclass(frozen=True)
class Outcome:
    """What one evaluator said; ``detail`` (an error message) is not compared."""

    value: Any = field(compare=False)
    variant: str | None
    reason: str
    error_code: str | None
    detail: str | None = field(default=None, compare=False)
    typed_value: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "typed_value", _typed(self.value))

    def same(self, other: Outcome) -> bool:
        """Value (with its type), variant, reason and error code all equal."""
        return self == other and self.typed_value == other.typed_value

    def show(self) -> str:
        text = f"value={self.value!r} variant={self.variant!r} reason={self.reason}"
        if self.error_code is not None:
            text += f" error_code={self.error_code}"
        if self.detail:
            text += f" ({self.detail})"
        return text


@dataclass(frozen=True)
class Pair:
    """One document loaded by both evaluators, and the document itself."""

    flags: FlagSet
    core: FlagdCore
    document: Mapping[str, Any]

    def variants(self, key: str) -> Mapping[str, Any]:
        """The flag's variants as written in the document (empty if there is no flag)."""
        flag = self.document.get("flags", {}).get(key)
        variants = flag.get("variants") if isinstance(flag, dict) else None
        return variants if isinstance(variants, dict) else {}


@contextmanager
def _frozen_clock(now: int) -> Iterator[None]:
    with mock.patch("time.time", return_value=float(now)):
        yield


def _flagwire(
    flags: FlagSet, key: str, context: Mapping[str, Any], flag_type: FlagType, default: Any
) -> Outcome:
    a = flags.evaluate(key, context, default, flag_type=flag_type)
    # The per-request path (generated deciders, memo, fit) must agree exactly.
    assert RequestFlags(flags, context).details(key, default, flag_type) == a
    return Outcome(
        a.value,
        a.variant,
        a.reason.value,
        None if a.error_code is None else a.error_code.value,
        a.error_message,
    )


def _reference(
    core: FlagdCore,
    key: str,
    context: Mapping[str, Any],
    flag_type: FlagType,
    default: Any,
    *,
    daemon: bool = True,
) -> Outcome:
    """The reference's outcome; with ``daemon`` (the default) under
    :func:`reference_daemon.daemon_semantics`, which steps around the daemon divergences."""
    attributes = dict(context)
    targeting_key = attributes.pop("targetingKey", None)
    ctx = EvaluationContext(targeting_key, attributes)
    resolve = getattr(core, f"resolve_{flag_type.value}_value")
    try:
        if daemon:
            with daemon_semantics():
                details = resolve(key, default, ctx)
        else:
            details = resolve(key, default, ctx)
    except OpenFeatureError as exc:
        return Outcome(default, None, "ERROR", exc.error_code.value, exc.error_message)
    except Exception as exc:  # any other exception: the provider reports GENERAL
        return Outcome(default, None, "ERROR", "GENERAL", f"{type(exc).__name__}: {exc}")
    reason = getattr(details.reason, "value", details.reason)
    return Outcome(details.value, details.variant, str(reason), None)


def _float_default(default: Any) -> Any:
    """The caller's default as the float getter returns it (both sides convert an int)."""
    return float(default) if type(default) is int else default


def _float_getter_on_bool(pair: Pair, key: str, flag_type: FlagType, theirs: Outcome) -> bool:
    """Whether ``DIVERGENCES["float-getter-on-bool"]`` applies: the float getter, and the
    reference resolved (without error) a variant whose value in the document is a bool."""
    return (
        flag_type is FlagType.FLOAT
        and theirs.error_code is None
        and theirs.variant is not None
        and type(pair.variants(key).get(theirs.variant)) is bool
    )


def _check_float_getter_on_bool(
    pair: Pair, key: str, context: Mapping[str, Any], default: Any, theirs: Outcome
) -> str | None:
    """``DIVERGENCES["float-getter-on-bool"]``: flagwire's own outcome instead of the
    reference's, and the reference's variant, reason and value through the boolean getter
    (so that a different choice of variant is not hidden)."""
    problems = []
    ours = _flagwire(pair.flags, key, context, FlagType.FLOAT, default)
    expected = Outcome(_float_default(default), None, "ERROR", "TYPE_MISMATCH")
    if not ours.same(expected):
        problems.append(f"float getter: {ours.show()}, not {expected.show()}")
    as_bool = _flagwire(pair.flags, key, context, FlagType.BOOLEAN, False)
    value = float(as_bool.value) if type(as_bool.value) is bool else as_bool.value
    resolved = Outcome(value, as_bool.variant, as_bool.reason, as_bool.error_code)
    if not resolved.same(theirs):
        problems.append(
            f"boolean getter: {as_bool.show()}, but the reference resolved {theirs.show()}"
        )
    if not problems:
        return None
    return "(divergence 'float-getter-on-bool') flagwire gave " + "; ".join(problems)


def _compare(
    pair: Pair,
    key: str,
    context: Mapping[str, Any],
    flag_type: FlagType,
    default: Any,
    clock: int,
) -> str | None:
    """A description of the mismatch, or ``None`` when both agree.

    Call it under ``_frozen_clock(clock)``: patching once per batch keeps the run fast.
    """
    theirs = _reference(pair.core, key, context, flag_type, default)
    where = (
        f"flag {key!r} {flag_type.value} getter, context {json.dumps(context, ensure_ascii=False)}"
        f" at t={clock}"
    )
    if _float_getter_on_bool(pair, key, flag_type, theirs):
        problem = _check_float_getter_on_bool(pair, key, context, default, theirs)
        return None if problem is None else f"{where}:\n    {problem}"
    ours = _flagwire(pair.flags, key, context, flag_type, default)
    if ours.same(theirs):
        return None
    return f"{where}:\n    flagwire:  {ours.show()}\n    reference: {theirs.show()}"


def _mismatches(
    pair: Pair,
    key: str,
    contexts: Sequence[Mapping[str, Any]],
    flag_types: Sequence[FlagType],
    clocks: Sequence[int] = (LAUNCH,),
    default: Any = ...,
) -> list[str]:
    """Compare every (clock, context, getter); ``default`` overrides the getter's own."""
    problems = []
    for clock in clocks:
        with _frozen_clock(clock):
            for context in contexts:
                for flag_type in flag_types:
                    value = DEFAULTS[flag_type] if default is ... else default
                    problem = _compare(pair, key, context, flag_type, value, clock)
                    if problem is not None:
                        problems.append(problem)
    return problems


def _report(mismatches: Sequence[str], limit: int = 12) -> str:
    shown = "\n".join(mismatches[:limit])
    more = len(mismatches) - limit
    return f"{len(mismatches)} mismatch(es):\n{shown}" + (
        f"\n... and {more} more" if more > 0 else ""
    )


@pytest.fixture(autouse=True)
def _quiet_reference() -> Iterator[None]:
    """The reference logs a traceback for every unparsable version; keep the run fast."""
    logger = logging.getLogger("openfeature.contrib")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    yield
    logger.setLevel(level)


# -- part (a): realistic documents ------------------------------------------------------

_VERSIONS: Final = (
    "5.2.1",
    "5.2.0",
    "5.3.0",
    "v5.3.0-beta.2",
    "5.0.0-rc.2",
    "4.1.7",
    "4.0.0",
    "3.9",
    "5",
    "5.2.0+build.7",
    "6.0.0-alpha",
    "not-a-version",
    "05.2.0",
)
_TIERS: Final = ("free", "silver", "gold", "platinum")
_COUNTRIES: Final = ("DE", "US", "FR", "JP", "AT", "CH", "BR", "NL")
_PLATFORMS: Final = ("ios", "android", "web")
_LOCALES: Final = ("de-DE", "en-US", "fr-FR", "ja-JP", "ko-KR", "en-GB", "de-AT")
_NETWORKS: Final = ("wifi", "5g", "offline", "fiber", "3g")


def _user(i: int) -> dict[str, Any]:
    """A synthetic but plausible user; many of them make fractional buckets vary."""
    roles = [["viewer"], ["admin"], ["beta", "viewer"], ["trial"], []][i % 5]
    ctx: dict[str, Any] = {
        "targetingKey": f"user-{i:04d}",
        "email": f"user{i}@{'example.com' if i % 9 == 0 else 'mail.test'}",
        "tier": _TIERS[i % 4],
        "country": _COUNTRIES[i % len(_COUNTRIES)],
        "platform": _PLATFORMS[i % 3],
        "appVersion": _VERSIONS[i % len(_VERSIONS)],
        "locale": _LOCALES[i % len(_LOCALES)],
        "age": 14 + (i * 7) % 60,
        "orders": (i * 3) % 25,
        "network": _NETWORKS[i % len(_NETWORKS)],
        "user": {
            "id": f"u-{1000 + i}",
            "roles": roles,
            "orgs": [f"org-{i % 7}"] if i % 4 else [],
            "channels": ["email", "push"] if i % 2 else ["email"],
            "optIn": i % 3 != 0,
        },
        "cart": {
            "items": [
                {"sku": f"S{j}", "price": 10 + ((i + j) * 17) % 90, "qty": 1 + j % 3}
                for j in range(i % 4)
            ],
            "total": (i * 13) % 150,
        },
        "rolloutPct": (i * 11) % 101,
    }
    if i % 6:
        ctx["deviceId"] = f"dev-{i}"
    if i % 5 == 0:
        ctx["installId"] = f"inst-{i}"
    if i % 3 == 0:
        ctx["screen"] = {"dpi": [160, 240, 320, 480][i % 4]}
    return ctx


PERSONAS: Final[tuple[dict[str, Any], ...]] = (
    {},
    {"targetingKey": "user-1"},
    {
        "targetingKey": "alice@example.com",
        "email": "alice@example.com",
        "tier": "gold",
        "country": "DE",
        "platform": "ios",
        "appVersion": "5.2.1",
        "osVersion": "17.2",
        "locale": "de-DE",
        "age": 34,
        "orders": 15,
        "network": "wifi",
        "market": "Deutschland",
        "rolloutPct": 30,
        "accountId": 1001,
        "status": "active",
        "deviceId": "d-1",
        "installId": "i-1",
        "screen": {"dpi": 460},
        "user": {
            "id": "u-1001",
            "roles": ["admin", "beta"],
            "orgs": ["acme", "globex"],
            "channels": ["email"],
            "extraChannels": ["sms"],
            "optIn": True,
        },
        "cart": {
            "items": [{"sku": "A", "price": 60, "qty": 1}, {"sku": "B", "price": 75, "qty": 2}],
            "total": 210,
        },
    },
    {
        "targetingKey": "qa-bot-7",
        "platform": "android",
        "appVersion": "5.3.0",
        "locale": "ko-KR",
        "network": "5g",
        "user": {"id": "qa-7", "roles": ["tester"]},
    },
    {
        "targetingKey": "bob",
        "tier": "platinum",
        "country": "US",
        "state": "TX",
        "age": 21,
        "accountId": 1001,
        "status": "suspended",
        "optedOut": False,
        "user": {"id": 42, "roles": "admin"},
    },
    {
        "targetingKey": "carol",
        "country": "US",
        "state": "CA",
        "age": 17,
        "parentalConsent": "yes",
        "isTablet": True,
    },
    # Missing attributes: only a key and an email.
    {"targetingKey": "dave", "email": "dave@mail.test"},
    # Wrong types everywhere.
    {
        "targetingKey": "erin",
        "age": "42",
        "orders": "15",
        "appVersion": 5.2,
        "osVersion": 13,
        "country": ["DE"],
        "tier": None,
        "email": None,
        "locale": 7,
        "user": "u-2",
        "cart": {"items": "none", "total": "99.5"},
        "screen": {"dpi": "400"},
        "rolloutPct": "50",
        "accountId": "1001",
        "network": True,
        "platform": {"name": "ios"},
    },
    # Numbers of the other kind, booleans as numbers.
    {
        "targetingKey": "frank",
        "age": 65.0,
        "orders": 20.0,
        "accountId": 1001.0,
        "rolloutPct": 100,
        "cart": {"items": [{"price": 20.5, "qty": 2.0}, {"price": True, "qty": 1}], "total": 1e3},
        "screen": {"dpi": 199.99},
        "optedOut": 0,
    },
    # Empty strings.
    {
        "targetingKey": "",
        "email": "",
        "tier": "",
        "country": "",
        "locale": "",
        "appVersion": "",
        "platform": "",
        "market": "",
        "user": {"id": "", "roles": [""], "orgs": [""]},
        "deviceId": "",
        "installId": "",
    },
    # Unicode.
    {
        "targetingKey": "jürgen-müller",
        "email": "jürgen@münchen.example.com",
        "locale": "日本語-JP",
        "market": "Österreich",
        "country": "AT",
        "appVersion": "\uff15.2.0",  # fullwidth digit five
        "osVersion": "١٣.0.0",  # Arabic-Indic digits
        "user": {"id": "用户-42", "roles": ["βeta"]},
    },
    {"targetingKey": "🚀-launch", "email": "rocket@example.com", "tier": "gold", "age": 30},
    # Edge values for computed weights and arithmetic.
    {"targetingKey": "gina", "rolloutPct": 150, "orders": 0, "age": -1},
    {"targetingKey": "hank", "rolloutPct": -10, "orders": 5, "age": 18},
    {"targetingKey": "ivy", "rolloutPct": 12.5, "orders": 1e16},
    # An attempt to spoof flagd's own context values.
    {"targetingKey": "mallory", "$flagd": {"flagKey": "spoofed", "timestamp": 0}},
    # A targeting key that is not a string.
    {"targetingKey": 12345, "email": "numeric@example.com"},
    *(_user(i) for i in range(48)),
)


def _documents() -> list[Path]:
    return sorted(FIXTURES.glob("*.flagd.json"))


@dataclass(frozen=True)
class Loaded:
    """One document as loaded by both; a ``None`` side failed, and ``problem`` says how."""

    document: Mapping[str, Any]
    flags: FlagSet | None
    core: FlagdCore | None
    problem: str
    reference_error: Exception | None = None

    def both(self) -> Pair:
        """Both views, failing the test if only one side could load the document."""
        if self.flags is None or self.core is None:
            pytest.fail(self.problem)
        return Pair(self.flags, self.core, self.document)


def _load_document(text: str, *, path: Path | None = None) -> Loaded:
    """Load one JSON document into flagwire (``from_path`` if given) and the reference."""
    flags: FlagSet | None = None
    problems = []
    try:
        flags = FlagSet.from_path(path) if path is not None else FlagSet.from_text(text)
    except Exception as exc:
        problems.append(f"flagwire cannot load the document: {type(exc).__name__}: {exc}")
    reference = FlagdCore()
    core: FlagdCore | None = reference
    reference_error: Exception | None = None
    try:
        reference.set_flags(text)
    except Exception as exc:
        core = None
        reference_error = exc
        problems.append(f"the reference cannot load the document: {type(exc).__name__}: {exc}")
    if len(problems) == 1:
        problems.append("the other side loads it")
    return Loaded(json.loads(text), flags, core, "; ".join(problems), reference_error)


def _has_escaped_evaluator(document: Mapping[str, Any]) -> bool:
    """Whether an evaluator's JSON, as the reference writes it, has a backslash escape."""
    evaluators = document.get("$evaluators")
    return isinstance(evaluators, dict) and any(
        "\\" in json.dumps(rule) for rule in evaluators.values()
    )


def _inline_evaluators(document: Mapping[str, Any]) -> dict[str, Any]:
    """The document with every ``{"$ref": name}`` in its flags replaced by the evaluator.

    As the reference does it (one evaluator at a time, in document order, only inside
    ``flags``), but on the parsed structure instead of the JSON text.
    """

    def substitute(node: Any, name: str, rule: Any) -> Any:
        if isinstance(node, dict):
            if node == {"$ref": name}:
                return copy.deepcopy(rule)
            return {k: substitute(v, name, rule) for k, v in node.items()}
        if isinstance(node, list):
            return [substitute(v, name, rule) for v in node]
        return node

    flags = document.get("flags", {})
    for name, rule in document.get("$evaluators", {}).items():
        flags = substitute(flags, name, rule)
    inlined = {k: v for k, v in document.items() if k != "$evaluators"}
    inlined["flags"] = flags
    return inlined


def _reference_for_escaped_evaluators(loaded: Loaded) -> Loaded:
    """``DIVERGENCES["escaped-evaluator-json"]``: a document the reference cannot load only
    because an evaluator's JSON has a backslash escape is compared against the reference
    on the same document with the evaluators inlined. Any other document, or any other
    load failure, is returned as it is (and fails the tests that need it)."""
    if not (
        loaded.flags is not None
        and isinstance(loaded.reference_error, re.error)
        and _has_escaped_evaluator(loaded.document)
    ):
        return loaded
    inlined = _inline_evaluators(loaded.document)
    core = FlagdCore()
    try:
        core.set_flags(json.dumps(inlined))
    except Exception as exc:
        problem = (
            f"{loaded.problem}; with its evaluators inlined (divergence"
            f" 'escaped-evaluator-json') it still fails: {type(exc).__name__}: {exc}"
        )
        return Loaded(loaded.document, loaded.flags, None, problem, exc)
    return Loaded(loaded.document, loaded.flags, core, "")


@functools.cache
def _load(path: Path) -> Loaded:
    loaded = _load_document(path.read_text(encoding="utf-8"), path=path)
    return _reference_for_escaped_evaluators(loaded)


def _flag_cases() -> list[Any]:
    cases: list[Any] = []
    for path in _documents():
        doc = json.loads(path.read_text(encoding="utf-8"))
        name = path.name.removesuffix(".flagd.json")
        cases.extend(
            pytest.param(path, key, flag_type, id=f"{name}:{key}:{flag_type.value}")
            for key in doc["flags"]
            for flag_type in FlagType
        )
    return cases


def test_fixture_documents_are_there() -> None:
    assert len(_documents()) >= 4
    assert len(_flag_cases()) >= 40 * len(FlagType)
    assert len(PERSONAS) >= 60


@pytest.mark.parametrize(("path", "key", "flag_type"), _flag_cases())
def test_realistic_flag_matches_reference(path: Path, key: str, flag_type: FlagType) -> None:
    pair = _load(path).both()
    mismatches = _mismatches(pair, key, PERSONAS, [flag_type], CLOCKS)
    assert not mismatches, _report(mismatches)


@pytest.mark.parametrize("path", _documents(), ids=lambda p: p.name)
def test_unknown_flag_matches_reference(path: Path) -> None:
    pair = _load(path).both()
    mismatches = _mismatches(pair, "no-such-flag", [PERSONAS[2]], list(FlagType))
    assert not mismatches, _report(mismatches)


def test_float_getter_with_an_integer_default_matches_reference() -> None:
    """``resolve_float_value(key, 3, ...)``: the caller's default comes back as a float."""
    pair = _load(FIXTURES / "experiments.flagd.json").both()
    mismatches = [
        problem
        for key in ("static-no-default", "no-default-ab", "no-such-flag")
        for problem in _mismatches(pair, key, [{}], [FlagType.FLOAT], default=3)
    ]
    legacy = _load(FIXTURES / "checkout-service.flagd.json").both()
    mismatches += _mismatches(legacy, "legacy-cart", [{}], [FlagType.FLOAT], default=3)
    assert not mismatches, _report(mismatches)


@dataclass(frozen=True)
class Corner:
    """A minimal rule on which flagwire and the reference have disagreed."""

    targeting: Any
    context: Mapping[str, Any] = field(default_factory=dict)
    variants: Mapping[str, Any] = field(default_factory=lambda: {"on": True, "off": False})
    default_variant: str | None = "off"
    evaluators: Mapping[str, Any] = field(default_factory=dict)
    flag_type: FlagType = FlagType.BOOLEAN
    default: Any = False

    def document(self) -> dict[str, Any]:
        flag: dict[str, Any] = {"state": "ENABLED", "variants": dict(self.variants)}
        if self.default_variant is not None:
            flag["defaultVariant"] = self.default_variant
        if self.targeting is not None:
            flag["targeting"] = self.targeting
        return {"$evaluators": dict(self.evaluators), "flags": {"corner": flag}}


# Minimal repros of the disagreements found by the tests above and below, kept as
# explicit cases so that they are checked on every run, not only when hypothesis happens
# to draw them. The comment on each says what the reference does. The deliberate
# divergences are not here but in DIVERGENT_CASES.
CORNER_CASES: Final[Mapping[str, Corner]] = {
    # resolve_float_value converts any int result to float, the caller's default too.
    "float-getter-int-default": Corner(
        {"if": [False, "on", None]}, default_variant=None, flag_type=FlagType.FLOAT, default=3
    ),
    # op_var(data, key, default) takes no third argument: TypeError (GENERAL).
    "var-extra-argument": Corner(
        {"if": [{"var": ["tier", "x", "y"]}, "on", "off"]}, {"tier": "gold"}
    ),
    # JsonLogic evaluates every argument first, so a failing default fails the rule.
    "var-default-evaluated-eagerly": Corner(
        {"if": [{"var": ["tier", {"/": [1, 0]}]}, "on", "off"]}, {"tier": "gold"}
    ),
    "var-default-unknown-operation": Corner(
        {"if": [{"var": ["tier", {"no_such_op": []}]}, "on", "off"]}, {"tier": "gold"}
    ),
    # {"var": []} is the whole data (truthy here).
    "var-without-arguments": Corner({"if": [{"var": []}, "on", "off"]}),
    # With a string bucketing value the reference never reads the data (here: an item).
    "fractional-inside-iteration": Corner(
        {
            "if": [
                {"some": [["u1", "u2"], {"fractional": [{"var": ""}, ["on", 1], ["off", 1]]}]},
                "on",
                "off",
            ]
        }
    ),
    # $ref is textual substitution in flagd: a list evaluator becomes the argument list...
    "ref-list-as-argument-list": Corner(
        {"if": [{"var": {"$ref": "attribute-or-fallback"}}, "on", "off"]},
        evaluators={"attribute-or-fallback": ["tier", "fallback"]},
    ),
    # ... or the whole targeting, which must be an object: PARSE_ERROR.
    "ref-list-as-targeting": Corner({"$ref": "tiers"}, evaluators={"tiers": ["gold", "platinum"]}),
    # ... and each substitution is a new list, so == (identity on lists) is false.
    "ref-list-identity": Corner(
        {"if": [{"==": [{"$ref": "tiers"}, {"$ref": "tiers"}]}, "on", "off"]},
        evaluators={"tiers": ["gold", "platinum"]},
    ),
    # Evaluators are substituted one at a time in document order: a reference to an
    # earlier evaluator from a later one is left as {"$ref": ...}: PARSE_ERROR.
    "ref-nested-in-document-order": Corner(
        {"if": [{"$ref": "gold-adult"}, "on", "off"]},
        {"tier": "gold", "age": 30},
        evaluators={
            "is-gold": {"==": [{"var": "tier"}, "gold"]},
            "gold-adult": {"and": [{"$ref": "is-gold"}, {">=": [{"var": "age"}, 18]}]},
        },
    ),
    # "var.x" is looked up as operations["var"]["x"]: TypeError (GENERAL), not PARSE_ERROR.
    "dotted-operation-name": Corner({"if": [{"var.x": [1]}, "on", "off"]}),
    # A variant whose value is null: "Resolved variant ... not in variants config" (GENERAL).
    "null-variant-value": Corner(
        {"if": [True, "unset", "set"]},
        variants={"unset": None, "set": "value"},
        default_variant="set",
        flag_type=FlagType.STRING,
        default="caller-default",
    ),
    # A variant named "": the reference treats the empty name as no variant (GENERAL).
    "empty-variant-name": Corner(
        {"if": [True, "", "named"]},
        variants={"": "empty", "named": "named"},
        default_variant="named",
        flag_type=FlagType.STRING,
        default="caller-default",
    ),
}


@pytest.mark.parametrize("case", list(CORNER_CASES.values()), ids=list(CORNER_CASES))
def test_corner_case_matches_reference(case: Corner) -> None:
    pair = _load_document(json.dumps(case.document())).both()
    mismatches = _mismatches(pair, "corner", [case.context], [case.flag_type], default=case.default)
    assert not mismatches, f"targeting {json.dumps(case.targeting)}\n" + _report(mismatches)


# -- the deliberate divergences ---------------------------------------------------------


@dataclass(frozen=True)
class Divergent:
    """One repro of a divergence: what flagwire gives (its documented behaviour) and what
    the reference gives (an outcome, or the text of its error when it cannot load)."""

    divergence: str  # a key of DIVERGENCES
    document: Mapping[str, Any]
    flagwire: Outcome
    reference: Outcome | str
    key: str = "corner"
    context: Mapping[str, Any] = field(default_factory=dict)
    flag_type: FlagType = FlagType.BOOLEAN
    default: Any = False


def _unicode_fixture() -> dict[str, Any]:
    text = (FIXTURES / "unicode-evaluators.flagd.json").read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


_DACH: Final = {"dach": {"in": [{"var": "market"}, ["Deutschland", "Österreich"]]}}
_WHOLE_DATA_NOT_EQUAL: Final = Outcome(True, "on", "TARGETING_MATCH", None)
_WHOLE_DATA_EQUAL: Final = Outcome(False, "off", "TARGETING_MATCH", None)

DIVERGENT_CASES: Final[Mapping[str, Divergent]] = {
    # -- float-getter-on-bool: TYPE_MISMATCH and the caller's default.
    "float-getter-on-bool:static": Divergent(
        "float-getter-on-bool",
        Corner(None, default_variant="on").document(),
        Outcome(0.5, None, "ERROR", "TYPE_MISMATCH"),
        Outcome(1.0, "on", "STATIC", None),
        flag_type=FlagType.FLOAT,
        default=0.5,
    ),
    "float-getter-on-bool:targeting-match": Divergent(
        "float-getter-on-bool",
        Corner({"if": [{">=": [{"var": "age"}, 18]}, "on", "off"]}).document(),
        Outcome(-1.5, None, "ERROR", "TYPE_MISMATCH"),
        Outcome(0.0, "off", "TARGETING_MATCH", None),
        context={"age": 17},
        flag_type=FlagType.FLOAT,
        default=-1.5,
    ),
    "float-getter-on-bool:default-variant": Divergent(
        "float-getter-on-bool",
        Corner({"if": [False, "on", None]}).document(),
        Outcome(-1.5, None, "ERROR", "TYPE_MISMATCH"),
        Outcome(0.0, "off", "DEFAULT", None),
        flag_type=FlagType.FLOAT,
        default=-1.5,
    ),
    "float-getter-on-bool:integer-default": Divergent(
        "float-getter-on-bool",
        Corner(None, default_variant="on").document(),
        Outcome(3.0, None, "ERROR", "TYPE_MISMATCH"),  # the float getter's int default
        Outcome(1.0, "on", "STATIC", None),
        flag_type=FlagType.FLOAT,
        default=3,
    ),
    # -- whole-data-identity: two reads of the whole data are not the same object.
    "whole-data-identity:empty-key": Divergent(
        "whole-data-identity",
        Corner({"if": [{"==": [{"var": ""}, {"var": ""}]}, "on", "off"]}).document(),
        _WHOLE_DATA_EQUAL,
        _WHOLE_DATA_NOT_EQUAL,
    ),
    "whole-data-identity:flagd": Divergent(
        "whole-data-identity",
        Corner({"if": [{"==": [{"var": "$flagd"}, {"var": "$flagd"}]}, "on", "off"]}).document(),
        _WHOLE_DATA_EQUAL,
        _WHOLE_DATA_NOT_EQUAL,
    ),
    "whole-data-identity:computed-null-key": Divergent(
        "whole-data-identity",
        Corner(
            {"if": [{"==": [{"var": {"if": []}}, {"var": {"if": []}}]}, "on", "off"]}
        ).document(),
        _WHOLE_DATA_EQUAL,
        _WHOLE_DATA_NOT_EQUAL,
        context={"tier": "gold"},
    ),
    "whole-data-identity:not-equal": Divergent(
        "whole-data-identity",
        Corner({"if": [{"!=": [{"var": []}, {"var": ""}]}, "on", "off"]}).document(),
        Outcome(True, "on", "TARGETING_MATCH", None),
        Outcome(False, "off", "TARGETING_MATCH", None),
        context={"tier": "gold"},
    ),
    # -- fractional-daemon: as flagd's Go evaluator.
    "fractional-daemon:float-weight": Divergent(
        "fractional-daemon",
        Corner({"fractional": [["on", 50.0], ["off", 0]]}).document(),
        Outcome(True, "on", "TARGETING_MATCH", None),
        Outcome(False, "off", "DEFAULT", None),
        context={"targetingKey": "u1"},
    ),
    "fractional-daemon:float-weight-from-context": Divergent(
        "fractional-daemon",
        Corner({"fractional": ["fixed", ["on", {"var": "w"}], ["off", 0]]}).document(),
        Outcome(True, "on", "TARGETING_MATCH", None),
        Outcome(False, "off", "DEFAULT", None),
        context={"w": 10.0},
    ),
    "fractional-daemon:null-bucketing-value": Divergent(
        "fractional-daemon",
        {
            "flags": {
                "headerColor": Corner(
                    {"fractional": [{"var": "email"}, ["off", 50], ["on", 50]]}
                ).document()["flags"]["corner"]
            }
        },
        Outcome(True, "on", "TARGETING_MATCH", None),  # Go's "missing email" test: 2nd half
        Outcome(False, "off", "DEFAULT", None),
        key="headerColor",
        context={"targetingKey": "foo@foo.com"},
    ),
    "fractional-daemon:non-string-targeting-key": Divergent(
        "fractional-daemon",
        Corner({"fractional": [["on", 50], ["off", 50]]}).document(),
        Outcome(False, "off", "DEFAULT", None),
        Outcome(False, None, "ERROR", "GENERAL"),
        context={"targetingKey": 42},
    ),
    # -- null-string-ordering
    "null-string-ordering:less": Divergent(
        "null-string-ordering",
        Corner({"if": [{"<": [{"var": "missing"}, "x"]}, "on", "off"]}).document(),
        Outcome(False, "off", "TARGETING_MATCH", None),
        Outcome(True, "on", "TARGETING_MATCH", None),
    ),
    "null-string-ordering:greater-equal": Divergent(
        "null-string-ordering",
        Corner({"if": [{">=": ["x", {"var": "missing"}]}, "on", "off"]}).document(),
        Outcome(False, "off", "TARGETING_MATCH", None),
        Outcome(True, "on", "TARGETING_MATCH", None),
    ),
    # -- cat-booleans
    "cat-booleans": Divergent(
        "cat-booleans",
        Corner(
            {"if": [{"==": [{"cat": ["beta:", {"var": "b"}]}, "beta:true"]}, "on", "off"]}
        ).document(),
        Outcome(True, "on", "TARGETING_MATCH", None),
        Outcome(False, "off", "TARGETING_MATCH", None),
        context={"b": True},
    ),
    # -- flags-array
    "flags-array": Divergent(
        "flags-array",
        {
            "flags": [
                {
                    "key": "corner",
                    "state": "ENABLED",
                    "variants": {"on": True, "off": False},
                    "defaultVariant": "on",
                }
            ]
        },
        Outcome(True, "on", "STATIC", None),
        "must be a dictionary",
    ),
    # -- escaped-evaluator-json: flagwire loads it; values computed by hand.
    "escaped-evaluator-json:match": Divergent(
        "escaped-evaluator-json",
        Corner({"if": [{"$ref": "dach"}, "on", "off"]}, evaluators=_DACH).document(),
        Outcome(True, "on", "TARGETING_MATCH", None),
        "bad escape \\u",
        context={"market": "Österreich"},
    ),
    "escaped-evaluator-json:no-match": Divergent(
        "escaped-evaluator-json",
        Corner({"if": [{"$ref": "dach"}, "on", "off"]}, evaluators=_DACH).document(),
        Outcome(False, "off", "TARGETING_MATCH", None),
        "bad escape \\u",
        context={"market": "Frankreich"},
    ),
    "escaped-evaluator-json:fixture-austria": Divergent(
        "escaped-evaluator-json",
        _unicode_fixture(),
        Outcome(["sepa", "giropay", "twint"], "dach", "TARGETING_MATCH", None),
        "bad escape \\u",
        key="dach-payment-methods",
        context={"targetingKey": "jürgen", "market": "Österreich"},
        flag_type=FlagType.OBJECT,
        default={"caller": "default"},
    ),
    "escaped-evaluator-json:fixture-elsewhere": Divergent(
        "escaped-evaluator-json",
        _unicode_fixture(),
        Outcome(["card"], "default", "TARGETING_MATCH", None),
        "bad escape \\u",
        key="dach-payment-methods",
        context={"targetingKey": "pierre", "market": "France"},
        flag_type=FlagType.OBJECT,
        default={"caller": "default"},
    ),
}


def test_every_divergence_is_checked() -> None:
    assert {case.divergence for case in DIVERGENT_CASES.values()} == set(DIVERGENCES)


@pytest.mark.parametrize("case", list(DIVERGENT_CASES.values()), ids=list(DIVERGENT_CASES))
def test_divergence_flagwire_behaviour(case: Divergent) -> None:
    """flagwire's own, documented behaviour on each deliberate divergence."""
    divergence = DIVERGENCES[case.divergence]
    flags = FlagSet.from_text(json.dumps(case.document))
    with _frozen_clock(LAUNCH):
        ours = _flagwire(flags, case.key, case.context, case.flag_type, case.default)
    assert ours.same(case.flagwire), (
        f"{case.divergence}: flagwire should give {case.flagwire.show()}"
        f" ({divergence.flagwire}), gave {ours.show()}"
    )


@pytest.mark.parametrize("case", list(DIVERGENT_CASES.values()), ids=list(DIVERGENT_CASES))
def test_divergence_reference_behaviour(case: Divergent) -> None:
    """The reference still does what ``DIVERGENCES`` says (else the entry is stale)."""
    divergence = DIVERGENCES[case.divergence]
    loaded = _load_document(json.dumps(case.document))
    if isinstance(case.reference, str):
        assert loaded.core is None, f"{case.divergence}: the reference now loads it"
        assert case.reference in str(loaded.reference_error), loaded.problem
        return
    assert loaded.core is not None, loaded.problem
    with _frozen_clock(LAUNCH):
        theirs = _reference(
            loaded.core, case.key, case.context, case.flag_type, case.default, daemon=False
        )
    assert theirs.same(case.reference), (
        f"{case.divergence}: the reference should give {case.reference.show()}"
        f" ({divergence.reference}), gave {theirs.show()}"
    )


# -- part (b): random rules -------------------------------------------------------------

# Variant names the random rules produce; their values cover every getter's type.
VARIANTS: Final[Mapping[str, Any]] = {
    "on": True,
    "off": False,
    "true": "yes",
    "false": "no",
    "1": 1,
    "0": 0,
    "10": 10,
    "2.5": 2.5,
    "1.0": 1,
    "-1": -1.0,
    "A": "alpha",
    "B": {"b": [1, 2.5, "x"]},
    "C": ["c", 3],
    "gold": 3.75,
    "beta": {"beta": True},
}
# Ordered so that flagd's textual $ref substitution resolves the nested reference (it
# substitutes evaluators one at a time, in document order; see the mobile-app fixture
# for the order in which it does not).
EVALUATORS: Final[Mapping[str, Any]] = {
    "gold-adult": {"and": [{"$ref": "is-gold"}, {"$ref": "adult"}]},
    "is-gold": {"==": [{"var": "tier"}, "gold"]},
    "adult": {">=": [{"var": "age"}, 18]},
    "tag-count": {"var": "tags.length"},
    "vip-tiers": ["gold", "platinum"],
}
VAR_KEYS: Final = (
    "tier",
    "age",
    "version",
    "tags",
    "tags.0",
    "tags.length",
    "user",
    "user.id",
    "user.roles",
    "user.roles.1",
    "score",
    "email",
    "email.length",
    "items",
    "items.0.price",
    "targetingKey",
    "$flagd.flagKey",
    "$flagd.timestamp",
    "$flagd",
    "",
    "nope",
    "price",
    "current",
    "accumulator",
    "current.price",
)
_STRING_POOL: Final = (
    *VARIANTS,
    "gold",
    "platinum",
    "DE",
    "1.2.3",
    "v2.0.0-rc.1",
    "2",
    "",
    "42",
    "1.5",
    " 7 ",
    "abc",
    "ü",
    "admin",
    "@example.com",
    "user-",
    "true",
    "null",
)
_SEMVERS: Final = (
    "1.2.3",
    "1.2",
    "1",
    "v1.2.3",
    "V2.0.0",
    "1.2.3-alpha",
    "1.2.3-alpha.1",
    "1.2.3-alpha.beta",
    "1.2.3-1",
    "1.2.3-rc.10",
    "1.2.3+build.5",
    "1.2.3-rc.1+b",
    "2.0.0",
    "0.9.12",
    "01.2.3",
    "1.2.3.4",
    "x.y.z",
    "",
    "1.2.3-",
    "1.2.3-01",
)
_SEMVER_OPS: Final = ("=", "!=", "<", "<=", ">", ">=", "^", "~", "==", "")

_TEXT = st.text(st.characters(codec="utf-8"), max_size=6)
_STRINGS = st.one_of(st.sampled_from(_STRING_POOL), st.sampled_from(_SEMVERS), _TEXT)
_NUMBERS = st.one_of(
    st.integers(-3, 120),
    st.sampled_from([0, 1, -1, 0.5, 2.5, 18, 18.0, 65, 1e16, -0.0, 2**40]),
    st.floats(allow_nan=False, allow_infinity=False),
)
_SCALARS = st.one_of(st.none(), st.booleans(), _NUMBERS, _STRINGS)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["id", "price", "a", "b"]), inner, max_size=3),
    ),
    max_leaves=6,
)
_ITEMS = st.lists(
    st.fixed_dictionaries({}, optional={"price": _NUMBERS | _STRINGS, "id": _STRINGS}),
    max_size=3,
)
CONTEXTS = st.fixed_dictionaries(
    {},
    optional={
        # Strings only: a non-string targeting key is covered by the realistic part.
        "targetingKey": _STRINGS,
        "tier": st.sampled_from(["gold", "platinum", "free", ""]) | _SCALARS,
        "age": _NUMBERS | _SCALARS,
        "version": st.sampled_from(_SEMVERS) | _SCALARS,
        "tags": st.lists(_STRINGS, max_size=4) | _JSON,
        "user": st.fixed_dictionaries(
            {},
            optional={
                "id": _SCALARS,
                "roles": st.lists(st.sampled_from(["admin", "beta", "viewer", ""]), max_size=3),
            },
        )
        | _JSON,
        "score": _NUMBERS,
        "email": _STRINGS,
        "items": _ITEMS | _JSON,
    },
)

_LITERAL_LISTS = st.lists(_SCALARS, max_size=3)
_CONSTANTS = st.one_of(
    _SCALARS,
    st.sampled_from(list(VARIANTS)),
    _LITERAL_LISTS,
    st.just({"a": 1, "b": "x"}),  # two keys: a literal object, not an operation
)
_VARS = st.one_of(
    st.builds(lambda k: {"var": k}, st.sampled_from(VAR_KEYS)),
    st.builds(lambda k: {"var": [k]}, st.sampled_from(VAR_KEYS)),
    st.builds(lambda k, d: {"var": [k, d]}, st.sampled_from(VAR_KEYS), _CONSTANTS),
    st.builds(lambda k: {"var": k}, st.sampled_from([0, 1, 1.5, True, None])),
)
_LEAVES = st.one_of(_CONSTANTS, _VARS, st.sampled_from(list(VARIANTS)))


def _op(name: str, args: st.SearchStrategy[Any], lo: int, hi: int) -> st.SearchStrategy[Any]:
    return st.lists(args, min_size=lo, max_size=hi).map(lambda xs: {name: xs})


def _fractions(children: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    weight = st.one_of(
        st.integers(-5, 100),
        st.sampled_from([0, 2_147_483_647, 1.5, True, "10"]),
        children,
    )
    entry = st.one_of(
        st.tuples(st.sampled_from(list(VARIANTS)), weight).map(list),
        st.tuples(st.sampled_from(list(VARIANTS))).map(list),
        children,
    )
    return st.lists(entry, min_size=0, max_size=4)


def _extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    items = st.one_of(
        children,
        st.sampled_from([{"var": "tags"}, {"var": "items"}, {"var": "user.roles"}]),
        _LITERAL_LISTS,
    )
    strings = st.one_of(children, _STRINGS)
    versions = st.one_of(children, st.sampled_from(_SEMVERS))
    compare = st.sampled_from(["==", "!=", "===", "!==", "<", ">", "<=", ">="])
    arithmetic = st.sampled_from(["+", "*", "-", "/", "%", "min", "max"])
    iterate = st.sampled_from(["map", "filter", "all", "some", "none"])
    return st.one_of(
        st.tuples(compare, st.lists(children, min_size=1, max_size=3)).map(lambda t: {t[0]: t[1]}),
        st.tuples(compare, children, children).map(lambda t: {t[0]: [t[1], t[2]]}),
        st.tuples(st.sampled_from(["!", "!!"]), children).map(lambda t: {t[0]: t[1]}),
        st.tuples(st.sampled_from(["!", "!!"]), children).map(lambda t: {t[0]: [t[1]]}),
        st.tuples(arithmetic, st.lists(children, max_size=3)).map(lambda t: {t[0]: t[1]}),
        _op("cat", strings, 0, 3),
        _op("substr", children, 1, 3),
        _op("merge", children, 0, 3),
        st.tuples(children, st.one_of(items, strings)).map(lambda t: {"in": [t[0], t[1]]}),
        st.tuples(st.sampled_from(["if", "?:"]), st.lists(children, max_size=5)).map(
            lambda t: {t[0]: t[1]}
        ),
        st.tuples(st.sampled_from(["and", "or"]), st.lists(children, max_size=3)).map(
            lambda t: {t[0]: t[1]}
        ),
        st.tuples(iterate, items, children).map(lambda t: {t[0]: [t[1], t[2]]}),
        st.tuples(iterate, st.lists(children, max_size=1)).map(lambda t: {t[0]: t[1]}),
        st.tuples(items, children, _CONSTANTS).map(lambda t: {"reduce": list(t)}),
        st.tuples(items, children).map(lambda t: {"reduce": list(t)}),
        st.lists(st.sampled_from(VAR_KEYS), max_size=3).map(lambda ks: {"missing": ks}),
        st.sampled_from(VAR_KEYS).map(lambda k: {"missing": k}),
        st.tuples(
            st.integers(-1, 3) | children, st.lists(st.sampled_from(VAR_KEYS), max_size=3)
        ).map(lambda t: {"missing_some": list(t)}),
        _fractions(children).map(lambda fs: {"fractional": fs}),
        st.tuples(st.one_of(children, _STRINGS), _fractions(children)).map(
            lambda t: {"fractional": [t[0], *t[1]]}
        ),
        st.tuples(children, _fractions(children)).map(
            lambda t: {"fractional": [{"cat": [{"var": "$flagd.flagKey"}, t[0]]}, *t[1]]}
        ),
        st.tuples(versions, st.sampled_from(_SEMVER_OPS) | children, versions).map(
            lambda t: {"sem_ver": list(t)}
        ),
        _op("sem_ver", versions, 0, 4),
        st.tuples(st.sampled_from(["starts_with", "ends_with"]), strings, strings).map(
            lambda t: {t[0]: [t[1], t[2]]}
        ),
        st.tuples(st.sampled_from(["starts_with", "ends_with"]), st.lists(strings, max_size=3)).map(
            lambda t: {t[0]: t[1]}
        ),
        st.tuples(st.sampled_from(VAR_KEYS), children).map(lambda t: {"var": [t[0], t[1]]}),
        children.map(lambda key: {"var": key}),
        st.sampled_from([*EVALUATORS, "no-such-evaluator"]).map(lambda n: {"$ref": n}),
        _op("bogus_op", children, 0, 2),
    )


RULES = st.recursive(_LEAVES, _extend, max_leaves=8)
TARGETING = st.one_of(
    RULES,
    st.builds(
        lambda cond, then, other: {"if": [cond, then, other]},
        RULES,
        st.sampled_from(list(VARIANTS)),
        st.one_of(st.sampled_from(list(VARIANTS)), st.none(), RULES),
    ),
)


_IDENTITY_OPERATIONS: Final = frozenset({"==", "!=", "===", "!=="})
_WHOLE_DATA_KEYS: Final = (None, "", "$flagd")


def _may_read_whole_data(node: Any) -> bool:
    """A ``var`` whose key is null, "", "$flagd" or computed (so possibly one of those)."""
    if not (isinstance(node, dict) and len(node) == 1 and "var" in node):
        return False
    key = node["var"]
    if isinstance(key, list):
        if not key:
            return True
        key = key[0]
    return isinstance(key, dict | list) or any(key is k or key == k for k in _WHOLE_DATA_KEYS)


def _whole_data_reads(node: Any) -> int:
    """How many vars in ``node`` (at any depth) may read the whole data."""
    if isinstance(node, dict):
        own = 1 if _may_read_whole_data(node) else 0
        return own + sum(_whole_data_reads(v) for v in node.values())
    if isinstance(node, list):
        return sum(_whole_data_reads(v) for v in node)
    return 0


def _compares_whole_data(node: Any) -> bool:
    """Whether ``DIVERGENCES["whole-data-identity"]`` may apply: an ==, !=, === or !==
    whose arguments hold two or more vars that may read the whole data."""
    if isinstance(node, dict):
        return any(
            (op in _IDENTITY_OPERATIONS and _whole_data_reads(args) >= 2)
            or _compares_whole_data(args)
            for op, args in node.items()
        )
    if isinstance(node, list):
        return any(_compares_whole_data(v) for v in node)
    return False


@st.composite
def _documents_strategy(draw: st.DrawFn) -> dict[str, Any]:
    flag: dict[str, Any] = {
        "state": draw(st.sampled_from(["ENABLED", "ENABLED", "ENABLED", "ENABLED", "DISABLED"])),
        "variants": dict(VARIANTS),
        "targeting": draw(TARGETING.filter(lambda rule: not _compares_whole_data(rule))),
    }
    default = draw(st.one_of(st.none(), st.sampled_from(list(VARIANTS))))
    if default is not None:
        flag["defaultVariant"] = default
    return {"$evaluators": dict(EVALUATORS), "flags": {"random-flag": flag}}


def _check_random(
    doc: dict[str, Any], contexts: list[dict[str, Any]], flag_types: Sequence[FlagType]
) -> None:
    pair = _load_document(json.dumps(doc)).both()
    mismatches = _mismatches(pair, "random-flag", contexts, flag_types)
    assert not mismatches, (
        f"targeting {json.dumps(doc['flags']['random-flag'].get('targeting'))}\n"
        f"defaultVariant {doc['flags']['random-flag'].get('defaultVariant')!r}, "
        f"state {doc['flags']['random-flag']['state']}\n" + _report(mismatches)
    )


_PROPERTY_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@_PROPERTY_SETTINGS
@given(doc=_documents_strategy(), contexts=st.lists(CONTEXTS, min_size=1, max_size=3))
def test_random_rules_match_reference(doc: dict[str, Any], contexts: list[dict[str, Any]]) -> None:
    """Random rules, with the boolean, string, integer and object getters."""
    getters = [FlagType.BOOLEAN, FlagType.STRING, FlagType.INTEGER, FlagType.OBJECT]
    _check_random(doc, contexts, getters)


@_PROPERTY_SETTINGS
@given(doc=_documents_strategy(), contexts=st.lists(CONTEXTS, min_size=1, max_size=3))
def test_random_rules_float_getter_matches_reference(
    doc: dict[str, Any], contexts: list[dict[str, Any]]
) -> None:
    """Random rules with the float getter, apart: where the reference resolves a bool
    variant, flagwire's own outcome is checked instead (``DIVERGENCES["float-getter-on-bool"]``,
    in ``_compare``); everything else is compared exactly."""
    _check_random(doc, contexts, [FlagType.FLOAT])


_BUCKET_KEYS = st.one_of(
    st.text(st.characters(codec="utf-8"), min_size=0, max_size=12),
    st.sampled_from(["", "user-1", "user-2", "🚀", "a" * 40]),
)


@_PROPERTY_SETTINGS
@given(
    flag_key=st.sampled_from(["canary", "checkout-v2", "ü-flag", "x"]),
    weights=st.lists(st.integers(-3, 1_000), min_size=1, max_size=5),
    bucket_by=st.sampled_from(["shorthand", "email", "cat"]),
    contexts=st.lists(
        st.fixed_dictionaries(
            {}, optional={"targetingKey": _BUCKET_KEYS, "email": _BUCKET_KEYS | _SCALARS}
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_random_fractional_splits_match_reference(
    flag_key: str, weights: list[int], bucket_by: str, contexts: list[dict[str, Any]]
) -> None:
    """Buckets for many keys and weights (fractional is where byte-compatibility matters)."""
    names = ["on", "off", "A", "B", "C"]
    fractions: list[Any] = [[names[i], w] for i, w in enumerate(weights)]
    if bucket_by == "email":
        fractions.insert(0, {"var": "email"})
    elif bucket_by == "cat":
        fractions.insert(0, {"cat": [{"var": "$flagd.flagKey"}, {"var": "email"}]})
    doc = {
        "flags": {
            flag_key: {
                "state": "ENABLED",
                "variants": {name: VARIANTS[name] for name in names},
                "defaultVariant": "off",
                "targeting": {"fractional": fractions},
            }
        }
    }
    pair = _load_document(json.dumps(doc)).both()
    getters = [FlagType.BOOLEAN, FlagType.STRING]
    mismatches = _mismatches(pair, flag_key, contexts, getters)
    assert not mismatches, f"fractional {json.dumps(fractions)}\n" + _report(mismatches)


@_PROPERTY_SETTINGS
@given(
    left=st.one_of(st.sampled_from(_SEMVERS), _TEXT, _NUMBERS),
    op=st.sampled_from(_SEMVER_OPS),
    right=st.sampled_from(_SEMVERS),
    as_attribute=st.booleans(),
)
def test_random_sem_ver_matches_reference(
    left: Any, op: str, right: str, as_attribute: bool
) -> None:
    """``sem_ver`` over versions from context attributes and from the rule itself."""
    first: Any = {"var": "version"} if as_attribute else left
    doc = {
        "flags": {
            "versioned": {
                "state": "ENABLED",
                "variants": {"true": True, "false": False},
                "defaultVariant": "false",
                "targeting": {"sem_ver": [first, op, right]},
            }
        }
    }
    pair = _load_document(json.dumps(doc)).both()
    mismatches = _mismatches(
        pair, "versioned", [{"version": left}], [FlagType.BOOLEAN], default=True
    )
    assert not mismatches, f"sem_ver {json.dumps([first, op, right])}\n" + _report(mismatches)

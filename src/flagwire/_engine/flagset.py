"""A compiled, versioned flag set: :class:`FlagSet`."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import date, datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from .assignment import Assignment, ErrorCode, FlagType, Reason
from .codegen import generate_decider
from .flagd_ops import FRACTIONAL_VERSIONS
from .definitions import (
    FlagDefinition,
    FlagsetDocument,
    parse_document,
    parse_text,
    read_document,
)
from .._errors import ConfigError, FlagsetError
from .compiler import Compiled, RuleError, TraceStep, compile_rule
from .._types import Context, MetadataValue

__all__ = ["FRACTIONAL_METADATA_KEY", "FlagSet", "expiry_date", "fit"]

logger = logging.getLogger("flagwire")

FRACTIONAL_METADATA_KEY: Final = "flagwire.fractional"
"""Flag-set metadata key that selects the fractional algorithm (``"v2"`` or ``"v3"``)."""

_EMPTY_CONTEXT: Final[dict[str, Any]] = {}


# -- expiry: one warning per process per expired flag ----------------------------------

_WARNED_EXPIRED: Final[set[str]] = set()


def expiry_date(value: object) -> date | None:
    """The day of a ``metadata.expires`` value (an ISO date, or the date part of an ISO
    timestamp), or ``None`` if it is not one. A flag expires at the end of that day (UTC)."""
    if not isinstance(value, str):
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def _warn_expired(flags: Mapping[str, FlagDefinition], owner: MetadataValue | None) -> None:
    """Log each flag past its ``expires`` day, once per process per flag key."""
    today: date | None = None
    for key, definition in flags.items():
        if key in _WARNED_EXPIRED:
            continue
        day = expiry_date(definition.metadata.get("expires"))
        if day is None:
            continue
        if today is None:
            today = datetime.now(timezone.utc).date()
        if day < today:
            _WARNED_EXPIRED.add(key)
            logger.warning(
                'flag "%s" expired on %s (owner: %s); remove it or extend expires',
                key,
                day.isoformat(),
                definition.metadata.get("owner", owner) or "none",
            )


def _plain_copy(value: Any) -> Any:
    """A deep copy made of dicts and lists, from any mappings and sequences."""
    if isinstance(value, Mapping):
        return {k: _plain_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_copy(v) for v in value]
    return value


def _variant_name(value: Any) -> str:
    if type(value) is str:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_NONE_TYPE: Final = type(None)
# The expected type, as the Python type of a typical default (list and dict are "object").
_EXPECT: Final[dict[type, type]] = {
    bool: bool,
    str: str,
    int: int,
    float: float,
    dict: dict,
    list: dict,
}
_EXPECT_OF_FLAG_TYPE: Final[dict[FlagType, type]] = {
    FlagType.BOOLEAN: bool,
    FlagType.STRING: str,
    FlagType.INTEGER: int,
    FlagType.FLOAT: float,
    FlagType.OBJECT: dict,
}
# Which expected types a variant value satisfies (NoneType: nothing expected).
_SATISFIES: Final[dict[type, frozenset[type]]] = {
    bool: frozenset({bool, _NONE_TYPE}),
    str: frozenset({str, _NONE_TYPE}),
    int: frozenset({int, float, _NONE_TYPE}),
    float: frozenset({float, _NONE_TYPE}),
    dict: frozenset({dict, _NONE_TYPE}),
    list: frozenset({dict, _NONE_TYPE}),
}
# The default types for which the prebuilt result is returned as it is (no float
# conversion, no mismatch): the hot path checks only this.
_AS_IS: Final[dict[type, frozenset[type]]] = {
    bool: frozenset({bool, _NONE_TYPE}),
    str: frozenset({str, _NONE_TYPE}),
    int: frozenset({int, _NONE_TYPE}),
    float: frozenset({float, _NONE_TYPE}),
    dict: frozenset({dict, list, _NONE_TYPE}),
    list: frozenset({dict, list, _NONE_TYPE}),
}
_ONLY_NONE: Final = frozenset({_NONE_TYPE})
# By FlagType value: an Enum member's own hash is computed in Python, its value's is not.
_EXPECT_BY_VALUE: Final[dict[str, type]] = {ft.value: t for ft, t in _EXPECT_OF_FLAG_TYPE.items()}
_TYPE_NAMES: Final[dict[type, str]] = {t: ft.value for ft, t in _EXPECT_OF_FLAG_TYPE.items()}
_UNSET: Final = object()


_Match = tuple[Assignment, frozenset[type]]
"""A prebuilt result, and the default types it fits as is (the hot path's whole check)."""


class _CompiledFlag:
    """A flag ready to evaluate: prebuilt results per variant, a compiled rule."""

    __slots__ = (
        "decide",
        "default_result",
        "definition",
        "disabled",
        "key",
        "matches",
        "metadata",
        "propagated",
        "rule",
        "rule_error",
        "static_result",
        "version",
    )

    def __init__(
        self,
        definition: FlagDefinition,
        flagset_metadata: Mapping[str, MetadataValue],
        version: str,
        fractional: str,
        evaluators: Mapping[str, Any],
        problems: list[str],
    ) -> None:
        key = definition.key
        self.key = key
        self.definition = definition
        self.version = version
        self.disabled = not definition.enabled
        merged = dict(flagset_metadata)
        merged.update(definition.metadata)
        self.metadata: Mapping[str, MetadataValue] = MappingProxyType(merged)

        def result(variant: str, reason: Reason) -> _Match:
            value = definition.variants[variant]
            assignment = Assignment(key, value, variant, reason, None, None, self.metadata, version)
            return assignment, _AS_IS.get(type(value), _ONLY_NONE)

        # flagd treats a chosen variant with a null value or an empty name as an error.
        self.matches = {
            v: result(v, Reason.TARGETING_MATCH)
            for v, value in definition.variants.items()
            if v and value is not None
        }
        # An upstream decision is honoured only for an enabled flag with that variant:
        # a local kill switch (DISABLED) always wins.
        self.propagated: dict[str, Assignment] = (
            {} if self.disabled else {v: result(v, Reason.PROPAGATED)[0] for v in self.matches}
        )
        dv = definition.default_variant
        self.default_result = result(dv, Reason.DEFAULT) if dv is not None else None
        self.static_result = result(dv, Reason.STATIC) if dv is not None else None
        self.rule: Compiled | None = None
        self.rule_error: str | None = None
        self.decide: Callable[[dict[str, Any]], Assignment] = self._decide_without_rule
        if self.disabled:
            self.static_result = None  # always the slow path, which says DISABLED
            return
        targeting = definition.targeting
        if not targeting:
            return  # flagd: a falsy rule ({} or null) means a static flag
        if not isinstance(targeting, dict):
            self.rule_error = (
                f"targeting must be a JsonLogic object, not {type(targeting).__name__}"
            )
            problems.append(f'flag "{key}": {self.rule_error}')
            self.static_result = None  # the slow path gives PARSE_ERROR
            return
        rule, found = compile_rule(
            targeting, flag_key=key, fractional=fractional, evaluators=evaluators
        )
        self.rule = rule
        problems.extend(f'flag "{key}": {p}' for p in found)
        self.decide = generate_decider(
            rule, {v: m[0] for v, m in self.matches.items()}, self.resolve, self.failed, key
        )

    def error(self, default: Any, code: ErrorCode, message: str) -> Assignment:
        return Assignment(
            self.key, default, None, Reason.ERROR, code, message, self.metadata, self.version
        )

    def resolve(
        self, chosen: Any, context: Any, default: Any, flag_type: FlagType | None
    ) -> Assignment:
        """Everything off the hot path: disabled, errors, no default, type checks.

        ``chosen`` is what the rule returned, or ``_UNSET`` if there is no rule.
        """
        if flag_type is FlagType.FLOAT and type(default) is int:
            default = float(default)  # as flagd's float resolver, even for the default
        if self.disabled:
            return Assignment(
                self.key, default, None, Reason.DISABLED, None, None, self.metadata, self.version
            )
        match: _Match | None
        if chosen is _UNSET:
            if self.rule_error is not None:
                return self.error(default, ErrorCode.PARSE_ERROR, self.rule_error)
            match = self.static_result
        elif chosen is None:
            match = self.default_result
        else:
            name = _variant_name(chosen)
            match = self.matches.get(name)
            if match is None:
                variants = self.definition.variants
                why = (
                    "which has no value (null or an empty name)"
                    if name in variants
                    else f"which is not one of [{', '.join(variants)}]"
                )
                return self.error(
                    default, ErrorCode.GENERAL, f'targeting chose variant "{name}", {why}'
                )
        if match is None:  # no default variant: the caller's default
            return Assignment(
                self.key, default, None, Reason.DEFAULT, None, None, self.metadata, self.version
            )
        return fit(match[0], default, flag_type)  # the type check and float conversion

    def _decide_without_rule(self, context: dict[str, Any]) -> Assignment:
        match = self.static_result
        if match is not None:
            return match[0]
        return self.resolve(_UNSET, context, None, None)

    def failed(self, exc: Exception, default: Any) -> Assignment:
        """The assignment for a rule that raised."""
        if isinstance(exc, RuleError):
            return self.error(default, ErrorCode.PARSE_ERROR, str(exc))
        return self.error(default, ErrorCode.GENERAL, f"{type(exc).__name__}: {exc}")


class FlagSet:
    """An immutable, compiled, versioned set of flags.

    Build one with :meth:`from_path`, :meth:`from_text` or :meth:`from_mapping`; then
    call :meth:`evaluate` as often as you like: it never raises, never interprets JSON,
    and for static flags returns a prebuilt :class:`Assignment`.

    Attributes:
        version: The flag-set ``metadata.version``, if the document has one.
        digest: A content digest (``sha256:`` + 12 hex digits), always present.
        fractional: The fractional bucketing algorithm in force (``"v2"`` or ``"v3"``).
        problems: Problems in targeting rules that did not stop the load (each such flag
            gives ``PARSE_ERROR`` when its broken part is evaluated).
        source: The file (or name) the flag set came from.
    """

    __slots__ = (
        "_deciders",
        "_evaluators",
        "_flags",
        "digest",
        "fractional",
        "metadata",
        "problems",
        "source",
        "version",
    )

    def __init__(self, document: FlagsetDocument, *, fractional: str | None = None) -> None:
        if fractional is not None and fractional not in FRACTIONAL_VERSIONS:
            raise ConfigError(
                f"fractional algorithm {fractional!r} is unknown; use one of "
                f"{', '.join(FRACTIONAL_VERSIONS)}"
            )
        chosen = fractional or document.metadata.get(FRACTIONAL_METADATA_KEY) or "v2"
        if chosen not in FRACTIONAL_VERSIONS:
            raise FlagsetError(
                f"metadata {FRACTIONAL_METADATA_KEY} is {json.dumps(chosen)}; use one of "
                f"{', '.join(FRACTIONAL_VERSIONS)}",
                path=document.source,
                pointer=f"metadata.{FRACTIONAL_METADATA_KEY}",
            )
        self.fractional = str(chosen)
        self.source = document.source
        self.metadata: Mapping[str, MetadataValue] = MappingProxyType(dict(document.metadata))
        canonical = json.dumps(document.raw, sort_keys=True, separators=(",", ":"), default=str)
        self.digest = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:12]
        meta_version = document.metadata.get("version")
        self.version: str | None = None if meta_version is None else str(meta_version)
        label = self.version_label
        self._evaluators: Mapping[str, Any] = document.evaluators
        problems: list[str] = []
        self._flags = {
            key: _CompiledFlag(
                d, document.metadata, label, self.fractional, document.evaluators, problems
            )
            for key, d in document.flags.items()
        }
        self.problems: tuple[str, ...] = tuple(problems)
        # key -> decide(context): the per-request path (see RequestFlags).
        self._deciders: dict[str, Callable[[dict[str, Any]], Assignment]] = {
            key: flag.decide for key, flag in self._flags.items()
        }
        _warn_expired(document.flags, document.metadata.get("owner"))

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_path(cls, path: str | Path, *, fractional: str | None = None) -> FlagSet:
        """Load a flagd flag-definition file (``.json``, ``.yaml`` or ``.yml``).

        Raises:
            FlagsetError: The file is missing, unparsable or not a valid flag set.
        """
        document, _ = read_document(path)
        return cls(document, fractional=fractional)

    @classmethod
    def from_text(
        cls,
        text: str,
        *,
        format: str | None = None,
        source: str | None = None,
        fractional: str | None = None,
    ) -> FlagSet:
        """Load a flag set from JSON or YAML text (``format`` "json"/"yaml", else guessed)."""
        raw = parse_text(text, source, format)
        return cls(parse_document(raw, source=source, text=text), fractional=fractional)

    @classmethod
    def from_mapping(
        cls,
        data: Mapping[str, Any],
        *,
        source: str | None = None,
        fractional: str | None = None,
    ) -> FlagSet:
        """Load a flag set from an already parsed document (a dict)."""
        raw = _plain_copy(data)  # private, so later changes to ``data`` change nothing
        return cls(parse_document(raw, source=source), fractional=fractional)

    @classmethod
    def empty(cls, *, source: str | None = None) -> FlagSet:
        """A flag set with no flags (every evaluation gives ``FLAG_NOT_FOUND``)."""
        return cls(parse_document({"flags": {}}, source=source))

    # -- inspection -----------------------------------------------------------------------

    @property
    def version_label(self) -> str:
        """``version`` and ``digest`` in one string, as put on every assignment."""
        return self.digest if self.version is None else f"{self.version}+{self.digest}"

    def __contains__(self, key: object) -> bool:
        return key in self._flags

    def __iter__(self) -> Iterator[str]:
        return iter(self._flags)

    def __len__(self) -> int:
        return len(self._flags)

    def __repr__(self) -> str:
        return f"<FlagSet {self.source or '<memory>'} {self.version_label} flags={len(self)}>"

    def definition(self, key: str) -> FlagDefinition | None:
        """The flag's definition as written, or ``None`` if there is no such flag."""
        flag = self._flags.get(key)
        return None if flag is None else flag.definition

    # -- evaluation -------------------------------------------------------------------------

    def evaluate(
        self,
        key: str,
        context: Context | None = None,
        default: Any = None,
        *,
        flag_type: FlagType | None = None,
    ) -> Assignment:
        """Evaluate one flag for one context. Never raises.

        Args:
            key: The flag key.
            context: Attributes of the subject, with an optional ``targetingKey``.
            default: The value to use when no variant applies (disabled flag, no default
                variant, error). Its type is also the expected type unless ``flag_type``
                is given: a ``bool`` default expects a boolean flag, and so on; ``None``
                checks nothing.
            flag_type: The expected value type; a flag of another type gives
                ``TYPE_MISMATCH`` and the default.

        Returns:
            The :class:`Assignment`.
        """
        flag = self._flags.get(key)
        if flag is None:
            return self._not_found(key, default)
        # The hot path: a prebuilt result that fits the caller's default as it is.
        # (The expected type as the Python type of a default: the typed getters' flag_type
        # and an untyped call's default are checked the same way.)
        expect = type(default) if flag_type is None else _EXPECT_BY_VALUE[flag_type._value_]
        rule = flag.rule
        if rule is None:
            match = flag.static_result
            if match is not None and expect in match[1]:
                return match[0]
            return flag.resolve(_UNSET, context, default, flag_type)
        if type(context) is not dict:
            context = _EMPTY_CONTEXT if context is None else dict(context)
        try:
            chosen = rule(context)
        except Exception as exc:  # a rule that fails never fails the caller
            return flag.failed(exc, default)
        if type(chosen) is str:
            match = flag.matches.get(chosen)
            if match is not None and expect in match[1]:
                return match[0]
        return flag.resolve(chosen, context, default, flag_type)

    def decide(self, key: str, context: dict[str, Any]) -> Assignment:
        """:meth:`evaluate` with no default and no expected type, for a dict context.

        The per-request path: what is decided here is memoised, and callers' defaults
        and types are applied afterwards (see :func:`fit`).
        """
        flag = self._flags.get(key)
        if flag is None:
            return self._not_found(key, None)
        return flag.decide(context)

    def propagated(self, key: str, variant: str) -> Assignment | None:
        """The assignment for an upstream decision, if this flag set can honour it: the
        flag exists here, is enabled, and has that variant."""
        flag = self._flags.get(key)
        return None if flag is None else flag.propagated.get(variant)

    def _not_found(self, key: str, default: Any) -> Assignment:
        return Assignment(
            key,
            default,
            None,
            Reason.ERROR,
            ErrorCode.FLAG_NOT_FOUND,
            f'flag "{key}" is not in flag set {self.source or ""}'.rstrip(),
            flagset_version=self.version_label,
        )

    def boolean(self, key: str, default: bool, context: Context | None = None) -> bool:
        """The flag's value if it is a boolean, else ``default``."""
        return bool(self.evaluate(key, context, default, flag_type=FlagType.BOOLEAN).value)

    def string(self, key: str, default: str, context: Context | None = None) -> str:
        """The flag's value if it is a string, else ``default``."""
        return str(self.evaluate(key, context, default, flag_type=FlagType.STRING).value)

    def integer(self, key: str, default: int, context: Context | None = None) -> int:
        """The flag's value if it is an integer, else ``default``."""
        value = self.evaluate(key, context, default, flag_type=FlagType.INTEGER).value
        return int(value)

    def float(self, key: str, default: float, context: Context | None = None) -> float:
        """The flag's value if it is a number (as a float), else ``default``."""
        value = self.evaluate(key, context, default, flag_type=FlagType.FLOAT).value
        return float(value)

    def object(self, key: str, default: Any, context: Context | None = None) -> Any:
        """The flag's value if it is a JSON object or array, else ``default``."""
        return self.evaluate(key, context, default, flag_type=FlagType.OBJECT).value

    def explain(
        self,
        key: str,
        context: Context | None = None,
        default: Any = None,
        *,
        flag_type: FlagType | None = None,
    ) -> tuple[Assignment, list[TraceStep]]:
        """Evaluate like :meth:`evaluate` and also say which parts of the rule decided.

        Slow (compiles the rule again, with tracing); meant for tools like
        ``flagwire explain``, not for request paths.
        """
        assignment = self.evaluate(key, context, default, flag_type=flag_type)
        flag = self._flags.get(key)
        steps: list[TraceStep] = []
        if flag is None:
            return assignment, steps
        definition = flag.definition
        if not definition.enabled:
            steps.append(("state", "flag is DISABLED: the caller's default applies"))
        elif flag.rule_error is not None:
            steps.append(("targeting", f"{flag.rule_error}: PARSE_ERROR"))
        elif flag.rule is None:
            steps.append(("targeting", "no targeting rule: the default variant applies"))
        else:
            rule, _ = compile_rule(
                definition.targeting,
                flag_key=key,
                fractional=self.fractional,
                evaluators=self._evaluators,
                trace=steps,
            )
            ctx = dict(context) if context else {}
            try:
                chosen = rule(ctx)
                steps.append(("targeting", f"rule returned {json.dumps(chosen, default=str)}"))
            except Exception as exc:
                steps.append(("targeting", f"rule failed: {exc}"))
        return assignment, steps


def fit(decision: Assignment, default: Any, flag_type: FlagType | None = None) -> Assignment:
    """What :meth:`FlagSet.evaluate` would give with this default, from a decision.

    ``decision`` is an assignment evaluated with ``default=None`` and no type; the
    result substitutes the caller's default where no variant applied and checks the type,
    so one memoised decision serves callers with different defaults.
    """
    if flag_type is FlagType.FLOAT and type(default) is int:
        default = float(default)  # as flagd's float resolver, even for the default
    if decision.variant is None:  # disabled, no default variant, or an error
        if decision.value is default:
            return decision
        return replace(decision, value=default)
    expect = (
        _EXPECT.get(type(default), _NONE_TYPE)
        if flag_type is None
        else _EXPECT_OF_FLAG_TYPE[flag_type]
    )
    value = decision.value
    if expect is _NONE_TYPE:
        return decision
    if expect not in _SATISFIES.get(type(value), _ONLY_NONE):
        return Assignment(
            decision.key,
            default,
            None,
            Reason.ERROR,
            ErrorCode.TYPE_MISMATCH,
            f'expected {_TYPE_NAMES.get(expect, "?")}, but variant "{decision.variant}" '
            f"is {type(value).__name__}",
            decision.flag_metadata,
            decision.flagset_version,
        )
    if expect is float and type(value) is int:
        return replace(decision, value=float(value))
    return decision

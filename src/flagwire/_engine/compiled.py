"""One flag compiled: its prebuilt results per variant and its rule."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, final

from flagwire._types import MetadataValue

from .assignment import Assignment, ErrorCode, FlagType, Reason
from .compiler import Compiled, RuleError, compile_rule
from .decider import generate_decider
from .definitions import (
    FlagDefinition,
)
from .fitting import AS_IS, ONLY_NONE, UNSET, fit
from .rule_problems import rule_problems
from .variant_names import unknown_variant_names

__all__ = ["CompiledFlag", "flag_problems"]


def _variant_name(value: Any) -> str:
    if type(value) is str:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _targeting_error(targeting: Any) -> str | None:
    if not targeting or isinstance(targeting, dict):
        return None  # flagd: a falsy rule ({} or null) means a static flag
    return f"targeting must be a JsonLogic object, not {type(targeting).__name__}"


def flag_problems(definition: FlagDefinition, evaluators: Mapping[str, Any]) -> list[str]:
    """What is wrong in a flag's targeting, found without compiling it: variant names that
    are not the flag's, unknown operations, dangling ``$ref``s, a rule that is no object."""
    key = definition.key
    targeting = definition.targeting
    problems: list[str] = []
    if isinstance(targeting, dict):
        at = f"flags.{key}.targeting"
        problems.extend(unknown_variant_names(targeting, definition.variants, at))
    if definition.enabled and targeting:  # a disabled flag's rule is never compiled
        error = _targeting_error(targeting)
        problems.extend([error] if error is not None else rule_problems(targeting, evaluators))
    return [f'flag "{key}": {problem}' for problem in problems]


_Match = tuple[Assignment, frozenset[type]]
"""A prebuilt result, and the default types it fits as is (the hot path's whole check)."""


@final
class CompiledFlag:
    """A flag ready to evaluate: prebuilt results per variant, a compiled rule.

    ``rule_error`` makes every evaluation a ``PARSE_ERROR`` with that message (a rule that
    could not be compiled at all).
    """

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
        rule_error: str | None = None,
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
            return assignment, AS_IS.get(type(value), ONLY_NONE)

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
        self.rule_error: str | None = rule_error
        self.decide: Callable[[dict[str, Any]], Assignment] = self._decide_without_rule
        if self.disabled:
            self.static_result = None  # always the slow path, which says DISABLED
            return
        targeting = definition.targeting
        if rule_error is None:
            self.rule_error = _targeting_error(targeting)
        if self.rule_error is not None:
            self.static_result = None  # the slow path gives PARSE_ERROR
            return
        if not targeting:
            return
        rule = compile_rule(targeting, flag_key=key, fractional=fractional, evaluators=evaluators)
        self.rule = rule
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

        ``chosen`` is what the rule returned, or ``UNSET`` if there is no rule.
        """
        if flag_type is FlagType.FLOAT and type(default) is int:
            default = float(default)  # as flagd's float resolver, even for the default
        if self.disabled:
            return Assignment(
                self.key, default, None, Reason.DISABLED, None, None, self.metadata, self.version
            )
        match: _Match | None
        if chosen is UNSET:
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
        return self.resolve(UNSET, context, None, None)

    def failed(self, exc: Exception, default: Any) -> Assignment:
        """The assignment for a rule that raised."""
        if isinstance(exc, RuleError):
            return self.error(default, ErrorCode.PARSE_ERROR, str(exc))
        return self.error(default, ErrorCode.GENERAL, f"{type(exc).__name__}: {exc}")

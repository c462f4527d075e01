"""What is wrong in a targeting rule, found without compiling it: unknown operations,
``"var.x"``-style names, and ``$ref``s left after substitution.

Each such node raises :class:`~flagwire._engine.compiler.RuleError` (flagd: PARSE_ERROR)
when it is evaluated, as flagd does, so a broken branch that is never reached does not
break the flag; the messages here are those errors' messages, and the problems a flag set
lists (``flagwire validate``) name where they are (``targeting/if/0/...``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from .jsonlogic_ops import DATA_OPS, VALUE_OPS, is_literal

__all__ = [
    "ITERATION_OPS",
    "KNOWN_OPERATIONS",
    "dotted_message",
    "ref_message",
    "rule_problems",
    "unknown_message",
]

ITERATION_OPS: Final = frozenset({"map", "filter", "reduce", "all", "some", "none"})
_CUSTOM_OPS: Final = frozenset({"fractional", "sem_ver", "starts_with", "ends_with"})
KNOWN_OPERATIONS: Final = frozenset(
    {"if", "?:", "and", "or", *ITERATION_OPS, *VALUE_OPS, *DATA_OPS, *_CUSTOM_OPS}
)


def ref_message(name: str, evaluators: Mapping[str, Any]) -> str:
    # $ref is substituted before compiling (flagd's order); what is left is an error.
    if name in evaluators:
        return (
            f'$ref "{name}" is unresolved: flagd substitutes $evaluators in order, and '
            f'"{name}" is defined before the evaluator that uses it (move it after)'
        )
    return f'$ref to unknown evaluator "{name}"'


def dotted_message(op: str) -> str | None:
    """flagd's evaluator looks ``"var.x"`` up as ``operations["var"]["x"]``: a TypeError."""
    if "." in op and op.split(".")[0] in KNOWN_OPERATIONS:
        return f'"{op}" is not an operation'
    return None


def unknown_message(op: str) -> str:
    return f'unknown operation "{op}"'


def rule_problems(logic: Any, evaluators: Mapping[str, Any]) -> list[str]:
    """The problems of a rule, each ``"<where>: <what>"``, in the order the rule is read."""
    found: list[str] = []
    _walk(logic, "targeting", evaluators, found)
    return list(dict.fromkeys(found))


def _walk(logic: Any, at: str, evaluators: Mapping[str, Any], found: list[str]) -> None:
    if isinstance(logic, list):
        if not is_literal(logic):
            for i, item in enumerate(logic):
                _walk(item, f"{at}/{i}", evaluators, found)
        return
    if not isinstance(logic, dict) or len(logic) != 1:
        return
    op, raw = next(iter(logic.items()))
    here = f"{at}/{op}"
    if op == "$ref" and isinstance(raw, str):
        found.append(f"{here}: {ref_message(raw, evaluators)}")
        return
    args = raw if isinstance(raw, list) else [raw]
    if op in ITERATION_OPS:
        args = args[:2]  # reduce's initial value is not evaluated, as in flagd
    for i, arg in enumerate(args):
        _walk(arg, f"{here}/{i}", evaluators, found)
    if op in KNOWN_OPERATIONS:
        return
    dotted = dotted_message(op)
    found.append(f"{here}: {dotted if dotted is not None else unknown_message(op)}")

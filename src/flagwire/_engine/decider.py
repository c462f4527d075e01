"""A flag's decider: one generated function from context to prebuilt decision."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .codegen import Leaf, compile_source

__all__ = ["generate_decider"]

_DECIDER = """\
def decide(d):
    try:
        return {expr}
    except Exception as exc:
        return _failed(exc, None)
"""


def generate_decider(
    rule: Callable[[Any], Any],
    matches: Mapping[str, Any],
    resolve: Callable[[Any, Any, Any, Any], Any],
    failed: Callable[[Exception, Any], Any],
    name: str,
) -> Callable[[Any], Any]:
    """One function from context to decision: the rule, inlined, with its literal
    outcomes replaced by their prebuilt results.

    Args:
        rule: A compiled rule (from :func:`generate_rule`, or any closure).
        matches: Variant name -> prebuilt result.
        resolve: ``resolve(chosen, context, default, flag_type)`` for everything else.
        failed: ``failed(exception, default)`` for a rule that raised.
        name: For tracebacks.
    """

    def pick(chosen: Any) -> Any:
        if type(chosen) is str:
            found = matches.get(chosen)
            if found is not None:
                return found
        return resolve(chosen, None, None, None)  # the decision depends on ``chosen`` only

    def realize(value: Any) -> Any:
        if isinstance(value, Leaf):
            return pick(value.value)
        if type(value) is tuple and value and isinstance(value[0], Leaf):
            return tuple(realize(item) for item in value)
        return value

    source = getattr(rule, "__flagwire_decider__", None)
    expr: str
    namespace: Mapping[str, Any]
    if source is None:
        expr, namespace = "_pick(_rule(d))", {"_rule": rule}
    else:
        expr, namespace = source
    code = compile_source(_DECIDER.format(expr=expr), f"<flagwire decider {name}>")
    scope = {key: realize(value) for key, value in namespace.items()}
    scope.update(_pick=pick, _failed=failed)
    exec(code, scope)
    decide: Callable[[Any], Any] = scope["decide"]
    return decide

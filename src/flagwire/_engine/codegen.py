"""Generate Python source for the hot subset of targeting rules.

The closure compiler in :mod:`flagwire._engine.compiler` handles every operation; calling one
closure per node costs a Python call each. For the shapes real rules are made of —
``if``, ``==``/``!=`` against a string, ``in`` a list, numeric comparisons, ``and``/``or``
of conditions, ``!``, ``var``, ``$ref``, ``starts_with``/``ends_with``/``sem_ver`` with
literal arguments, and ``fractional`` over literal buckets — this module writes one
Python function whose body is a single expression, so a canary rule runs with no Python
call but the hash. Any other node becomes a call to its closure, so the semantics are
exactly the closure compiler's (and flagd's).
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Mapping
from functools import lru_cache
from types import CodeType
from typing import Any

from . import flagd_ops as cops
from .codegen_flagd import ANY, BOOL, FlagdOps, Leaf
from .jsonlogic_ops import (
    cat_piece,
    equals,
    greater,
    greater_equal,
    is_literal,
    less,
    less_equal,
    returns_bool,
    truthy,
)

__all__ = ["Leaf", "compile_source", "generate_rule"]


@lru_cache(maxsize=4096)
def compile_source(source: str, filename: str) -> CodeType:
    """Python's ``compile``, kept by source: a flag set reloaded with a flag unchanged (or
    a flag with the same code as another) compiles nothing again. Code objects are
    immutable; what differs between uses is the namespace they are run in."""
    return compile(source, filename, "exec")


_BOOL, _ANY = BOOL, ANY

_ORDER_FALLBACK = {"<": less, ">": greater, "<=": less_equal, ">=": greater_equal}
_INLINE_LITERAL = (str, int, bool, type(None))


class _Generator(FlagdOps):
    def __init__(
        self,
        flag_key: str,
        fractional: str,
        evaluators: Mapping[str, Any],
        fallback: Callable[[Any, bool, str], Callable[[Any], Any]],
    ) -> None:
        self.flag_key = flag_key
        self.algorithm = fractional
        self.evaluators = evaluators
        self.fallback = fallback
        self.namespace: dict[str, Any] = {
            "_equals": equals,
            "_truthy": truthy,
            "_bisect": bisect_right,
            "_hash": cops._hash,
            "_cbor": cops.canonical_cbor,
            "cat_piece": cat_piece,
        }
        self._n = 0

    def name(self, value: Any, prefix: str = "_k") -> str:
        self._n += 1
        name = f"{prefix}{self._n}"
        self.namespace[name] = value
        return name

    def temp(self) -> str:
        self._n += 1
        return f"_t{self._n}"

    def literal(self, value: Any) -> str:
        if type(value) in _INLINE_LITERAL:
            return repr(value)
        return self.name(value)

    def closure(self, logic: Any, top: bool, at: str) -> tuple[str, str]:
        fn = self.fallback(logic, top, at)
        kind = _BOOL if returns_bool(logic) else _ANY
        return f"{self.name(fn, '_c')}(d)", kind

    # -- dispatch -----------------------------------------------------------------

    def expr(self, logic: Any, at: str) -> tuple[str, str]:
        """Source of an expression over ``d`` (the top-level context dict), and its kind."""
        if not (isinstance(logic, dict) and len(logic) == 1):
            if isinstance(logic, list):
                return self.closure(logic, True, at)
            return self.literal(logic), (_BOOL if isinstance(logic, bool) else _ANY)
        op, raw = next(iter(logic.items()))
        here = f"{at}/{op}"
        args = raw if isinstance(raw, list) else [raw]
        method = _HANDLERS.get(op)
        result = method(self, args, here) if method is not None else None
        if result is None:
            return self.closure(logic, True, at)
        return result

    def cond(self, logic: Any, at: str) -> str:
        src, kind = self.expr(logic, at)
        return src if kind == _BOOL else f"_truthy({src})"

    # -- handlers: each returns None when the shape is not one it inlines -------------

    def var(self, args: list[Any], at: str) -> tuple[str, str] | None:
        if not args or len(args) > 2:
            return None
        key = args[0]
        if key == "$flagd.flagKey" and len(args) == 1:
            return repr(self.flag_key), _ANY  # a constant of the flag, as flagd injects it
        if not isinstance(key, str) or not key or "." in key or key == "$flagd":
            return None
        get = f"d.get({key!r})"
        if len(args) == 1 or args[1] is None:
            return get, _ANY
        if not is_literal(args[1]):
            return None
        t = self.temp()
        return f"({t} if ({t} := {get}) is not None else {self.literal(args[1])})", _ANY

    def if_(self, args: list[Any], at: str) -> tuple[str, str] | None:
        if len(args) < 3:
            return None
        parts = []
        i = 0
        while i < len(args) - 1:
            parts.append((self.cond(args[i], f"{at}/{i}"), self.expr(args[i + 1], f"{at}/{i + 1}")))
            i += 2
        tail = self.expr(args[i], f"{at}/{i}") if i < len(args) else ("None", _ANY)
        src, kind = tail
        all_bool = kind == _BOOL
        for cond, (value, value_kind) in reversed(parts):
            src = f"({value} if {cond} else {src})"
            all_bool = all_bool and value_kind == _BOOL
        return src, (_BOOL if all_bool else _ANY)

    def equality(self, op: str, args: list[Any], at: str) -> tuple[str, str] | None:
        if len(args) != 2:
            return None
        left, right = args
        if isinstance(right, str) and not is_literal(left):
            expr, lit, lit_first = left, right, False
        elif isinstance(left, str) and not is_literal(right):
            expr, lit, lit_first = right, left, True
        else:
            return None
        value, _ = self.expr(expr, f"{at}/{1 if lit_first else 0}")
        t = self.temp()
        slow = f"_equals({lit!r}, {t})" if lit_first else f"_equals({t}, {lit!r})"
        src = f"(({t} == {lit!r}) if type({t} := {value}) is str else {slow})"
        return (f"(not {src})" if op == "!=" else src), _BOOL

    def eq(self, args: list[Any], at: str) -> tuple[str, str] | None:
        return self.equality("==", args, at)

    def ne(self, args: list[Any], at: str) -> tuple[str, str] | None:
        return self.equality("!=", args, at)

    def in_(self, args: list[Any], at: str) -> tuple[str, str] | None:
        if len(args) != 2 or not isinstance(args[1], list) or not is_literal(args[1]):
            return None
        haystack = args[1]
        value, _ = self.expr(args[0], f"{at}/0")
        t = self.temp()
        strings = frozenset(x for x in haystack if isinstance(x, str))
        # A string needle can only equal the strings of the list.
        return (
            f"(({t} in {self.name(strings)}) if type({t} := {value}) is str "
            f"else ({t} in {self.name(haystack)}))"
        ), _BOOL

    def order(self, op: str, args: list[Any], at: str) -> tuple[str, str] | None:
        if len(args) != 2 or is_literal(args[0]):
            return None
        bound = args[1]
        if not isinstance(bound, (int, float)) or isinstance(bound, bool):
            return None
        value, _ = self.expr(args[0], f"{at}/0")
        t = self.temp()
        lit = self.literal(bound) if type(bound) is int else self.name(bound)
        slow = f"{self.name(_ORDER_FALLBACK[op])}({t}, {lit})"
        return (
            f"(({t} {op} {lit}) if (type({t} := {value}) is int or type({t}) is float) else {slow})"
        ), _BOOL

    def and_or(self, op: str, args: list[Any], at: str) -> tuple[str, str] | None:
        if not args:
            return None
        parts = [self.expr(a, f"{at}/{i}") for i, a in enumerate(args)]
        if any(kind != _BOOL for _, kind in parts):
            return None  # JsonLogic truthiness differs from Python's for {} and NaN
        return "(" + f" {op} ".join(src for src, _ in parts) + ")", _BOOL

    def not_(self, args: list[Any], at: str) -> tuple[str, str] | None:
        if len(args) != 1:
            return None
        return f"(not {self.cond(args[0], f'{at}/0')})", _BOOL

    # -- decisions: the rule with its tail values replaced by prebuilt results ----------

    def leaf(self, value: Any) -> str:
        """A name for the decision when the rule gives the literal ``value``."""
        return self.name(Leaf(value), "_r")

    def result(self, logic: Any, at: str) -> str:
        """Source of the decision (not the variant name) the rule gives over ``d``.

        ``if`` branches and ``fractional`` buckets that are literal variant names become
        prebuilt results, so the common rule decides with no lookup; anything else is
        the rule's value passed to ``_pick``.
        """
        if isinstance(logic, dict) and len(logic) == 1:
            op, raw = next(iter(logic.items()))
            args = raw if isinstance(raw, list) else [raw]
            here = f"{at}/{op}"
            if op in ("if", "?:") and len(args) >= 3:
                return self.if_result(args, here)
            if op == "fractional":
                found = self.buckets(args, results=True)
                if found is not None:
                    return found
        elif type(logic) in _LEAF_TYPES:
            return self.leaf(logic)
        src, _ = self.expr(logic, at)
        return f"_pick({src})"

    def if_result(self, args: list[Any], at: str) -> str:
        parts = []
        i = 0
        while i < len(args) - 1:
            parts.append(
                (self.cond(args[i], f"{at}/{i}"), self.result(args[i + 1], f"{at}/{i + 1}"))
            )
            i += 2
        src = self.result(args[i], f"{at}/{i}") if i < len(args) else self.leaf(None)
        for cond, value in reversed(parts):
            src = f"({value} if {cond} else {src})"
        return src


_LEAF_TYPES = (str, int, float, bool, type(None))


_Handler = Callable[[_Generator, list[Any], str], "tuple[str, str] | None"]
_HANDLERS: dict[str, _Handler] = {
    "var": _Generator.var,
    "if": _Generator.if_,
    "?:": _Generator.if_,
    "==": _Generator.eq,
    "!=": _Generator.ne,
    "in": _Generator.in_,
    "and": lambda g, a, at: g.and_or("and", a, at),
    "or": lambda g, a, at: g.and_or("or", a, at),
    "!": _Generator.not_,
    "<": lambda g, a, at: g.order("<", a, at),
    ">": lambda g, a, at: g.order(">", a, at),
    "<=": lambda g, a, at: g.order("<=", a, at),
    ">=": lambda g, a, at: g.order(">=", a, at),
    "starts_with": lambda g, a, at: g.string_op("startswith", a, at),
    "ends_with": lambda g, a, at: g.string_op("endswith", a, at),
    "sem_ver": _Generator.sem_ver,
    "fractional": _Generator.fractional,
    "cat": _Generator.cat,
}


def generate_rule(
    logic: Any,
    *,
    flag_key: str,
    fractional: str,
    evaluators: Mapping[str, Any],
    fallback: Callable[[Any, bool, str], Callable[[Any], Any]],
) -> Callable[[Any], Any] | None:
    """One Python function for a rule, or ``None`` if Python cannot compile it.

    The function also carries the source :func:`~flagwire._engine.decider.generate_decider`
    turns into a decider.

    Args:
        logic: The rule.
        flag_key: The flag (for ``fractional``).
        fractional: ``"v2"`` or ``"v3"``.
        evaluators: ``$evaluators`` for ``$ref``.
        fallback: Compiles a node the generator does not inline into a closure
            (``fallback(logic, top, json_pointer)``).
    """
    generator = _Generator(flag_key, fractional, evaluators, fallback)
    src, _ = generator.expr(logic, "targeting")
    if re.fullmatch(r"_c\d+\(d\)", src):
        return generator.namespace[src[:-3]]  # type: ignore[no-any-return]
    try:
        compiled = compile_source(
            f"def rule(d):\n    return {src}\n", f"<flagwire rule {flag_key}>"
        )
        decision = generator.result(logic, "targeting")
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        return None  # too deep for Python's parser: the caller compiles closures
    namespace = dict(generator.namespace)
    exec(compiled, namespace)
    rule: Callable[[Any], Any] = namespace["rule"]
    rule.__flagwire_decider__ = (decision, generator.namespace)  # type: ignore[attr-defined]
    return rule

"""Compile flagd targeting rules (JsonLogic plus flagd's operations) into closures.

A rule is compiled once per flag-set load. The result is a function of the evaluation
context; evaluating it interprets no JSON. The semantics are those of flagd's reference
Python evaluator (``openfeature-flagd-core``), including its coercions and the cases in
which an operation yields null.

At the top level a compiled rule receives the caller's context as a dict, *without*
copying it: ``$flagd.flagKey`` is a constant of the compiled rule, ``$flagd.timestamp``
is read when needed, and ``targetingKey`` is read from the context. Inside ``map``,
``filter``, ``reduce``, ``all``, ``some`` and ``none`` the data is the current item.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import flagd_ops as cops
from .codegen import generate_rule
from .compile_flagd import compile_fractional, compile_sem_ver
from .compile_iteration import compile_iteration
from .jsonlogic_ops import (
    DATA_OPS,
    NUMERIC,
    VALUE_OPS,
    Compiled,
    TraceStep,
    const,
    equals,
    is_literal,
    missing,
    returns_bool,
    simple_var,
    to_number,
    truthy,
    var,
    walk,
)
from .rule_problems import (
    ITERATION_OPS,
    KNOWN_OPERATIONS,
    dotted_message,
    ref_message,
    unknown_message,
)

__all__ = ["Compiled", "RuleError", "TraceStep", "compile_rule"]


class RuleError(Exception):
    """A rule references an unknown operation or evaluator (flagd: PARSE_ERROR).

    Raised when the offending node is *evaluated*, as flagd does, so that a broken
    branch that is never reached does not break the flag.
    """


def _flagd(flag_key: str) -> dict[str, Any]:
    return {"flagKey": flag_key, "timestamp": int(time.time())}


class _Compiler:
    def __init__(
        self,
        flag_key: str,
        fractional: str,
        evaluators: Mapping[str, Any],
        trace: list[TraceStep] | None,
    ) -> None:
        self.flag_key = flag_key
        self.fractional = fractional
        self.evaluators = evaluators
        self.trace = trace

    # -- dispatch -----------------------------------------------------------------

    def compile(self, logic: Any, top: bool, at: str) -> Compiled:
        if isinstance(logic, list):
            if is_literal(logic):
                return const(logic)
            items = [self.compile(x, top, f"{at}/{i}") for i, x in enumerate(logic)]
            return lambda d: [f(d) for f in items]
        if not isinstance(logic, dict) or len(logic) != 1:
            return const(logic)
        op, raw = next(iter(logic.items()))
        here = f"{at}/{op}"
        if op == "$ref" and isinstance(raw, str):
            return self._ref(raw, here)
        args = raw if isinstance(raw, list) else [raw]
        if op in ("if", "?:"):
            return self._if(args, top, here)
        if op in ("and", "or"):
            return self._and_or(op, args, top, here)
        if op in ITERATION_OPS:
            return self._iteration(op, args, top, here)
        fs = [self.compile(a, top, f"{here}/{i}") for i, a in enumerate(args)]
        consts = [is_literal(a) for a in args]
        if op == "var":
            return self._var(args, fs, consts, top)
        if op in DATA_OPS:
            return self._data_op(op, fs, top)
        if op == "fractional":
            return compile_fractional(
                args, fs, consts, top, here, self.flag_key, self.fractional, self.trace
            )
        if op == "sem_ver":
            return compile_sem_ver(args, fs, consts)
        if op in ("starts_with", "ends_with"):
            fn = cops.starts_with if op == "starts_with" else cops.ends_with
            return lambda d: fn([f(d) for f in fs])
        if op in VALUE_OPS:
            return self._value_op(op, args, fs, consts, top)
        message = dotted_message(op)
        if message is not None:

            def dotted(d: Any) -> Any:
                for f in fs:
                    f(d)
                raise TypeError(message)

            return dotted
        return self._unknown(op, fs, here)

    # -- control flow ---------------------------------------------------------------

    def _if(self, args: list[Any], top: bool, at: str) -> Compiled:
        fs = [self.compile(a, top, f"{at}/{i}") for i, a in enumerate(args)]
        trace = self.trace
        bool_conds = [returns_bool(a) for a in args]
        if trace is None and len(fs) == 3:
            return self._if3(args, fs, bool_conds[0])
        n = len(fs)

        def if_(d: Any) -> Any:
            i = 0
            while i < n - 1:
                taken = truthy(fs[i](d))
                if trace is not None:
                    trace.append((f"{at}/{i}", f"condition {json.dumps(args[i])} is {taken}"))
                if taken:
                    return fs[i + 1](d)
                i += 2
            if i >= n:
                return None
            if trace is not None and n > 1:
                trace.append((f"{at}/{i}", "no condition matched: else branch"))
            return fs[i](d)

        return if_

    @staticmethod
    def _if3(args: list[Any], fs: list[Compiled], bool_cond: bool) -> Compiled:
        # The common ``if``: one condition, two branches; literal branches are inlined.
        c, a, b = fs
        test = c if bool_cond else (lambda d: truthy(c(d)))
        a_lit, b_lit = is_literal(args[1]), is_literal(args[2])
        if a_lit and b_lit:
            va, vb = args[1], args[2]
            return lambda d: va if test(d) else vb
        if a_lit:
            va = args[1]
            return lambda d: va if test(d) else b(d)
        if b_lit:
            vb = args[2]
            return lambda d: a(d) if test(d) else vb
        return lambda d: a(d) if test(d) else b(d)

    def _and_or(self, op: str, args: list[Any], top: bool, at: str) -> Compiled:
        fs = [self.compile(a, top, f"{at}/{i}") for i, a in enumerate(args)]
        if op == "and":

            def and_(d: Any) -> Any:
                current = None
                for f in fs:
                    current = f(d)
                    if not truthy(current):
                        return current
                return current

            return and_

        def or_(d: Any) -> Any:
            current = None
            for f in fs:
                current = f(d)
                if truthy(current):
                    return current
            return current

        return or_

    def _iteration(self, op: str, args: list[Any], top: bool, at: str) -> Compiled:
        items = self.compile(args[0], top, f"{at}/0") if args else const(None)
        sub = self.compile(args[1], False, f"{at}/1") if len(args) > 1 else const(None)
        init = args[2] if len(args) > 2 else None
        return compile_iteration(op, len(args), items, sub, init)

    def _ref(self, name: str, at: str) -> Compiled:
        return self._raise(ref_message(name, self.evaluators))

    def _unknown(self, op: str, fs: list[Compiled], at: str) -> Compiled:
        message = unknown_message(op)

        def unknown(d: Any) -> Any:
            for f in fs:  # arguments are evaluated first, as in flagd
                f(d)
            raise RuleError(message)

        return unknown

    @staticmethod
    def _raise(message: str) -> Compiled:
        def fail(d: Any) -> Any:
            raise RuleError(message)

        return fail

    # -- data access --------------------------------------------------------------------

    def _full_data(self, d: Any) -> dict[str, Any]:
        full = dict(d)
        full["$flagd"] = _flagd(self.flag_key)
        full["targetingKey"] = d.get("targetingKey")
        return full

    def _var(self, args: list[Any], fs: list[Compiled], consts: list[bool], top: bool) -> Compiled:
        if len(args) > 2:  # flagd's var takes a key and a default: more is a TypeError
            return lambda d: var(d, *[f(d) for f in fs])
        key = args[0] if args else None
        if not top or not args or not consts[0] or not (isinstance(key, str) and key):
            if not top:
                return lambda d: var(d, *[f(d) for f in fs])
            full = self._full_data
            return lambda d: var(full(d), *[f(d) for f in fs])
        default_f = fs[1] if len(fs) > 1 else None
        props = tuple(key.split("."))
        if props[0] == "$flagd":
            if key == "$flagd.flagKey" and default_f is None:
                return const(self.flag_key)
            if key == "$flagd.timestamp" and default_f is None:
                return lambda d: int(time.time())
            flag_key = self.flag_key
            if default_f is None:
                return lambda d: walk({"$flagd": _flagd(flag_key)}, props, None)

            def flagd_var(d: Any) -> Any:
                default = default_f(d)  # evaluated first, as flagd evaluates every argument
                return walk({"$flagd": _flagd(flag_key)}, props, default)

            return flagd_var
        if default_f is None or (consts[1] and args[1] is None):
            if len(props) == 1:
                return lambda d: d.get(key)
            return lambda d: walk(d, props, None)
        if consts[1]:
            default = args[1]
            if len(props) == 1:

                def var_default(d: Any) -> Any:
                    value = d.get(key)
                    return default if value is None else value

                return var_default
            return lambda d: walk(d, props, default)

        def var_dynamic(d: Any) -> Any:
            default = default_f(d)  # evaluated first, as flagd evaluates every argument
            return walk(d, props, default)

        return var_dynamic

    def _data_op(self, op: str, fs: list[Compiled], top: bool) -> Compiled:
        fn = DATA_OPS[op]
        if top and op in ("missing", "missing_some"):
            full = self._full_data

            def top_data_op(d: Any) -> Any:
                values = [f(d) for f in fs]
                return fn(full(d), *values)

            return top_data_op
        return lambda d: fn(d, *[f(d) for f in fs])

    # -- value operations -------------------------------------------------------------

    def _value_op(
        self, op: str, args: list[Any], fs: list[Compiled], consts: list[bool], top: bool
    ) -> Compiled:
        fn = VALUE_OPS[op]
        if len(fs) == 2 and op in ("==", "!=") and consts[1] and not consts[0]:
            b = args[1]
            a_f = fs[0]
            negate = op == "!="
            simple = simple_var(args[0]) if top else None
            if isinstance(b, str) and simple is not None:

                def eq_str_var(d: Any) -> bool:
                    a = d.get(simple)
                    return (a == b if type(a) is str else equals(a, b)) != negate

                return eq_str_var
            if isinstance(b, str):

                def eq_str(d: Any) -> bool:
                    a = a_f(d)
                    result = a == b if type(a) is str else equals(a, b)
                    return result != negate

                return eq_str

            def eq_const(d: Any) -> bool:
                return equals(a_f(d), b) != negate

            return eq_const
        if op == "in" and len(fs) == 2 and consts[1] and isinstance(args[1], list):
            haystack = args[1]
            needle_f = fs[0]
            try:
                fast = frozenset(haystack)
            except TypeError:
                return lambda d: needle_f(d) in haystack

            def in_set(d: Any) -> bool:
                needle = needle_f(d)
                try:
                    return needle in fast
                except TypeError:  # unhashable needle: compare as a list does
                    return needle in haystack

            return in_set
        if op in ("<", ">", "<=", ">=") and len(fs) == 2 and consts[1]:
            b = args[1]
            if isinstance(b, NUMERIC) and not isinstance(b, bool):
                a_f = fs[0]
                slow = fn
                cmp: Callable[[Any], bool] = {
                    "<": lambda x: bool(x < b),
                    ">": lambda x: bool(x > b),
                    "<=": lambda x: bool(x <= b),
                    ">=": lambda x: bool(x >= b),
                }[op]

                def compare_number(d: Any) -> bool:
                    a = a_f(d)
                    if type(a) is int or type(a) is float:
                        return cmp(a)
                    return bool(slow(a, b))

                return compare_number
        if all(consts):
            values = list(args)
            return lambda d: fn(*values)
        if len(fs) == 1:
            f0 = fs[0]
            return lambda d: fn(f0(d))
        if len(fs) == 2:
            f0, f1 = fs
            return lambda d: fn(f0(d), f1(d))
        return lambda d: fn(*[f(d) for f in fs])


def compile_rule(
    logic: Any,
    *,
    flag_key: str,
    fractional: str = "v2",
    evaluators: Mapping[str, Any] | None = None,
    trace: list[TraceStep] | None = None,
) -> Compiled:
    """Compile a targeting rule (its problems are :func:`rule_problems`'s, found at load).

    Args:
        logic: The rule (parsed JSON).
        flag_key: The flag the rule belongs to (``$flagd.flagKey``, fractional seed).
        fractional: ``"v2"`` or ``"v3"`` bucketing.
        evaluators: The flag set's ``$evaluators`` for ``$ref``.
        trace: When given, the compiled rule appends what it decided here (for explain).

    Returns:
        The compiled rule, taking the context as a dict. Unknown operations and dangling
        ``$ref``s raise :class:`RuleError` when reached.
    """
    compiler = _Compiler(flag_key, fractional, evaluators or {}, trace)
    if trace is None:
        generated = generate_rule(
            logic,
            flag_key=flag_key,
            fractional=fractional,
            evaluators=evaluators or {},
            fallback=compiler.compile,
        )
        if generated is not None:
            return generated
    return compiler.compile(logic, True, "targeting")


__all__ += ["KNOWN_OPERATIONS", "missing", "to_number"]

"""JsonLogic's built-in operations, with the semantics of flagd's reference evaluator.

These are the slow, general forms; :mod:`flagwire._engine.compiler` compiles rules into
closures that call them only where no faster specialisation applies. Coercions follow
JavaScript as JsonLogic defines it (``to_number``, ``to_string``, truthiness).
"""

from __future__ import annotations

from collections.abc import Callable
from math import isnan
from typing import Any

NAN = float("nan")
NUMERIC = (int, float)

Compiled = Callable[[Any], Any]
"""A compiled rule or sub-expression: data -> value."""

TraceStep = tuple[str, str]
"""(JSON pointer into the rule, what happened there), recorded by ``explain``."""


def const(value: Any) -> Compiled:
    """A compiled constant."""
    return lambda d: value


def to_number(a: Any) -> float | int:
    """JavaScript's ``Number(a)`` as JsonLogic uses it."""
    if isinstance(a, NUMERIC):
        return a
    if a is None:
        return 0
    if isinstance(a, list):
        if not a:
            return 0
        if len(a) > 1:
            return NAN
        return to_number(a[0])
    if isinstance(a, dict):
        return NAN
    if isinstance(a, str) and a.strip().lower() in ("inf", "-inf", "+inf"):
        return NAN
    try:
        return float(a)
    except (ValueError, TypeError):
        return NAN


def to_string(value: Any) -> str:
    """JavaScript's ``String(value)`` as JsonLogic uses it."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:.15g}"
    if isinstance(value, int):
        # bool included: flagd's reference evaluator formats True as "True".
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, list):
        return ",".join(to_string(item) for item in value)
    if isinstance(value, dict):
        return "[object Object]"
    return str(value)


def cat_piece(value: Any) -> str:
    # cat writes a boolean as JavaScript and flagd's daemon do ("true"), not as Python.
    if value is True or value is False:
        return "true" if value else "false"
    return to_string(value)


def truthy(value: Any) -> bool:
    """JsonLogic truthiness: ``[]``, ``""``, ``0``, NaN and null are false; ``{}`` is true."""
    if value is True:
        return True
    if value is False or value is None:
        return False
    if isinstance(value, float):
        return not isnan(value) and value != 0.0
    if isinstance(value, (str, int, list)):
        return bool(value)
    return True


def equals(a: Any, b: Any) -> bool:
    """JsonLogic's loose ``==``."""
    atype = type(a)
    if atype is type(b):
        if atype in (list, dict):
            return a is b
        return bool(a == b)
    if isinstance(a, NUMERIC):
        if isinstance(b, NUMERIC):
            return bool(a == b)
        return a == to_number(b)
    if isinstance(b, NUMERIC):
        return to_number(a) == b
    if a is None or b is None:
        return False
    if isinstance(a, str):
        if isinstance(b, bool):
            return to_number(a) == to_number(b)
        if isinstance(b, (list, dict)):
            return a == to_string(b)
        raise TypeError(f"cannot compare {a!r} and {b!r}")
    if isinstance(a, bool):
        return to_number(a) == to_number(b)
    if isinstance(a, (list, dict)):
        if isinstance(b, (list, dict)):
            return False
        if isinstance(b, str):
            return to_string(a) == b
        if isinstance(b, bool):
            return to_number(a) == to_number(b)
    raise TypeError(f"cannot compare {a!r} and {b!r}")


def _js_number(value: Any) -> float | int:
    """``Number(value)`` for null and strings as JavaScript gives it (``""`` is 0)."""
    if isinstance(value, str) and not value.strip():
        return 0
    return to_number(value)


def _ordering(cmp: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(a: Any, b: Any) -> bool:
        if (a is None and isinstance(b, str)) or (b is None and isinstance(a, str)):
            # JavaScript, json-logic-js and flagd's Go jsonlogic compare these as numbers
            # (null < "abc" is 0 < NaN: false); the Python reference compares "null".
            return cmp(_js_number(a), _js_number(b))
        if isinstance(a, NUMERIC):
            return cmp(a, to_number(b))
        if isinstance(b, NUMERIC):
            return cmp(to_number(a), b)
        if isinstance(a, str):
            return cmp(a, to_string(b))
        if isinstance(b, str):
            return cmp(to_string(a), b)
        return cmp(to_number(a), to_number(b))

    return compare


less = _ordering(lambda a, b: a < b)
greater = _ordering(lambda a, b: a > b)
less_equal = _ordering(lambda a, b: a <= b)
greater_equal = _ordering(lambda a, b: a >= b)


def _between(compare: Callable[[Any, Any], bool]) -> Callable[..., bool]:
    def op(a: Any = None, b: Any = None, c: Any = None, *_: Any) -> bool:
        if c is None:
            return compare(a, b)
        return compare(a, b) and compare(b, c)

    return op


def substr(string: Any = None, index: Any = None, length: Any = None, *_: Any) -> str:
    """JsonLogic's ``substr`` with negative index and length."""
    text = to_string(string)
    start = to_number(index)
    size = len(text)
    if isnan(start):
        start = 0
    elif start < 0:
        start = -start
        start = 0 if start >= size else size - int(start)
    else:
        start = int(start)
        if start >= size:
            start = size
    if length is None:
        end = size
    else:
        n = to_number(length)
        if isnan(n):
            end = start
        else:
            n = int(n)
            end = max(size + n, start) if n < 0 else start + n
    return text[int(start) : int(end)]


def var(data: Any, key: Any = None, default: Any = None) -> Any:
    """JsonLogic's ``var``: dotted paths, array indexes, ``length`` of arrays and strings."""
    if key is None or key == "":
        return data
    if isinstance(key, NUMERIC):
        if isinstance(data, (list, str)):
            try:
                index = int(key)
            except ValueError:
                return default
            if index != key or index < 0 or index >= len(data):
                return default
            return data[index]
        if isinstance(data, dict):
            data = data.get(key)
            if data is None:
                return default
        else:
            return default
    return walk(data, to_string(key).split("."), default)


def walk(data: Any, props: list[str] | tuple[str, ...], default: Any) -> Any:
    """Follow a split ``var`` path through dicts, lists and strings."""
    for prop in props:
        if isinstance(data, (list, str)):
            if prop == "length":
                return len(data)
            try:
                index = int(prop, 10)
            except ValueError:
                return default
            if prop != str(index) or index < 0 or index >= len(data):
                return default
            data = data[index]
        elif isinstance(data, dict):
            data = data.get(prop)
        else:
            return default
    if data is None:
        return default
    return data


def missing(data: Any, *args: Any) -> list[Any]:
    """JsonLogic's ``missing``: the keys whose value is null or ``""``."""
    keys: Any = args[0] if args and isinstance(args[0], list) else args
    result = []
    for key in keys:
        value = var(data, key)
        if value is None or value == "":
            result.append(key)
    return result


def missing_some(data: Any, need: Any = 0, keys: Any = None, *_: Any) -> list[Any]:
    """JsonLogic's ``missing_some``: missing keys unless at least ``need`` are present."""
    if not isinstance(keys, list):
        return []
    absent = missing(data, keys)
    if len(keys) - len(absent) >= to_number(need):
        return []
    return absent


def merge(*args: Any) -> list[Any]:
    """JsonLogic's ``merge``: flatten one level."""
    items: list[Any] = []
    for arg in args:
        if isinstance(arg, list):
            items.extend(arg)
        else:
            items.append(arg)
    return items


def contains(needle: Any = None, haystack: Any = None, *_: Any) -> bool:
    """JsonLogic's ``in``: list membership or substring."""
    if isinstance(haystack, list):
        return needle in haystack
    if isinstance(haystack, str):
        return to_string(needle) in haystack
    return False


def _minus(a: Any = None, b: Any = None, *_: Any) -> float | int:
    return -to_number(a) if b is None else to_number(a) - to_number(b)


def _add(*args: Any) -> float | int:
    total: float | int = 0
    for arg in args:
        total += to_number(arg)
    return total


def _mul(*args: Any) -> float | int:
    product: float | int = 1
    for arg in args:
        product *= to_number(arg)
    return product


# Operations whose evaluated arguments are passed positionally (no data argument).
VALUE_OPS: dict[str, Callable[..., Any]] = {
    "==": lambda a=None, b=None, *_: equals(a, b),
    "!=": lambda a=None, b=None, *_: not equals(a, b),
    "===": lambda a=None, b=None, *_: a == b,
    "!==": lambda a=None, b=None, *_: a != b,
    "<": _between(less),
    ">": _between(greater),
    "<=": _between(less_equal),
    ">=": _between(greater_equal),
    "!": lambda a=None, *_: not truthy(a),
    "!!": lambda a=None, *_: truthy(a),
    "+": _add,
    "*": _mul,
    "-": _minus,
    "/": lambda a=None, b=None, *_: to_number(a) / to_number(b),
    "%": lambda a=None, b=None, *_: to_number(a) % to_number(b),
    "in": contains,
    "min": lambda *args: min(to_number(a) for a in args) if args else NAN,
    "max": lambda *args: max(to_number(a) for a in args) if args else NAN,
    "cat": lambda *args: "".join(cat_piece(a) for a in args),
    "substr": substr,
    "merge": merge,
    "log": lambda a=None, *_: a,
}

# Operations that read the data as well as their arguments.
DATA_OPS: dict[str, Callable[..., Any]] = {
    "var": var,
    "missing": missing,
    "missing_some": missing_some,
}

BOOLEAN_OPS = frozenset(
    {"==", "!=", "===", "!==", "<", ">", "<=", ">=", "!", "!!", "in", "all", "some", "none"}
)


def is_literal(logic: Any) -> bool:
    """Whether a rule node is a constant (no operation anywhere in it)."""
    if isinstance(logic, list):
        return all(is_literal(item) for item in logic)
    return not (isinstance(logic, dict) and len(logic) == 1)


def returns_bool(logic: Any) -> bool:
    """Whether a node always gives a bool (or None, for flagd's custom operations), so
    Python truthiness equals JsonLogic's for it."""
    if isinstance(logic, dict) and len(logic) == 1:
        op = next(iter(logic))
        return op in BOOLEAN_OPS or op in ("sem_ver", "starts_with", "ends_with")
    return isinstance(logic, bool)


def simple_var(logic: Any) -> str | None:
    """The key of ``{"var": "name"}`` (no dots, no default, not $flagd), else None."""
    if not (isinstance(logic, dict) and len(logic) == 1 and "var" in logic):
        return None
    key = logic["var"]
    if isinstance(key, list):
        if len(key) != 1:
            return None
        key = key[0]
    if not isinstance(key, str) or not key or "." in key or key == "$flagd":
        return None
    return key

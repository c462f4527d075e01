"""The reference evaluator (``openfeature-flagd-core`` 1.0.0) with flagd's daemon semantics
where flagwire deliberately follows the Go daemon instead (``DIVERGENCES`` in
``test_reference_parity.py``; issue 12).

Each adaptor converts the *arguments* of one of the reference's operations as the Go
daemon reads them and then lets the reference's own operation do the work, so everything
but the documented divergence is still the reference's behaviour.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

# The package re-exports the function ``targeting`` under its module's name.
_OPERATORS: dict[str, Callable[..., Any]] = importlib.import_module(
    "openfeature.contrib.tools.flagd.core.targeting.targeting"
).OPERATORS
_ORIGINAL: dict[str, Callable[..., Any]] = dict(_OPERATORS)


def _whole_float_weight(arg: Any) -> Any:
    if isinstance(arg, list) and len(arg) == 2 and type(arg[1]) is float and arg[1].is_integer():
        return [arg[0], int(arg[1])]
    return arg


def daemon_fractional(data: Any, *args: Any) -> Any:
    """``fractional-daemon``: integral float weights are weights; a null bucketing value
    is skipped (the targeting key is used); a non-string targeting key gives null."""
    if args and args[0] is None:
        args = args[1:]
    if args and not isinstance(args[0], str):
        key = data.get("targetingKey") if isinstance(data, dict) else None
        if key and not isinstance(key, str):
            return None
    return _ORIGINAL["fractional"](data, *(_whole_float_weight(a) for a in args))


def _js_number(value: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return 0
    try:
        return float(value)
    except ValueError:
        return float("nan")


def _null_and_string(a: Any, b: Any) -> bool:
    return (a is None and isinstance(b, str)) or (b is None and isinstance(a, str))


def _daemon_ordering(name: str) -> Callable[..., Any]:
    def pair(data: Any, a: Any, b: Any) -> Any:
        if _null_and_string(a, b):
            a, b = _js_number(a), _js_number(b)
        return _ORIGINAL[name](data, a, b)

    def ordering(data: Any = None, a: Any = None, b: Any = None, c: Any = None, *_: Any) -> Any:
        """``null-string-ordering``: null and a string compare as JavaScript numbers."""
        if c is None:
            return pair(data, a, b)
        return pair(data, a, b) and pair(data, b, c)

    return ordering


def daemon_cat(data: Any, *args: Any) -> Any:
    """``cat-booleans``: a boolean argument is written "true" / "false"."""
    pieces = ["true" if a is True else "false" if a is False else a for a in args]
    return _ORIGINAL["cat"](data, *pieces)


DAEMON_OPERATORS: dict[str, Callable[..., Any]] = {
    "fractional": daemon_fractional,
    "cat": daemon_cat,
    **{op: _daemon_ordering(op) for op in ("<", ">", "<=", ">=")},
}


@contextmanager
def daemon_semantics() -> Iterator[None]:
    """Run the reference with the daemon's semantics for the deliberate divergences."""
    with mock.patch.dict(_OPERATORS, DAEMON_OPERATORS):
        yield

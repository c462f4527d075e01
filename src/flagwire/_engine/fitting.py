"""Types of flag values against what the caller asked for: :func:`fit` and the tables
the hot path checks."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Final

from .assignment import Assignment, ErrorCode, FlagType, Reason

__all__ = ["AS_IS", "EXPECT_BY_VALUE", "ONLY_NONE", "UNSET", "fit"]


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
AS_IS: Final[dict[type, frozenset[type]]] = {
    bool: frozenset({bool, _NONE_TYPE}),
    str: frozenset({str, _NONE_TYPE}),
    int: frozenset({int, _NONE_TYPE}),
    float: frozenset({float, _NONE_TYPE}),
    dict: frozenset({dict, list, _NONE_TYPE}),
    list: frozenset({dict, list, _NONE_TYPE}),
}
ONLY_NONE: Final = frozenset({_NONE_TYPE})
# By FlagType value: an Enum member's own hash is computed in Python, its value's is not.
EXPECT_BY_VALUE: Final[dict[str, type]] = {ft.value: t for ft, t in _EXPECT_OF_FLAG_TYPE.items()}
_TYPE_NAMES: Final[dict[type, str]] = {t: ft.value for ft, t in _EXPECT_OF_FLAG_TYPE.items()}
UNSET: Final = object()


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
    if expect not in _SATISFIES.get(type(value), ONLY_NONE):
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

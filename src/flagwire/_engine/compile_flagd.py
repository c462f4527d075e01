"""flagd's own operations in a rule (``fractional``, ``sem_ver``), compiled."""

from __future__ import annotations

import json
from bisect import bisect_right
from typing import Any

from . import flagd_ops as cops
from .jsonlogic_ops import Compiled, TraceStep, const

__all__ = ["compile_fractional", "compile_sem_ver"]


def compile_fractional(
    args: list[Any],
    fs: list[Compiled],
    consts: list[bool],
    top: bool,
    at: str,
    flag_key: str,
    version: str,
    trace: list[TraceStep] | None,
) -> Compiled:
    """flagd's ``fractional``, with the hot shapes (shorthand, a bucketing expression
    with constant weights) compiled to a hash and a bisect."""
    if not top:
        # Inside map/filter/... flagd reads $flagd and targetingKey from the item.
        def nested(d: Any) -> Any:
            def shorthand() -> tuple[Any, Any]:
                return d.get("$flagd", {}).get("flagKey", ""), d.get("targetingKey")

            return cops.fractional(shorthand, [f(d) for f in fs], version)

        return nested
    if not args:
        return const(None)
    shorthand = isinstance(args[0], list) and consts[0]
    rest = args if shorthand else args[1:]
    if all(consts[len(args) - len(rest) :]) and trace is None:
        bucketer = cops.Bucketer.parse(rest)
        if bucketer is None or bucketer.total <= 0 or bucketer.total > cops.MAX_WEIGHT_SUM:
            if shorthand:
                return const(None)
        elif shorthand:
            return _fractional_shorthand(bucketer, flag_key, version)
        else:
            return _fractional_by(fs[0], bucketer, rest, flag_key, version)

    def generic(d: Any) -> Any:
        values = [f(d) for f in fs]
        result = cops.fractional(lambda: (flag_key, d.get("targetingKey")), values, version)
        if trace is not None:
            trace.append((at, f"fractional bucket -> {json.dumps(result)}"))
        return result

    return generic


def _fractional_shorthand(bucketer: cops.Bucketer, flag_key: str, version: str) -> Compiled:
    # The hot path of every rollout: hash the targeting key, find the bucket.
    hash_ = cops._hash
    ends, variants, total = bucketer.ends, bucketer.variants, bucketer.total
    if version == "v2":

        def v2(d: Any) -> Any:
            tk = d.get("targetingKey")
            if not tk or type(tk) is not str:
                return None
            return variants[bisect_right(ends, (hash_(flag_key + tk, 0, False) * total) >> 32)]

        return v2
    prefix = b"\x82" + cops.canonical_cbor(flag_key)
    text = cops.canonical_cbor

    def v3(d: Any) -> Any:
        tk = d.get("targetingKey")
        if not tk or type(tk) is not str:
            return None
        return variants[bisect_right(ends, (hash_(prefix + text(tk), 0, False) * total) >> 32)]

    return v3


def _fractional_by(
    first: Compiled, bucketer: cops.Bucketer, rest: list[Any], flag_key: str, version: str
) -> Compiled:
    # The first argument is an expression; its value decides how flagd reads it.
    hash_ = cops._hash
    pick = bucketer.pick
    encode = cops.canonical_cbor

    def fractional_by(d: Any) -> Any:
        value = first(d)
        if type(value) is str:
            if version == "v2":
                return pick(hash_(value, signed=False)) if value else None
            return pick(hash_(encode(value), signed=False))
        return cops.fractional(lambda: (flag_key, d.get("targetingKey")), [value, *rest], version)

    return fractional_by


def compile_sem_ver(args: list[Any], fs: list[Compiled], consts: list[bool]) -> Compiled:
    """flagd's ``sem_ver``; against a constant version, parsed once."""
    if len(args) == 3 and consts[1] and consts[2] and not consts[0]:
        compare = cops.semver_operator(args[1])
        right = cops.parse_semver(args[2])
        left_f = fs[0]
        if compare is None or right is None:
            return lambda d: (left_f(d), None)[1]

        def sem_ver(d: Any) -> bool | None:
            left = cops.parse_semver(left_f(d))
            return None if left is None else compare(left, right)

        return sem_ver
    return lambda d: cops.sem_ver([f(d) for f in fs])

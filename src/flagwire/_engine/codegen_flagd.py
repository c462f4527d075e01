"""The code generator's handlers for flagd's operations and string building: ``fractional``
(shorthand, and over a bucketing expression), ``sem_ver``, ``starts_with``/``ends_with`` and
``cat``; mixed into the generator of :mod:`flagwire._engine.codegen`."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

from . import flagd_ops as cops
from .jsonlogic_ops import cat_piece, is_literal

__all__ = ["ANY", "BOOL", "FlagdOps", "Leaf", "general_fractional"]

BOOL = "bool"  # the expression is a bool, or None where Python truthiness is the same
ANY = "any"
INLINE_BUCKETS = 4  # fractional splits of up to this many buckets are unrolled


class Leaf:
    """Stands, in a generated namespace, for the result of a literal rule value."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def general_fractional(
    flag_key: str, buckets: list[Any], version: str
) -> Callable[[Any, Any], Any]:
    def general(d: Any, value: Any) -> Any:
        return cops.fractional(
            lambda: (flag_key, d.get("targetingKey")), [value, *buckets], version
        )

    return general


class FlagdOps:
    """Handlers that return ``(source, kind)`` or ``None`` when the shape is not inlined."""

    flag_key: str
    algorithm: str

    def temp(self) -> str:
        raise NotImplementedError

    def name(self, value: Any, prefix: str = "_k") -> str:
        raise NotImplementedError

    def literal(self, value: Any) -> str:
        raise NotImplementedError

    def leaf(self, value: Any) -> str:
        raise NotImplementedError

    def expr(self, logic: Any, at: str) -> tuple[str, str]:
        raise NotImplementedError

    def cat(self, args: list[Any], at: str) -> tuple[str, str] | None:
        """``cat`` as string concatenation: literals formatted once, strings as they are."""
        pieces = []
        for i, arg in enumerate(args):
            if is_literal(arg) and not isinstance(arg, list):
                pieces.append(repr(cat_piece(arg)))
                continue
            src, _ = self.expr(arg, f"{at}/{i}")
            t = self.temp()
            pieces.append(f"({t} if type({t} := {src}) is str else cat_piece({t}))")
        return ("(" + " + ".join(pieces) + ")" if pieces else "''"), ANY

    def string_op(self, method: str, args: list[Any], at: str) -> tuple[str, str] | None:
        if len(args) != 2 or not isinstance(args[1], str) or is_literal(args[0]):
            return None
        value, _ = self.expr(args[0], f"{at}/0")
        t = self.temp()
        return f"({t}.{method}({args[1]!r}) if type({t} := {value}) is str else None)", BOOL

    def sem_ver(self, args: list[Any], at: str) -> tuple[str, str] | None:
        if len(args) != 3 or is_literal(args[0]) or not is_literal(args[1]):
            return None
        if not is_literal(args[2]):
            return None
        compare = cops.semver_operator(args[1])
        right = cops.parse_semver(args[2])
        if compare is None or right is None:
            return None

        def check(value: Any) -> bool | None:
            left = cops.parse_semver(value)
            return None if left is None else compare(left, right)

        # Versions in a population repeat: remember the answer per version string.
        cached = lru_cache(maxsize=1024)(check)
        value, _ = self.expr(args[0], f"{at}/0")
        t = self.temp()
        return (
            f"({self.name(cached)}({t}) if type({t} := {value}) is str "
            f"else {self.name(check)}({t}))"
        ), BOOL

    def fractional(self, args: list[Any], at: str) -> tuple[str, str] | None:
        found = self.buckets(args, results=False)
        return None if found is None else (found, ANY)

    def buckets(self, args: list[Any], *, results: bool) -> str | None:
        """``fractional`` over literal buckets: the variant name (or, with ``results``,
        the prebuilt result) of the bucket of the targeting key (the shorthand) or of a
        bucketing expression written first (``cat`` of a tenant and the key, ...)."""
        if not args:
            return None
        shorthand = isinstance(args[0], list)
        buckets = args if shorthand else args[1:]
        if not buckets or not is_literal(buckets):
            return None  # weights read from the context: the closure compiler's
        bucketer = cops.Bucketer.parse(buckets)
        if bucketer is None or not 0 < bucketer.total <= cops.MAX_WEIGHT_SUM:
            return None
        t = self.temp()
        if shorthand:
            if self.algorithm == "v2":
                hashed = f"_hash({self.flag_key!r} + {t}, 0, False)"
            else:
                prefix = b"\x82" + cops.canonical_cbor(self.flag_key)
                hashed = f"_hash({prefix!r} + _cbor({t}), 0, False)"
            # A missing, empty or non-string targeting key gives the default, as in flagd.
            guard = f"({t} := d.get('targetingKey')) and type({t}) is str"
        else:
            # A string bucketing value is hashed as it is (v2: an empty one gives the
            # default); any other value takes flagd's general path (v2 then buckets by
            # the targeting key), as the closure compiler does.
            value, _ = self.expr(args[0], "targeting/fractional/0")
            general = self.name(general_fractional(self.flag_key, buckets, self.algorithm))
            other = f"{general}(d, {t})"
            if self.algorithm == "v2":
                hashed = f"_hash({t}, 0, False)"
                guard = f"type({t} := {value}) is str and {t}"
                empty = f"({self.leaf(None) if results else 'None'} if type({t}) is str else "
            else:
                hashed = f"_hash(_cbor({t}), 0, False)"
                guard = f"type({t} := {value}) is str"
                empty = "("
            fallback = (f"_pick({other})" if results else other) + ")"
        if results:
            names = [self.leaf(v) for v in bucketer.variants]
            missing = self.leaf(None)
        else:
            names = [self.literal(v) for v in bucketer.variants]
            missing = "None"
        # The bucket is (hash * total) >> 32, and bucket < end exactly when
        # hash < ceil(end * 2**32 / total): compare the hash with precomputed limits (no
        # big-int multiply and shift per evaluation).
        total = bucketer.total
        limits = tuple(-(-(end << 32) // total) for end in bucketer.ends)
        if 2 <= len(names) <= INLINE_BUCKETS:
            # bisect_right(limits, hash), unrolled: the first bucket whose limit is above.
            h = self.temp()
            chain = f"{names[0]} if ({h} := {hashed}) < {limits[0]}"
            for name, limit in zip(names[1:-1], limits[1:-1], strict=True):
                chain += f" else {name} if {h} < {limit}"
            picked = f"({chain} else {names[-1]})"
        else:
            table = self.name(
                tuple(Leaf(v) for v in bucketer.variants) if results else bucketer.variants
            )
            picked = f"{table}[_bisect({self.name(limits)}, {hashed})]"
        if shorthand:
            return f"({picked} if {guard} else {missing})"
        return f"({picked} if {guard} else {empty}{fallback})"

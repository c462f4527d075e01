"""flagd's custom JsonLogic operations: ``fractional``, ``sem_ver``, ``starts_with``, ``ends_with``.

Each function takes already-evaluated arguments and returns ``None`` where flagd's
evaluator returns null (bad arguments, unparsable versions, no bucketing value), so
the flag falls back to its default variant exactly as flagd does.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, Final, NamedTuple

import mmh3

__all__ = [
    "FRACTIONAL_VERSIONS",
    "Bucketer",
    "bucket_value_v3",
    "canonical_cbor",
    "ends_with",
    "fraction_weight",
    "fractional",
    "parse_semver",
    "sem_ver",
    "starts_with",
]

logger = logging.getLogger("flagwire")

FRACTIONAL_VERSIONS: Final = ("v2", "v3")
MAX_WEIGHT_SUM: Final = 2_147_483_647
_hash = mmh3.hash

# -- fractional ---------------------------------------------------------------------


def _cbor_head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes((major << 5 | n,))
    if n < 0x100:
        return bytes((major << 5 | 24, n))
    if n < 0x10000:
        return bytes((major << 5 | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((major << 5 | 26,)) + n.to_bytes(4, "big")
    return bytes((major << 5 | 27,)) + n.to_bytes(8, "big")


def _cbor_text(s: str) -> bytes:
    raw = s.encode("utf-8", "surrogatepass")
    return _cbor_head(3, len(raw)) + raw


def _normalize_numbers(data: Any) -> Any:
    # flagd's CBOR bucketing treats an integral float as the integer it equals.
    if isinstance(data, dict):
        return {k: _normalize_numbers(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_normalize_numbers(v) for v in data]
    if isinstance(data, float) and data.is_integer() and -(2**63) <= data <= 2**64 - 1:
        return int(data)
    return data


def canonical_cbor(value: Any) -> bytes:
    """The canonical CBOR encoding flagd's v3 bucketing hashes (integral floats as ints)."""
    if type(value) is str:
        return _cbor_text(value)
    import cbor2  # deferred: only v3 bucketing over non-string values needs it

    return bytes(cbor2.dumps(_normalize_numbers(value), canonical=True))


def bucket_value_v3(flag_key: str, targeting_key: Any) -> list[str] | None:
    """The default v3 bucketing value, ``[flagKey, targetingKey]``; ``None`` if no key."""
    if not targeting_key or not isinstance(targeting_key, str):
        return None
    return [flag_key, targeting_key]


class _Fraction(NamedTuple):
    variant: Any
    weight: int


def fraction_weight(weight: Any) -> int | None:
    """A ``fractional`` weight as flagd's Go evaluator reads it (every JSON number is a
    float64 there, valid when whole: ``50`` and ``50.0`` alike), or ``None`` if invalid."""
    if type(weight) is int:
        return weight
    if type(weight) is float and weight.is_integer():
        return int(weight)
    return None


def _parse_fraction(arg: Any) -> _Fraction | None:
    if not isinstance(arg, (list, tuple)) or not arg or len(arg) > 2:
        return None
    if len(arg) == 1:
        return _Fraction(arg[0], 1)
    weight = fraction_weight(arg[1])
    if weight is None:
        return None
    # A negative weight can come out of a rollout computation: flagd clamps it to 0.
    return _Fraction(arg[0], max(0, weight))


class Bucketer:
    """Picks a bucket from pre-parsed fractions: ``bucket = (hash * total) >> 32``."""

    __slots__ = ("ends", "total", "variants")

    def __init__(self, fractions: Sequence[_Fraction]) -> None:
        self.variants = tuple(f.variant for f in fractions)
        ends = []
        total = 0
        for f in fractions:
            total += f.weight
            ends.append(total)
        self.ends = tuple(ends)
        self.total = total

    @classmethod
    def parse(cls, args: Sequence[Any]) -> Bucketer | None:
        """Parse ``[variant, weight]`` pairs; ``None`` when any is malformed."""
        fractions = []
        for arg in args:
            fraction = _parse_fraction(arg)
            if fraction is None:
                return None
            fractions.append(fraction)
        return cls(fractions)

    def pick(self, hash_u32: int) -> Any:
        """The variant whose range holds this hash, or ``None``."""
        total = self.total
        if total <= 0 or total > MAX_WEIGHT_SUM:
            return None
        bucket = (hash_u32 * total) >> 32
        for end, variant in zip(self.ends, self.variants, strict=True):
            if bucket < end:
                return variant
        return None


def fractional(shorthand: Callable[[], tuple[str, Any]], args: Sequence[Any], version: str) -> Any:
    """flagd's ``fractional`` over evaluated arguments, for algorithm ``v2`` or ``v3``.

    Args:
        shorthand: Gives ``(flagKey, targetingKey)``, read only when the arguments hold no
            bucketing value of their own.
        args: The operation's evaluated arguments: an optional bucketing value, then
            ``[variant, weight]`` pairs.
        version: ``"v2"`` (hash of the UTF-8 string) or ``"v3"`` (hash of canonical CBOR).

    Returns:
        The chosen variant, or ``None`` where flagd gives null.

    A non-string targeting key gives ``None`` (the default variant), as in flagd's Go
    evaluator. In ``v2`` a null bucketing value is skipped and the targeting key used
    instead (Go: "parser should ignore nil/missing custom variables"); in ``v3`` it gives
    ``None`` (flagd's ADR "fractional-non-string-rand-units").
    """
    if not args:
        return None
    first = args[0]
    if version == "v2":
        if isinstance(first, str):
            bucket_by: Any = first
            rest = args[1:]
        else:
            flag_key, targeting_key = shorthand()
            if not targeting_key or type(targeting_key) is not str:
                return None
            bucket_by = flag_key + targeting_key
            rest = args[1:] if first is None else args
        if not bucket_by:
            return None
        digest = _hash(bucket_by, signed=False)
    else:
        if not isinstance(first, (list, tuple)):
            bucket_by = first
            rest = args[1:]
        else:
            bucket_by = bucket_value_v3(*shorthand())
            rest = args
        if bucket_by is None:
            return None
        try:
            encoded = canonical_cbor(bucket_by)
        except Exception:
            logger.debug("fractional: cannot encode bucketing value %r", bucket_by)
            return None
        digest = _hash(encoded, signed=False)
    bucketer = Bucketer.parse(rest)
    if bucketer is None:
        return None
    return bucketer.pick(digest)


# -- sem_ver --------------------------------------------------------------------------

_SEMVER = re.compile(
    r"""
    ^(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(?P<patch>0|[1-9]\d*)
    (?:-(?P<prerelease>
        (?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)
        (?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*
    ))?
    (?:\+(?P<build>[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?
    \Z
    """,
    re.VERBOSE | re.ASCII,
)


class SemVer(NamedTuple):
    """A parsed version; ordering follows SemVer 2.0 precedence (build ignored)."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[tuple[int, int, str], ...]  # empty: a release


def _pre_key(identifier: str) -> tuple[int, int, str]:
    if identifier.isdigit():
        normalized = identifier.lstrip("0") or "0"
        return (0, len(normalized), normalized)
    return (1, 0, identifier)


def _compare(a: SemVer, b: SemVer) -> int:
    if a[:3] != b[:3]:
        return -1 if a[:3] < b[:3] else 1
    pa, pb = a.prerelease, b.prerelease
    if pa == pb:
        return 0
    if not pa:
        return 1
    if not pb:
        return -1
    for x, y in zip(pa, pb, strict=False):
        if x != y:
            return -1 if x < y else 1
    return (len(pa) > len(pb)) - (len(pa) < len(pb))


@lru_cache(maxsize=4096)
def _parse_semver_text(text: str) -> SemVer | None:
    version = text[1:] if text.startswith(("v", "V")) else text
    numeric = version.split("-")[0].split("+")[0]
    dots = numeric.count(".")
    if dots < 2:
        version = numeric + ".0" * (2 - dots) + version[len(numeric) :]
    match = _SEMVER.match(version)
    if match is None:
        return None
    pre = match.group("prerelease")
    return SemVer(
        int(match.group("major")),
        int(match.group("minor")),
        int(match.group("patch")),
        tuple(_pre_key(p) for p in pre.split(".")) if pre else (),
    )


def parse_semver(value: Any) -> SemVer | None:
    """Parse a version as flagd does: ``v``/``V`` prefix and partial versions allowed.

    Non-string values are formatted first (``1.2`` -> ``"1.2"``), as flagd's evaluator does.
    Returns ``None`` for anything that is not a valid version.
    """
    text = value if type(value) is str else str(value)
    return _parse_semver_text(text)


_SEMVER_OPS: dict[str, Callable[[SemVer, SemVer], bool]] = {
    "=": lambda a, b: _compare(a, b) == 0,
    "!=": lambda a, b: _compare(a, b) != 0,
    "<": lambda a, b: _compare(a, b) < 0,
    "<=": lambda a, b: _compare(a, b) <= 0,
    ">": lambda a, b: _compare(a, b) > 0,
    ">=": lambda a, b: _compare(a, b) >= 0,
    "^": lambda a, b: a.major == b.major,
    "~": lambda a, b: a.major == b.major and a.minor == b.minor,
}


def sem_ver(args: Sequence[Any]) -> bool | None:
    """``{"sem_ver": [version, op, version]}``; ``None`` on bad arguments."""
    if len(args) != 3:
        return None
    left, op, right = args
    a = parse_semver(left)
    b = parse_semver(right)
    if a is None or b is None:
        return None
    compare = _SEMVER_OPS.get(op) if isinstance(op, str) else None
    if compare is None:
        return None
    return compare(a, b)


def semver_operator(op: Any) -> Callable[[SemVer, SemVer], bool] | None:
    """The comparison for a ``sem_ver`` operator string, or ``None`` if unknown."""
    return _SEMVER_OPS.get(op) if isinstance(op, str) else None


# -- starts_with / ends_with ------------------------------------------------------------


def starts_with(args: Sequence[Any]) -> bool | None:
    """``{"starts_with": [string, prefix]}``; ``None`` unless both are strings."""
    if len(args) != 2:
        return None
    s, prefix = args
    if not isinstance(s, str) or not isinstance(prefix, str):
        return None
    return s.startswith(prefix)


def ends_with(args: Sequence[Any]) -> bool | None:
    """``{"ends_with": [string, suffix]}``; ``None`` unless both are strings."""
    if len(args) != 2:
        return None
    s, suffix = args
    if not isinstance(s, str) or not isinstance(suffix, str):
        return None
    return s.endswith(suffix)

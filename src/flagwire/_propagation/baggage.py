"""flagwire's members of a W3C ``baggage`` header: names, percent-encoding, the signed
message, splitting and merging headers, what an inbound header carried."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from types import MappingProxyType
from typing import Final, NamedTuple
from urllib.parse import quote, unquote

__all__ = ["PREFIX", "Propagated", "merge_baggage", "split_baggage"]

ENCODING_VERSION: Final = "1"
PREFIX: Final = "fw."
FLAG: Final = "fw.f."
W3C_MAX_BYTES: Final = 8192
W3C_MAX_MEMBERS: Final = 180

# RFC 3986 unreserved characters survive; everything else is %XX (so "+" is never a space).
_SAFE: Final = "-._~"
_PLAIN = re.compile(r"[A-Za-z0-9\-._~]*")


_CACHED_MAX: Final = 128
"""Only texts this short are cached (flag keys, variants, versions repeat; a forged 8 KB
value must not fill memory: the caches are bounded in entries and in bytes)."""


@lru_cache(maxsize=4096)
def _encode(text: str) -> str:
    if _PLAIN.fullmatch(text):
        return text
    # A lone surrogate (JSON allows "\ud800") has no UTF-8 form: keep it as its bytes.
    return quote(text, safe=_SAFE, errors="surrogatepass")


@lru_cache(maxsize=4096)
def _decode(text: str) -> str:
    return unquote(text, errors="replace")


def encode(text: str) -> str:
    return _encode(text) if len(text) <= _CACHED_MAX else _encode.__wrapped__(text)


def decode(text: str) -> str:
    if "%" not in text:
        return text
    return _decode(text) if len(text) <= _CACHED_MAX else _decode.__wrapped__(text)


def signed(targeting_key: str, version: str, expires: int, lines: Sequence[str]) -> bytes:
    """What the HMAC covers: the percent-encoded fields and ``key=value`` assignment lines
    (percent-encoding never yields "\\n" or "="), so no two different sets of fields give
    the same message."""
    return "\n".join([ENCODING_VERSION, targeting_key, version, str(expires), *lines]).encode()


class Propagated(NamedTuple):
    """What an inbound ``baggage`` header carried of flagwire's.

    Attributes:
        assignments: Flag key -> variant, empty unless ``trusted``.
        targeting_key: The subject's targeting key, ``None`` unless ``trusted``.
        version: The sender's flag-set version.
        trusted: The members verified against a key and had not expired.
        problem: Why flagwire members were present but not trusted (``None`` if none).
    """

    assignments: Mapping[str, str] = MappingProxyType({})
    targeting_key: str | None = None
    version: str | None = None
    trusted: bool = False
    problem: str | None = None


NOTHING: Final = Propagated()


def split_baggage(header: str) -> list[str]:
    """The list members of a ``baggage`` header, as written (empty ones dropped)."""
    return [m.strip(" \t") for m in header.split(",") if m.strip(" \t")]


def merge_baggage(existing: str | None, ours: Sequence[str]) -> str | None:
    """``existing`` without any flagwire member, plus ``ours`` (which may be empty)."""
    kept = [
        member
        for member in (split_baggage(existing) if existing else ())
        if not member.startswith(PREFIX)
    ]
    merged = kept + list(ours)
    return ",".join(merged) if merged else None

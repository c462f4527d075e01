"""The wire format of flag assignments in W3C ``baggage`` (encoding version 2).

Members, all ordinary baggage that any OpenTelemetry SDK reads and forwards::

    fw.ver=2                          encoding version
    fw.tk=<targeting key>             the subject the decisions were made for
    fw.fs=<flag-set version>          the deciding service's flag-set version
    fw.exp=<unix seconds>             not honoured after this time
    fw.a0=<key>~<variant>~<key>~...   the assignments, packed (fw.a1, ... past 4 KB)
    fw.sig=<key id>.<HMAC>            HMAC-SHA256, see :func:`signed_message`

Fields are percent-encoded (RFC 3986 unreserved characters stay as they are; flagwire
never writes a literal ``+``, so a ``+`` that arrives is a space an SDK re-encoded, as
OpenTelemetry Python's ``quote_plus`` does). In a packed member each key and variant is
percent-encoded once more, so the value an SDK decodes is ``key~variant~...`` with no
``~`` inside a key or variant: any faithful decode and re-encode keeps the structure.
Version 1 (one ``fw.f.<key>=<variant>`` member per assignment) is still read.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from re import compile as _re
from typing import Final
from urllib.parse import quote, unquote, unquote_plus

__all__ = [
    "ENCODING_VERSION",
    "LEGACY_VERSION",
    "MAX_MEMBER_BYTES",
    "PACKED",
    "W3C_MAX_BYTES",
    "W3C_MAX_MEMBERS",
    "decode_text",
    "encode_text",
    "packed_piece",
    "signed_message",
    "unpack",
]

ENCODING_VERSION: Final = "2"
LEGACY_VERSION: Final = "1"
PACKED: Final = "fw.a"
W3C_MAX_BYTES: Final = 8192
W3C_MAX_MEMBERS: Final = 180
MAX_MEMBER_BYTES: Final = 4096
"""OpenTelemetry's SDKs drop a list member longer than this."""

_SAFE: Final = "-._~"
_PLAIN = _re(r"[A-Za-z0-9\-._~]*")


_CACHED_MAX: Final = 128
"""Only texts this short are cached: flag keys, variants and versions repeat across
requests, and a forged 8 KB value must not fill memory (every cache here is bounded in
entries and, through this, in bytes)."""


def _encode(text: str) -> str:
    if _PLAIN.fullmatch(text):
        return text
    # A lone surrogate (JSON allows "\ud800") has no UTF-8 form: kept as its bytes.
    return quote(text, safe=_SAFE, errors="surrogatepass")


def _decode(text: str) -> str:
    return unquote_plus(text, errors="replace") if "%" in text or "+" in text else text


def _token(text: str) -> str:
    # "~" separates the tokens; quote() always keeps it, so it is escaped by hand.
    return quote(text, safe="-._", errors="surrogatepass").replace("~", "%7E")


_encode_cached = lru_cache(maxsize=4096)(_encode)
_decode_cached = lru_cache(maxsize=4096)(_decode)
_token_cached = lru_cache(maxsize=4096)(_token)
_untoken_cached = lru_cache(maxsize=4096)(unquote)


def encode_text(text: str) -> str:
    """Percent-encode all but RFC 3986 unreserved characters (canonical: one form)."""
    return _encode_cached(text) if len(text) <= _CACHED_MAX else _encode(text)


def decode_text(text: str) -> str:
    """Undo :func:`encode_text`, or any faithful re-encoding of it (``+`` for a space);
    never raises (bytes that are not UTF-8 become U+FFFD)."""
    return _decode_cached(text) if len(text) <= _CACHED_MAX else _decode(text)


_PIECES: dict[tuple[str, str], str] = {}
_LINES: dict[tuple[str, str], str] = {}
_PAIRS_MAX: Final = 8192  # flag keys and variants: a flag set's worth, or an attacker's


def _remember(cache: dict[tuple[str, str], str], pair: tuple[str, str], text: str) -> str:
    if len(pair[0]) + len(pair[1]) <= _CACHED_MAX and len(cache) < _PAIRS_MAX:
        cache[pair] = text
    return text


def packed_piece(key: str, variant: str) -> str:
    """One assignment as it is written inside a packed member's value."""
    pair = (key, variant)
    return _PIECES.get(pair) or _remember(
        _PIECES, pair, encode_text(_tokenised(key)) + "~" + encode_text(_tokenised(variant))
    )


def _tokenised(text: str) -> str:
    return _token_cached(text) if len(text) <= _CACHED_MAX else _token(text)


def _untoken(text: str) -> str:
    if len(text) > _CACHED_MAX:
        return unquote(text, errors="replace")
    return _untoken_cached(text)


@lru_cache(maxsize=256)  # the same sets of decisions arrive again and again (<= 1 MB held)
def _unpack(value: str) -> tuple[tuple[str, str], ...] | None:
    tokens = decode_text(value).split("~")
    if len(tokens) % 2:
        return None
    return tuple((_untoken(k), _untoken(v)) for k, v in zip(tokens[::2], tokens[1::2], strict=True))


def unpack(value: str) -> tuple[tuple[str, str], ...] | None:
    """The ``(key, variant)`` pairs of a packed member's value; ``None`` if malformed."""
    return _unpack(value) if len(value) <= MAX_MEMBER_BYTES else _unpack.__wrapped__(value)


def _line(pair: tuple[str, str]) -> str:
    return _LINES.get(pair) or _remember(
        _LINES, pair, encode_text(pair[0]) + "=" + encode_text(pair[1])
    )


def signed_message(
    version: str, targeting_key: str, flagset: str, expires: int, pairs: Iterable[tuple[str, str]]
) -> bytes:
    """What the HMAC covers: the decoded values in canonical form.

    The encoding version, targeting key, flag-set version, expiry and one ``key=variant``
    line per assignment (``pairs``, sorted by key), each field :func:`encode_text`-ed, one per line.
    Canonical encoding never yields a newline or ``=``, so no field can be shifted into
    another; and since only decoded values count, a hop that re-encodes the members
    (``%20`` or ``+``) or reorders them changes nothing.
    """
    lines = [_LINES.get(pair) or _line(pair) for pair in pairs]
    head = [version, encode_text(targeting_key), encode_text(flagset), str(expires)]
    return "\n".join([*head, *lines]).encode()

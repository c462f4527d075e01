"""flagwire's members among a W3C ``baggage`` header's: their prefix, splitting and merging
headers, what an inbound header carried (the wire format itself is in ``codec``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final, NamedTuple

__all__ = ["PREFIX", "Propagated", "merge_baggage", "split_baggage"]

PREFIX: Final = "fw."
FLAG: Final = "fw.f."  # encoding version 1: one member per assignment


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

"""Flag assignments in W3C ``baggage``: encoding, signing, trust, destinations.

A request's decisions travel to the services it calls as ``baggage`` list members that
any OpenTelemetry SDK can read; the wire format is in :mod:`flagwire._propagation.codec`.
The HMAC covers the version, the targeting key, the flag-set version, the expiry and every
assignment, so none of them can be changed, added, removed or replayed for another subject.
A receiver honours members only if one of its keys verifies them and they have not
expired; everything else of flagwire's is dropped and not forwarded. Members that are not
flagwire's are never touched.

The sender keeps its members within flagwire's caps, and the whole header (the app's own
members included) within the W3C limits of 8192 bytes and 180 members: when assignments do
not fit, whole assignments are dropped in a deterministic order (by flag key, the last ones
first) and counted; the app's members are never touched.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from flagwire._errors import ConfigError

from .baggage import FLAG, NOTHING, PREFIX, Propagated, merge_baggage, split_baggage
from .codec import (
    ENCODING_VERSION,
    LEGACY_VERSION,
    MAX_MEMBER_BYTES,
    PACKED,
    W3C_MAX_BYTES,
    W3C_MAX_MEMBERS,
    decode_text,
    encode_text,
    packed_piece,
    signed_message,
    unpack,
)
from .destinations import Destinations
from .signing import KEYS_ENV, KeyRing

__all__ = ["Propagation", "default_propagation", "set_default_propagation"]

logger = logging.getLogger("flagwire")

_SIGNATURE_MEMBER_BYTES: Final = 44  # ",fw.sig=" minus the comma + 4-char id + "." + 32 hex


class RateLimitedLog:
    """A warning logged at most once per ``interval`` seconds, with how many so far."""

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self.count = 0
        self._last = 0.0
        self._lock = threading.Lock()

    def __call__(self, message: str, *args: object) -> None:
        with self._lock:
            self.count += 1
            now = time.monotonic()
            if now - self._last < self.interval:
                return
            self._last = now
            count = self.count
        logger.warning(message + " (%d so far)", *args, count)


class Propagation:
    """How a service sends and receives flag assignments in ``baggage``.

    Args:
        keys: A :class:`KeyRing`, a list of secrets, or ``None`` to read
            ``$FLAGWIRE_PROPAGATION_KEYS``. Without keys nothing is sent and nothing
            received is honoured (and the first use logs how to enable it).
        allowed_hosts: Host patterns (``fnmatch``; ``*.internal``, ``payments``,
            ``10.*``) that get flag baggage; default ``$FLAGWIRE_PROPAGATION_HOSTS``
            (comma-separated) or :data:`DEFAULT_ALLOWED_HOSTS`. Single-label host names
            (``payments``) are always allowed unless ``allow_single_label=False``.
        accept_inbound: Honour trusted inbound assignments. ``False`` for an edge service
            that only sends: every inbound flagwire member is ignored (and never
            forwarded), whoever signed it.
        ttl: Seconds a sent assignment stays valid (a bound on replay).
        max_bytes: flagwire's cap on the whole header it writes (at most 8192).
        max_members: flagwire's cap on its members (the W3C limit is 180 for all).
        clock: Seconds since the epoch (tests).
    """

    def __init__(
        self,
        keys: KeyRing | Sequence[str | bytes] | None = None,
        *,
        allowed_hosts: Sequence[str] | None = None,
        allow_single_label: bool = True,
        accept_inbound: bool = True,
        ttl: int = 300,
        max_bytes: int = 4096,
        max_members: int = 64,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if keys is None:
            self.keys = KeyRing.from_env()
        elif isinstance(keys, KeyRing):
            self.keys = keys
        else:
            self.keys = KeyRing(keys)
        if not 0 < max_bytes <= W3C_MAX_BYTES or not 5 < max_members <= W3C_MAX_MEMBERS:
            raise ConfigError(
                f"propagation caps must be within the W3C limits ({W3C_MAX_BYTES} bytes, "
                f"{W3C_MAX_MEMBERS} members) and leave room for the header members"
            )
        self.destinations = Destinations(allowed_hosts, allow_single_label)
        self.allowed_hosts = self.destinations.allowed_hosts
        self.allow_single_label = allow_single_label
        self.accept_inbound = accept_inbound
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.max_members = max_members
        self.clock = clock
        self.dropped = 0
        """Assignments left out of outbound headers because of the caps (a counter)."""
        self.rejected = 0
        """Inbound headers whose flagwire members were not trusted (a counter)."""
        self._warn = RateLimitedLog()
        self._told_disabled = False

    @property
    def enabled(self) -> bool:
        """Whether there are keys (else nothing is sent or honoured)."""
        return self.keys is not None

    def explain_disabled(self) -> None:
        """Log once that propagation is off, and how to turn it on."""
        if self.keys is None and not self._told_disabled:
            self._told_disabled = True
            logger.warning(
                "flagwire: flag propagation is off: no keys. Set %s (comma-separated "
                "secrets, the same on every service) or pass Propagation(keys=[...]) to "
                "send signed assignments to downstream services and honour upstream ones.",
                KEYS_ENV,
            )

    def allows(self, host: str | None) -> bool:
        """Whether a destination host (``host`` or ``host:port``) gets flag baggage."""
        return self.destinations.allows(host)

    # -- outbound ----------------------------------------------------------------------------

    def encode(
        self,
        assignments: Mapping[str, str],
        targeting_key: str | None,
        version: str,
        existing: str | None = None,
    ) -> list[str]:
        """The ``baggage`` list members for these assignments (signed), or ``[]``.

        Nothing is sent without keys or without a targeting key. Assignments that do not
        fit are dropped whole, the last flag keys first, and counted: flagwire's members
        stay within its caps, and with ``existing`` (the app's own baggage, which is kept)
        the whole header stays within the W3C limits.
        """
        if self.keys is None or not targeting_key or not assignments:
            return []
        max_bytes, max_members = self.max_bytes, self.max_members
        app = [m for m in split_baggage(existing) if not m.startswith(PREFIX)] if existing else []
        if app:
            max_bytes = min(max_bytes, W3C_MAX_BYTES - len(",".join(app).encode()) - 1)
            max_members = min(max_members, W3C_MAX_MEMBERS - len(app))
        expires = int(self.clock()) + self.ttl
        head = [
            f"fw.ver={ENCODING_VERSION}",
            f"fw.tk={encode_text(targeting_key)}",
            f"fw.fs={encode_text(version)}",
            f"fw.exp={expires}",
        ]
        ordered = sorted(assignments.items())
        budget = max_bytes - sum(map(len, head)) - len(head) - _SIGNATURE_MEMBER_BYTES
        room = max_members - len(head) - 1
        pieces = [packed_piece(k, v) for k, v in ordered]
        packed = "~".join(pieces)
        if room >= 1 and len(packed) + 7 <= min(budget, MAX_MEMBER_BYTES):
            # The usual case: all of them in one member ("fw.a0=" and a comma).
            signature = self.keys.sign(
                signed_message(ENCODING_VERSION, targeting_key, version, expires, ordered)
            )
            return [*head, f"{PACKED}0={packed}", f"fw.sig={signature}"]
        chunks: list[list[str]] = []
        size = 0  # the current packed member's length
        for piece in pieces:
            grow = bool(chunks) and size + 1 + len(piece) <= MAX_MEMBER_BYTES
            opening = 0 if grow else len(f"{PACKED}{len(chunks)}=")
            cost = 1 + opening + len(piece)  # a "~" or a ",", then the piece
            if cost > budget or (
                not grow and (len(chunks) >= room or opening + len(piece) > MAX_MEMBER_BYTES)
            ):
                break
            budget -= cost
            if grow:
                chunks[-1].append(piece)
                size += 1 + len(piece)
            else:
                chunks.append([piece])
                size = opening + len(piece)
        kept = sum(map(len, chunks))
        if kept < len(ordered):
            self.dropped += len(ordered) - kept
            self._warn(
                "flagwire: %d assignments did not fit the baggage limits and were not sent",
                len(ordered) - kept,
            )
        if kept == 0:  # nothing fits (a huge targeting key, or the app's baggage is full)
            return []
        signature = self.keys.sign(
            signed_message(ENCODING_VERSION, targeting_key, version, expires, ordered[:kept])
        )
        members = [f"{PACKED}{i}=" + "~".join(chunk) for i, chunk in enumerate(chunks)]
        return [*head, *members, f"fw.sig={signature}"]

    def header(
        self,
        assignments: Mapping[str, str],
        targeting_key: str | None,
        version: str,
        existing: str | None = None,
    ) -> str | None:
        """A whole ``baggage`` value: ``existing`` (minus any flagwire members) plus ours."""
        return merge_baggage(existing, self.encode(assignments, targeting_key, version, existing))

    # -- inbound ------------------------------------------------------------------------------

    def decode(self, header: str | None) -> Propagated:
        """flagwire's part of an inbound ``baggage`` header, verified.

        Never raises: a malformed, oversized, unsigned, badly signed or expired header gives
        an untrusted result (counted, and logged at most once a minute).
        """
        if not header or PREFIX not in header:
            return NOTHING
        if not self.accept_inbound:
            return Propagated(problem="inbound flagwire baggage is not accepted here")
        try:
            return self._decode(header)
        except Exception:  # decoding never fails a request, whatever the header holds
            return self._reject("a malformed flagwire baggage header")

    def _decode(self, header: str) -> Propagated:
        if len(header) > W3C_MAX_BYTES:
            return self._reject("an oversized baggage header")
        fields: dict[str, str] = {}
        flags: dict[str, str] = {}
        legacy = packed = False
        spaced = " " in header or "\t" in header
        for member in header.split(","):
            if spaced:
                member = member.strip(" \t")
            if not member.startswith(PREFIX):
                continue
            key, sep, value = member.partition("=")
            if not sep:
                return self._reject("a malformed flagwire baggage member")
            if ";" in value:
                value = value.split(";", 1)[0]  # properties are not ours
            if spaced:
                key, value = key.strip(" \t"), value.strip(" \t")
            if key.startswith(FLAG):
                pairs: Sequence[tuple[str, str]] | None = [
                    (decode_text(key[5:]), decode_text(value))
                ]
                legacy = True
            elif key.startswith(PACKED) and key[4:].isdigit():
                pairs = unpack(value)
                packed = True
            else:
                pairs = None
                if key in fields:
                    return self._reject("a repeated flagwire baggage member")
                fields[key] = value
                continue
            if pairs is None:
                return self._reject("a malformed flagwire assignment member")
            count = len(flags) + len(pairs)
            flags.update(pairs)
            if len(flags) != count:
                return self._reject("a repeated flagwire assignment")
        if self.keys is None:
            self.explain_disabled()
            return Propagated(problem="no propagation keys")
        signature = fields.get("fw.sig")
        encoding = fields.get("fw.ver")
        expected = LEGACY_VERSION if legacy else ENCODING_VERSION
        if encoding != expected or (legacy and packed) or not signature:
            return self._reject("unsigned or unknown-version flagwire baggage")
        try:
            expires = int(fields.get("fw.exp", ""))
        except ValueError:
            return self._reject("flagwire baggage without a valid expiry")
        targeting_key = decode_text(fields.get("fw.tk", ""))
        version = decode_text(fields.get("fw.fs", ""))
        message = signed_message(encoding, targeting_key, version, expires, sorted(flags.items()))
        if not self.keys.verify(message, signature):
            return self._reject("flagwire baggage with a bad signature")
        if expires < self.clock():
            return self._reject("expired flagwire baggage")
        return Propagated(flags, targeting_key or None, version or None, True)

    def _reject(self, what: str) -> Propagated:
        self.rejected += 1
        self._warn(
            "flagwire: ignored %s from upstream; this service decides those flags itself. "
            "If the sender is one of your services, give both the same keys (%s, first key "
            "signs, every key verifies) and check their clocks",
            what,
            KEYS_ENV,
        )
        return Propagated(problem=what)


_default: Propagation | None = None
_default_lock = threading.Lock()


def default_propagation() -> Propagation:
    """The process-wide :class:`Propagation` (from the environment unless set)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Propagation()
    return _default


def set_default_propagation(propagation: Propagation | None) -> None:
    """Set the process-wide :class:`Propagation` (``None``: read the environment again)."""
    global _default
    _default = propagation

"""Flag assignments in W3C ``baggage``: encoding, signing, trust, destinations.

A request's decisions travel to the services it calls as ``baggage`` list members that
any OpenTelemetry SDK can read (encoding version 1)::

    fw.ver=1                          encoding version
    fw.tk=<targeting key>             the subject the decisions were made for
    fw.fs=<flag-set version>          the deciding service's flag-set version
    fw.exp=<unix seconds>             not honoured after this time
    fw.f.<flag key>=<variant>         one member per assignment
    fw.sig=<key id>.<HMAC>            HMAC-SHA256 over all of the above

Keys and values are percent-encoded (RFC 3986 unreserved characters stay as they are, so
``unquote``/``unquote_plus`` in any SDK give them back). The HMAC covers the version, the
targeting key, the flag-set version, the expiry and every assignment, so none of them can
be changed, added, removed or replayed for another subject. A receiver honours members only
if one of its keys verifies them and they have not expired; everything else of flagwire's is
dropped and not forwarded. Members that are not flagwire's are never touched.

The sender keeps the header within flagwire's cap (bytes and members, inside the W3C limits
of 8192 bytes and 180 members): when assignments do not fit, whole assignments are dropped
in a deterministic order (by flag key, the last ones first) and counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from flagwire._errors import ConfigError

from .baggage import (
    ENCODING_VERSION,
    FLAG,
    NOTHING,
    PREFIX,
    W3C_MAX_BYTES,
    W3C_MAX_MEMBERS,
    Propagated,
    decode,
    encode,
    merge_baggage,
    signed,
)
from .destinations import Destinations
from .signing import KEYS_ENV, KeyRing

__all__ = ["Propagation", "default_propagation", "set_default_propagation"]

logger = logging.getLogger("flagwire")


class _RateLimitedLog:
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
        self._warn = _RateLimitedLog()
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
        self, assignments: Mapping[str, str], targeting_key: str | None, version: str
    ) -> list[str]:
        """The ``baggage`` list members for these assignments (signed), or ``[]``.

        Nothing is sent without keys or without a targeting key. Assignments that do not
        fit flagwire's caps are dropped whole, the last flag keys first, and counted.
        """
        if self.keys is None or not targeting_key or not assignments:
            return []
        expires = int(self.clock()) + self.ttl
        etk, eversion = encode(targeting_key), encode(version)
        head = [
            f"fw.ver={ENCODING_VERSION}",
            f"fw.tk={etk}",
            f"fw.fs={eversion}",
            f"fw.exp={expires}",
        ]
        lines = [encode(k) + "=" + encode(v) for k, v in sorted(assignments.items())]
        encoded = ["fw.f." + line for line in lines]
        # the signature member is "fw.sig=" + 4-char id + "." + 32 hex digits
        budget = self.max_bytes - sum(map(len, head)) - len(head) - 44
        room = self.max_members - len(head) - 1
        keep = len(encoded)
        if keep > room or sum(map(len, encoded)) + keep > budget:
            keep = used = 0
            for member in encoded:
                if keep >= room or used + len(member) + 1 > budget:
                    break
                used += len(member) + 1
                keep += 1
        if keep == 0:  # nothing fits (a huge targeting key or version): send nothing
            self.dropped += len(encoded)
            self._warn(
                "flagwire: no assignment fits the baggage cap; %d were not sent", len(encoded)
            )
            return []
        if keep < len(encoded):
            self.dropped += len(encoded) - keep
            self._warn(
                "flagwire: %d assignments did not fit the baggage caps and were not sent",
                len(encoded) - keep,
            )
            lines, encoded = lines[:keep], encoded[:keep]
        signature = self.keys.sign(signed(etk, eversion, expires, lines))
        return [*head, *encoded, f"fw.sig={signature}"]

    def header(
        self,
        assignments: Mapping[str, str],
        targeting_key: str | None,
        version: str,
        existing: str | None = None,
    ) -> str | None:
        """A whole ``baggage`` value: ``existing`` (minus any flagwire members) plus ours."""
        return merge_baggage(existing, self.encode(assignments, targeting_key, version))

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
        raw: list[str] = []  # as received, for the fast signature check
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
                encoded_name = key[5:]  # after "fw.f."
                name = decode(encoded_name)
                if name in flags:
                    return self._reject("a repeated flagwire assignment")
                flags[name] = decode(value)
                raw.append(encoded_name + "=" + value)
            elif key in fields:
                return self._reject("a repeated flagwire baggage member")
            else:
                fields[key] = value
        if self.keys is None:
            self.explain_disabled()
            return Propagated(problem="no propagation keys")
        signature = fields.get("fw.sig")
        if fields.get("fw.ver") != ENCODING_VERSION or not signature:
            return self._reject("unsigned or unknown-version flagwire baggage")
        try:
            expires = int(fields.get("fw.exp", ""))
        except ValueError:
            return self._reject("flagwire baggage without a valid expiry")
        raw_tk, raw_fs = fields.get("fw.tk", ""), fields.get("fw.fs", "")
        targeting_key, version = decode(raw_tk), decode(raw_fs)
        # As sent by flagwire (sorted, canonical) first; else over the canonical encoding of
        # what was decoded, so a hop that re-encodes or reorders the members (an
        # OpenTelemetry SDK passing baggage through) changes nothing.
        keys = self.keys
        if not keys.verify(signed(raw_tk, raw_fs, expires, raw), signature):
            lines = [encode(k) + "=" + encode(v) for k, v in sorted(flags.items())]
            message = signed(encode(targeting_key), encode(version), expires, lines)
            if not keys.verify(message, signature):
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

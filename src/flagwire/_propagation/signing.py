"""Signing flag baggage: HMAC-SHA256 with a ring of keys (:class:`KeyRing`)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Iterable
from typing import Final

from flagwire._errors import ConfigError

__all__ = ["KEYS_ENV", "KeyRing"]

KEYS_ENV: Final = "FLAGWIRE_PROPAGATION_KEYS"

_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


class _HmacSha256:
    """HMAC-SHA256 (RFC 2104) with the key's pads hashed once, not per message."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))

    def __call__(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


class KeyRing:
    """Shared secrets for signing propagated assignments.

    The first key signs; every key verifies, so keys can be rotated: add the new key
    second everywhere, then move it first, then remove the old one.

    Args:
        keys: The secrets (at least 16 bytes each is sensible).

    Raises:
        ConfigError: No keys, or an empty key.
    """

    __slots__ = ("_by_id", "_signing")

    def __init__(self, keys: Iterable[str | bytes]) -> None:
        secrets = [k.encode() if isinstance(k, str) else bytes(k) for k in keys]
        if not secrets or any(not k for k in secrets):
            raise ConfigError("a propagation key ring needs at least one non-empty key")
        ids = [self._key_id(k) for k in secrets]
        self._signing = (ids[0], _HmacSha256(secrets[0]))
        self._by_id: dict[str, list[_HmacSha256]] = {}
        for kid, secret in zip(ids, secrets, strict=True):
            self._by_id.setdefault(kid, []).append(_HmacSha256(secret))

    @staticmethod
    def _key_id(secret: bytes) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(secret).digest()[:3]).decode()

    @classmethod
    def from_env(cls, variable: str = KEYS_ENV) -> KeyRing | None:
        """The key ring in ``$FLAGWIRE_PROPAGATION_KEYS`` (comma-separated), or None."""
        raw = os.environ.get(variable, "")
        keys = [k.strip() for k in raw.split(",") if k.strip()]
        return cls(keys) if keys else None

    def sign(self, message: bytes) -> str:
        """``<key id>.<first 128 bits of HMAC-SHA256, hex>`` with the signing key."""
        kid, mac = self._signing
        return f"{kid}.{mac(message)[:16].hex()}"

    def verify(self, message: bytes, signature: str) -> bool:
        """Whether any key with the signature's key id made it."""
        kid, _, given = signature.partition(".")
        if not given.isascii():  # compare_digest takes ASCII text only; no HMAC is other
            return False
        for mac in self._by_id.get(kid, ()):
            if hmac.compare_digest(mac(message)[:16].hex(), given):
                return True
        return False

    def __repr__(self) -> str:
        return f"<KeyRing signing={self._signing[0]} keys={sum(map(len, self._by_id.values()))}>"

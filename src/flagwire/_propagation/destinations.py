"""Which destinations get flag baggage: the outbound allowlist.

Every outbound path (the httpx and requests adapters, :func:`~flagwire.propagation.inject`,
the OpenTelemetry propagator, redirects) asks :meth:`Destinations.allows`, which compares
one canonical form of the host (:func:`normalise_host`) with the patterns: IDNA/UTS-46
names in lower case without the trailing dot, IPv4 literals in every form ``inet_aton``
accepts (``134744072``, ``0x8080808``, ``010.0.0.1``, ``10.1``) as dotted quads, IPv6
literals compressed (IPv4-mapped ones as their IPv4 address). A host that is none of these
(a space, a backslash, an empty label, a numeric last label that is no address) gets none.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Sequence
from typing import Final

__all__ = ["DEFAULT_ALLOWED_HOSTS", "HOSTS_ENV", "Destinations", "normalise_host"]

DEFAULT_ALLOWED_HOSTS: Final = (
    "localhost",
    "127.0.0.1",
    "::1",
    "*.internal",
    "*.local",
    "*.localdomain",
    "*.svc",
    "*.cluster.local",
)
"""Destinations that get flag baggage by default: loopback, single-label names (service
names in Docker and Kubernetes) and cluster-internal domains. Anything else gets none."""

HOSTS_ENV: Final = "FLAGWIRE_PROPAGATION_HOSTS"

_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")
_IPV4_PATTERN = re.compile(r"[0-9.*?]*[0-9][0-9.*?]*")
_CACHE_MAX: Final = 4096


def _to_ascii(name: str) -> str | None:
    try:
        import idna as uts46  # UTS-46, as httpx and requests (which bring it) map names
    except ImportError:  # pragma: no cover - encodings.idna: IDNA 2003 mapping
        uts46 = None  # type: ignore[assignment]
    try:
        if uts46 is not None:
            return str(uts46.encode(name, uts46=True, std3_rules=False).decode("ascii"))
        return name.encode("idna").decode("ascii")
    except (UnicodeError, ValueError):
        return None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if ":" in text:
        try:
            address = ipaddress.IPv6Address(text.split("%", 1)[0])
        except ValueError:
            return None
        mapped = address.ipv4_mapped
        return mapped if mapped is not None else address
    try:
        packed = socket.inet_aton(text)  # every form the system resolver takes as an address
    except OSError:
        return None
    return ipaddress.IPv4Address(packed)


def normalise_host(host: str | None) -> str | None:
    """The canonical form of a destination host, or ``None`` if it is no valid host.

    Takes ``host``, ``host:port``, ``[v6]:port``, ``user@host`` and bare IPv6 literals.
    """
    if not host:
        return None
    name = host.rsplit("@", 1)[-1].strip()
    if name.startswith("["):
        end = name.find("]")
        if end < 0:
            return None
        name = name[1:end]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if ":" in name:
        address = _ip(name)
        return None if address is None else str(address)
    if not name.isascii():
        name = _to_ascii(name) or ""
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    if not _NAME.fullmatch(name):
        return None
    address = _ip(name)
    if address is not None:
        return str(address)
    if _NUMERIC_LABEL.fullmatch(name.rsplit(".", 1)[-1]):
        return None  # looks like an address to some resolvers, is none to inet_aton
    return name


def _matcher(pattern: str) -> Callable[[str, bool], bool] | None:
    """A test ``(canonical host, is an IP) -> bool`` for one allowlist pattern."""
    text = pattern.strip().lower()
    if not text:
        return None
    if text == "*":
        return lambda host, is_ip: True
    if "/" in text:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            return None
        return lambda host, is_ip: is_ip and ipaddress.ip_address(host) in network
    if ":" in text or _IPV4_PATTERN.fullmatch(text):
        if not any(c in text for c in "*?["):
            exact = normalise_host(text)
            return None if exact is None else (lambda host, is_ip: is_ip and host == exact)
        return lambda host, is_ip: is_ip and fnmatch.fnmatchcase(host, text)
    if text.endswith("."):
        text = text[:-1]
    if not text.isascii():
        labels = [label if "*" in label else _to_ascii(label) for label in text.split(".")]
        if None in labels:
            return None
        text = ".".join(label or "" for label in labels)
    return lambda host, is_ip: not is_ip and fnmatch.fnmatchcase(host, text)


class Destinations:
    """An allowlist of destination hosts.

    Args:
        patterns: Host patterns, or ``None`` for ``$FLAGWIRE_PROPAGATION_HOSTS``
            (comma-separated) or :data:`DEFAULT_ALLOWED_HOSTS`. A name pattern
            (``fnmatch``: ``*.internal``, ``payments``) matches host names only; an address
            pattern (``10.*``, ``10.0.0.0/8``, ``::1``) matches IP literals only, so
            ``10.*`` never matches ``10.attacker.example``.
        allow_single_label: Also allow single-label host names (service names), never
            numeric ones (``134744072`` is an IPv4 address).
    """

    def __init__(self, patterns: Sequence[str] | None, allow_single_label: bool) -> None:
        if patterns is None:
            env = os.environ.get(HOSTS_ENV, "")
            patterns = [h.strip() for h in env.split(",") if h.strip()] or list(
                DEFAULT_ALLOWED_HOSTS
            )
        self.allowed_hosts = tuple(h.lower() for h in patterns)
        self.allow_single_label = allow_single_label
        self._matchers = tuple(m for m in map(_matcher, self.allowed_hosts) if m is not None)
        self._allowed_cache: dict[str, bool] = {}

    def allows(self, host: str | None) -> bool:
        """Whether a destination host (``host``, ``host:port``, ``[v6]:port``) gets flag
        baggage."""
        if not host:
            return False
        cached = self._allowed_cache.get(host)
        if cached is not None:
            return cached
        allowed = self._allows(normalise_host(host))
        if len(self._allowed_cache) < _CACHE_MAX and len(host) <= 300:
            self._allowed_cache[host] = allowed
        return allowed

    def _allows(self, name: str | None) -> bool:
        if name is None:
            return False
        is_ip = _ip(name) is not None
        if any(match(name, is_ip) for match in self._matchers):
            return True
        return self.allow_single_label and not is_ip and "." not in name

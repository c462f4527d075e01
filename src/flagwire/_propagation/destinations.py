"""Which destinations get flag baggage: the outbound allowlist."""

from __future__ import annotations

import fnmatch
import ipaddress
import os
from collections.abc import Sequence
from typing import Final

__all__ = ["DEFAULT_ALLOWED_HOSTS", "HOSTS_ENV", "Destinations"]

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


class Destinations:
    """An allowlist of destination hosts.

    Args:
        patterns: Host patterns (``fnmatch``), or ``None`` for ``$FLAGWIRE_PROPAGATION_HOSTS``
            (comma-separated) or :data:`DEFAULT_ALLOWED_HOSTS`.
        allow_single_label: Also allow single-label host names (service names).
    """

    def __init__(self, patterns: Sequence[str] | None, allow_single_label: bool) -> None:
        if patterns is None:
            env = os.environ.get(HOSTS_ENV, "")
            patterns = [h.strip() for h in env.split(",") if h.strip()] or list(
                DEFAULT_ALLOWED_HOSTS
            )
        self.allowed_hosts = tuple(h.lower() for h in patterns)
        self.allow_single_label = allow_single_label
        self._allowed_cache: dict[str, bool] = {}

    def allows(self, host: str | None) -> bool:
        """Whether a destination host (``host`` or ``host:port``) gets flag baggage."""
        if not host:
            return False
        cached = self._allowed_cache.get(host)
        if cached is not None:
            return cached
        name = host.lower()
        if name.startswith("["):  # [::1]:8080
            name = name[1 : name.find("]")] if "]" in name else name
        elif name.count(":") == 1:
            name = name.split(":", 1)[0]
        allowed = any(fnmatch.fnmatchcase(name, pattern) for pattern in self.allowed_hosts)
        if not allowed and self.allow_single_label and "." not in name and ":" not in name:
            allowed = bool(name) and not _is_ip(name)
        if len(self._allowed_cache) < 4096:
            self._allowed_cache[host] = allowed
        return allowed


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True

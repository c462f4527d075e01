"""What the Redis end-to-end apps share: a :class:`~flagwire.RedisSource` on
``$FLAGWIRE_REDIS_URL`` (cached at ``$FLAGWIRE_FLAGS_CACHE``), and when this worker last
swapped its flag set, so ``tests/test_e2e_redis.py`` can tell every worker apart."""

from __future__ import annotations

import os
import time
from typing import Any

from flagwire import FlagSet, RedisSource, RequestFlags, context

source = RedisSource(
    os.environ["FLAGWIRE_REDIS_URL"],
    cache_path=os.environ.get("FLAGWIRE_FLAGS_CACHE"),
    resync_interval=5.0,
)
user_context = context.headers({"x-user-id": "targetingKey", "x-plan": "plan"})
swapped_at = time.time()


def _on_change(old: FlagSet, new: FlagSet) -> None:
    global swapped_at
    swapped_at = time.time()


source.subscribe(_on_change)


def answer(flags: RequestFlags) -> dict[str, Any]:
    """The variant of ``new-checkout`` this worker serves, its pid and flag-set version."""
    return {
        "pid": os.getpid(),
        "variant": flags.details("new-checkout", False).variant,
        "version": flags.flagset.version_label,
        "swapped_at": swapped_at,
    }


def health() -> dict[str, Any]:
    status = source.status
    return {
        "pid": os.getpid(),
        "ok": status.ok,
        "flags_version": status.version,
        "error": status.last_error,
        "from_cache": source.from_cache,
    }

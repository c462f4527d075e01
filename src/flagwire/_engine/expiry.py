"""Flag expiry (``metadata.expires``): the day a flag expires, and one warning per
process per expired flag."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import date, datetime, timezone
from typing import Final

from flagwire._types import MetadataValue

from .definitions import FlagDefinition
from .pacing import paced

__all__ = ["expiry_date", "warn_expired"]

logger = logging.getLogger("flagwire")


_WARNED_EXPIRED: Final[set[str]] = set()


def expiry_date(value: object) -> date | None:
    """The day of a ``metadata.expires`` value (an ISO date, or the date part of an ISO
    timestamp), or ``None`` if it is not one. A flag expires at the end of that day (UTC)."""
    if not isinstance(value, str):
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def warn_expired(flags: Mapping[str, FlagDefinition], owner: MetadataValue | None) -> None:
    """Log each flag past its ``expires`` day, once per process per flag key."""
    today: date | None = None
    for key, definition in paced(flags.items()):
        if key in _WARNED_EXPIRED:
            continue
        day = expiry_date(definition.metadata.get("expires"))
        if day is None:
            continue
        if today is None:
            today = datetime.now(timezone.utc).date()
        if day < today:
            _WARNED_EXPIRED.add(key)
            logger.warning(
                'flag "%s" expired on %s (owner: %s); remove it or extend expires',
                key,
                day.isoformat(),
                definition.metadata.get("owner", owner) or "none",
            )

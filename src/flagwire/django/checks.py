"""``manage.py check``: what is wrong with ``settings.FLAGWIRE``, before the first request.

Errors (``flagwire.E001`` ...) for a setting the middleware cannot start with or a flag file
that does not load; warnings (``flagwire.W001`` ...) for what is probably a mistake.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core import checks

from flagwire._engine.flagset import FlagSet
from flagwire._errors import ConfigError, FlagsetError

from .conf import KEYS, resolve, setting

__all__ = ["check_settings"]

MIDDLEWARE = "flagwire.django.FlagwireMiddleware"


def check_settings(app_configs: Sequence[Any] | None = None, **_: Any) -> list[checks.CheckMessage]:
    """The ``flagwire`` system check."""
    try:
        config = setting()
    except ConfigError as exc:
        return [checks.Error(str(exc), id="flagwire.E001")]
    found: list[checks.CheckMessage] = []
    unknown = sorted(set(config) - KEYS)
    if unknown:
        found.append(
            checks.Warning(
                f"settings.FLAGWIRE has unknown keys: {', '.join(unknown)}",
                hint=f"The keys are: {', '.join(sorted(KEYS))}.",
                id="flagwire.W001",
            )
        )
    if MIDDLEWARE not in getattr(settings, "MIDDLEWARE", ()):
        found.append(
            checks.Warning(
                f"{MIDDLEWARE} is not in settings.MIDDLEWARE: requests get no flags",
                hint="Add it after django.contrib.auth.middleware.AuthenticationMiddleware.",
                id="flagwire.W002",
            )
        )
    try:
        resolve(config, make_source=False)
    except ConfigError as exc:
        found.append(checks.Error(str(exc), id="flagwire.E002"))
        return found
    path = config.get("FLAGS_FILE")
    if path is not None:
        try:
            FlagSet.from_path(Path(path))
        except (FlagsetError, OSError) as exc:
            found.append(
                checks.Error(
                    f"settings.FLAGWIRE['FLAGS_FILE']: {exc}",
                    hint="Requests get each flag's code default until the file is valid "
                    "('flagwire validate FILE' explains).",
                    id="flagwire.E003",
                )
            )
    return found

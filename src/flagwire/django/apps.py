"""The ``flagwire.django`` app: its template tags and its system check."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks


class FlagwireConfig(AppConfig):
    name = "flagwire.django"
    label = "flagwire"
    verbose_name = "flagwire"

    def ready(self) -> None:
        from .checks import check_settings

        checks.register(check_settings, "flagwire")

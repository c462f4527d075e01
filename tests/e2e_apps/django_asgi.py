"""``tests/e2e_apps/django_site.py`` as an ASGI app (uvicorn ``django_asgi:app``)."""

from __future__ import annotations

import django_site  # noqa: F401 - configures the settings
from django.core.asgi import get_asgi_application

app = get_asgi_application()

"""``tests/e2e_apps/django_site.py`` as a WSGI app (gunicorn ``django_wsgi:app``)."""

from __future__ import annotations

import django_site  # noqa: F401 - configures the settings
from django.core.wsgi import get_wsgi_application

app = get_wsgi_application()

"""``{% load flagwire %}``: read the current request's flags in a template.

::

    {% flag "new-checkout" False as new_checkout %}
    {% if new_checkout %}...{% endif %}
    <body class="{% flag 'theme' 'light' %}">

The value is the request's decision (the same one the view saw), or the default when no
variant applies or the flag's type differs from the default's. It never raises.
"""

from __future__ import annotations

from typing import Any

from django import template

from flagwire._request.flags import RequestFlags
from flagwire._request.scope import current_flags

register = template.Library()


@register.simple_tag(takes_context=True)
def flag(context: template.Context, key: str, default: Any = None) -> Any:
    """The value of flag ``key`` for the request being rendered, or ``default``."""
    request = context.get("request")
    flags = getattr(request, "flags", None)
    if not isinstance(flags, RequestFlags):
        flags = current_flags()
    return flags.get(key, default)

"""``settings.FLAGWIRE``: parsed once per settings value into a :class:`Binding`.

Used by the middleware (which builds the binding) and by the system check (which reports
what is wrong with the setting without building anything).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from flagwire._engine.flagset import FlagSet
from flagwire._errors import ConfigError
from flagwire._integration import DEFAULT_COOKIE, ONE_YEAR, Binding
from flagwire._sources.base import Source
from flagwire._sources.file import FileSource
from flagwire.context import Extractor
from flagwire.context import user as _user

__all__ = ["KEYS", "Config", "binding", "user"]

KEYS = frozenset(
    {
        "FLAGS_FILE",
        "SOURCE",
        "STRICT",
        "CONTEXT",
        "USER_ATTRIBUTES",
        "ANONYMOUS_COOKIE",
        "COOKIE_MAX_AGE",
        "PROPAGATION",
        "TELEMETRY",
    }
)
"""The keys ``settings.FLAGWIRE`` may have."""

_DJANGO_USER = "__flagwire_django_user__"


def _django_user(request: Any) -> Any:
    found = getattr(request, "_flagwire_user", None)  # resolved by the async middleware
    if found is None:
        found = getattr(request, "user", None)  # django.contrib.auth's lazy user
    return found if found is not None and getattr(found, "is_authenticated", False) else None


def user(attributes: Mapping[str, str] | None = None, *, key: str = "pk") -> Extractor:
    """Context from ``request.user`` (``django.contrib.auth``): ``targetingKey`` is the
    user's primary key, ``attributes`` maps context attributes to user attributes.

    In async views the user is resolved with ``await request.auser()`` before the view
    runs (Django's lazy ``request.user`` cannot query the database there).
    """
    extract = _user(attributes, key=key, find=_django_user)
    setattr(extract, _DJANGO_USER, True)
    return extract


@dataclass(frozen=True)
class Config:
    """``settings.FLAGWIRE`` resolved: the binding's arguments."""

    source: Source | FlagSet
    context: Sequence[Extractor]
    anonymous_cookie: str | None
    cookie_max_age: int
    propagation: Any
    telemetry: Sequence[Any]

    @property
    def needs_user(self) -> bool:
        """Whether an extractor reads ``request.user`` (resolved ahead in async views)."""
        return any(getattr(e, _DJANGO_USER, False) for e in self.context)


def _load(value: Any, what: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return import_string(value)
    except ImportError as exc:
        msg = f"settings.FLAGWIRE[{what!r}]: cannot import {value!r}: {exc}"
        raise ConfigError(msg) from None


def setting() -> Mapping[str, Any]:
    """``settings.FLAGWIRE``, checked to be a mapping.

    Raises:
        ConfigError: It is missing or not a mapping.
    """
    found = getattr(settings, "FLAGWIRE", None)
    if not isinstance(found, Mapping):
        msg = (
            "settings.FLAGWIRE must be a dict, e.g. FLAGWIRE = {'FLAGS_FILE': 'flags.yaml'}; "
            f"it is {type(found).__name__}"
        )
        raise ConfigError(msg)
    return found


def resolve(config: Mapping[str, Any], *, make_source: bool = True) -> Config:
    """The binding's arguments from ``settings.FLAGWIRE`` (no source is started unless
    ``make_source``; then ``source`` is the flag file's path).

    Raises:
        ConfigError: A value is of the wrong kind or a dotted path does not import.
    """
    path, source = config.get("FLAGS_FILE"), _load(config.get("SOURCE"), "SOURCE")
    path = None if path is None else str(path)  # a str or a pathlib.Path
    if (path is None) == (source is None):
        msg = "settings.FLAGWIRE needs exactly one of 'FLAGS_FILE' (a path) or 'SOURCE'"
        raise ConfigError(msg)
    if source is not None and not isinstance(source, (Source, FlagSet)):
        msg = f"settings.FLAGWIRE['SOURCE'] must be a flagwire Source or FlagSet, not {source!r}"
        raise ConfigError(msg)
    if source is None:
        strict = bool(config.get("STRICT", False))
        source = FileSource(str(path), strict=strict) if make_source else FlagSet.empty(source=path)
    raw_context = config.get("CONTEXT")
    if raw_context is None:
        context: list[Extractor] = [user(config.get("USER_ATTRIBUTES"))]
    else:
        items = raw_context if isinstance(raw_context, (list, tuple)) else [raw_context]
        context = [_load(item, "CONTEXT") for item in items]
        for item in context:
            if not callable(item):
                msg = f"settings.FLAGWIRE['CONTEXT']: {item!r} is not an extractor (callable)"
                raise ConfigError(msg)
    telemetry = [_load(item, "TELEMETRY") for item in config.get("TELEMETRY", ())]
    # A class named by its dotted path is built with no arguments (OTelTelemetry).
    telemetry = [item() if isinstance(item, type) else item for item in telemetry]
    cookie = config.get("ANONYMOUS_COOKIE", DEFAULT_COOKIE)
    if cookie is not None and not isinstance(cookie, str):
        raise ConfigError("settings.FLAGWIRE['ANONYMOUS_COOKIE'] must be a name or None")
    return Config(
        source,
        context,
        cookie,
        int(config.get("COOKIE_MAX_AGE", ONE_YEAR)),
        _load(config.get("PROPAGATION"), "PROPAGATION"),
        telemetry,
    )


_lock = threading.Lock()
_built: dict[int, tuple[Mapping[str, Any], Config, Binding]] = {}


def binding() -> tuple[Config, Binding]:
    """The process's binding for the current ``settings.FLAGWIRE`` (built once).

    Raises:
        ConfigError: The setting is invalid (``manage.py check`` says why).
    """
    config = setting()
    found = _built.get(id(config))
    if found is not None and found[0] is config:
        return found[1], found[2]
    with _lock:
        found = _built.get(id(config))
        if found is not None and found[0] is config:
            return found[1], found[2]
        resolved = resolve(config)
        built = Binding(
            resolved.source,
            list(resolved.context),
            anonymous_cookie=resolved.anonymous_cookie,
            cookie_max_age=resolved.cookie_max_age,
            propagation=resolved.propagation,
            telemetry=resolved.telemetry,
        )
        _built[id(config)] = (config, resolved, built)
        return resolved, built


def _forget(**changed: Any) -> None:
    if changed.get("setting") == "FLAGWIRE":
        with _lock:
            _built.clear()


setting_changed.connect(_forget, dispatch_uid="flagwire.django.conf")

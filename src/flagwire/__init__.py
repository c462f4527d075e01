"""flagwire: feature flags in the request path and the observability of Python services.

The core (this package's top level) imports no web framework. Integrations live in
``flagwire.asgi``, ``flagwire.flask``, ... and need their extras.
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

from . import context
from ._engine.assignment import Assignment, ErrorCode, EvaluationError, FlagType, Reason
from ._engine.definitions import FlagDefinition
from ._engine.flagset import FlagSet
from ._errors import (
    ConfigError,
    ConflictError,
    FlagsetError,
    FlagwireError,
    PrometheusError,
    SourceError,
)
from ._propagation.policy import Propagation, set_default_propagation
from ._propagation.signing import KeyRing
from ._request.flags import RequestFlags
from ._request.scope import activate, current_flags, default_source, set_default_source, track
from ._sources.base import Source, SourceStatus, StaticSource
from ._sources.file import FileSource
from ._sources.http import HttpSource

if _typing.TYPE_CHECKING:
    from ._sources.redis import RedisSource

__version__ = "0.1.0"

# Adapters and helpers load on first use (PEP 562), so ``import flagwire`` imports no web
# framework, HTTP client or OpenTelemetry, and ``flagwire.httpx...`` still works after it.
_SUBMODULES = frozenset(
    {
        "asgi",
        "celery",
        "control",
        "django",
        "fastapi",
        "flask",
        "grpc",
        "httpx",
        "openfeature",
        "otel",
        "prometheus",
        "propagation",
        "requests",
        "wsgi",
    }
)


_LAZY = {"RedisSource": "._sources.redis"}
"""Exported names whose modules need an extra: imported on first use."""


def __getattr__(name: str) -> object:
    if name in _SUBMODULES:
        return _importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY:
        return getattr(_importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBMODULES})


__all__ = [
    "Assignment",
    "ConfigError",
    "ConflictError",
    "ErrorCode",
    "EvaluationError",
    "FileSource",
    "FlagDefinition",
    "FlagSet",
    "FlagType",
    "FlagsetError",
    "FlagwireError",
    "HttpSource",
    "KeyRing",
    "PrometheusError",
    "Propagation",
    "Reason",
    "RedisSource",
    "RequestFlags",
    "Source",
    "SourceError",
    "SourceStatus",
    "StaticSource",
    "__version__",
    "activate",
    "context",
    "current_flags",
    "default_source",
    "set_default_propagation",
    "set_default_source",
    "track",
]

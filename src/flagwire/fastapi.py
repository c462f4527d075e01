"""FastAPI helpers: the middleware and a dependency for the request's flags.

::

    from fastapi import FastAPI
    from flagwire.fastapi import Flags, FlagwireMiddleware

    app = FastAPI()
    app.add_middleware(FlagwireMiddleware, source=FileSource("flags.yaml"))

    @app.get("/checkout")
    def checkout(flags: Flags) -> dict[str, bool]:
        return {"new": flags.boolean("new-checkout", False)}
"""

from __future__ import annotations

from typing import Annotated

from ._errors import missing_extra
from ._request.flags import RequestFlags
from ._request.scope import current_flags
from .asgi import FlagwireMiddleware

try:
    from fastapi import Depends, Request
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise missing_extra(exc, "flagwire.fastapi", "FastAPI", "fastapi") from exc

__all__ = ["Flags", "FlagwireMiddleware", "get_flags"]


def get_flags(request: Request) -> RequestFlags:
    """The request's flags: :func:`flagwire.current_flags` (callable from sync and async
    code alike)."""
    return current_flags()


async def _flags_dependency() -> RequestFlags:
    # ``async`` so that FastAPI calls it in the request's own task (a plain ``def``
    # dependency costs every request a hop through the thread pool), and no parameters:
    # FastAPI solves dependencies once per request anyway, and a ``Request`` parameter
    # would cost building one.
    return current_flags()


Flags = Annotated[RequestFlags, Depends(_flags_dependency)]
"""Annotate a path-operation parameter with this to receive the request's flags."""

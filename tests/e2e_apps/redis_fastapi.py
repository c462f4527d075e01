"""A FastAPI app on :class:`~flagwire.RedisSource`, under uvicorn, for
``tests/test_e2e_redis.py``: ``GET /flag`` (see ``redis_app.answer``), ``GET /healthz``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from redis_app import answer, health, source, user_context

from flagwire.fastapi import Flags, FlagwireMiddleware

app = FastAPI()
app.add_middleware(FlagwireMiddleware, source=source, context=user_context)


@app.get("/flag")
async def flag(flags: Flags) -> dict[str, Any]:
    return answer(flags)


@app.get("/healthz")
async def healthz() -> dict[str, Any]:
    return health()

"""A Flask app on :class:`~flagwire.RedisSource`, under gunicorn, for
``tests/test_e2e_redis.py``: ``GET /flag`` (see ``redis_app.answer``), ``GET /healthz``."""

from __future__ import annotations

from typing import Any

from flask import Flask
from redis_app import answer, health, source, user_context

from flagwire.flask import Flagwire, flags

app = Flask(__name__)
Flagwire(app, source=source, context=user_context)


@app.get("/flag")
def flag() -> dict[str, Any]:
    return answer(flags)


@app.get("/healthz")
def healthz() -> dict[str, Any]:
    return health()

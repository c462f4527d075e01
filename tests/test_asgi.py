"""The pure ASGI middleware (``flagwire/asgi.py``) and the FastAPI helpers
(``flagwire/fastapi.py``), with Starlette and FastAPI apps driven in-process."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    BaseUser,
    SimpleUser,
)
from starlette.background import BackgroundTask
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Message
from starlette.websockets import WebSocket

import flagwire
from flagwire import (
    ErrorCode,
    FileSource,
    FlagSet,
    Reason,
    RequestFlags,
    Source,
    StaticSource,
    context,
    current_flags,
)
from flagwire.asgi import FlagwireMiddleware
from flagwire.fastapi import Flags, get_flags

Document = dict[str, Any]
T = TypeVar("T")
Scenario = Callable[[httpx.AsyncClient], Awaitable[T]]

ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
USER_HEADER = context.headers({"x-user-id": "targetingKey", "x-plan": "plan"})


def run(app: ASGIApp, scenario: Scenario[T], *, base_url: str = "http://testserver") -> T:
    """Run ``scenario(client)`` against ``app`` in-process (a fresh cookie jar each time)."""

    async def main() -> T:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            return await scenario(client)

    return asyncio.run(main())


def get(
    app: ASGIApp,
    path: str = "/",
    *,
    headers: Mapping[str, str | bytes] | None = None,
    base_url: str = "http://testserver",
) -> httpx.Response:
    async def scenario(client: httpx.AsyncClient) -> httpx.Response:
        raw = [
            (k.encode("latin-1"), v if isinstance(v, bytes) else v.encode("latin-1"))
            for k, v in (headers or {}).items()
        ]
        return await client.get(path, headers=raw)

    return run(app, scenario, base_url=base_url)


def make_app(*routes: BaseRoute, source: Source | FlagSet, **options: Any) -> Starlette:
    app = Starlette(routes=list(routes))
    app.add_middleware(FlagwireMiddleware, source=source, **options)
    return app


def flagwire_cookies(response: httpx.Response, name: str = "flagwire_id") -> list[str]:
    return [c for c in response.headers.get_list("set-cookie") if c.startswith(f"{name}=")]


def cookie_value(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0].split("=", 1)[1]


def describe(flags: RequestFlags, key: str, default: Any) -> dict[str, Any]:
    found = flags.details(key, default)
    return {
        "value": found.value,
        "variant": found.variant,
        "reason": found.reason.value,
        "error": None if found.error_code is None else found.error_code.value,
        "version": found.flagset_version,
    }


async def report(request: Request) -> JSONResponse:
    """What the request's flags say: the endpoint most tests use."""
    flags = current_flags()
    return JSONResponse(
        {
            "targetingKey": flags.context.get("targetingKey"),
            "checkout": describe(flags, "new-checkout", False),
            "ranking": describe(flags, "ranking", "none"),
            "missing": describe(flags, "missing", "fallback"),
            "mismatch": describe(flags, "new-checkout", "a string"),
            "version": flags.flagset.version_label,
        }
    )


async def silent(request: Request) -> PlainTextResponse:
    return PlainTextResponse("no flags read")


# -- one RequestFlags per request, seen everywhere in it --------------------------------------


def _deep_helper(depth: int = 3) -> RequestFlags:
    return current_flags() if depth == 0 else _deep_helper(depth - 1)


def test_starlette_handler_helper_task_and_scope_see_the_same_flags(
    per_request_flags: FlagSet,
) -> None:
    seen: dict[str, Any] = {}

    async def endpoint(request: Request) -> JSONResponse:
        seen["scope"] = get_flags(request)
        seen["handler"] = current_flags()
        seen["helper"] = _deep_helper()

        async def in_task() -> RequestFlags:
            await asyncio.sleep(0)
            return current_flags()

        seen["task"] = await asyncio.create_task(in_task())
        seen["to_thread"] = await asyncio.to_thread(current_flags)
        return JSONResponse({"checkout": current_flags().boolean("new-checkout")})

    app = make_app(Route("/", endpoint), source=per_request_flags, context=USER_HEADER)
    response = get(app, headers={"x-user-id": "u-1", "x-plan": "beta"})

    assert response.status_code == 200
    assert response.json() == {"checkout": True}
    flags = seen["scope"]
    assert isinstance(flags, RequestFlags)
    assert all(value is flags for value in seen.values()), seen
    assert list(flags.evaluated()) == ["new-checkout"]


def test_a_sync_starlette_endpoint_in_the_threadpool_sees_the_requests_flags(
    per_request_flags: FlagSet,
) -> None:
    seen: dict[str, Any] = {}

    def endpoint(request: Request) -> JSONResponse:
        seen["thread"] = threading.current_thread()
        seen["scope"] = get_flags(request)
        seen["handler"] = current_flags()
        seen["helper"] = _deep_helper()
        return JSONResponse({"checkout": current_flags().boolean("new-checkout")})

    app = make_app(Route("/", endpoint), source=per_request_flags, context=USER_HEADER)
    response = get(app, headers={"x-plan": "beta", "x-user-id": "u-1"})

    assert response.json() == {"checkout": True}
    assert seen["thread"] is not threading.main_thread()
    assert seen["handler"] is seen["scope"]
    assert seen["helper"] is seen["scope"]


def _sync_dependency() -> RequestFlags:
    return current_flags()


async def _async_dependency() -> RequestFlags:
    return current_flags()


def test_fastapi_dependency_handler_helper_task_and_threadpool_agree(
    per_request_flags: FlagSet,
) -> None:
    seen: dict[str, Any] = {}
    app = FastAPI()
    app.add_middleware(FlagwireMiddleware, source=per_request_flags, context=USER_HEADER)

    @app.get("/async")
    async def async_endpoint(
        request: Request,
        flags: Flags,
        from_sync: RequestFlags = Depends(_sync_dependency),  # noqa: B008
        from_async: RequestFlags = Depends(_async_dependency),  # noqa: B008
    ) -> dict[str, Any]:
        seen["scope"] = get_flags(request)
        seen["dependency"] = flags
        seen["sync_dependency"] = from_sync
        seen["async_dependency"] = from_async
        seen["handler"] = current_flags()
        seen["helper"] = _deep_helper()

        async def in_task() -> RequestFlags:
            return current_flags()

        seen["task"] = await asyncio.create_task(in_task())
        return {"checkout": flags.boolean("new-checkout", False)}

    @app.get("/sync")
    def sync_endpoint(request: Request, flags: Flags) -> dict[str, Any]:
        seen["sync_scope"] = get_flags(request)
        seen["sync_dependency_in_sync"] = flags
        seen["sync_handler"] = current_flags()
        seen["sync_thread"] = threading.current_thread()
        return {"checkout": flags.boolean("new-checkout", False)}

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        headers = {"x-plan": "beta", "x-user-id": "u-1"}
        return [await client.get(p, headers=headers) for p in ("/async", "/sync")]

    first, second = run(app, scenario)

    assert first.json() == {"checkout": True}
    assert second.json() == {"checkout": True}
    async_ones = ["dependency", "sync_dependency", "async_dependency", "handler", "helper", "task"]
    assert all(seen[name] is seen["scope"] for name in async_ones), seen
    assert seen["sync_dependency_in_sync"] is seen["sync_scope"]
    assert seen["sync_handler"] is seen["sync_scope"]
    assert seen["sync_thread"] is not threading.main_thread()
    assert seen["sync_scope"] is not seen["scope"]  # one RequestFlags per request


def test_fastapi_flags_dependency_without_the_middleware_gives_current_flags(
    per_request_flags: FlagSet,
) -> None:
    flagwire.set_default_source(StaticSource(per_request_flags))
    app = FastAPI()

    @app.get("/")
    async def endpoint(flags: Flags) -> dict[str, Any]:
        return {"version": flags.flagset.version_label, "checkout": flags.boolean("new-checkout")}

    response = get(app)

    assert response.status_code == 200
    assert response.json() == {"version": per_request_flags.version_label, "checkout": False}


def test_get_flags_outside_the_middleware_is_current_flags(per_request_flags: FlagSet) -> None:
    flags = RequestFlags(per_request_flags)
    request = Request({"type": "http", "headers": []})

    with flagwire.activate(flags):
        assert get_flags(request) is flags


def test_each_request_gets_its_own_flags_even_when_concurrent(
    per_request_flags: FlagSet,
) -> None:
    both_started = asyncio.Event()
    arrived: list[str] = []
    seen: dict[str, RequestFlags] = {}

    async def endpoint(request: Request) -> JSONResponse:
        flags = current_flags()
        user = request.headers["x-user-id"]
        before = flags.boolean("new-checkout")
        arrived.append(user)
        if len(arrived) == 2:
            both_started.set()
        await both_started.wait()
        seen[user] = current_flags()
        return JSONResponse({"before": before, "after": current_flags().boolean("new-checkout")})

    app = make_app(Route("/", endpoint), source=per_request_flags, context=USER_HEADER)

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        return list(
            await asyncio.gather(
                client.get("/", headers={"x-user-id": "a", "x-plan": "beta"}),
                client.get("/", headers={"x-user-id": "b", "x-plan": "free"}),
            )
        )

    beta, free = run(app, scenario)

    assert beta.json() == {"before": True, "after": True}
    assert free.json() == {"before": False, "after": False}
    assert seen["a"] is not seen["b"]
    assert seen["a"].context["targetingKey"] == "a"
    assert seen["b"].context["targetingKey"] == "b"


def test_the_request_flags_are_not_current_after_the_request(per_request_flags: FlagSet) -> None:
    seen: list[RequestFlags] = []

    async def endpoint(request: Request) -> PlainTextResponse:
        seen.append(current_flags())
        return PlainTextResponse("ok")

    app = make_app(Route("/", endpoint), source=per_request_flags)

    async def scenario(client: httpx.AsyncClient) -> RequestFlags:
        await client.get("/")
        return current_flags()

    after = run(app, scenario)

    assert after is not seen[0]
    assert dict(after.evaluated()) == {}


def test_the_middleware_makes_its_source_the_default(per_request_flags: FlagSet) -> None:
    app = make_app(Route("/", silent), source=per_request_flags)
    get(app)  # Starlette builds the middleware at the first request

    assert current_flags().flagset is per_request_flags


def test_the_middleware_keeps_an_existing_default_source(per_request_flags: FlagSet) -> None:
    other = StaticSource(FlagSet.empty(source="other"))
    flagwire.set_default_source(other)
    app = make_app(Route("/", silent), source=per_request_flags)
    get(app)

    assert current_flags().flagset is other.flagset


# -- other scopes pass through ---------------------------------------------------------------


async def _drive(app: ASGIApp, scope: dict[str, Any], incoming: list[Message]) -> list[Message]:
    queue: asyncio.Queue[Message] = asyncio.Queue()
    for message in incoming:
        queue.put_nowait(message)
    sent: list[Message] = []

    async def receive() -> Message:
        return await queue.get()

    async def send(message: Message) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), timeout=5)
    return sent


def test_lifespan_passes_through(per_request_flags: FlagSet) -> None:
    events: list[str] = []
    seen: list[RequestFlags] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        seen.append(current_flags())
        yield
        events.append("shutdown")

    app = Starlette(routes=[Route("/", report)], lifespan=lifespan)
    app.add_middleware(FlagwireMiddleware, source=per_request_flags)
    scope: dict[str, Any] = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}

    sent = asyncio.run(
        _drive(app, scope, [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    )

    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert events == ["startup", "shutdown"]
    assert "flagwire.flags" not in scope
    assert dict(seen[0].evaluated()) == {}
    assert get(app).status_code == 200


def test_websocket_passes_through(per_request_flags: FlagSet) -> None:
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        text = await websocket.receive_text()
        flags = current_flags()
        await websocket.send_text(
            f"{text}:{'flagwire.flags' in websocket.scope}:{len(flags.evaluated())}"
        )
        await websocket.close()

    app = make_app(WebSocketRoute("/ws", echo), source=per_request_flags)
    scope: dict[str, Any] = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": "/ws",
        "raw_path": b"/ws",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
        "subprotocols": [],
    }
    incoming: list[Message] = [
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": "hi"},
        {"type": "websocket.disconnect", "code": 1000},
    ]

    sent = asyncio.run(_drive(app, scope, incoming))

    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert sent[1]["text"] == "hi:False:0"
    assert not any(name == b"set-cookie" for name, _ in sent[0].get("headers", []))


# -- streaming responses and background tasks ------------------------------------------------


def test_a_streaming_body_reads_the_requests_flags(per_request_flags: FlagSet) -> None:
    seen: dict[str, RequestFlags] = {}

    async def endpoint(request: Request) -> StreamingResponse:
        seen["handler"] = current_flags()

        async def body() -> AsyncIterator[bytes]:
            yield b"checkout="
            seen["async_body"] = current_flags()
            yield str(current_flags().boolean("new-checkout")).encode()

        return StreamingResponse(body(), media_type="text/plain")

    def sync_endpoint(request: Request) -> StreamingResponse:
        def body() -> Iterator[bytes]:
            yield b"ranking="
            seen["sync_body"] = current_flags()
            yield current_flags().string("ranking", "none").encode()

        return StreamingResponse(body(), media_type="text/plain")

    app = make_app(
        Route("/", endpoint),
        Route("/sync", sync_endpoint),
        source=per_request_flags,
        context=USER_HEADER,
    )

    response = get(app, headers={"x-plan": "beta", "x-user-id": "u-1"})
    sync_response = get(app, "/sync", headers={"x-user-id": "u-4"})

    assert response.text == "checkout=True"
    assert seen["async_body"] is seen["handler"]
    bucket = per_request_flags.evaluate("ranking", {"targetingKey": "u-4"}).value
    assert sync_response.text == f"ranking={bucket}"
    assert seen["sync_body"].context["targetingKey"] == "u-4"


def test_a_background_task_reads_the_requests_flags(per_request_flags: FlagSet) -> None:
    seen: dict[str, Any] = {}

    def sync_task() -> None:
        seen["sync"] = current_flags()
        seen["sync_checkout"] = current_flags().boolean("new-checkout")

    async def async_task() -> None:
        seen["async"] = current_flags()
        seen["ranking"] = current_flags().string("ranking", "none")

    async def endpoint(request: Request) -> Response:
        seen["handler"] = current_flags()
        return PlainTextResponse("ok", background=BackgroundTask(async_task))

    async def sync_endpoint(request: Request) -> Response:
        seen["sync_handler"] = current_flags()
        return PlainTextResponse("ok", background=BackgroundTask(sync_task))

    app = make_app(
        Route("/", endpoint),
        Route("/sync", sync_endpoint),
        source=per_request_flags,
        context=USER_HEADER,
    )

    assert get(app, headers={"x-user-id": "u-1"}).status_code == 200
    assert get(app, "/sync", headers={"x-plan": "beta", "x-user-id": "u-1"}).status_code == 200

    assert seen["async"] is seen["handler"]
    assert seen["ranking"] == per_request_flags.evaluate("ranking", {"targetingKey": "u-1"}).value
    assert seen["sync"] is seen["sync_handler"]
    assert seen["sync_checkout"] is True


# -- the anonymous cookie --------------------------------------------------------------------


def test_an_anonymous_visitor_gets_a_cookie_once(per_request_flags: FlagSet) -> None:
    app = make_app(Route("/", report), source=per_request_flags)

    first = get(app)
    [set_cookie] = flagwire_cookies(first)
    anonymous_id = cookie_value(set_cookie)
    attributes = [part.strip() for part in set_cookie.split(";")[1:]]

    assert ID.fullmatch(anonymous_id)
    assert first.json()["targetingKey"] == anonymous_id
    assert "Path=/" in attributes
    assert "HttpOnly" in attributes
    assert "SameSite=Lax" in attributes
    assert f"Max-Age={365 * 24 * 3600}" in attributes
    assert "Secure" not in attributes

    second = get(app, headers={"cookie": f"flagwire_id={anonymous_id}"})

    assert flagwire_cookies(second) == []
    assert second.json()["targetingKey"] == anonymous_id
    assert second.json()["ranking"] == first.json()["ranking"]


def test_a_browser_keeps_its_anonymous_id(per_request_flags: FlagSet) -> None:
    app = make_app(Route("/", report), source=per_request_flags)

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        return [await client.get("/") for _ in range(3)]

    responses = run(app, scenario)

    keys = {r.json()["targetingKey"] for r in responses}
    assert len(keys) == 1
    assert [len(flagwire_cookies(r)) for r in responses] == [1, 0, 0]


def test_different_visitors_get_different_ids(per_request_flags: FlagSet) -> None:
    app = make_app(Route("/", report), source=per_request_flags)

    ids = {cookie_value(flagwire_cookies(get(app))[0]) for _ in range(3)}

    assert len(ids) == 3


@pytest.mark.parametrize(
    "bad",
    ["", "short", "has spaces in it!!!!", "a" * 65, "abc$def%ghi^jkl&mno", "ŭnicode-ŭnicode-ŭ"],
)
def test_a_malformed_anonymous_id_is_replaced(per_request_flags: FlagSet, bad: str) -> None:
    app = make_app(Route("/", report), source=per_request_flags)

    response = get(app, headers={"cookie": f"flagwire_id={bad}".encode()})

    assert response.status_code == 200
    [set_cookie] = flagwire_cookies(response)
    new_id = cookie_value(set_cookie)
    assert ID.fullmatch(new_id)
    assert new_id != bad
    assert response.json()["targetingKey"] == new_id


def test_no_cookie_for_an_identified_user(per_request_flags: FlagSet) -> None:
    app = make_app(Route("/", report), source=per_request_flags, context=USER_HEADER)

    identified = get(app, headers={"x-user-id": "u-1"})
    anonymous = get(app)

    assert flagwire_cookies(identified) == []
    assert identified.json()["targetingKey"] == "u-1"
    assert len(flagwire_cookies(anonymous)) == 1


def test_no_cookie_without_a_flag_read(per_request_flags: FlagSet) -> None:
    app = make_app(Route("/", silent), source=per_request_flags)

    assert flagwire_cookies(get(app)) == []


def test_no_cookie_with_anonymous_cookie_none(per_request_flags: FlagSet) -> None:
    app = make_app(Route("/", report), source=per_request_flags, anonymous_cookie=None)

    response = get(app, headers={"cookie": "flagwire_id=AAAAAAAAAAAAAAAAAAAAAA"})

    assert response.headers.get_list("set-cookie") == []
    assert response.json()["targetingKey"] is None
    assert response.json()["ranking"]["reason"] == "DEFAULT"


def test_the_cookie_is_secure_on_https(per_request_flags: FlagSet) -> None:
    app = make_app(Route("/", report), source=per_request_flags)

    response = get(app, base_url="https://testserver")

    [set_cookie] = flagwire_cookies(response)
    assert "Secure" in [part.strip() for part in set_cookie.split(";")]


def test_cookie_name_and_max_age_are_options(per_request_flags: FlagSet) -> None:
    app = make_app(
        Route("/", report),
        source=per_request_flags,
        anonymous_cookie="visitor",
        cookie_max_age=60,
    )

    first = get(app)
    [set_cookie] = flagwire_cookies(first, "visitor")
    second = get(app, headers={"cookie": f"visitor={cookie_value(set_cookie)}"})

    assert flagwire_cookies(first) == []
    assert "Max-Age=60" in set_cookie
    assert second.json()["targetingKey"] == first.json()["targetingKey"]


def test_the_cookie_is_added_next_to_the_apps_own_cookies(per_request_flags: FlagSet) -> None:
    async def endpoint(request: Request) -> Response:
        response = PlainTextResponse(str(current_flags().boolean("new-checkout")))
        response.set_cookie("theme", "dark")
        return response

    app = make_app(Route("/", endpoint), source=per_request_flags)

    response = get(app)

    cookies = response.headers.get_list("set-cookie")
    assert len(cookies) == 2
    assert any(c.startswith("theme=dark") for c in cookies)
    assert len(flagwire_cookies(response)) == 1
    assert response.text == "False"


def test_the_anonymous_id_sits_among_other_cookies(per_request_flags: FlagSet) -> None:
    app = make_app(Route("/", report), source=per_request_flags)
    anonymous_id = "Zx9_-Zx9_-Zx9_-Zx9_-Zx"

    response = get(app, headers={"cookie": f'a=1; flagwire_id="{anonymous_id}"; b=2'})

    assert response.json()["targetingKey"] == anonymous_id
    assert flagwire_cookies(response) == []


class HeaderAuth(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        name = conn.headers.get("x-user")
        if name is None:
            return None
        return AuthCredentials(["authenticated"]), SimpleUser(name)


@pytest.mark.parametrize("flagwire_outermost", [True, False])
def test_user_from_authentication_middleware(
    per_request_flags: FlagSet, flagwire_outermost: bool
) -> None:
    app = Starlette(routes=[Route("/", report)])
    options: dict[str, Any] = {
        "source": per_request_flags,
        "context": context.user(key="username"),
    }
    # The last middleware added is the outermost.
    if flagwire_outermost:
        app.add_middleware(AuthenticationMiddleware, backend=HeaderAuth())
        app.add_middleware(FlagwireMiddleware, **options)
    else:
        app.add_middleware(FlagwireMiddleware, **options)
        app.add_middleware(AuthenticationMiddleware, backend=HeaderAuth())

    ann = get(app, headers={"x-user": "ann"})
    nobody = get(app)

    assert ann.json()["targetingKey"] == "ann"
    assert flagwire_cookies(ann) == []
    assert nobody.status_code == 200
    assert len(flagwire_cookies(nobody)) == 1


def test_user_from_request_state(per_request_flags: FlagSet) -> None:
    class Account:
        id = 77
        plan = "beta"

    async def endpoint(request: Request) -> JSONResponse:
        request.state.user = Account()
        return await report(request)

    app = make_app(
        Route("/", endpoint), source=per_request_flags, context=context.user({"plan": "plan"})
    )

    response = get(app)

    assert response.json()["targetingKey"] == "77"
    assert response.json()["checkout"]["value"] is True
    assert flagwire_cookies(response) == []


def test_a_plain_extractor_receives_a_starlette_request(per_request_flags: FlagSet) -> None:
    received: list[object] = []

    def extractor(request: Any) -> Mapping[str, Any]:
        received.append(request)
        return {"plan": request.query_params.get("plan", "free")}

    app = make_app(Route("/", report), source=per_request_flags, context=extractor)

    response = get(app, "/?plan=beta")

    assert isinstance(received[0], Request)
    assert response.json()["checkout"]["value"] is True


# -- bad input never gives a 500 -------------------------------------------------------------


def test_a_missing_user_gives_defaults(per_request_flags: FlagSet) -> None:
    app = make_app(
        Route("/", report), source=per_request_flags, context=context.user({"plan": "plan"})
    )

    response = get(app)

    assert response.status_code == 200
    body = response.json()
    assert body["checkout"] == {
        "value": False,
        "variant": "off",
        "reason": "TARGETING_MATCH",
        "error": None,
        "version": per_request_flags.version_label,
    }


@pytest.mark.parametrize(
    "raw", [";;;", "=", "flagwire_id", "flagwire_id=;", 'flagwire_id="', "a=1;;=;b", "\x7f=\x01"]
)
def test_a_malformed_cookie_header_gives_a_fresh_id(per_request_flags: FlagSet, raw: str) -> None:
    app = make_app(Route("/", report), source=per_request_flags)

    response = get(app, headers={"cookie": raw})

    assert response.status_code == 200
    [set_cookie] = flagwire_cookies(response)
    assert response.json()["targetingKey"] == cookie_value(set_cookie)


def test_an_extractor_that_raises_is_logged_and_skipped(
    per_request_flags: FlagSet, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(request: Any) -> Mapping[str, Any]:
        raise RuntimeError("session store down")

    app = make_app(
        Route("/", report),
        source=per_request_flags,
        context=[context.headers({"x-plan": "plan"}), broken, context.static({"k": 1})],
    )

    with caplog.at_level(logging.ERROR, logger="flagwire"):
        response = get(app, headers={"x-plan": "beta"})

    assert response.status_code == 200
    assert response.json()["checkout"]["value"] is True
    assert any("broken" in r.getMessage() for r in caplog.records if r.name == "flagwire")


def test_an_extractor_returning_garbage_is_skipped(per_request_flags: FlagSet) -> None:
    app = make_app(
        Route("/", report),
        source=per_request_flags,
        context=[lambda request: 42, context.headers({"x-plan": "plan"})],
    )

    response = get(app, headers={"x-plan": "beta"})

    assert response.status_code == 200
    assert response.json()["checkout"]["value"] is True


def test_a_missing_flag_gives_the_default_with_flag_not_found(per_request_flags: FlagSet) -> None:
    app = make_app(Route("/", report), source=per_request_flags)

    missing = get(app).json()["missing"]

    assert missing["value"] == "fallback"
    assert missing["reason"] == Reason.ERROR.value
    assert missing["error"] == ErrorCode.FLAG_NOT_FOUND.value


def test_a_wrong_type_flag_gives_the_default_with_type_mismatch(
    per_request_flags: FlagSet,
) -> None:
    app = make_app(Route("/", report), source=per_request_flags, context=USER_HEADER)

    body = get(app, headers={"x-plan": "beta", "x-user-id": "u-1"}).json()

    assert body["mismatch"]["value"] == "a string"
    assert body["mismatch"]["reason"] == Reason.ERROR.value
    assert body["mismatch"]["error"] == ErrorCode.TYPE_MISMATCH.value
    assert body["checkout"]["value"] is True  # the decision itself stays


def test_a_source_that_failed_to_load_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    path.write_text("{not json", encoding="utf-8")
    with FileSource(path, poll_interval=0) as source:
        app = make_app(Route("/", report), source=source)
        response = get(app)

    assert response.status_code == 200
    assert response.json()["checkout"]["value"] is False
    assert response.json()["checkout"]["error"] == ErrorCode.FLAG_NOT_FOUND.value


# -- the flag set is pinned for the request --------------------------------------------------


def test_the_flag_set_is_pinned_for_the_request(
    per_request_document: Document, tmp_path: Path
) -> None:
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(per_request_document), encoding="utf-8")
    updated = json.loads(json.dumps(per_request_document))
    updated["metadata"]["version"] = "r2-updated"
    updated["flags"]["new-checkout"]["defaultVariant"] = "on"
    del updated["flags"]["new-checkout"]["targeting"]
    updated["flags"]["retries"]["defaultVariant"] = "many"

    async def endpoint(request: Request) -> JSONResponse:
        flags = current_flags()
        before = (flags.boolean("new-checkout"), flags.flagset.version_label)
        if request.query_params.get("swap"):
            path.write_text(json.dumps(updated, indent=1), encoding="utf-8")
            assert source.refresh()
        after = (flags.boolean("new-checkout"), current_flags().flagset.version_label)
        return JSONResponse(
            {
                "before": before,
                "after": after,
                "retries": flags.integer("retries"),  # first asked after the swap
                "retries_version": flags.details("retries").flagset_version,
                "source_version": source.flagset.version_label,
            }
        )

    with FileSource(path, poll_interval=0) as source:
        app = make_app(Route("/", endpoint), source=source, anonymous_cookie=None)
        old_label = source.flagset.version_label
        during = get(app, "/?swap=1").json()
        new_label = source.flagset.version_label
        following = get(app).json()

    assert new_label != old_label
    assert new_label.startswith("r2-updated+")
    assert during["before"] == [False, old_label]
    assert during["after"] == [False, old_label]
    assert during["retries"] == 3
    assert during["retries_version"] == old_label
    assert during["source_version"] == new_label
    assert following["before"] == [True, new_label]
    assert following["retries"] == 10


def test_a_request_in_flight_keeps_its_flag_set_while_another_sees_the_new_one(
    per_request_flags: FlagSet, per_request_document: Document
) -> None:
    class MutableSource:
        def __init__(self, flagset: FlagSet) -> None:
            self.flagset = flagset

        @property
        def status(self) -> flagwire.SourceStatus:
            return flagwire.SourceStatus(ok=True, version=self.flagset.version_label)

        def subscribe(self, listener: Any) -> Callable[[], None]:
            return lambda: None

    per_request_document["metadata"]["version"] = "r2"
    per_request_document["flags"]["new-checkout"]["defaultVariant"] = "on"
    del per_request_document["flags"]["new-checkout"]["targeting"]
    new_flags = FlagSet.from_mapping(per_request_document)
    source = MutableSource(per_request_flags)
    first_read = asyncio.Event()
    swapped = asyncio.Event()

    async def slow(request: Request) -> JSONResponse:
        flags = current_flags()
        first = flags.boolean("new-checkout")
        first_read.set()
        await swapped.wait()
        second = flags.boolean("new-checkout")
        late = flags.details("limits").flagset_version  # first asked after the swap
        return JSONResponse([first, second, late, current_flags().flagset.version_label])

    async def fast(request: Request) -> JSONResponse:
        flags = current_flags()
        return JSONResponse([flags.boolean("new-checkout"), flags.flagset.version_label])

    app = make_app(Route("/slow", slow), Route("/fast", fast), source=source, anonymous_cookie=None)

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        slow_call = asyncio.create_task(client.get("/slow"))
        await asyncio.wait_for(first_read.wait(), 5)
        source.flagset = new_flags
        fast_response = await client.get("/fast")
        swapped.set()
        return [await slow_call, fast_response]

    slow_response, fast_response = run(app, scenario)
    old, new = per_request_flags.version_label, new_flags.version_label

    assert slow_response.json() == [False, False, old, old]
    assert fast_response.json() == [True, new]


def test_the_flags_dependency_costs_no_thread_pool_hop() -> None:
    import inspect
    from typing import get_args

    # FastAPI runs a plain ``def`` dependency in the thread pool, an ``async def`` in the
    # request's task.
    (depends,) = get_args(Flags)[1:]
    assert inspect.iscoroutinefunction(depends.dependency)


def test_a_plain_extractor_gets_a_starlette_request_whose_headers_agree_with_starlettes() -> None:
    from starlette.datastructures import Headers

    from flagwire.asgi import ExtractorRequest

    raw = [(b"x-user-id", b"u1"), (b"x-dup", b"first"), (b"x-dup", b"second"), (b"cookie", b"a=1")]
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/p",
        "query_string": b"q=2",
        "headers": raw,
        "server": ("h", 80),
        "scheme": "http",
        "root_path": "",
    }
    request = ExtractorRequest(scope)
    reference = Headers(raw=list(raw))

    assert isinstance(request, Request)
    for name in ("x-user-id", "X-User-Id", "x-dup", "missing"):
        assert request.headers.get(name) == reference.get(name)
        assert (name in request.headers) == (name in reference)
    assert request.headers.get("missing", "d") == "d"
    assert request.headers["X-DUP"] == "first"
    with pytest.raises(KeyError):
        request.headers["missing"]
    assert request.headers.getlist("x-dup") == ["first", "second"]
    assert dict(request.headers) == dict(reference)
    assert request.cookies == {"a": "1"}
    assert request.query_params["q"] == "2"
    assert request.url.path == "/p"
    assert request.headers is request.headers  # built once per request


def test_a_plain_function_extractor_reads_headers_through_the_middleware() -> None:
    seen: list[Any] = []

    def extract(request: Any) -> dict[str, Any]:
        seen.append(type(request))
        return {"targetingKey": request.headers.get("X-User-Id"), "plan": request.headers["x-plan"]}

    async def endpoint(request: Request) -> JSONResponse:
        flags = current_flags()
        return JSONResponse(dict(flags.context))

    app = make_app(Route("/", endpoint), source=FlagSet.empty(), context=extract)
    body = get(app, "/", headers={"x-user-id": "u9", "x-plan": "pro"}).json()
    assert body == {"targetingKey": "u9", "plan": "pro"}
    assert seen and issubclass(seen[0], Request)

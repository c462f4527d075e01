"""The plain WSGI middleware (``flagwire/wsgi.py``) around minimal WSGI apps and around
a Flask app's ``wsgi_app``."""

from __future__ import annotations

import contextvars
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import flask
import pytest
from werkzeug.test import Client, EnvironBuilder

import flagwire
from flagwire import FlagSet, RequestFlags, StaticSource, context, current_flags
from flagwire.wsgi import ENVIRON_KEY, FlagwireMiddleware

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
USER_HEADER = context.headers({"x-user-id": "targetingKey", "x-plan": "plan"})


class Recorder:
    """A ``start_response`` that records what the app (through flagwire) sent."""

    def __init__(self) -> None:
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.exc_info: Any = None

    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        self.status = status
        self.headers = list(headers)
        self.exc_info = exc_info
        return lambda data: None

    def cookies(self, name: str = "flagwire_id") -> list[str]:
        return [v for k, v in self.headers if k.lower() == "set-cookie" and v.startswith(name)]


def environ_for(
    path: str = "/", headers: Mapping[str, str] | None = None, **options: Any
) -> Environ:
    pairs = list((headers or {}).items())
    return EnvironBuilder(path=path, headers=pairs, **options).get_environ()


def call(
    app: WSGIApp, environ: Environ | None = None, start: Recorder | None = None
) -> tuple[bytes, Recorder, Environ]:
    environ = environ_for() if environ is None else environ
    start = Recorder() if start is None else start
    body = app(environ, start)
    try:
        data = b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return data, start, environ


def reading_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Reads ``new-checkout`` and the context, then answers."""
    flags = current_flags()
    environ["test.seen"] = flags
    checkout = flags.boolean("new-checkout")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{checkout}:{flags.context.get('targetingKey')}".encode()]


def cookie_value(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0].split("=", 1)[1]


# -- the request's flags ---------------------------------------------------------------------


def test_the_environ_key_holds_the_requests_flags(per_request_flags: FlagSet) -> None:
    app = FlagwireMiddleware(reading_app, source=per_request_flags, context=USER_HEADER)

    data, start, environ = call(app, environ_for(headers={"x-plan": "beta", "x-user-id": "u"}))

    assert data == b"True:u"
    assert start.status == "200 OK"
    assert isinstance(environ[ENVIRON_KEY], RequestFlags)
    assert environ[ENVIRON_KEY] is environ["test.seen"]
    assert ENVIRON_KEY == "flagwire.flags"


def test_context_from_environ_headers(per_request_flags: FlagSet) -> None:
    received: list[object] = []

    def extractor(request: Any) -> Mapping[str, Any]:
        received.append(request)
        return {}

    app = FlagwireMiddleware(
        reading_app, source=per_request_flags, context=[USER_HEADER, extractor]
    )
    environ = environ_for(headers={"X-Plan": "beta", "X-User-Id": "u-1"})

    data, _, _ = call(app, environ)

    assert data == b"True:u-1"
    assert received == [environ]  # extractors receive the environ itself


def test_the_default_context_reads_the_environ_user(per_request_flags: FlagSet) -> None:
    class Account:
        id = 5

    def outer(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        environ["flagwire.user"] = Account()  # what an auth layer would set
        return app(environ, start_response)

    app = FlagwireMiddleware(reading_app, source=per_request_flags)

    data, start, _ = call(outer)

    assert data == b"False:5"
    assert start.cookies() == []


def test_each_request_gets_its_own_flags(per_request_flags: FlagSet) -> None:
    app = FlagwireMiddleware(reading_app, source=per_request_flags, context=USER_HEADER)

    _, _, first = call(app, environ_for(headers={"x-plan": "beta"}))
    _, _, second = call(app, environ_for(headers={"x-plan": "free"}))

    assert first[ENVIRON_KEY] is not second[ENVIRON_KEY]
    assert first[ENVIRON_KEY].boolean("new-checkout") is True
    assert second[ENVIRON_KEY].boolean("new-checkout") is False


def test_flags_stay_current_while_a_streaming_body_is_iterated(
    per_request_flags: FlagSet,
) -> None:
    seen: list[RequestFlags] = []

    def streaming_app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"checkout="
        seen.append(current_flags())
        yield str(current_flags().boolean("new-checkout")).encode()

    app = FlagwireMiddleware(streaming_app, source=per_request_flags, context=USER_HEADER)
    environ = environ_for(headers={"x-plan": "beta", "x-user-id": "u-1"})

    body = iter(app(environ, Recorder()))
    first = next(body)
    # Current while the app produces each chunk, not in the server's code between them.
    assert current_flags() is not environ[ENVIRON_KEY]
    rest = b"".join(body)

    assert first + rest == b"checkout=True"
    assert seen == [environ[ENVIRON_KEY]]
    assert current_flags() is not environ[ENVIRON_KEY]  # nothing left behind after the body


def test_the_apps_iterable_is_closed_after_the_body(per_request_flags: FlagSet) -> None:
    closed: list[bool] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield str(current_flags().boolean("new-checkout")).encode()

        def close(self) -> None:
            closed.append(current_flags() is environ[ENVIRON_KEY])

    def app(environ: Environ, start_response: StartResponse) -> Body:
        start_response("200 OK", [])
        return Body()

    environ = environ_for(headers={"x-plan": "beta"})
    data, _, _ = call(
        FlagwireMiddleware(app, source=per_request_flags, context=USER_HEADER), environ
    )

    assert data == b"True"
    assert closed == [True]
    assert current_flags() is not environ[ENVIRON_KEY]


def test_closing_the_body_before_iterating_closes_the_apps_iterable(
    per_request_flags: FlagSet,
) -> None:
    # A server may close the response without iterating it (client gone, HEAD, error):
    # WSGI still requires the app's close(), and the flags must not stay current.
    closed: list[bool] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"never read"

        def close(self) -> None:
            closed.append(True)

    def app(environ: Environ, start_response: StartResponse) -> Body:
        start_response("200 OK", [])
        return Body()

    def serve_and_abort() -> bool:
        environ = environ_for()
        body = FlagwireMiddleware(app, source=per_request_flags)(environ, Recorder())
        close = getattr(body, "close", None)
        assert close is not None
        close()
        return current_flags() is environ[ENVIRON_KEY]

    # In a copied context, so that a leak cannot reach the tests that follow.
    still_current = contextvars.copy_context().run(serve_and_abort)

    assert (closed, still_current) == ([True], False)


def test_the_middleware_makes_its_source_the_default(per_request_flags: FlagSet) -> None:
    FlagwireMiddleware(reading_app, source=per_request_flags)

    assert current_flags().flagset is per_request_flags


def test_the_middleware_keeps_an_existing_default_source(per_request_flags: FlagSet) -> None:
    other = StaticSource(FlagSet.empty(source="other"))
    flagwire.set_default_source(other)

    FlagwireMiddleware(reading_app, source=per_request_flags)

    assert current_flags().flagset is other.flagset


# -- the anonymous cookie --------------------------------------------------------------------


def test_the_cookie_header_is_added(per_request_flags: FlagSet) -> None:
    app = FlagwireMiddleware(reading_app, source=per_request_flags)

    data, start, _ = call(app)

    [set_cookie] = start.cookies()
    anonymous_id = cookie_value(set_cookie)
    attributes = [part.strip() for part in set_cookie.split(";")[1:]]
    assert ID.fullmatch(anonymous_id)
    assert data == f"False:{anonymous_id}".encode()
    assert {"Path=/", "HttpOnly", "SameSite=Lax"} <= set(attributes)
    assert "Secure" not in attributes
    assert ("Content-Type", "text/plain") in start.headers

    again, start_again, _ = call(app, environ_for(headers={"Cookie": set_cookie.split(";")[0]}))

    assert start_again.cookies() == []
    assert again == data


def test_the_cookie_is_secure_on_https(per_request_flags: FlagSet) -> None:
    app = FlagwireMiddleware(reading_app, source=per_request_flags)

    _, start, _ = call(app, environ_for(base_url="https://localhost/"))

    [set_cookie] = start.cookies()
    assert "Secure" in [part.strip() for part in set_cookie.split(";")]


def test_a_malformed_cookie_is_replaced(per_request_flags: FlagSet) -> None:
    app = FlagwireMiddleware(reading_app, source=per_request_flags)

    data, start, _ = call(app, environ_for(headers={"Cookie": "flagwire_id=bad; ;;=;x"}))

    [set_cookie] = start.cookies()
    assert cookie_value(set_cookie) != "bad"
    assert data == f"False:{cookie_value(set_cookie)}".encode()


def test_no_cookie_for_an_identified_user_or_with_anonymous_cookie_none(
    per_request_flags: FlagSet,
) -> None:
    identified = FlagwireMiddleware(reading_app, source=per_request_flags, context=USER_HEADER)
    no_cookie = FlagwireMiddleware(reading_app, source=per_request_flags, anonymous_cookie=None)

    data, start, _ = call(identified, environ_for(headers={"x-user-id": "u-1"}))
    anonymous, start_none, _ = call(no_cookie)

    assert data == b"False:u-1"
    assert start.cookies() == []
    assert anonymous == b"False:None"
    assert start_none.cookies() == []


def test_the_cookie_is_added_when_a_generator_app_starts_the_response_late(
    per_request_flags: FlagSet,
) -> None:
    def generator_app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        checkout = current_flags().boolean("new-checkout")
        start_response("200 OK", [])
        yield str(checkout).encode()

    data, start, _ = call(FlagwireMiddleware(generator_app, source=per_request_flags))

    assert data == b"False"
    assert len(start.cookies()) == 1


def test_exc_info_is_passed_on(per_request_flags: FlagSet) -> None:
    def failing_late(environ: Environ, start_response: StartResponse) -> list[bytes]:
        current_flags().boolean("new-checkout")
        try:
            raise ValueError("late")
        except ValueError as exc:
            start_response("500 Internal Server Error", [], (type(exc), exc, exc.__traceback__))
        return [b"error"]

    data, start, _ = call(FlagwireMiddleware(failing_late, source=per_request_flags))

    assert data == b"error"
    assert start.status == "500 Internal Server Error"
    assert isinstance(start.exc_info[1], ValueError)
    assert len(start.cookies()) == 1


# -- exceptions ------------------------------------------------------------------------------


def test_an_exception_from_the_app_propagates_and_the_flags_are_reset(
    per_request_flags: FlagSet,
) -> None:
    def broken(environ: Environ, start_response: StartResponse) -> list[bytes]:
        current_flags().boolean("new-checkout")
        raise RuntimeError("app failed")

    environ = environ_for()

    with pytest.raises(RuntimeError, match="app failed"):
        FlagwireMiddleware(broken, source=per_request_flags)(environ, Recorder())

    assert isinstance(environ[ENVIRON_KEY], RequestFlags)
    assert current_flags() is not environ[ENVIRON_KEY]


def test_an_exception_while_iterating_propagates_and_the_flags_are_reset(
    per_request_flags: FlagSet,
) -> None:
    closed: list[bool] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"part"
            raise RuntimeError("body failed")

        def close(self) -> None:
            closed.append(True)

    def app(environ: Environ, start_response: StartResponse) -> Body:
        start_response("200 OK", [])
        return Body()

    environ = environ_for()

    with pytest.raises(RuntimeError, match="body failed"):
        call(FlagwireMiddleware(app, source=per_request_flags), environ)

    assert closed == [True]
    assert current_flags() is not environ[ENVIRON_KEY]


def test_a_raising_extractor_never_fails_the_request(
    per_request_flags: FlagSet, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(environ: Any) -> Mapping[str, Any]:
        raise RuntimeError("extractor failed")

    app = FlagwireMiddleware(
        reading_app,
        source=per_request_flags,
        context=[broken, context.headers({"x-plan": "plan"})],
        anonymous_cookie=None,
    )

    data, start, _ = call(app, environ_for(headers={"x-plan": "beta"}))

    assert start.status == "200 OK"
    assert data == b"True:None"
    assert any("broken" in r.getMessage() for r in caplog.records if r.name == "flagwire")


def test_a_slow_extractor_does_not_hold_up_other_requests(per_request_flags: FlagSet) -> None:
    # Request A's extractor waits (a slow session store) for request B to finish its
    # first flag read. Requests are independent: B must not wait for A's context.
    a_extracting = threading.Event()
    b_read = threading.Event()
    a_saw_b: list[bool] = []

    def extractor(environ: Any) -> Mapping[str, Any]:
        if environ["PATH_INFO"] == "/a":
            a_extracting.set()
            a_saw_b.append(b_read.wait(2))
        return {}

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        current_flags().boolean("new-checkout")
        if environ["PATH_INFO"] == "/b":
            b_read.set()
        start_response("200 OK", [])
        return [b"ok"]

    wrapped = FlagwireMiddleware(
        app, source=per_request_flags, context=extractor, anonymous_cookie=None
    )
    thread_a = threading.Thread(target=lambda: call(wrapped, environ_for("/a")))
    thread_a.start()
    assert a_extracting.wait(2)
    thread_b = threading.Thread(target=lambda: call(wrapped, environ_for("/b")))
    thread_b.start()
    thread_a.join(5)
    thread_b.join(5)

    assert a_saw_b == [True]


# -- around a Flask app's wsgi_app ------------------------------------------------------------


def test_around_a_flask_wsgi_app(per_request_flags: FlagSet) -> None:
    app = flask.Flask("wrapped")
    seen: dict[str, Any] = {}

    @app.get("/")
    def view() -> str:
        seen["environ"] = flask.request.environ[ENVIRON_KEY]
        seen["current"] = current_flags()
        return str(current_flags().boolean("new-checkout"))

    app.wsgi_app = FlagwireMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, source=per_request_flags, context=USER_HEADER
    )
    client = app.test_client()

    beta = client.get("/", headers={"x-plan": "beta", "x-user-id": "u-1"})
    anonymous = client.get("/")

    assert beta.get_data(as_text=True) == "True"
    assert seen["current"] is seen["environ"]
    assert not [c for c in beta.headers.getlist("Set-Cookie") if c.startswith("flagwire_id=")]
    assert anonymous.get_data(as_text=True) == "False"
    assert len([c for c in anonymous.headers.getlist("Set-Cookie") if "flagwire_id=" in c]) == 1
    assert current_flags() is not seen["environ"]


def test_with_werkzeugs_test_client(per_request_flags: FlagSet) -> None:
    app = FlagwireMiddleware(reading_app, source=per_request_flags)
    client = Client(app)

    first = client.get("/")
    second = client.get("/")

    assert first.get_data() == second.get_data()
    assert len(first.headers.getlist("Set-Cookie")) == 1
    assert second.headers.getlist("Set-Cookie") == []

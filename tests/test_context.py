"""Context extractors (``flagwire/context.py``) against every kind of request they accept:
a raw ASGI scope, a Starlette ``Request``, a Flask request and a WSGI environ."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import flask
import pytest
from flask_login import LoginManager, UserMixin, login_user
from starlette.authentication import SimpleUser, UnauthenticatedUser
from starlette.requests import Request
from werkzeug.test import EnvironBuilder

from flagwire import context

MakeRequest = Callable[..., Any]

KINDS = ["asgi-scope", "starlette", "flask", "wsgi"]
CLIENT = ("203.0.113.7", 50123)


def _scope(
    headers: Sequence[tuple[str, str]] = (),
    query_string: str = "",
    client: tuple[str, int] | None = CLIENT,
    **extra: Any,
) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": query_string.encode("latin-1"),
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "server": ("testserver", 80),
    }
    if client is not None:
        scope["client"] = client
    scope.update(extra)
    return scope


@pytest.fixture
def flask_app() -> flask.Flask:
    # Extractors get a Flask request only through flagwire.flask, whose import registers
    # where user() finds Flask-Login's and g's user.
    import flagwire.flask  # noqa: F401

    app = flask.Flask("test_context")
    app.secret_key = "not-a-secret"
    return app


@pytest.fixture(params=KINDS)
def make_request(request: pytest.FixtureRequest, flask_app: flask.Flask) -> Iterator[MakeRequest]:
    """Build one kind of request (the param) from headers, a query string and a client."""
    kind: str = request.param
    with ExitStack() as stack:

        def make(
            headers: Sequence[tuple[str, str]] = (),
            query_string: str = "",
            client: tuple[str, int] | None = CLIENT,
        ) -> Any:
            if kind in ("asgi-scope", "starlette"):
                scope = _scope(headers, query_string, client)
                return scope if kind == "asgi-scope" else Request(scope)
            base = {} if client is None else {"REMOTE_ADDR": client[0]}
            if kind == "wsgi":
                builder = EnvironBuilder(
                    path="/", query_string=query_string, headers=list(headers), environ_base=base
                )
                return builder.get_environ()
            stack.enter_context(
                flask_app.test_request_context(
                    "/", query_string=query_string, headers=list(headers), environ_base=base
                )
            )
            return flask.request._get_current_object()  # type: ignore[attr-defined]

        yield make


# -- headers ---------------------------------------------------------------------------------


def test_headers_maps_request_headers_to_attributes(make_request: MakeRequest) -> None:
    extract = context.headers({"x-user-id": "targetingKey", "x-plan": "plan"})
    request = make_request([("X-User-Id", "u-1"), ("X-Plan", "beta"), ("X-Other", "no")])

    assert extract(request) == {"targetingKey": "u-1", "plan": "beta"}


def test_headers_matches_names_case_insensitively(make_request: MakeRequest) -> None:
    extract = context.headers({"X-TENANT": "tenant", "x-Region": "region"})
    request = make_request([("x-tenant", "acme"), ("X-REGION", "eu")])

    assert extract(request) == {"tenant": "acme", "region": "eu"}


def test_headers_skips_absent_headers(make_request: MakeRequest) -> None:
    extract = context.headers({"x-user-id": "targetingKey"})

    assert extract(make_request()) == {}


def test_headers_match_raw_scope_names_as_asgi_and_starlette_do() -> None:
    # ASGI requires lowercase header names in the scope; like Starlette's Headers.get,
    # the extractor lowercases the names it is given and compares them with the raw ones.
    scope = _scope([("x-tenant", "acme")])
    assert context.headers({"X-Tenant": "tenant"})(scope) == {"tenant": "acme"}
    assert Request(scope).headers.get("X-Tenant") == "acme"

    scope["headers"] = [(b"X-Tenant", b"acme")]  # not ASGI: neither finds it
    assert context.headers({"x-tenant": "tenant"})(scope) == {}
    assert Request(scope).headers.get("x-tenant") is None


def test_headers_keep_the_first_of_repeated_headers_in_a_raw_scope() -> None:
    scope = _scope([("x-tenant", "first"), ("x-tenant", "second")])

    assert context.headers({"x-tenant": "tenant"})(scope) == {"tenant": "first"}


def test_headers_read_content_type_from_a_wsgi_environ() -> None:
    environ = EnvironBuilder(path="/", content_type="application/json").get_environ()

    assert context.headers({"Content-Type": "contentType"})(environ) == {
        "contentType": "application/json"
    }


# -- cookies ---------------------------------------------------------------------------------


def test_cookies_maps_cookies_to_attributes(make_request: MakeRequest) -> None:
    extract = context.cookies({"session_plan": "plan", "lang": "language"})
    request = make_request([("Cookie", "session_plan=beta; other=1; lang=de")])

    assert extract(request) == {"plan": "beta", "language": "de"}


def test_cookies_without_a_cookie_header_give_nothing(make_request: MakeRequest) -> None:
    assert context.cookies({"session_plan": "plan"})(make_request()) == {}


def test_cookies_survive_a_malformed_cookie_header(make_request: MakeRequest) -> None:
    extract = context.cookies({"a": "a", "b": "b", "c": "c"})
    request = make_request([("Cookie", 'a=1; garbage; =nokey;; b="quoted" ; c=x=y')])

    assert extract(request) == {"a": "1", "b": "quoted", "c": "x=y"}


@pytest.mark.parametrize("raw", [";;;", "=", "==;=", "no-equals-sign", " ", '"'])
def test_cookies_of_pure_garbage_give_nothing(make_request: MakeRequest, raw: str) -> None:
    request = make_request([("Cookie", raw)])

    assert context.cookies({"a": "a"})(request) == {}


# -- query -----------------------------------------------------------------------------------


def test_query_maps_parameters_to_attributes(make_request: MakeRequest) -> None:
    extract = context.query({"lang": "language", "beta": "beta", "absent": "absent"})
    request = make_request(query_string="lang=de&beta=&other=1")

    assert extract(request) == {"language": "de", "beta": ""}


def test_query_takes_the_first_of_repeated_parameters(make_request: MakeRequest) -> None:
    request = make_request(query_string="lang=de&lang=fr")

    assert context.query({"lang": "language"})(request) == {"language": "de"}


def test_query_decodes_percent_escapes(make_request: MakeRequest) -> None:
    request = make_request(query_string="q=a%20b%26c")

    assert context.query({"q": "q"})(request) == {"q": "a b&c"}


# -- client ----------------------------------------------------------------------------------


def test_client_gives_ip_and_user_agent(make_request: MakeRequest) -> None:
    request = make_request([("User-Agent", "curl/8.0")])

    assert context.client()(request) == {"ip": CLIENT[0], "userAgent": "curl/8.0"}


def test_client_attribute_names_can_be_renamed_or_dropped(make_request: MakeRequest) -> None:
    request = make_request([("User-Agent", "curl/8.0")])

    assert context.client(ip="addr", user_agent=None)(request) == {"addr": CLIENT[0]}
    assert context.client(ip=None, user_agent="ua")(request) == {"ua": "curl/8.0"}


def test_client_without_peer_or_user_agent_gives_nothing() -> None:
    assert context.client()(_scope(client=None)) == {}
    assert context.client()(Request(_scope(client=None))) == {}


# -- static ----------------------------------------------------------------------------------


def test_static_gives_the_same_attributes_for_every_request(make_request: MakeRequest) -> None:
    values = {"service": "checkout", "region": "eu"}
    extract = context.static(values)
    values["region"] = "us"  # later changes to the caller's dict change nothing

    assert extract(make_request()) == {"service": "checkout", "region": "eu"}
    assert extract(None) == {"service": "checkout", "region": "eu"}


# -- user ------------------------------------------------------------------------------------


@dataclass
class Account:
    id: int | str | None
    plan: str = "free"
    email: str | None = None
    is_authenticated: bool = True


class LoginAccount(UserMixin):  # type: ignore[misc]
    def __init__(self, user_id: str, plan: str) -> None:
        self.id = user_id
        self.plan = plan


def test_user_reads_starlette_scope_user() -> None:
    extract = context.user({"plan": "plan"})
    scope = _scope(user=Account(id=42, plan="pro"))

    assert extract(scope) == {"targetingKey": "42", "plan": "pro"}
    assert extract(Request(scope)) == {"targetingKey": "42", "plan": "pro"}


def test_user_reads_a_starlette_simple_user_with_another_key() -> None:
    extract = context.user({"name": "display_name"}, key="username")
    scope = _scope(user=SimpleUser("ann"))

    assert extract(Request(scope)) == {"targetingKey": "ann", "name": "ann"}


def test_user_skips_an_unauthenticated_scope_user() -> None:
    scope = _scope(user=UnauthenticatedUser())

    assert context.user()(scope) is None
    assert context.user()(Request(scope)) is None


def test_user_reads_request_state_user() -> None:
    request = Request(_scope())
    request.state.user = Account(id="u-7", plan="team")
    extract = context.user({"plan": "plan"})

    assert extract(request) == {"targetingKey": "u-7", "plan": "team"}
    assert extract(request.scope) == {"targetingKey": "u-7", "plan": "team"}


def test_user_falls_back_to_request_state_when_scope_user_is_anonymous() -> None:
    request = Request(_scope(user=UnauthenticatedUser()))
    request.state.user = Account(id=3)

    assert context.user()(request) == {"targetingKey": "3"}


def test_user_reads_a_mapping_user() -> None:
    request = Request(_scope())
    request.state.user = {"id": 5, "plan": "pro", "email": None}
    extract = context.user({"plan": "plan", "email": "email"})

    assert extract(request) == {"targetingKey": "5", "plan": "pro"}


def test_user_skips_missing_or_empty_identity() -> None:
    extract = context.user({"plan": "plan"})

    assert extract(_scope(user=Account(id=None, plan="pro"))) == {"plan": "pro"}
    assert extract(_scope(user=Account(id="", plan="pro"))) == {"plan": "pro"}


def test_user_without_any_user_gives_none(make_request: MakeRequest) -> None:
    assert context.user({"plan": "plan"})(make_request()) is None


def test_user_accepts_a_callable_is_authenticated() -> None:
    class OldStyle:
        id = 9

        def is_authenticated(self) -> bool:
            return False

    assert context.user()(_scope(user=OldStyle())) is None


def test_user_reads_flask_login_current_user(flask_app: flask.Flask) -> None:
    manager = LoginManager(flask_app)
    accounts = {"7": LoginAccount("7", "beta")}
    manager.user_loader(accounts.get)
    extract = context.user({"plan": "plan"})

    with flask_app.test_request_context("/"):
        assert extract(flask.request) is None
        login_user(accounts["7"])
        assert extract(flask.request) == {"targetingKey": "7", "plan": "beta"}


def test_user_reads_flask_g_user(flask_app: flask.Flask) -> None:
    extract = context.user({"plan": "plan"})

    with flask_app.test_request_context("/"):
        assert extract(flask.request) is None
        flask.g.user = Account(id=11, plan="pro")
        assert extract(flask.request) == {"targetingKey": "11", "plan": "pro"}


def test_user_reads_g_user_when_flask_login_user_is_anonymous(flask_app: flask.Flask) -> None:
    manager = LoginManager(flask_app)
    manager.user_loader(lambda user_id: None)

    with flask_app.test_request_context("/"):
        flask.g.user = Account(id=12)
        assert context.user()(flask.request) == {"targetingKey": "12"}


def test_user_skips_an_unauthenticated_flask_g_user(flask_app: flask.Flask) -> None:
    with flask_app.test_request_context("/"):
        flask.g.user = Account(id=13, is_authenticated=False)
        assert context.user()(flask.request) is None


def test_user_reads_the_wsgi_environ_user() -> None:
    environ = EnvironBuilder(path="/").get_environ()
    environ["flagwire.user"] = Account(id=21, plan="pro")

    assert context.user({"plan": "plan"})(environ) == {"targetingKey": "21", "plan": "pro"}


def test_user_with_a_custom_finder() -> None:
    extract = context.user({"plan": "plan"}, find=lambda request: request["who"])

    assert extract({"who": Account(id=1, plan="x")}) == {"targetingKey": "1", "plan": "x"}
    assert extract({"who": None}) is None


# -- compose ---------------------------------------------------------------------------------


def test_compose_merges_in_order_and_later_extractors_win(make_request: MakeRequest) -> None:
    extract = context.compose(
        context.static({"plan": "free", "region": "eu"}),
        context.headers({"x-plan": "plan"}),
        context.query({"region": "region"}),
    )
    request = make_request([("x-plan", "beta")], query_string="region=us")

    assert extract(request) == {"plan": "beta", "region": "us"}


def test_compose_logs_and_skips_an_extractor_that_raises(
    make_request: MakeRequest, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(request: Any) -> Mapping[str, Any]:
        raise RuntimeError("database down")

    extract = context.compose(context.static({"a": 1}), broken, context.headers({"x-plan": "plan"}))

    with caplog.at_level(logging.ERROR, logger="flagwire"):
        found = extract(make_request([("x-plan", "beta")]))

    assert found == {"a": 1, "plan": "beta"}
    [record] = [r for r in caplog.records if r.name == "flagwire"]
    assert record.levelno == logging.ERROR
    assert "broken" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)


def test_compose_logs_and_skips_a_non_mapping_result(caplog: pytest.LogCaptureFixture) -> None:
    def wrong(request: Any) -> Any:
        return [("plan", "beta")]

    extract = context.compose(context.static({"a": 1}), wrong, context.static({"b": 2}))

    with caplog.at_level(logging.ERROR, logger="flagwire"):
        found = extract(_scope())

    assert found == {"a": 1, "b": 2}
    [record] = [r for r in caplog.records if r.name == "flagwire"]
    assert "wrong" in record.getMessage()
    assert "list" in record.getMessage()


def test_compose_ignores_none_silently(caplog: pytest.LogCaptureFixture) -> None:
    extract = context.compose(lambda request: None, context.static({"a": 1}))

    with caplog.at_level(logging.DEBUG, logger="flagwire"):
        assert extract(_scope()) == {"a": 1}

    assert [r for r in caplog.records if r.name == "flagwire"] == []


def test_compose_of_nothing_gives_an_empty_context() -> None:
    assert context.compose()(_scope()) == {}


def test_compose_returns_a_new_dict_each_time() -> None:
    extract = context.compose(context.static({"a": 1}))
    first = extract(_scope())
    first["a"] = 2  # type: ignore[index]

    assert extract(_scope()) == {"a": 1}


def test_compose_accepts_plain_callables(make_request: MakeRequest) -> None:
    extract = context.compose(
        context.headers({"x-plan": "plan"}), lambda request: {"seen": type(request).__name__}
    )
    request = make_request([("x-plan", "beta")])

    assert extract(request) == {"plan": "beta", "seen": type(request).__name__}

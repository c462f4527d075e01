"""The Flask extension (``flagwire/flask.py``): registration, the per-request flags
(``g.flagwire``, the ``flags`` proxy, ``current_flags()``), the anonymous cookie."""

from __future__ import annotations

import contextvars
import json
import logging
import re
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import flask
import pytest
import yaml
from flask_login import LoginManager, UserMixin, login_user
from werkzeug.test import TestResponse

import flagwire
from flagwire import (
    ConfigError,
    ErrorCode,
    FileSource,
    FlagSet,
    FlagsetError,
    FlagwireError,
    Reason,
    RequestFlags,
    StaticSource,
    context,
    current_flags,
)
from flagwire.flask import Flagwire
from flagwire.flask import flags as flask_flags

Document = dict[str, Any]

ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
USER_HEADER = context.headers({"x-user-id": "targetingKey", "x-plan": "plan"})


def describe(flags: RequestFlags, key: str, default: Any) -> dict[str, Any]:
    found = flags.details(key, default)
    return {
        "value": found.value,
        "variant": found.variant,
        "reason": found.reason.value,
        "error": None if found.error_code is None else found.error_code.value,
    }


def add_routes(app: flask.Flask) -> flask.Flask:
    """The views most tests use: ``/`` reports the request's flags, ``/silent`` reads none."""

    @app.get("/")
    def report() -> dict[str, Any]:
        flags = current_flags()
        return {
            "targetingKey": flags.context.get("targetingKey"),
            "checkout": describe(flags, "new-checkout", False),
            "ranking": describe(flags, "ranking", "none"),
            "missing": describe(flags, "missing", "fallback"),
            "mismatch": describe(flags, "new-checkout", "a string"),
            "version": flags.flagset.version_label,
        }

    @app.get("/silent")
    def silent() -> str:
        return "no flags read"

    return app


def make_app(source: Any = None, **options: Any) -> flask.Flask:
    app = add_routes(flask.Flask("test_flask"))
    Flagwire(app, source=source, **options)
    return app


def fetch(
    app: flask.Flask,
    path: str = "/",
    *,
    headers: Mapping[str, str] | None = None,
    base_url: str = "http://localhost",
) -> TestResponse:
    """One request with exactly the given headers (no cookie jar)."""
    client = app.test_client(use_cookies=False)
    return client.get(path, headers=dict(headers or {}), base_url=base_url)


def flagwire_cookies(response: TestResponse, name: str = "flagwire_id") -> list[str]:
    return [c for c in response.headers.getlist("Set-Cookie") if c.startswith(f"{name}=")]


def cookie_value(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0].split("=", 1)[1]


def json_of(response: TestResponse) -> Any:
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


@pytest.fixture
def flags_file(tmp_path: Path, per_request_document: Document) -> Path:
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(per_request_document), encoding="utf-8")
    return path


@pytest.fixture
def close_sources() -> Iterator[list[flask.Flask]]:
    """Apps whose flagwire FileSource is closed at the end of the test."""
    apps: list[flask.Flask] = []
    yield apps
    for app in apps:
        source = Flagwire.binding(app).source
        if isinstance(source, FileSource):
            source.close()


# -- registration ----------------------------------------------------------------------------


def test_flagwire_app_source(per_request_flags: FlagSet) -> None:
    app = make_app(per_request_flags, context=USER_HEADER)

    body = json_of(fetch(app, headers={"x-plan": "beta", "x-user-id": "u-1"}))

    assert body["checkout"] == {
        "value": True,
        "variant": "on",
        "reason": "TARGETING_MATCH",
        "error": None,
    }
    assert body["version"] == per_request_flags.version_label
    assert body["targetingKey"] == "u-1"


def test_the_binding_is_in_app_extensions(per_request_flags: FlagSet) -> None:
    app = make_app(per_request_flags)

    binding = app.extensions["flagwire"]

    assert Flagwire.binding(app) is binding
    assert binding.source.flagset is per_request_flags
    assert app.config["FLAGWIRE_FLAGS_FILE"] is None
    assert app.config["FLAGWIRE_STRICT"] is False


def test_the_factory_pattern(per_request_flags: FlagSet, per_request_document: Document) -> None:
    fw = Flagwire(context=USER_HEADER)
    per_request_document["metadata"]["version"] = "other-app"
    other_flags = FlagSet.from_mapping(per_request_document)

    def create_app(source: FlagSet) -> flask.Flask:
        app = add_routes(flask.Flask("factory"))
        fw.init_app(app, source=source)
        return app

    first = create_app(per_request_flags)
    second = create_app(other_flags)

    one = json_of(fetch(first, headers={"x-plan": "beta", "x-user-id": "u-1"}))
    two = json_of(fetch(second, headers={"x-plan": "beta", "x-user-id": "u-1"}))

    assert one["version"] == per_request_flags.version_label
    assert two["version"] == other_flags.version_label
    assert one["checkout"]["value"] is True  # the constructor's context applies to both
    assert two["checkout"]["value"] is True


def test_init_app_arguments_override_the_constructors(per_request_flags: FlagSet) -> None:
    app = add_routes(flask.Flask("override"))
    fw = Flagwire(source=StaticSource(FlagSet.empty()), context=context.static({"plan": "free"}))
    fw.init_app(app, source=per_request_flags, context=context.static({"plan": "beta"}))

    body = json_of(fetch(app))

    assert body["version"] == per_request_flags.version_label
    assert body["checkout"]["value"] is True


def test_registering_twice_raises_config_error(per_request_flags: FlagSet) -> None:
    app = make_app(per_request_flags)

    with pytest.raises(ConfigError, match="already registered"):
        Flagwire(app, source=per_request_flags)
    with pytest.raises(ConfigError):
        Flagwire().init_app(app, source=per_request_flags)


def test_no_source_and_no_config_raises_config_error() -> None:
    app = flask.Flask("no_source")

    with pytest.raises(ConfigError, match="FLAGWIRE_FLAGS_FILE") as caught:
        Flagwire(app)

    assert isinstance(caught.value, FlagwireError)
    assert isinstance(caught.value, ValueError)
    assert "flagwire" not in app.extensions
    with pytest.raises(ConfigError):
        Flagwire().init_app(app)


def test_binding_of_an_unregistered_app_says_what_to_do() -> None:
    with pytest.raises(ConfigError, match="init_app"):
        Flagwire.binding(flask.Flask("bare"))


def test_flags_file_config_loads_that_file(
    tmp_path: Path,
    per_request_document: Document,
    per_request_flags: FlagSet,
    close_sources: list[flask.Flask],
) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(yaml.safe_dump(per_request_document), encoding="utf-8")
    app = add_routes(flask.Flask("from_config"))
    app.config["FLAGWIRE_FLAGS_FILE"] = str(path)
    Flagwire(app, context=context.static({"plan": "beta"}))
    close_sources.append(app)

    body = json_of(fetch(app))

    source = Flagwire.binding(app).source
    assert isinstance(source, FileSource)
    assert source.path == path
    assert body["version"] == per_request_flags.version_label
    assert body["checkout"]["value"] is True


def test_flags_file_config_with_factory_pattern(
    flags_file: Path, per_request_flags: FlagSet, close_sources: list[flask.Flask]
) -> None:
    fw = Flagwire()
    app = add_routes(flask.Flask("factory_config"))
    app.config["FLAGWIRE_FLAGS_FILE"] = flags_file
    fw.init_app(app)
    close_sources.append(app)

    assert json_of(fetch(app))["version"] == per_request_flags.version_label


def test_strict_config_rejects_an_invalid_flags_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json", encoding="utf-8")
    app = flask.Flask("strict")
    app.config.update(FLAGWIRE_FLAGS_FILE=str(path), FLAGWIRE_STRICT=True)

    with pytest.raises(FlagsetError):
        Flagwire(app)


def test_the_extension_makes_its_source_the_default(per_request_flags: FlagSet) -> None:
    make_app(per_request_flags)

    assert current_flags().flagset is per_request_flags
    assert flask_flags.boolean("new-checkout", True) is False


# -- the request's flags ---------------------------------------------------------------------


def test_g_flagwire_the_proxy_and_current_flags_are_one_object(
    per_request_flags: FlagSet,
) -> None:
    app = flask.Flask("same")
    Flagwire(app, source=per_request_flags, context=USER_HEADER)
    seen: dict[str, Any] = {}

    def helper() -> RequestFlags:
        return current_flags()

    @app.get("/")
    def view() -> str:
        seen["g"] = flask.g.flagwire
        seen["proxy"] = cast(Any, flask_flags)._get_current_object()
        seen["current"] = current_flags()
        seen["helper"] = helper()
        return str(flask_flags.boolean("new-checkout", False))

    response = fetch(app, headers={"x-plan": "beta", "x-user-id": "u-1"})

    assert response.get_data(as_text=True) == "True"
    assert isinstance(seen["g"], RequestFlags)
    assert all(value is seen["g"] for value in seen.values()), seen
    assert list(seen["g"].evaluated()) == ["new-checkout"]


def test_each_request_gets_new_flags_and_they_are_cleaned_up(per_request_flags: FlagSet) -> None:
    app = flask.Flask("cleanup")
    Flagwire(app, source=per_request_flags, anonymous_cookie=None)
    seen: list[RequestFlags] = []

    @app.get("/")
    def view() -> str:
        seen.append(current_flags())
        current_flags().boolean("new-checkout")
        return "ok"

    fetch(app)
    fetch(app)

    assert seen[0] is not seen[1]
    outside = current_flags()
    assert outside is not seen[0]
    assert outside is not seen[1]
    assert dict(outside.evaluated()) == {}
    assert current_flags() is not outside  # fresh each time outside a request


def test_flags_are_cleaned_up_after_a_view_that_raises(per_request_flags: FlagSet) -> None:
    app = flask.Flask("raises")
    Flagwire(app, source=per_request_flags)
    seen: list[RequestFlags] = []

    @app.get("/")
    def view() -> str:
        seen.append(current_flags())
        raise RuntimeError("view failed")

    response = fetch(app)

    assert response.status_code == 500
    assert current_flags() is not seen[0]


def test_the_proxy_works_outside_a_request() -> None:
    assert flask_flags.boolean("anything", True) is True
    assert flask_flags.details("anything", 1).error_code is ErrorCode.FLAG_NOT_FOUND


def test_flags_are_current_while_a_context_streamed_body_is_produced(
    per_request_flags: FlagSet,
) -> None:
    app = flask.Flask("stream")
    Flagwire(app, source=per_request_flags, context=USER_HEADER)
    seen: dict[str, RequestFlags] = {}

    @app.get("/")
    def view() -> flask.Response:
        seen["view"] = current_flags()

        def body() -> Iterator[str]:
            yield "checkout="
            seen["g"] = flask.g.flagwire
            seen["proxy"] = cast(Any, flask_flags)._get_current_object()
            seen["body"] = current_flags()
            yield str(flask_flags.boolean("new-checkout"))

        return flask.Response(flask.stream_with_context(body()), mimetype="text/plain")

    response = fetch(app, headers={"x-plan": "beta", "x-user-id": "u-1"})
    text = response.get_data(as_text=True)  # runs the body

    assert seen["g"] is seen["view"]  # the request context is active in the body
    assert seen["proxy"] is seen["view"]
    assert seen["body"] is seen["view"]
    assert text == "checkout=True"
    assert current_flags() is not seen["view"]


# -- the anonymous cookie --------------------------------------------------------------------


def test_an_anonymous_visitor_gets_a_cookie_once(per_request_flags: FlagSet) -> None:
    app = make_app(per_request_flags)

    first = fetch(app)
    [set_cookie] = flagwire_cookies(first)
    anonymous_id = cookie_value(set_cookie)
    attributes = [part.strip() for part in set_cookie.split(";")[1:]]

    assert ID.fullmatch(anonymous_id)
    assert json_of(first)["targetingKey"] == anonymous_id
    assert "Path=/" in attributes
    assert "HttpOnly" in attributes
    assert "SameSite=Lax" in attributes
    assert "Secure" not in attributes

    second = fetch(app, headers={"Cookie": f"flagwire_id={anonymous_id}"})

    assert flagwire_cookies(second) == []
    assert json_of(second)["targetingKey"] == anonymous_id
    assert json_of(second)["ranking"] == json_of(first)["ranking"]


def test_a_browser_keeps_its_anonymous_id(per_request_flags: FlagSet) -> None:
    app = make_app(per_request_flags)
    client = app.test_client()

    responses = [client.get("/") for _ in range(3)]

    assert len({json_of(r)["targetingKey"] for r in responses}) == 1
    assert [len(flagwire_cookies(r)) for r in responses] == [1, 0, 0]


@pytest.mark.parametrize(
    "bad", ["", "short", "has spaces in it!!!!", "a" * 65, "a$b%c^d&e*f(g)h-i"]
)
def test_a_malformed_anonymous_id_is_replaced(per_request_flags: FlagSet, bad: str) -> None:
    app = make_app(per_request_flags)

    response = fetch(app, headers={"Cookie": f"flagwire_id={bad}"})

    [set_cookie] = flagwire_cookies(response)
    new_id = cookie_value(set_cookie)
    assert ID.fullmatch(new_id)
    assert new_id != bad
    assert json_of(response)["targetingKey"] == new_id


def test_no_cookie_for_an_identified_user(per_request_flags: FlagSet) -> None:
    app = make_app(per_request_flags, context=USER_HEADER)

    identified = fetch(app, headers={"x-user-id": "u-1"})

    assert flagwire_cookies(identified) == []
    assert json_of(identified)["targetingKey"] == "u-1"
    assert len(flagwire_cookies(fetch(app))) == 1


def test_no_cookie_with_anonymous_cookie_none(per_request_flags: FlagSet) -> None:
    app = make_app(per_request_flags, anonymous_cookie=None)

    response = fetch(app, headers={"Cookie": "flagwire_id=AAAAAAAAAAAAAAAAAAAAAA"})

    assert response.headers.getlist("Set-Cookie") == []
    assert json_of(response)["targetingKey"] is None
    assert json_of(response)["ranking"]["reason"] == Reason.DEFAULT.value


def test_no_cookie_with_anonymous_cookie_none_given_to_init_app(
    per_request_flags: FlagSet,
) -> None:
    app = add_routes(flask.Flask("init_app_no_cookie"))
    Flagwire().init_app(app, source=per_request_flags, anonymous_cookie=None)

    response = fetch(app)

    assert response.headers.getlist("Set-Cookie") == []
    assert json_of(response)["targetingKey"] is None


def test_no_cookie_without_a_flag_read(per_request_flags: FlagSet) -> None:
    app = make_app(per_request_flags)

    assert flagwire_cookies(fetch(app, "/silent")) == []


def test_the_cookie_is_secure_on_https(per_request_flags: FlagSet) -> None:
    app = make_app(per_request_flags)

    response = fetch(app, base_url="https://localhost")

    [set_cookie] = flagwire_cookies(response)
    assert "Secure" in [part.strip() for part in set_cookie.split(";")]


def test_cookie_name_and_max_age_are_options(per_request_flags: FlagSet) -> None:
    app = make_app(per_request_flags, anonymous_cookie="visitor", cookie_max_age=60)

    response = fetch(app)

    [set_cookie] = flagwire_cookies(response, "visitor")
    assert "Max-Age=60" in set_cookie
    assert flagwire_cookies(response) == []


def test_the_cookie_is_added_next_to_the_apps_own_cookies(per_request_flags: FlagSet) -> None:
    app = flask.Flask("own_cookie")
    Flagwire(app, source=per_request_flags)

    @app.get("/")
    def view() -> flask.Response:
        response = flask.make_response(str(current_flags().boolean("new-checkout")))
        response.set_cookie("theme", "dark")
        return response

    response = fetch(app)

    cookies = response.headers.getlist("Set-Cookie")
    assert len(cookies) == 2
    assert any(c.startswith("theme=dark") for c in cookies)


def test_a_flag_first_read_in_before_request_or_in_a_thread_sends_the_cookie(
    per_request_flags: FlagSet,
) -> None:
    app = flask.Flask("early_read")
    Flagwire(app, source=per_request_flags)
    seen: list[str] = []

    @app.before_request
    def early() -> None:
        seen.append(current_flags().string("ranking", "none"))

    @app.get("/")
    def view() -> str:
        return "ok"

    @app.get("/thread")
    def in_a_thread() -> str:
        # The request's context copied into a worker thread reads the first flag.
        with ThreadPoolExecutor(1) as pool:
            ctx = contextvars.copy_context()
            return str(pool.submit(ctx.run, current_flags().boolean, "new-checkout").result())

    [set_cookie] = flagwire_cookies(fetch(app))
    [from_thread] = flagwire_cookies(fetch(app, "/thread"))

    assert seen and ID.fullmatch(cookie_value(set_cookie))
    assert ID.fullmatch(cookie_value(from_thread))


def test_a_flag_first_read_in_a_streamed_body_gets_an_id_but_no_cookie(
    per_request_flags: FlagSet,
) -> None:
    # Headers are gone by then: the visitor is decided with a fresh id, and the request
    # still succeeds; the next request that reads a flag in the view sends the cookie.
    app = flask.Flask("streamed")
    Flagwire(app, source=per_request_flags)

    @app.get("/")
    def view() -> flask.Response:
        @flask.stream_with_context
        def body() -> Iterator[str]:
            # A fractional split: a targeting key was there to hash.
            yield current_flags().details("ranking", "none").reason.value

        return flask.Response(body())

    response = fetch(app)

    assert response.status_code == 200
    assert response.get_data(as_text=True) == "TARGETING_MATCH"
    assert flagwire_cookies(response) == []


class Account(UserMixin):  # type: ignore[misc]
    def __init__(self, user_id: str, plan: str) -> None:
        self.id = user_id
        self.plan = plan


def test_the_flask_login_user_is_the_default_context(per_request_flags: FlagSet) -> None:
    app = add_routes(flask.Flask("login"))
    app.secret_key = "not-a-secret"
    accounts = {"7": Account("7", "beta")}
    LoginManager(app).user_loader(accounts.get)
    Flagwire(app, source=per_request_flags, context=context.user({"plan": "plan"}))

    @app.post("/login/<user_id>")
    def login(user_id: str) -> str:
        login_user(accounts[user_id])
        return "ok"

    client = app.test_client()
    anonymous = client.get("/")
    client.post("/login/7")
    logged_in = client.get("/")

    assert len(flagwire_cookies(anonymous)) == 1
    assert json_of(logged_in)["targetingKey"] == "7"
    assert json_of(logged_in)["checkout"]["value"] is True
    assert flagwire_cookies(logged_in) == []


def test_g_user_set_by_a_later_before_request_is_seen(per_request_flags: FlagSet) -> None:
    app = add_routes(flask.Flask("g_user"))
    Flagwire(app, source=per_request_flags)  # default context: the user

    class User:
        id = "g-1"

    @app.before_request
    def load_user() -> None:
        if flask.request.headers.get("x-user"):
            flask.g.user = User()

    identified = fetch(app, headers={"x-user": "yes"})

    assert json_of(identified)["targetingKey"] == "g-1"
    assert flagwire_cookies(identified) == []


# -- bad input never gives a 500 -------------------------------------------------------------


def test_a_missing_user_gives_defaults(per_request_flags: FlagSet) -> None:
    app = make_app(per_request_flags, context=context.user({"plan": "plan"}))

    body = json_of(fetch(app))

    assert body["checkout"]["value"] is False
    assert body["checkout"]["reason"] == Reason.TARGETING_MATCH.value


@pytest.mark.parametrize(
    "raw", [";;;", "=", "flagwire_id", "flagwire_id=;", 'flagwire_id="', "a=1;;=;b"]
)
def test_a_malformed_cookie_header_gives_a_fresh_id(per_request_flags: FlagSet, raw: str) -> None:
    app = make_app(per_request_flags)

    response = fetch(app, headers={"Cookie": raw})

    [set_cookie] = flagwire_cookies(response)
    assert json_of(response)["targetingKey"] == cookie_value(set_cookie)


def test_an_extractor_that_raises_is_logged_and_skipped(
    per_request_flags: FlagSet, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(request: Any) -> Mapping[str, Any]:
        raise RuntimeError("session store down")

    app = make_app(per_request_flags, context=[context.headers({"x-plan": "plan"}), broken])

    with caplog.at_level(logging.ERROR, logger="flagwire"):
        body = json_of(fetch(app, headers={"x-plan": "beta"}))

    assert body["checkout"]["value"] is True
    assert any("broken" in r.getMessage() for r in caplog.records if r.name == "flagwire")


def test_an_extractor_returning_garbage_is_skipped(per_request_flags: FlagSet) -> None:
    app = make_app(
        per_request_flags, context=[context.headers({"x-plan": "plan"}), lambda r: "garbage"]
    )

    assert json_of(fetch(app, headers={"x-plan": "beta"}))["checkout"]["value"] is True


def test_a_missing_flag_gives_the_default_with_flag_not_found(per_request_flags: FlagSet) -> None:
    missing = json_of(fetch(make_app(per_request_flags)))["missing"]

    assert missing["value"] == "fallback"
    assert missing["reason"] == Reason.ERROR.value
    assert missing["error"] == ErrorCode.FLAG_NOT_FOUND.value


def test_a_wrong_type_flag_gives_the_default_with_type_mismatch(
    per_request_flags: FlagSet,
) -> None:
    body = json_of(fetch(make_app(per_request_flags, context=context.static({"plan": "beta"}))))

    assert body["mismatch"]["value"] == "a string"
    assert body["mismatch"]["reason"] == Reason.ERROR.value
    assert body["mismatch"]["error"] == ErrorCode.TYPE_MISMATCH.value
    assert body["checkout"]["value"] is True


def test_a_missing_flags_file_gives_defaults(
    tmp_path: Path, close_sources: list[flask.Flask]
) -> None:
    app = add_routes(flask.Flask("missing_file"))
    app.config["FLAGWIRE_FLAGS_FILE"] = str(tmp_path / "absent.json")
    Flagwire(app)
    close_sources.append(app)

    body = json_of(fetch(app))

    assert body["checkout"]["value"] is False
    assert body["checkout"]["error"] == ErrorCode.FLAG_NOT_FOUND.value


# -- the flag set is pinned for the request --------------------------------------------------


def test_the_flag_set_is_pinned_for_the_request(
    flags_file: Path, per_request_document: Document
) -> None:
    updated = json.loads(json.dumps(per_request_document))
    updated["metadata"]["version"] = "r2-updated"
    updated["flags"]["new-checkout"]["defaultVariant"] = "on"
    del updated["flags"]["new-checkout"]["targeting"]
    updated["flags"]["retries"]["defaultVariant"] = "many"

    with FileSource(flags_file, poll_interval=0) as source:
        app = flask.Flask("pinned")
        Flagwire(app, source=source, anonymous_cookie=None)

        @app.get("/")
        def view() -> dict[str, Any]:
            flags = current_flags()
            before = [flags.boolean("new-checkout"), flags.flagset.version_label]
            if flask.request.args.get("swap"):
                flags_file.write_text(json.dumps(updated, indent=1), encoding="utf-8")
                assert source.refresh()
            return {
                "before": before,
                "after": [flags.boolean("new-checkout"), flask_flags.flagset.version_label],
                "retries": flags.integer("retries"),  # first asked after the swap
                "retries_version": flags.details("retries").flagset_version,
            }

        old_label = source.flagset.version_label
        during = json_of(fetch(app, "/?swap=1"))
        new_label = source.flagset.version_label
        following = json_of(fetch(app))

    assert new_label.startswith("r2-updated+")
    assert during["before"] == [False, old_label]
    assert during["after"] == [False, old_label]
    assert during["retries"] == 3
    assert during["retries_version"] == old_label
    assert following["before"] == [True, new_label]
    assert following["retries"] == 10


def test_set_default_source_is_not_replaced_by_the_extension(per_request_flags: FlagSet) -> None:
    other = StaticSource(FlagSet.empty(source="other"))
    flagwire.set_default_source(other)

    make_app(per_request_flags)

    assert current_flags().flagset is other.flagset

"""flagwire.django: the middleware (sync and async views), settings, template tag, checks.

In-process with Django's test clients; ``test_e2e_frameworks.py`` runs the same site under
gunicorn (WSGI) and uvicorn (ASGI).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).with_name("e2e_apps")))
pytest.importorskip("django", reason="needs Django: pip install -e '.[django]'")

import django_site
from django.core.checks import run_checks
from django.test import AsyncClient, Client, override_settings

from flagwire import FlagSet, Propagation, StaticSource, set_default_propagation
from flagwire._telemetry import RequestRecord
from flagwire.propagation import job_headers

KEYS = ["django-tests-secret-0123456789"]
COOKIE = "flagwire_id"


def document(version: str = "d1", rollout_on: int = 50) -> dict[str, Any]:
    return {
        "metadata": {"version": version},
        "flags": {
            "rollout": {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "off",
                "targeting": {
                    "if": [
                        {"==": [{"var": "plan"}, "beta"]},
                        "on",
                        {"fractional": [["on", rollout_on], ["off", 100 - rollout_on]]},
                    ]
                },
            },
            "color": {
                "state": "ENABLED",
                "variants": {"red": "red", "green": "green", "blue": "blue"},
                "defaultVariant": "red",
                "targeting": {"fractional": [["red", 34], ["green", 33], ["blue", 33]]},
            },
            "broken": {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "off",
                "targeting": {"/": [1, 0]},
            },
        },
    }


class Recorder:
    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    def record(self, request: RequestRecord) -> None:
        self.records.append(request)


@pytest.fixture
def source() -> StaticSource:
    return StaticSource(FlagSet.from_mapping(document(), source="django.json"))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def propagation() -> Propagation:
    """Also the process-wide one, which outbound helpers use (conftest resets it)."""
    propagation = Propagation(keys=KEYS)
    set_default_propagation(propagation)
    return propagation


@pytest.fixture
def configured(
    source: StaticSource, recorder: Recorder, propagation: Propagation
) -> Iterator[dict[str, Any]]:
    config = {
        "SOURCE": source,
        "USER_ATTRIBUTES": {"plan": "plan"},
        "TELEMETRY": [recorder],
        "PROPAGATION": propagation,
    }
    with override_settings(FLAGWIRE=config):
        yield config


def expected(source: StaticSource, user: str, plan: str | None = None) -> dict[str, Any]:
    context = {"targetingKey": user, **({"plan": plan} if plan else {})}
    flagset = source.flagset
    return {
        "rollout": flagset.decide("rollout", context).value,
        "color": flagset.decide("color", context).value,
    }


@pytest.mark.usefixtures("configured")
@pytest.mark.parametrize("view", ["/hop", "/ahop"])
def test_sync_and_async_views_get_the_users_decisions(source: StaticSource, view: str) -> None:
    for client in (Client(), AsyncClient()):
        for n in range(20):
            user, plan = f"user-{n}", "beta" if n % 5 == 0 else None
            headers = {"x-user-id": user, **({"x-plan": plan} if plan else {})}
            if isinstance(client, AsyncClient):
                import asyncio

                response = asyncio.run(client.get(view, headers=headers))
            else:
                response = client.get(view, headers=headers)
            body = response.json()
            assert response.status_code == 200
            assert body["same"] is True  # request.flags is current_flags()
            assert body["user"] == user
            assert {k: body[k] for k in ("rollout", "color")} == expected(source, user, plan)
            assert COOKIE not in response.cookies  # a known user needs no anonymous id


def test_flags_are_pinned_for_the_whole_request(
    configured: dict[str, Any], source: StaticSource
) -> None:
    seen: list[tuple[str, str]] = []
    original = django_site._answer

    def answer_then_swap(request: Any) -> dict[str, Any]:
        first = request.flags.string("color", "none")
        source.flagset = FlagSet.from_mapping(
            {"flags": {"color": {**document()["flags"]["color"], "targeting": None}}},
            source="swapped.json",
        )
        body = original(request)
        seen.append((first, body["color"]))
        return body

    user = next(f"user-{n}" for n in range(50) if expected(source, f"user-{n}")["color"] != "red")
    django_site._answer = answer_then_swap  # type: ignore[assignment]
    try:
        body = Client().get("/hop", headers={"x-user-id": user}).json()
    finally:
        django_site._answer = original  # type: ignore[assignment]
    assert seen == [(body["color"], body["color"])]
    assert body["color"] != "red"
    assert body["version"].startswith("d1+")
    assert Client().get("/hop", headers={"x-user-id": user}).json()["color"] == "red"


@pytest.mark.usefixtures("configured")
def test_anonymous_visitor_gets_a_cookie_that_keeps_their_bucket() -> None:
    client = Client()
    first = client.get("/hop")
    cookie = first.cookies[COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["max-age"] > 0
    assert first.json()["user"] == cookie.value
    again = client.get("/hop")
    assert COOKIE not in again.cookies  # kept, not renewed
    assert again.json()["user"] == cookie.value
    assert again.json()["color"] == first.json()["color"]


@pytest.mark.usefixtures("configured")
def test_route_label_is_the_url_pattern(recorder: Recorder) -> None:
    Client().get("/users/17/", headers={"x-user-id": "u"})
    Client().get("/no/such/page", headers={"x-user-id": "u"})
    Client().post("/users/18/", headers={"x-user-id": "u"})
    Client().generic("BREW", "/users/19/", headers={"x-user-id": "u"})
    routes = [(r.method, r.route, r.status) for r in recorder.records]
    assert routes == [
        ("GET", "users/<int:pk>/", 200),
        ("POST", "users/<int:pk>/", 200),
        ("_OTHER", "users/<int:pk>/", 200),  # methods are bounded too
    ]
    assert list(recorder.records[0].decisions) == ["rollout"]


def test_flag_problems_never_fail_a_request(configured: dict[str, Any]) -> None:
    def broken(request: Any) -> dict[str, Any]:
        raise RuntimeError("extractor bug")

    with override_settings(FLAGWIRE={**configured, "CONTEXT": [broken]}):
        response = Client().get("/hop", headers={"x-user-id": "u"})
        assert response.status_code == 200
        assert response.json()["user"] != "u"  # no context but an anonymous id
    with override_settings(FLAGWIRE={"FLAGS_FILE": "/nonexistent/flags.yaml"}):
        response = Client().get("/ahop")
        assert response.status_code == 200
        assert response.json()["color"] == "none"
        assert response.json()["reason"] == "ERROR"


@pytest.mark.usefixtures("configured")
def test_streamed_body_sees_the_requests_flags(source: StaticSource) -> None:
    response = Client().get("/stream", headers={"x-user-id": "user-9"})
    lines = b"".join(response.streaming_content).decode().split()  # type: ignore[attr-defined]
    assert lines == [expected(source, "user-9")["color"]] * 2


@pytest.mark.usefixtures("configured")
def test_template_tag_reads_the_requests_flags(source: StaticSource) -> None:
    response = Client().get("/page", headers={"x-user-id": "user-4", "x-plan": "beta"})
    assert response.content.decode() == (
        f"color={expected(source, 'user-4')['color']};rollout=True;missing=dflt;broken=safe"
    )


@pytest.mark.usefixtures("configured")
def test_trusted_baggage_is_honoured_and_forged_ignored(
    source: StaticSource, propagation: Propagation
) -> None:
    # what an upstream service decided for user-1: the opposite of this service's choice
    mine = expected(source, "user-1")
    theirs = {"color": next(c for c in ("red", "green", "blue") if c != mine["color"])}
    signed = propagation.header(theirs, "user-1", "upstream-7")
    body = Client().get("/hop", headers={"baggage": signed}).json()
    assert (body["user"], body["color"]) == ("user-1", theirs["color"])
    assert "color~" + theirs["color"] in body["outbound"]  # passed on downstream
    forged = signed.replace("color~" + theirs["color"], "color~" + mine["color"])
    assert forged != signed
    forged = forged if forged != signed else signed + "x"
    body = Client().get("/hop", headers={"baggage": forged}).json()
    assert body["user"] != "user-1"  # nothing of the forged header is believed
    other = Propagation(keys=["someone-elses-key-0123456789"])
    body = Client().get("/hop", headers={"baggage": other.header(theirs, "user-1", "x")}).json()
    assert body["user"] != "user-1"


def test_job_headers_from_a_django_view_carry_the_decisions(configured: dict[str, Any]) -> None:
    captured: dict[str, str] = {}
    original = django_site._answer

    def answer(request: Any) -> dict[str, Any]:
        body = original(request)
        captured.update(job_headers(propagation=configured["PROPAGATION"]))
        return body

    django_site._answer = answer  # type: ignore[assignment]
    try:
        Client().get("/hop", headers={"x-user-id": "user-5"})
    finally:
        django_site._answer = original  # type: ignore[assignment]
    assert "fw.tk=user-5" in captured["baggage"]


def _ids(**override: Any) -> list[str]:
    with override_settings(**override):
        return sorted(m.id for m in run_checks(tags=["flagwire"]) if m.id)


def test_system_check_reports_bad_configuration(tmp_path: Path) -> None:
    good = tmp_path / "flags.json"
    good.write_text('{"flags": {}}')
    bad = tmp_path / "bad.json"
    bad.write_text('{"flags": {"x": {"state": "ENABLED"}}}')
    assert _ids(FLAGWIRE={"FLAGS_FILE": str(good)}) == []
    assert _ids(FLAGWIRE="flags.yaml") == ["flagwire.E001"]
    assert _ids(FLAGWIRE={}) == ["flagwire.E002"]
    assert _ids(FLAGWIRE={"FLAGS_FILE": str(good), "CONTEXT": ["no.such.thing"]}) == [
        "flagwire.E002"
    ]
    assert _ids(FLAGWIRE={"FLAGS_FILE": str(bad)}) == ["flagwire.E003"]
    assert _ids(FLAGWIRE={"FLAGS_FILE": str(tmp_path / "gone.yaml")}) == ["flagwire.E003"]
    assert _ids(FLAGWIRE={"FLAGS_FILE": str(good), "FLAGS_FLIE": 1}) == ["flagwire.W001"]
    assert _ids(FLAGWIRE={"FLAGS_FILE": str(good)}, MIDDLEWARE=[]) == ["flagwire.W002"]


def test_missing_django_names_the_extra() -> None:
    code = "import sys; sys.modules['django'] = None; import flagwire.django"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert 'pip install -e ".[django]"' in result.stderr

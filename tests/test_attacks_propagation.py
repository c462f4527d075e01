"""Flag baggage never reaches a host outside the allowlist: numeric and unicode host
forms, userinfo, IPv6, and redirects from an allowed server to one that is not allowed,
on every outbound path flagwire offers (real servers on loopback)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import httpx
import pytest
import requests

import flagwire
from attack_servers import Recorder, recorder
from flagwire import FlagSet, Propagation, RequestFlags
from flagwire._request.scope import activate
from flagwire.propagation import RedirectHandler, inject, redirect_baggage

KEY = "k" * 32
DOCUMENT = {
    "flags": {
        "vip": {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "on"}
    }
}
# 127.0.0.2 as inet_aton reads it: single-label looking, an address to the resolver.
NUMERIC_LOOPBACK = ("2130706434", "0x7f000002", "017700000002", "127.2")


@pytest.fixture
def propagation() -> Iterator[Propagation]:
    policy = Propagation([KEY], allowed_hosts=["127.0.0.1"])  # single labels allowed too
    flagwire.set_default_propagation(policy)
    yield policy
    flagwire.set_default_propagation(None)


@pytest.fixture
def alice(propagation: Propagation) -> Iterator[RequestFlags]:
    flags = RequestFlags(FlagSet.from_mapping(DOCUMENT), {"targetingKey": "alice"})
    assert flags.boolean("vip") is True
    with activate(flags):
        yield flags


@pytest.fixture
def allowed() -> Iterator[Recorder]:
    with recorder("127.0.0.1") as server:
        yield server


@pytest.fixture
def outside() -> Iterator[Recorder]:
    with recorder("127.0.0.2") as server:
        yield server


def _fw(headers: dict[str, str]) -> list[str]:
    return [m.strip() for m in headers.get("baggage", "").split(",") if m.strip().startswith("fw.")]


@pytest.mark.parametrize(
    "host",
    [
        "134744072",
        "0x8080808",
        "010.010.010.010",
        "8.8",
        "8.8.8.8.",
        "evil\u3002example\u3002com",
        "evil\uff0eexample\uff0ecom",
        "internal@evil.com",
        "evil.com.",
        "[::ffff:8.8.8.8]:80",
        "::ffff:808:808",
        "1.2.3.4 payments",
        "0",
        "08.8.8.8",
    ],
)
def test_numeric_unicode_and_disguised_hosts_are_not_allowed(host: str) -> None:
    assert not Propagation([KEY]).allows(host)


@pytest.mark.parametrize(
    "host", ["payments", "PAYMENTS.", "payments:8000", "[::1]:80", "::ffff:127.0.0.1", "a.svc."]
)
def test_service_names_and_loopback_stay_allowed(host: str) -> None:
    assert Propagation([KEY]).allows(host)


def test_address_patterns_match_addresses_only() -> None:
    policy = Propagation([KEY], allowed_hosts=["10.*", "192.168.0.0/16"], allow_single_label=False)
    assert policy.allows("10.1.2.3") and policy.allows("10.1") and policy.allows("192.168.9.9")
    assert policy.allows("3232237833")  # 192.168.9.9
    assert not policy.allows("10.attacker.example")
    assert not policy.allows("192.168.attacker.example")


@pytest.mark.parametrize("numeric", NUMERIC_LOOPBACK)
def test_numeric_host_gets_no_baggage_on_any_path(
    numeric: str, alice: RequestFlags, allowed: Recorder, outside: Recorder
) -> None:
    target = outside.url("/", host=numeric)
    from flagwire.httpx import FlagwireTransport, request_hook
    from flagwire.requests import install

    with httpx.Client(transport=FlagwireTransport()) as client:
        client.get(target)
    with httpx.Client(event_hooks={"request": [request_hook]}) as client:
        client.get(target)
    with install(requests.Session()) as session:
        session.get(target)
    headers: dict[str, str] = {}
    inject(headers, target)
    assert headers == {}
    assert len(outside.seen) == 3
    assert all(_fw(seen) == [] for seen in outside.seen)
    # the same paths to the allowed server do carry them: the check can fail
    with install(requests.Session()) as session:
        session.get(allowed.url())
    assert _fw(allowed.seen[-1])


def _redirect(allowed: Recorder, outside: Recorder) -> str:
    return allowed.url("/redirect?to=" + outside.url("/landed"))


def _check_redirect(allowed: Recorder, outside: Recorder) -> None:
    assert [s[":path"] for s in outside.seen] == ["/landed"]
    assert _fw(allowed.seen[0]), "the allowed first hop carries the flags"
    assert _fw(outside.seen[0]) == [], "the redirect target must get no flagwire member"


def test_httpx_transport_with_a_plain_mount_for_another_origin(
    alice: RequestFlags, allowed: Recorder, outside: Recorder
) -> None:
    from flagwire.httpx import FlagwireTransport

    mounts = {outside.url("").rstrip("/"): httpx.HTTPTransport()}
    with httpx.Client(transport=FlagwireTransport(), mounts=mounts, follow_redirects=True) as c:
        assert c.get(_redirect(allowed, outside)).status_code == 200
    _check_redirect(allowed, outside)


async def _async_get(url: str, mounts: dict[str, httpx.AsyncBaseTransport]) -> int:
    from flagwire.httpx import AsyncFlagwireTransport

    transport = AsyncFlagwireTransport()
    async with httpx.AsyncClient(transport=transport, mounts=mounts, follow_redirects=True) as c:
        return (await c.get(url)).status_code


def test_async_httpx_transport_redirect(
    alice: RequestFlags, allowed: Recorder, outside: Recorder
) -> None:
    import asyncio

    mounts: dict[str, httpx.AsyncBaseTransport] = {
        outside.url("").rstrip("/"): httpx.AsyncHTTPTransport()
    }
    assert asyncio.run(_async_get(_redirect(allowed, outside), mounts)) == 200
    _check_redirect(allowed, outside)


def test_httpx_event_hook_redirect(
    alice: RequestFlags, allowed: Recorder, outside: Recorder
) -> None:
    from flagwire.httpx import request_hook

    with httpx.Client(event_hooks={"request": [request_hook]}, follow_redirects=True) as client:
        client.get(_redirect(allowed, outside))
    _check_redirect(allowed, outside)


def test_requests_session_with_a_plain_adapter_for_another_origin(
    alice: RequestFlags, allowed: Recorder, outside: Recorder
) -> None:
    from flagwire.requests import install

    with install(requests.Session()) as session:
        session.mount(outside.url("").rstrip("/"), requests.adapters.HTTPAdapter())
        assert session.get(_redirect(allowed, outside)).status_code == 200
    _check_redirect(allowed, outside)


def test_otel_requests_instrumentation_redirect(
    alice: RequestFlags, allowed: Recorder, outside: Recorder
) -> None:
    from opentelemetry import propagate
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    from opentelemetry.sdk.trace import TracerProvider

    from flagwire.otel import install_propagator

    previous = propagate.get_global_textmap()
    instrumentor = RequestsInstrumentor()
    instrumentor.instrument(tracer_provider=TracerProvider())
    install_propagator()
    try:
        assert requests.get(_redirect(allowed, outside), timeout=5).status_code == 200
    finally:
        instrumentor.uninstrument()
        propagate.set_global_textmap(previous)
    _check_redirect(allowed, outside)


def test_inject_with_urllib_and_the_redirect_handler(
    alice: RequestFlags, allowed: Recorder, outside: Recorder
) -> None:
    url = _redirect(allowed, outside)
    headers: dict[str, str] = {}
    inject(headers, url)
    opener = urllib.request.build_opener(RedirectHandler())
    with opener.open(urllib.request.Request(url, headers=headers), timeout=5) as response:
        assert response.status == 200
    _check_redirect(allowed, outside)


def test_redirect_baggage_keeps_the_apps_own_members(propagation: Propagation) -> None:
    header = "app=1,fw.tk=alice,fw.sig=x"
    assert redirect_baggage(header, "http://evil.example/") == "app=1"
    assert redirect_baggage(header, "http://127.0.0.1:9/") == header

"""Flag propagation in W3C ``baggage`` (``flagwire/_propagation.py``,
``flagwire/propagation.py``, ``flagwire/httpx.py``, ``flagwire/requests.py``,
``flagwire/otel.py``): the encoding, signing and trust, the caps, destinations, honouring
upstream decisions in the ASGI middleware and the Flask extension, and the outbound helpers
(plain, httpx, requests, OpenTelemetry)."""

from __future__ import annotations

import asyncio
import inspect
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import requests
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import baggage as otel_baggage
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.propagate import get_global_textmap, set_global_textmap
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import flagwire
from flagwire import (
    ConfigError,
    FlagSet,
    KeyRing,
    Propagation,
    Reason,
    RequestFlags,
    activate,
    context,
    current_flags,
)
from flagwire._propagation.baggage import merge_baggage, split_baggage
from flagwire._propagation.codec import packed_piece, unpack
from flagwire._propagation.policy import default_propagation
from flagwire.asgi import FlagwireMiddleware
from flagwire.flask import Flagwire
from flagwire.httpx import (
    AsyncFlagwireTransport,
    FlagwireTransport,
    async_request_hook,
    request_hook,
)
from flagwire.otel import FlagwirePropagator, install_propagator
from flagwire.propagation import (
    bind,
    flags_from_headers,
    host_of,
    inject,
    job_headers,
    outbound_baggage,
)
from flagwire.requests import install

Document = dict[str, Any]

KEY = "propagation-test-key-0123456789"
OTHER_KEY = "some-other-services-key-987654"
NOW = 1_700_000_000.0
TTL = 300


def clock() -> float:
    return NOW


def propagation(**options: Any) -> Propagation:
    """A receiver/sender with the shared test key and a fixed clock."""
    options.setdefault("keys", [KEY])
    options.setdefault("clock", clock)
    return Propagation(**options)


def _document() -> Document:
    on_off = {"on": True, "off": False}
    return {
        "metadata": {"version": "p1"},
        "flags": {
            "ranking": {
                "state": "ENABLED",
                "variants": {"classic": "classic", "vector": "vector", "hybrid": "hybrid"},
                "defaultVariant": "classic",
                "targeting": {"if": [{"==": [{"var": "plan"}, "beta"]}, "vector", "classic"]},
            },
            "rollout": {
                "state": "ENABLED",
                "variants": on_off,
                "defaultVariant": "off",
                "targeting": {"fractional": [["on", 50], ["off", 50]]},
            },
            "killed": {"state": "DISABLED", "variants": on_off, "defaultVariant": "on"},
            "new-checkout": {"state": "ENABLED", "variants": on_off, "defaultVariant": "off"},
        },
    }


FLAGSET = FlagSet.from_mapping(_document(), source="propagation.json")
USER = context.headers({"x-user-id": "targetingKey", "x-plan": "plan"})


def local_variant(key: str, targeting_key: str, **attributes: Any) -> str | None:
    """What this service decides on its own for ``key``."""
    return RequestFlags(FLAGSET, {"targetingKey": targeting_key, **attributes}).details(key).variant


def other_rollout_variant(targeting_key: str) -> str:
    """The ``rollout`` variant the local rollout does *not* give ``targeting_key``."""
    return "off" if local_variant("rollout", targeting_key) == "on" else "on"


def signed_members(
    assignments: Mapping[str, str],
    targeting_key: str = "user-1",
    version: str = "v1",
    *,
    key: str = KEY,
) -> list[str]:
    return propagation(keys=[key]).encode(assignments, targeting_key, version)


def signed(
    assignments: Mapping[str, str],
    targeting_key: str = "user-1",
    version: str = "v1",
    *,
    key: str = KEY,
) -> str:
    return ",".join(signed_members(assignments, targeting_key, version, key=key))


def packed_assignments(members: list[str]) -> dict[str, str]:
    """The assignments of the packed ``fw.a<N>`` members, decoded (no signature check)."""
    found: dict[str, str] = {}
    for member in members:
        key, _, value = member.partition("=")
        if key.startswith("fw.a") and key[4:].isdigit():
            found.update(unpack(value) or [])
    return found


def repacked(assignments: Mapping[str, str]) -> Callable[[list[str]], list[str]]:
    """A forgery: the members with these assignments packed in place of the signed ones."""
    value = "~".join(packed_piece(k, v) for k, v in sorted(assignments.items()))

    def forge(members: list[str]) -> list[str]:
        kept = [m for m in members if not m.startswith("fw.a")]
        return [*kept[:-1], f"fw.a0={value}", kept[-1]]

    return forge


def fw_members(header: str | None) -> list[str]:
    return [m for m in split_baggage(header or "") if m.startswith("fw.")]


def other_members(header: str | None) -> list[str]:
    return [m for m in split_baggage(header or "") if not m.startswith("fw.")]


# W3C baggage: key = token (RFC 7230), value = *baggage-octet.
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
BAGGAGE_OCTETS = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")


def assert_w3c_baggage(header: str) -> None:
    assert header.isascii()
    for member in header.split(","):
        key, sep, value = member.partition("=")
        assert sep, member
        assert TOKEN.fullmatch(key), member
        assert BAGGAGE_OCTETS.fullmatch(value), member


# -- encoding: properties ----------------------------------------------------------------------

SPECIAL = list(",;=% +\t\n\r\"\\'%2Cé€😀\x00\x7f\u00a0\u2028")
TEXT = st.text(
    alphabet=st.one_of(st.sampled_from(SPECIAL), st.characters(codec="utf-8")), max_size=16
)
ASSIGNMENTS = st.dictionaries(TEXT, TEXT, max_size=8)
TARGETING_KEYS = st.text(
    alphabet=st.one_of(st.sampled_from(SPECIAL), st.characters(codec="utf-8")),
    min_size=1,
    max_size=16,
)


def roomy() -> Propagation:
    """Caps wide enough for every generated example (8 x 16 characters a side)."""
    return propagation(max_bytes=8192, max_members=180)


@settings(deadline=None)
@given(assignments=ASSIGNMENTS, targeting_key=TARGETING_KEYS, version=TEXT)
def test_decode_inverts_encode(
    assignments: dict[str, str], targeting_key: str, version: str
) -> None:
    p = roomy()
    members = p.encode(assignments, targeting_key, version)
    if not assignments:
        assert members == []
        return
    decoded = p.decode(",".join(members))
    assert p.dropped == 0
    assert decoded.trusted, decoded.problem
    assert decoded.problem is None
    assert dict(decoded.assignments) == assignments
    assert decoded.targeting_key == targeting_key
    assert decoded.version == (version or None)
    assert p.rejected == 0


@settings(deadline=None)
@given(assignments=ASSIGNMENTS, targeting_key=TARGETING_KEYS, version=TEXT)
def test_the_encoding_is_w3c_baggage_that_opentelemetry_reads(
    assignments: dict[str, str], targeting_key: str, version: str
) -> None:
    members = roomy().encode(assignments, targeting_key, version)
    if not members:
        return
    header = ",".join(members)
    assert_w3c_baggage(header)
    assert len(header.encode()) <= 8192

    read = otel_baggage.get_all(W3CBaggagePropagator().extract({"baggage": header}))

    # OpenTelemetry unquotes (unquote_plus) and then strips whitespace at both ends of every
    # key and value; apart from that it reads exactly what was encoded.
    expected: dict[str, object] = {
        "fw.ver": "2",
        "fw.tk": targeting_key.strip(),
        "fw.fs": version.strip(),
        "fw.exp": str(int(NOW) + TTL),
        "fw.sig": members[-1].partition("=")[2],
    }
    packed = {k: v for k, v in dict(read).items() if str(k).startswith("fw.a")}
    assert {k: v for k, v in dict(read).items() if k not in packed} == expected
    # each packed value, as the SDK hands it to the app, is key~variant~... with every key
    # and variant percent-encoded once (so no "~" inside one)
    pairs = [p for value in packed.values() for p in (unpack(quote(str(value))) or [])]
    assert dict(pairs) == assignments


@settings(deadline=None)
@given(assignments=ASSIGNMENTS, targeting_key=TARGETING_KEYS, version=TEXT)
def test_encoding_is_deterministic(
    assignments: dict[str, str], targeting_key: str, version: str
) -> None:
    first = roomy().encode(assignments, targeting_key, version)
    again = roomy().encode(assignments, targeting_key, version)
    reordered = roomy().encode(dict(reversed(assignments.items())), targeting_key, version)
    assert first == again == reordered


def test_the_encoding_keeps_unreserved_characters_and_escapes_the_rest() -> None:
    members = signed_members({"a b": "x+y", "é": "%", "k~._-": "v~._-"}, "u,1;=", "1.0 beta")
    assert members[:4] == ["fw.ver=2", "fw.tk=u%2C1%3B%3D", "fw.fs=1.0%20beta", "fw.exp=1700000300"]
    # each key and variant escaped once more inside the packed member ("~" separates them)
    assert members[4] == "fw.a0=a%2520b~x%252By~k%257E._-~v%257E._-~%25C3%25A9~%2525"
    assert members[5].startswith("fw.sig=")
    assert len(members) == 6


def test_nothing_is_encoded_without_keys_a_targeting_key_or_assignments() -> None:
    assert Propagation(keys=None, clock=clock).encode({"a": "b"}, "user-1", "v1") == []
    assert propagation().encode({"a": "b"}, None, "v1") == []
    assert propagation().encode({"a": "b"}, "", "v1") == []
    assert propagation().encode({}, "user-1", "v1") == []
    assert propagation().header({}, "user-1", "v1", existing="a=1,fw.f.x=y") == "a=1"
    assert propagation().header({}, "user-1", "v1") is None


# -- caps ----------------------------------------------------------------------------------------


def _check_capped(p: Propagation, assignments: Mapping[str, str], members: list[str]) -> int:
    """The caps hold, the kept assignments are the first by flag key, whole and verified,
    and nothing more would have fitted. Returns how many were kept."""
    header = ",".join(members)
    assert len(header.encode()) <= p.max_bytes
    assert len(members) <= p.max_members
    assert_w3c_baggage(header)
    decoded = propagation().decode(header)
    assert decoded.trusted, decoded.problem
    ordered = sorted(assignments)
    kept = len(decoded.assignments)
    assert 0 < kept < len(assignments)
    assert dict(decoded.assignments) == {k: assignments[k] for k in ordered[:kept]}
    assert p.dropped == len(assignments) - kept
    # the first left out would not have fitted the byte cap (packed, it costs "~" + piece)
    following = packed_piece(ordered[kept], assignments[ordered[kept]])
    assert len(header) + 1 + len(following) > p.max_bytes
    return kept


def test_many_long_assignments_are_cut_to_the_byte_cap_whole() -> None:
    p = propagation()  # 4096 bytes, 64 members
    assignments = {f"flag-{i:03d}-{'x' * 60}": f"variant-{i:03d}-{'y' * 20}" for i in range(200)}
    members = p.encode(assignments, "user-1", "v1")
    _check_capped(p, assignments, members)
    # whole values only: every value sent is one of the originals
    for key, value in packed_assignments(members).items():
        assert assignments[key] == value


def test_many_short_assignments_share_members() -> None:
    p = propagation(max_members=20)
    assignments = {f"f{i:03d}": "on" for i in range(200)}
    members = p.encode(assignments, "user-1", "v1")
    assert len(members) == 6  # the head, one packed member, the signature
    assert p.dropped == 0
    assert packed_assignments(members) == assignments
    assert propagation().decode(",".join(members)).trusted


def test_a_small_byte_cap_and_the_dropped_counter() -> None:
    p = propagation(max_bytes=300)
    assignments = {f"flag-{i}": "variant-" + "v" * 10 for i in range(50)}
    kept = _check_capped(p, assignments, p.encode(assignments, "user-1", "v1"))
    p.encode(assignments, "user-1", "v1")
    assert p.dropped == 2 * (50 - kept)  # a counter, per dropped assignment


def test_a_header_that_fits_drops_nothing() -> None:
    p = propagation()
    members = p.encode({f"f{i}": "on" for i in range(59)}, "user-1", "v1")
    assert len(members) == 6
    assert p.dropped == 0


def test_the_byte_cap_holds_for_a_long_targeting_key() -> None:
    # The head (targeting key, flag-set version) counts too: whatever encode() returns
    # stays within max_bytes, so no receiver throws the whole baggage header away.
    p = propagation()
    members = p.encode({"ranking": "vector"}, "x" * 5000, "v1")
    assert len(",".join(members).encode()) <= p.max_bytes
    members = p.encode({"ranking": "vector"}, "user-1", "ü" * 1000)  # 6 kB encoded
    assert len(",".join(members).encode()) <= p.max_bytes


@pytest.mark.parametrize(
    "options",
    [
        {"max_bytes": 0},
        {"max_bytes": 8193},
        {"max_members": 5},
        {"max_members": 181},
    ],
)
def test_caps_outside_the_w3c_limits_are_refused(options: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        propagation(**options)


# -- trust: forgery, expiry, keys --------------------------------------------------------------

BASE = {"ranking": "vector", "new-checkout": "on"}


def _replace(prefix: str, member: str) -> Callable[[list[str]], list[str]]:
    return lambda ms: [member if m.startswith(prefix) else m for m in ms]


def _drop(prefix: str) -> Callable[[list[str]], list[str]]:
    return lambda ms: [m for m in ms if not m.startswith(prefix)]


def _insert(member: str) -> Callable[[list[str]], list[str]]:
    return lambda ms: [*ms[:-1], member, ms[-1]]


FORGERIES: dict[str, Callable[[list[str]], list[str]]] = {
    "unsigned": _drop("fw.sig="),
    "tampered variant": repacked({**BASE, "ranking": "hybrid"}),
    "added assignment": repacked({**BASE, "rollout": "on"}),
    "removed assignment": repacked({"ranking": "vector"}),
    "added version-1 assignment": _insert("fw.f.rollout=on"),
    "another targeting key": _replace("fw.tk=", "fw.tk=user-2"),
    "no targeting key": _drop("fw.tk="),
    "another flag-set version": _replace("fw.fs=", "fw.fs=v2"),
    "extended expiry": _replace("fw.exp=", f"fw.exp={int(NOW) + 86400}"),
    "non-numeric expiry": _replace("fw.exp=", "fw.exp=soon"),
    "no expiry": _drop("fw.exp="),
    "repeated member": lambda ms: [ms[0], ms[1], *ms[1:]],
    "repeated assignment": _insert("fw.f.ranking=vector"),
    "an assignment written twice": _insert("fw.f.%72anking=vector"),
    "garbage signature": _replace("fw.sig=", "fw.sig=garbage"),
    "empty signature": _replace("fw.sig=", "fw.sig="),
    "signature of another key id": lambda ms: [
        f"fw.sig=AAAA.{m.partition('.')[2].partition('.')[2]}" if m.startswith("fw.sig=") else m
        for m in ms
    ],
    "unknown version": _replace("fw.ver=", "fw.ver=3"),
    "signed as version 2, sent as version 1": _replace("fw.ver=", "fw.ver=1"),
    "a malformed packed member": _insert("fw.a1=odd"),
    "an assignment packed twice": _insert("fw.a1=ranking~vector"),
    "no version": _drop("fw.ver="),
    "member without a value": _insert("fw.f.rollout"),
    "unsigned assignments only": lambda ms: ["fw.f.ranking=hybrid", "fw.f.rollout=on"],
}


@pytest.mark.parametrize("forge", FORGERIES.values(), ids=list(FORGERIES))
def test_forged_headers_are_not_trusted(forge: Callable[[list[str]], list[str]]) -> None:
    members = signed_members(BASE)
    assert propagation().decode(",".join(members)).trusted  # the original is fine
    receiver = propagation()
    result = receiver.decode(",".join(forge(list(members))))
    assert result.trusted is False
    assert dict(result.assignments) == {}
    assert result.targeting_key is None
    assert result.problem
    assert receiver.rejected == 1


def test_a_header_signed_with_another_key_is_not_trusted() -> None:
    receiver = propagation()
    result = receiver.decode(signed(BASE, key=OTHER_KEY))
    assert (result.trusted, dict(result.assignments), receiver.rejected) == (False, {}, 1)


def test_expiry() -> None:
    header = signed(BASE)
    assert propagation(clock=lambda: NOW + TTL).decode(header).trusted  # the last second
    late = propagation(clock=lambda: NOW + TTL + 1)
    result = late.decode(header)
    assert (result.trusted, dict(result.assignments), late.rejected) == (False, {}, 1)
    assert result.problem is not None and "expired" in result.problem
    assert propagation(ttl=10).encode(BASE, "u", "v")[3] == f"fw.exp={int(NOW) + 10}"


CONFUSIONS: dict[str, tuple[Mapping[str, str], str, str, Callable[[list[str]], list[str]]]] = {
    # (what was signed, targeting key, version, the forgery)
    "'=' moved from the variant into the flag key": (
        {"a": "b=c"},
        "user-1",
        "v1",
        _replace("fw.f.", "fw.f.a%3Db=c"),
    ),
    "a newline in a variant split into an added assignment": (
        {"a": "b\nc=d"},
        "user-1",
        "v1",
        lambda ms: [*ms[:4], "fw.f.a=b", "fw.f.c=d", ms[-1]],
    ),
    "a newline in the targeting key moved into the version (another subject)": (
        {"a": "on"},
        "alice\nv1",
        "v2",
        lambda ms: [
            "fw.tk=alice"
            if m.startswith("fw.tk=")
            else "fw.fs=v1%0Av2"
            if m.startswith("fw.fs=")
            else m
            for m in ms
        ],
    ),
}


@pytest.mark.parametrize("case", CONFUSIONS.values(), ids=list(CONFUSIONS))
def test_the_signature_covers_each_field_unambiguously(
    case: tuple[Mapping[str, str], str, str, Callable[[list[str]], list[str]]],
) -> None:
    # The HMAC must not verify members that say something else than what was signed,
    # whatever characters the flag keys, variants and targeting key hold.
    assignments, targeting_key, version, forge = case
    members = signed_members(assignments, targeting_key, version)
    receiver = propagation()
    result = receiver.decode(",".join(forge(members)))
    if result.trusted:  # then it must say exactly what was signed
        assert dict(result.assignments) == dict(assignments)
        assert result.targeting_key == targeting_key
        assert result.version == version


def test_key_rotation() -> None:
    old, new = "old-secret-0123456789", "new-secret-0123456789"
    signed_with_old = Propagation(keys=KeyRing([old]), clock=clock).encode(BASE, "u", "v")
    rotating = Propagation(keys=KeyRing([new, old]), clock=clock)
    assert rotating.decode(",".join(signed_with_old)).trusted  # old still verifies

    signed_with_new = ",".join(rotating.encode(BASE, "u", "v"))
    assert Propagation(keys=[new], clock=clock).decode(signed_with_new).trusted  # new signs
    assert Propagation(keys=[old, new], clock=clock).decode(signed_with_new).trusted
    only_old = Propagation(keys=[old], clock=clock)
    assert not only_old.decode(signed_with_new).trusted
    assert only_old.rejected == 1
    # bytes and str secrets are the same key
    assert Propagation(keys=[new.encode()], clock=clock).decode(signed_with_new).trusted


def test_key_ring_sign_and_verify() -> None:
    ring = KeyRing([KEY])
    signature = ring.sign(b"message")
    assert ring.verify(b"message", signature)
    assert not ring.verify(b"massage", signature)
    assert not KeyRing([OTHER_KEY]).verify(b"message", signature)
    assert not ring.verify(b"message", "")
    assert not ring.verify(b"message", "no-dot-at-all")
    assert KEY not in repr(ring)


@pytest.mark.parametrize("keys", [[], [""], [b""], ["ok-key-0123456789", ""]])
def test_key_rings_need_non_empty_keys(keys: list[str | bytes]) -> None:
    with pytest.raises(ConfigError):
        KeyRing(keys)
    with pytest.raises(ConfigError):
        Propagation(keys=keys)


def test_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = "env-old-0123456789", "env-new-0123456789"
    monkeypatch.setenv("FLAGWIRE_PROPAGATION_KEYS", f" {new} , {old} ,")
    from_env = Propagation(clock=clock)
    assert from_env.enabled
    by_old = ",".join(Propagation(keys=[old], clock=clock).encode(BASE, "u", "v"))
    assert from_env.decode(by_old).trusted
    by_env = ",".join(from_env.encode(BASE, "u", "v"))
    assert Propagation(keys=[new], clock=clock).decode(by_env).trusted

    monkeypatch.setenv("FLAGWIRE_PROPAGATION_KEYS", " , ")
    assert not Propagation().enabled
    monkeypatch.delenv("FLAGWIRE_PROPAGATION_KEYS")
    assert not Propagation().enabled


def test_without_keys_nothing_is_honoured() -> None:
    p = Propagation(keys=None, clock=clock)
    assert not p.enabled
    result = p.decode(signed(BASE))
    assert (result.trusted, dict(result.assignments), result.targeting_key) == (False, {}, None)
    assert result.problem == "no propagation keys"


def test_the_default_propagation_reads_the_environment_and_can_be_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert not default_propagation().enabled
    assert default_propagation() is default_propagation()
    mine = propagation()
    flagwire.set_default_propagation(mine)
    assert default_propagation() is mine
    flagwire.set_default_propagation(None)
    monkeypatch.setenv("FLAGWIRE_PROPAGATION_KEYS", KEY)
    assert default_propagation().enabled


# -- malformed and oversized inbound headers -------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "   ",
        ",,,",
        "a=1,b=2",
        "tenant=acme;p=1, user = ü",
        "x" * 10_000,
        "a=" + "x" * 10_000,
        "noequals, , ,;;;,=,==",
        "FW.f.ranking=hybrid",  # not ours: case-sensitive prefix
        "fwx.f.ranking=hybrid",
    ],
)
def test_headers_without_flagwire_members_are_nothing(header: str | None) -> None:
    p = propagation()
    result = p.decode(header)
    assert (result.trusted, dict(result.assignments), result.problem) == (False, {}, None)
    assert p.rejected == 0


@pytest.mark.parametrize(
    "header",
    [
        "fw.f.ranking=hybrid," + "x" * 10_000,  # oversized
        "a=1," * 2100 + "fw.ver=1",  # oversized
        "fw.",
        "fw.f.ranking",
        "a=1,fw.f.ranking,b=2",
        "fw.f.ü=ü,fw.tk=ü,fw.sig=ü.ü,fw.ver=1,fw.exp=ü",
        "fw.exp=" + "9" * 5000 + ",fw.ver=1,fw.sig=a.b,fw.tk=u",
        "fw.f.%ff%fe=%c3%28,fw.ver=1,fw.sig=x.y,fw.exp=1,fw.tk=%",
        "fw.ver=1;fw.sig=x",
        "\x00fw.f.a=b",
        ",".join(["fw.f.a=b"] * 3),
    ],
)
def test_malformed_flagwire_members_are_rejected_without_raising(header: str) -> None:
    p = propagation()
    result = p.decode(header)
    assert (result.trusted, dict(result.assignments), result.targeting_key) == (False, {}, None)
    assert result.problem
    assert p.rejected == 1


def test_a_signed_header_survives_noise_properties_and_whitespace() -> None:
    members = signed_members(BASE)
    noisy = [
        "",
        "  ",
        "tenant=acme;p=1",
        "noequals",
        "  name = Jöhn ",
        *[f" {m.replace('=', ' = ', 1)} ;p=1;flag\t" for m in members],
        "\t",
        "é=ü",
    ]
    p = propagation()
    result = p.decode(",".join(noisy))
    assert result.trusted, result.problem
    assert dict(result.assignments) == BASE
    assert result.targeting_key == "user-1"
    assert result.version == "v1"
    assert p.rejected == 0


NOT_OURS = st.text(
    alphabet=st.one_of(st.sampled_from(list(";= \t%é")), st.characters(codec="utf-8")),
    max_size=20,
).filter(lambda s: "," not in s and not s.strip(" \t").startswith("fw."))


@settings(deadline=None)
@given(before=st.lists(NOT_OURS, max_size=6), after=st.lists(NOT_OURS, max_size=6))
def test_other_members_never_change_what_is_trusted(before: list[str], after: list[str]) -> None:
    header = ",".join([*before, signed(BASE), *after])
    result = propagation().decode(header)
    assert result.trusted
    assert dict(result.assignments) == BASE


@settings(deadline=None)
@given(header=st.text(max_size=300))
def test_decode_never_raises(header: str) -> None:
    result = propagation().decode(header)
    assert result.trusted is False
    assert dict(result.assignments) == {}


def test_merge_baggage_keeps_every_other_member_as_written_in_order() -> None:
    existing = "a=1, b = 2;p=v ,fw.f.x=1,,\tc=%20x;q ,fw.sig=zz, d ,é=ü,fw.,fw.ver=1;x=y,fwd=3"
    ours = ["fw.ver=1", "fw.sig=s"]
    assert merge_baggage(existing, ours) == "a=1,b = 2;p=v,c=%20x;q,d,é=ü,fwd=3,fw.ver=1,fw.sig=s"
    assert merge_baggage(existing, []) == "a=1,b = 2;p=v,c=%20x;q,d,é=ü,fwd=3"
    assert merge_baggage("fw.f.x=1, fw.sig=a", []) is None
    assert merge_baggage(None, []) is None
    assert merge_baggage("", ["fw.ver=1"]) == "fw.ver=1"
    assert merge_baggage(" , ", []) is None
    assert split_baggage(" a=1 ,, b=2\t,") == ["a=1", "b=2"]


MEMBER = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters=","), min_size=1, max_size=20
).filter(lambda s: s == s.strip(" \t") and not s.startswith("fw."))


@settings(deadline=None)
@given(
    members=st.lists(MEMBER, max_size=10),
    forged=st.lists(st.sampled_from(["fw.f.a=1", "fw.sig=x"])),
)
def test_merge_baggage_keeps_other_members_exactly(members: list[str], forged: list[str]) -> None:
    existing = ",".join(forged + members + forged)
    ours = signed_members(BASE)
    merged = merge_baggage(existing, ours)
    assert merged == ",".join(members + ours)


# -- destinations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "LOCALHOST",
        "localhost:8000",
        "127.0.0.1",
        "127.0.0.1:8080",
        "::1",
        "[::1]",
        "[::1]:8080",
        "a.svc.cluster.local",
        "payments.default.svc",
        "db.internal",
        "box.localdomain",
        "printer.local",
        "payments",
        "payments:8000",
    ],
)
def test_allowed_by_default(host: str) -> None:
    assert propagation().allows(host)


@pytest.mark.parametrize(
    "host",
    [
        None,
        "",
        "example.com",
        "example.com:443",
        "api.stripe.com",
        "8.8.8.8",
        "8.8.8.8:53",
        "10.0.0.1",
        "[2001:db8::1]:443",
        "2001:db8::1",
        "localhost.evil.com",
        "evil.internal.example.com",
        "127.0.0.1.nip.io",
    ],
)
def test_denied_by_default(host: str | None) -> None:
    assert not propagation().allows(host)


def test_custom_patterns_replace_the_defaults() -> None:
    p = propagation(allowed_hosts=["*.CORP.example", "10.*", "billing.example.com"])
    assert p.allows("api.corp.example")
    assert p.allows("api.corp.example:8443")
    assert p.allows("10.1.2.3")
    assert p.allows("billing.example.com")
    assert not p.allows("corp.example")
    assert not p.allows("127.0.0.1")
    assert not p.allows("a.svc.cluster.local")
    assert p.allows("payments")  # single-label names are still allowed
    assert p.allows("localhost")  # as a single-label name
    assert not propagation(allowed_hosts=["10.*"], allow_single_label=False).allows("localhost")
    nothing = propagation(allowed_hosts=[])
    assert not nothing.allows("127.0.0.1")
    assert nothing.allows("payments")


def test_single_label_names_can_be_turned_off() -> None:
    p = propagation(allow_single_label=False)
    assert not p.allows("payments")
    assert not p.allows("payments:8000")
    assert p.allows("localhost")  # an explicit pattern
    assert p.allows("db.internal")


def test_hosts_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAGWIRE_PROPAGATION_HOSTS", " *.corp , billing.example.com ,")
    p = propagation()
    assert p.allows("api.corp")
    assert p.allows("billing.example.com")
    assert not p.allows("127.0.0.1")
    assert not p.allows("a.svc.cluster.local")
    assert not p.allows("api.stripe.com")
    # explicit patterns win over the environment
    assert propagation(allowed_hosts=["localhost"]).allows("localhost")
    assert not propagation(allowed_hosts=["localhost"]).allows("api.corp")


def test_host_of() -> None:
    assert host_of("http://Payments:8000/x?y=1") == "payments"
    assert host_of("https://[::1]:8443/") == "::1"
    assert host_of("payments:8000") == "payments:8000"
    assert host_of(None) is None
    assert host_of("") is None
    # userinfo and fragments do not fool the destination check
    p = propagation()
    assert not p.allows(host_of("http://[::1]:80@evil.com/"))
    assert not p.allows(host_of("http://evil.com#@localhost/"))
    assert not p.allows(host_of("http://localhost:80@evil.com/x"))


# -- honouring upstream decisions in the web integrations -----------------------------------


def report(flags: RequestFlags) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("ranking", "rollout", "killed", "new-checkout"):
        decision = flags.details(key)
        out[key] = {
            "value": decision.value,
            "variant": decision.variant,
            "reason": str(decision.reason),
        }
    out["targetingKey"] = flags.context.get("targetingKey")
    out["upstream"] = dict(flags.upstream)
    return out


Served = tuple[dict[str, Any], list[str]]
Serve = Callable[[Propagation | bool | None, Mapping[str, str]], Served]


def serve_asgi(prop: Propagation | bool | None, headers: Mapping[str, str]) -> Served:
    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse(report(current_flags()))

    app = FlagwireMiddleware(
        Starlette(routes=[Route("/", endpoint)]), source=FLAGSET, context=USER, propagation=prop
    )

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.get("/", headers=dict(headers))

    response = asyncio.run(main())
    assert response.status_code == 200
    return response.json(), response.headers.get_list("set-cookie")


def serve_flask(prop: Propagation | bool | None, headers: Mapping[str, str]) -> Served:
    app = Flask(__name__)
    Flagwire(app, source=FLAGSET, context=USER, propagation=prop)

    @app.get("/")
    def index() -> dict[str, Any]:
        return report(current_flags())

    response = app.test_client().get("/", headers=dict(headers))
    assert response.status_code == 200
    body = response.get_json()
    assert isinstance(body, dict)
    return body, response.headers.getlist("Set-Cookie")


SERVERS = pytest.mark.parametrize("serve", [serve_asgi, serve_flask], ids=["asgi", "flask"])


def upstream_header(targeting_key: str = "user-1") -> tuple[str, dict[str, str]]:
    assignments = {
        "rollout": other_rollout_variant(targeting_key),
        "ranking": "hybrid",  # locally: classic
        "killed": "on",  # locally DISABLED
        "new-checkout": "maybe",  # no such variant here
        "elsewhere": "x",  # no such flag here
    }
    return signed(assignments, targeting_key), assignments


def assert_local(body: dict[str, Any], targeting_key: str) -> None:
    rollout = local_variant("rollout", targeting_key)
    assert body["rollout"]["variant"] == rollout
    assert body["rollout"]["reason"] != "PROPAGATED"
    assert body["ranking"] == {
        "value": "classic",
        "variant": "classic",
        "reason": "TARGETING_MATCH",
    }
    assert body["killed"]["reason"] == "DISABLED"
    assert body["new-checkout"] == {"value": False, "variant": "off", "reason": "STATIC"}
    assert body["upstream"] == {}


@SERVERS
def test_signed_upstream_decisions_are_honoured(serve: Serve) -> None:
    header, assignments = upstream_header()
    body, cookies = serve(propagation(), {"x-user-id": "user-1", "baggage": header})
    rollout = assignments["rollout"]
    assert body["rollout"] == {"value": rollout == "on", "variant": rollout, "reason": "PROPAGATED"}
    assert body["ranking"] == {"value": "hybrid", "variant": "hybrid", "reason": "PROPAGATED"}
    # a local kill switch wins
    assert body["killed"] == {"value": None, "variant": None, "reason": "DISABLED"}
    # a variant this flag does not have: decided here
    assert body["new-checkout"] == {"value": False, "variant": "off", "reason": "STATIC"}
    assert body["targetingKey"] == "user-1"
    assert body["upstream"] == assignments
    assert cookies == []


@SERVERS
def test_a_forged_header_changes_nothing(serve: Serve) -> None:
    header, _ = upstream_header()
    forged = header.replace("ranking~hybrid", "ranking~vector")
    assert forged != header
    receiver = propagation()
    body, _ = serve(receiver, {"x-user-id": "user-1", "baggage": forged})
    assert_local(body, "user-1")
    assert receiver.rejected == 1
    body, _ = serve(propagation(), {"x-user-id": "user-1", "baggage": signed(BASE, key=OTHER_KEY)})
    assert_local(body, "user-1")
    unsigned = "fw.ver=1,fw.tk=user-1,fw.f.ranking=hybrid,fw.f.rollout=on"
    body, _ = serve(propagation(), {"x-user-id": "user-1", "baggage": unsigned})
    assert_local(body, "user-1")


@SERVERS
def test_an_expired_header_is_not_honoured(serve: Serve) -> None:
    header, _ = upstream_header()
    body, _ = serve(
        propagation(clock=lambda: NOW + 3600), {"x-user-id": "user-1", "baggage": header}
    )
    assert_local(body, "user-1")


@SERVERS
@pytest.mark.parametrize("prop", [False, None, "keyless"], ids=["False", "None-no-env", "no-keys"])
def test_without_keys_nothing_is_honoured_in_requests(serve: Serve, prop: Any) -> None:
    if prop == "keyless":
        prop = Propagation(keys=None, clock=clock)
    header, _ = upstream_header()
    body, _ = serve(prop, {"x-user-id": "user-1", "baggage": header})
    assert_local(body, "user-1")


@SERVERS
def test_the_default_propagation_is_used_when_none_is_given(serve: Serve) -> None:
    flagwire.set_default_propagation(propagation())
    header, _ = upstream_header()
    body, _ = serve(None, {"x-user-id": "user-1", "baggage": header})
    assert body["ranking"]["reason"] == "PROPAGATED"
    # True means the default, too
    body, _ = serve(True, {"x-user-id": "user-1", "baggage": header})
    assert body["ranking"]["reason"] == "PROPAGATED"


@SERVERS
def test_keys_from_the_environment_in_requests(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLAGWIRE_PROPAGATION_KEYS", KEY)
    header = ",".join(Propagation(keys=[KEY]).encode({"ranking": "hybrid"}, "user-1", "v1"))
    body, _ = serve(None, {"x-user-id": "user-1", "baggage": header})
    assert body["ranking"]["reason"] == "PROPAGATED"


@SERVERS
def test_another_local_targeting_key_decides_locally(serve: Serve) -> None:
    header, _ = upstream_header("user-1")
    body, _ = serve(propagation(), {"x-user-id": "user-2", "baggage": header})
    assert_local(body, "user-2")
    assert body["targetingKey"] == "user-2"


@SERVERS
def test_the_upstream_targeting_key_is_adopted(serve: Serve) -> None:
    header, assignments = upstream_header("user-1")
    body, cookies = serve(propagation(), {"baggage": header})
    assert body["targetingKey"] == "user-1"
    assert body["ranking"]["reason"] == "PROPAGATED"
    assert body["rollout"]["variant"] == assignments["rollout"]
    assert cookies == []  # no anonymous id was made
    # control: without the header an anonymous visitor gets a cookie
    body, cookies = serve(propagation(), {})
    assert len(cookies) == 1 and cookies[0].startswith("flagwire_id=")
    assert body["targetingKey"] != "user-1"


@SERVERS
def test_local_attributes_still_decide_flags_without_an_upstream_decision(serve: Serve) -> None:
    header = signed({"rollout": other_rollout_variant("user-1")}, "user-1")
    body, _ = serve(propagation(), {"x-user-id": "user-1", "x-plan": "beta", "baggage": header})
    assert body["rollout"]["reason"] == "PROPAGATED"
    assert body["ranking"] == {"value": "vector", "variant": "vector", "reason": "TARGETING_MATCH"}


def test_a_chain_of_services_agrees() -> None:
    """A (ASGI) decides and calls B (Flask) with its baggage; B decides the same. A's forged
    inbound fw.* members are not forwarded, its other baggage members are."""
    p = propagation()
    flagwire.set_default_propagation(p)
    seen: dict[str, Any] = {}

    async def endpoint(request: Request) -> JSONResponse:
        flags = current_flags()
        seen["ranking"] = flags.string("ranking", "")
        seen["rollout"] = flags.details("rollout").variant
        # an app forwarding its inbound baggage: other members kept, fw.* re-signed
        return JSONResponse(
            {
                "baggage": outbound_baggage(
                    "http://payments:8000/pay", request.headers.get("baggage")
                )
            }
        )

    app_a = FlagwireMiddleware(
        Starlette(routes=[Route("/", endpoint)]), source=FLAGSET, context=USER, propagation=p
    )
    inbound = "tenant=acme,fw.f.ranking=hybrid,fw.sig=forged," + signed(
        {"elsewhere": "x"}, "user-9"
    )

    async def call_a() -> httpx.Response:
        transport = httpx.ASGITransport(app=app_a)
        async with httpx.AsyncClient(transport=transport, base_url="http://a") as client:
            return await client.get(
                "/", headers={"x-user-id": "user-9", "x-plan": "beta", "baggage": inbound}
            )

    response = asyncio.run(call_a())
    # the inbound header has fw.sig twice (forged + real): not trusted as a whole
    assert p.rejected == 1
    sent = response.json()["baggage"]
    assert other_members(sent) == ["tenant=acme"]
    decoded = propagation().decode(sent)
    assert decoded.trusted
    assert dict(decoded.assignments) == {"ranking": "vector", "rollout": seen["rollout"]}
    assert decoded.targeting_key == "user-9"
    assert decoded.version == FLAGSET.version_label

    # B has no plan attribute: on its own it would say "classic"
    body, _ = serve_flask(p, {"baggage": sent})
    assert body["ranking"] == {"value": "vector", "variant": "vector", "reason": "PROPAGATED"}
    assert body["rollout"]["variant"] == seen["rollout"]
    assert body["targetingKey"] == "user-9"


def test_a_clean_upstream_header_is_forwarded_by_the_next_hop() -> None:
    p = propagation()
    header = signed({"elsewhere": "x", "ranking": "hybrid"}, "user-1")
    flags = flags_from_headers({"baggage": header}, FLAGSET, propagation=p)
    assert flags.string("ranking", "") == "hybrid"
    sent = outbound_baggage("payments", flags=flags, propagation=p)
    decoded = propagation().decode(sent)
    assert dict(decoded.assignments) == {"elsewhere": "x", "ranking": "hybrid"}


# -- outbound helpers -----------------------------------------------------------------------------


def beta_flags(**upstream: str) -> RequestFlags:
    flags = RequestFlags(
        FLAGSET, {"targetingKey": "user-1", "plan": "beta"}, upstream=upstream or None
    )
    flags.string("ranking", "")  # vector
    flags.details("killed")  # no variant: not sent
    return flags


EXPECTED = {"ranking": "vector"}


def test_outbound_baggage_to_an_allowed_host() -> None:
    p = propagation()
    with activate(beta_flags()):
        value = outbound_baggage(
            "http://payments.internal:8080/pay",
            "tenant=acme,fw.f.evil=1,fw.tk=someone, region=eu;p=1,fw.sig=x.y",
            propagation=p,
        )
    assert other_members(value) == ["tenant=acme", "region=eu;p=1"]
    assert not any(
        m.startswith(("fw.f.evil", "fw.tk=someone", "fw.sig=x.y"))
        for m in split_baggage(value or "")
    )
    decoded = propagation().decode(value)
    assert decoded.trusted
    assert dict(decoded.assignments) == EXPECTED
    assert decoded.targeting_key == "user-1"
    assert decoded.version == FLAGSET.version_label


def test_outbound_baggage_to_a_disallowed_host() -> None:
    p = propagation()
    with activate(beta_flags()):
        existing = "tenant=acme,fw.f.evil=1,fw.sig=x.y"
        assert (
            outbound_baggage("https://api.stripe.com/v1", existing, propagation=p) == "tenant=acme"
        )
        assert outbound_baggage("https://api.stripe.com/v1", "fw.f.evil=1", propagation=p) is None
        assert outbound_baggage(None, existing, propagation=p) == "tenant=acme"
        assert outbound_baggage("https://8.8.8.8/", None, propagation=p) is None


def test_outbound_baggage_uses_flags_given_and_the_upstream() -> None:
    p = propagation()
    value = outbound_baggage(
        "payments", flags=beta_flags(elsewhere="x", ranking="quantum"), propagation=p
    )
    # the request's own decision (the upstream variant does not exist here) overlays it
    assert dict(propagation().decode(value).assignments) == {"elsewhere": "x", "ranking": "vector"}
    # an honoured upstream decision is sent on as it is
    value = outbound_baggage(
        "payments", flags=beta_flags(elsewhere="x", ranking="hybrid"), propagation=p
    )
    assert dict(propagation().decode(value).assignments) == {"elsewhere": "x", "ranking": "hybrid"}


def test_outbound_baggage_without_keys_or_decisions() -> None:
    keyless = Propagation(keys=None, clock=clock)
    with activate(beta_flags()):
        assert outbound_baggage("payments", "a=1,fw.f.x=1", propagation=keyless) == "a=1"
    undecided = RequestFlags(FLAGSET, {"targetingKey": "user-1"})
    assert (
        outbound_baggage("payments", "a=1,fw.f.x=1", flags=undecided, propagation=propagation())
        == "a=1"
    )
    anonymous = RequestFlags(FLAGSET, {})
    anonymous.string("ranking", "")
    assert outbound_baggage("payments", None, flags=anonymous, propagation=propagation()) is None
    # outside any request, with the default (keyless) propagation: nothing of ours
    assert outbound_baggage("payments", "a=1,fw.f.x=1") == "a=1"


def test_inject_sets_and_removes_the_header() -> None:
    p = propagation()
    with activate(beta_flags()):
        headers: dict[str, str] = {"baggage": "tenant=acme,fw.f.evil=1"}
        inject(headers, "http://payments/x", propagation=p)
        assert other_members(headers["baggage"]) == ["tenant=acme"]
        assert dict(propagation().decode(headers["baggage"]).assignments) == EXPECTED

        headers = {"baggage": "tenant=acme,fw.f.evil=1"}
        inject(headers, "https://example.com/x", propagation=p)
        assert headers == {"baggage": "tenant=acme"}

        headers = {"baggage": "fw.f.evil=1", "accept": "*/*"}
        inject(headers, "https://example.com/x", propagation=p)
        assert headers == {"accept": "*/*"}

        headers = {}
        inject(headers, "https://example.com/x", propagation=p)
        assert headers == {}
        inject(headers, "localhost", propagation=p)
        assert dict(propagation().decode(headers["baggage"]).assignments) == EXPECTED


Seen = list[str | None]


def capture(seen: Seen) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("baggage"))
        return httpx.Response(200)

    return httpx.MockTransport(handler)


FORGED = {"baggage": "tenant=acme,fw.f.evil=1,fw.sig=x.y"}


def assert_sent(seen: Seen) -> None:
    allowed, denied, only_forged, none = seen
    assert other_members(allowed) == ["tenant=acme"]
    decoded = propagation().decode(allowed)
    assert decoded.trusted
    assert dict(decoded.assignments) == EXPECTED
    assert denied == "tenant=acme"
    assert only_forged is None
    assert none is None


def test_httpx_transport() -> None:
    flagwire.set_default_propagation(propagation())
    seen: Seen = []
    with httpx.Client(transport=FlagwireTransport(capture(seen))) as client, activate(beta_flags()):
        client.get("http://payments:8000/x", headers=FORGED)
        client.get("https://api.stripe.com/x", headers=FORGED)
        client.get("https://api.stripe.com/x", headers={"baggage": "fw.f.evil=1"})
        client.get("https://api.stripe.com/x")
    assert_sent(seen)


def test_async_httpx_transport() -> None:
    flagwire.set_default_propagation(propagation())
    seen: Seen = []

    async def main() -> None:
        transport = AsyncFlagwireTransport(capture(seen))
        async with httpx.AsyncClient(transport=transport) as client:
            with activate(beta_flags()):
                await client.get("http://localhost:8000/x", headers=FORGED)
                await client.get("https://example.com/x", headers=FORGED)
                await client.get("https://example.com/x", headers={"baggage": "fw.f.evil=1"})
                await client.get("https://example.com/x")

    asyncio.run(main())
    assert_sent(seen)


def test_httpx_request_hooks() -> None:
    flagwire.set_default_propagation(propagation())
    seen: Seen = []
    hooks: dict[str, list[Callable[..., Any]]] = {"request": [request_hook]}
    with httpx.Client(transport=capture(seen), event_hooks=hooks) as client, activate(beta_flags()):
        client.get("http://a.svc.cluster.local/x", headers=FORGED)
        client.get("http://example.com/x", headers=FORGED)
        client.get("http://example.com/x", headers={"baggage": "fw.f.evil=1"})
        client.get("http://example.com/x")
    assert_sent(seen)

    seen.clear()

    async def main() -> None:
        async_hooks: dict[str, list[Callable[..., Any]]] = {"request": [async_request_hook]}
        async with httpx.AsyncClient(transport=capture(seen), event_hooks=async_hooks) as client:
            with activate(beta_flags()):
                await client.get("http://127.0.0.1:9/x", headers=FORGED)
                await client.get("http://example.com/x", headers=FORGED)
                await client.get("http://example.com/x", headers={"baggage": "fw.f.evil=1"})
                await client.get("http://example.com/x")

    asyncio.run(main())
    assert_sent(seen)


@pytest.fixture
def http_server() -> Iterator[tuple[str, Seen]]:
    """A real HTTP server on 127.0.0.1 recording the ``baggage`` header of each request."""
    seen: Seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("baggage"))
            body = b"ok"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_requests_adapter_to_an_allowed_host(http_server: tuple[str, Seen]) -> None:
    url, seen = http_server
    flagwire.set_default_propagation(propagation())  # 127.0.0.1 is allowed by default
    with install(requests.Session()) as session, activate(beta_flags()):
        session.trust_env = False
        session.headers["baggage"] = "tenant=acme,fw.f.evil=1"
        assert session.get(url + "/x", timeout=5).status_code == 200
        assert session.get(url + "/x", headers={"baggage": "fw.f.evil=1"}, timeout=5).ok
    allowed, overridden = seen
    assert other_members(allowed) == ["tenant=acme"]
    assert dict(propagation().decode(allowed).assignments) == EXPECTED
    assert other_members(overridden) == []
    assert dict(propagation().decode(overridden).assignments) == EXPECTED


def test_requests_adapter_to_a_disallowed_host(http_server: tuple[str, Seen]) -> None:
    url, seen = http_server
    flagwire.set_default_propagation(propagation(allowed_hosts=["*.internal"]))
    with install(requests.Session()) as session, activate(beta_flags()):
        session.trust_env = False
        session.get(url + "/x", headers={"baggage": "tenant=acme,fw.f.evil=1"}, timeout=5)
        session.get(url + "/x", headers={"baggage": "fw.f.evil=1,fw.sig=a.b"}, timeout=5)
        session.get(url + "/x", timeout=5)
    assert seen == ["tenant=acme", None, None]


def test_job_headers_round_trip() -> None:
    p = propagation()
    flags = beta_flags(elsewhere="x")
    headers = job_headers(flags, propagation=p)
    assert set(headers) == {"baggage"}

    worker = flags_from_headers({"Baggage": headers["baggage"]}, FLAGSET, propagation=p)
    assert worker.context["targetingKey"] == "user-1"
    assert worker.details("ranking").reason is Reason.PROPAGATED
    assert worker.string("ranking", "") == "vector"  # no plan here: locally "classic"
    assert dict(worker.upstream) == {"elsewhere": "x", "ranking": "vector"}

    # the job's own context keeps its targeting key; the same one is honoured
    same = flags_from_headers(headers, FLAGSET, {"targetingKey": "user-1"}, propagation=p)
    assert same.details("ranking").reason is Reason.PROPAGATED
    other = flags_from_headers(headers, FLAGSET, {"targetingKey": "user-2"}, propagation=p)
    assert other.context["targetingKey"] == "user-2"
    assert other.details("ranking").variant == "classic"
    assert dict(other.upstream) == {}

    # current flags are the default
    with activate(flags):
        assert propagation().decode(job_headers(propagation=p)["baggage"]).trusted


def test_job_headers_from_a_source_and_forged_job_headers() -> None:
    p = propagation()
    headers = job_headers(beta_flags(), propagation=p)
    forged = {"baggage": headers["baggage"].replace("ranking~vector", "ranking~hybrid")}
    worker = flags_from_headers(forged, flagwire.StaticSource(FLAGSET), propagation=p)
    assert worker.details("ranking").reason is not Reason.PROPAGATED
    assert worker.string("ranking", "") == "classic"
    assert "targetingKey" not in worker.context
    assert p.rejected == 1
    # no keys: no headers, nothing honoured
    keyless = Propagation(keys=None, clock=clock)
    assert job_headers(beta_flags(), propagation=keyless) == {}
    worker = flags_from_headers(headers, FLAGSET, propagation=keyless)
    assert worker.details("ranking").variant == "classic"
    # no decisions: no headers
    assert job_headers(RequestFlags(FLAGSET, {"targetingKey": "u"}), propagation=p) == {}


def test_bind_carries_the_flags_into_a_thread_pool() -> None:
    flags = RequestFlags(FLAGSET, {"targetingKey": "user-1", "plan": "beta"})

    def work() -> tuple[RequestFlags, str]:
        current = current_flags()
        return current, current.string("ranking", "")

    with activate(flags):
        bound = bind(work)
    assert bound.__name__ == "work"
    with ThreadPoolExecutor(max_workers=1) as pool:
        got, ranking = pool.submit(bound).result()
        assert got is flags and ranking == "vector"
        assert "ranking" in flags.evaluated()  # decided once, for the request
        unbound, _ = pool.submit(work).result()
        assert unbound is not flags


def test_bind_carries_the_flags_into_an_async_function_run_later() -> None:
    flags = RequestFlags(FLAGSET, {"targetingKey": "user-1"})

    async def work(delay: float) -> RequestFlags:
        await asyncio.sleep(delay)
        return current_flags()

    with activate(flags):
        bound = bind(work)
    assert inspect.iscoroutinefunction(bound)
    assert asyncio.run(bound(0)) is flags
    assert asyncio.run(work(0)) is not flags
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(asyncio.run, bound(0)).result() is flags


# -- OpenTelemetry -------------------------------------------------------------------------------


@pytest.fixture
def otel_httpx() -> Iterator[tuple[httpx.Client, Seen, InMemorySpanExporter]]:
    """An httpx client instrumented by OpenTelemetry (real SDK, always sampled) with
    flagwire's propagator installed globally, capturing the sent ``baggage``."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    seen: Seen = []
    client = httpx.Client(transport=capture(seen))
    HTTPXClientInstrumentor().instrument_client(client, tracer_provider=provider)
    previous = get_global_textmap()
    install_propagator()
    try:
        yield client, seen, exporter
    finally:
        set_global_textmap(previous)
        HTTPXClientInstrumentor().uninstrument_client(client)
        client.close()
        provider.shutdown()


def _with_app_baggage(fn: Callable[[], None]) -> None:
    ctx = otel_baggage.set_baggage("tenant", "acme")
    ctx = otel_baggage.set_baggage("fw.f.x", "forged", context=ctx)
    ctx = otel_baggage.set_baggage("fw.sig", "x.y", context=ctx)
    token = otel_context.attach(ctx)
    try:
        fn()
    finally:
        otel_context.detach(token)


def test_otel_propagator_to_an_allowed_host(
    otel_httpx: tuple[httpx.Client, Seen, InMemorySpanExporter],
) -> None:
    client, seen, exporter = otel_httpx
    flagwire.set_default_propagation(propagation())

    def call() -> None:
        with activate(beta_flags()):
            assert client.get("http://payments.internal/x").status_code == 200

    _with_app_baggage(call)
    assert len(exporter.get_finished_spans()) == 1
    (sent,) = seen
    assert other_members(sent) == ["tenant=acme"]
    assert "fw.f.x=forged" not in split_baggage(sent or "")
    decoded = propagation().decode(sent)
    assert decoded.trusted
    assert dict(decoded.assignments) == EXPECTED
    assert decoded.targeting_key == "user-1"


def test_otel_propagator_to_a_disallowed_host(
    otel_httpx: tuple[httpx.Client, Seen, InMemorySpanExporter],
) -> None:
    client, seen, _ = otel_httpx
    flagwire.set_default_propagation(propagation())

    def call() -> None:
        with activate(beta_flags()):
            client.get("https://api.example.com/x")

    _with_app_baggage(call)
    assert seen == ["tenant=acme"]


def test_otel_propagator_outside_a_request_and_without_app_baggage(
    otel_httpx: tuple[httpx.Client, Seen, InMemorySpanExporter],
) -> None:
    client, seen, _ = otel_httpx
    flagwire.set_default_propagation(propagation())
    client.get("http://payments/x")  # no request flags, no baggage
    token = otel_context.attach(otel_baggage.set_baggage("fw.f.x", "forged"))
    try:
        client.get("https://api.example.com/x")
    finally:
        otel_context.detach(token)
    assert seen == [None, None]


def test_flagwire_propagator_with_plain_carriers() -> None:
    flagwire.set_default_propagation(propagation())
    propagator = FlagwirePropagator()
    assert propagator.fields == {"baggage"}
    with activate(beta_flags()):
        carrier: dict[str, Any] = {"host": "payments:8000", "baggage": "a=1,fw.f.x=1"}
        propagator.inject(carrier)
        assert other_members(carrier["baggage"]) == ["a=1"]
        assert dict(propagation().decode(carrier["baggage"]).assignments) == EXPECTED

        carrier = {"host": "example.com", "baggage": ["a=1", "fw.f.x=1"]}
        propagator.inject(carrier)
        assert carrier["baggage"] == "a=1"

        carrier = {"baggage": "fw.f.x=1"}  # no destination known: nothing of ours
        propagator.inject(carrier)
        assert carrier == {}
    ctx = otel_context.get_current()
    assert propagator.extract({"baggage": signed(BASE)}, ctx) is ctx


def test_the_opentelemetry_entry_point() -> None:
    (entry,) = [e for e in entry_points(group="opentelemetry_propagator") if e.name == "flagwire"]
    assert entry.load() is FlagwirePropagator


@given(key=st.binary(min_size=1, max_size=200), message=st.binary(max_size=300))
def test_the_precomputed_hmac_is_hmac_sha256(key: bytes, message: bytes) -> None:
    import hmac

    from flagwire._propagation.signing import _HmacSha256

    assert _HmacSha256(key)(message) == hmac.digest(key, message, "sha256")


def test_request_hook_sends_flags_from_an_unsampled_requests_span(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # requests sets no Host header and an unsampled span has no attributes: only the
    # instrumentation's request_hook can tell flagwire's propagator the destination.
    import requests
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    from flagwire.otel import FlagwirePropagator, request_hook

    flagwire.set_default_propagation(flagwire.Propagation(keys=["k" * 32]))
    provider = TracerProvider(sampler=ALWAYS_OFF)
    seen: list[str | None] = []

    class Capture(requests.adapters.HTTPAdapter):
        def send(self, request: requests.PreparedRequest, **_: object) -> requests.Response:
            seen.append(request.headers.get("baggage"))
            response = requests.Response()
            response.status_code = 200
            return response

    from opentelemetry import propagate

    previous = propagate.get_global_textmap()
    propagate.set_global_textmap(FlagwirePropagator())
    instrumentor = RequestsInstrumentor()
    try:
        for hook in (None, request_hook):
            instrumentor.instrument(tracer_provider=provider, request_hook=hook)
            session = requests.Session()
            session.mount("http://", Capture())
            flagset = FlagSet.from_mapping(
                {"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a"}}}
            )
            with flagwire.activate(RequestFlags(flagset, {"targetingKey": "u1"})) as flags:
                flags.integer("f")
                session.get("http://127.0.0.1:9/x")
            instrumentor.uninstrument()
    finally:
        propagate.set_global_textmap(previous)

    without_hook, with_hook = seen
    assert not without_hook or "fw." not in without_hook
    assert with_hook is not None and "fw.a0=f~a" in with_hook


# -- other OpenTelemetry hops and W3C's limits (issue 12, items 6-8) -------------------------

SPACED = {"banner copy": "spring sale", "ranking": "vector v2", "new-checkout": "on"}


def _otel_python_hop(header: str) -> str:
    """What a service using OpenTelemetry Python forwards: extract, then inject."""
    carrier: dict[str, str] = {}
    W3CBaggagePropagator().inject(carrier, W3CBaggagePropagator().extract({"baggage": header}))
    return carrier.get("baggage", "")


def _js_like_hop(header: str) -> str:
    """OpenTelemetry JS: decodeURIComponent, then encodeURIComponent; members reversed."""
    from urllib.parse import unquote

    members = []
    for member in header.split(","):
        key, _, value = member.partition("=")
        members.append(key + "=" + quote(unquote(value), safe="-_.!~*'()"))
    return ",".join(reversed(members))


@pytest.mark.parametrize("hop", [_otel_python_hop, _js_like_hop], ids=["otel-python", "js"])
def test_assignments_with_spaces_verify_after_another_sdk_forwards_them(
    hop: Callable[[str], str],
) -> None:
    header = ",".join(signed_members(SPACED, "user 1 (ops)", "2026.08 rc 1"))
    forwarded = hop(hop(header))
    assert forwarded != header
    result = propagation().decode(forwarded)
    assert result.trusted, result.problem
    assert dict(result.assignments) == SPACED
    assert (result.targeting_key, result.version) == ("user 1 (ops)", "2026.08 rc 1")


def test_a_plus_sign_is_not_a_space() -> None:
    header = signed({"a+b": "x+y"}, "u+1", "v+1")
    forwarded = _otel_python_hop(header)
    result = propagation().decode(forwarded)
    assert result.trusted
    assert (dict(result.assignments), result.targeting_key) == ({"a+b": "x+y"}, "u+1")


def test_a_separator_moved_into_a_packed_value_does_not_verify() -> None:
    members = signed_members({"a": "b~c~d"})
    forged = [m if not m.startswith("fw.a0=") else "fw.a0=a~b~c~d" for m in members]
    assert not propagation().decode(",".join(forged)).trusted


def test_version_1_headers_are_still_read() -> None:
    from flagwire._propagation.codec import encode_text, signed_message

    expires = int(NOW) + TTL
    message = signed_message("1", "user 1", "v1", expires, sorted(BASE.items()))
    members = [
        "fw.ver=1",
        "fw.tk=user%201",
        "fw.fs=v1",
        f"fw.exp={expires}",
        *(f"fw.f.{encode_text(k)}={encode_text(v)}" for k, v in sorted(BASE.items())),
        f"fw.sig={KeyRing([KEY]).sign(message)}",
    ]
    result = propagation().decode(",".join(members))
    assert result.trusted, result.problem
    assert dict(result.assignments) == BASE


def _app_baggage(members: int, size: int) -> str:
    return ",".join(f"app{i:03d}={'v' * (size - 7)}" for i in range(members))


@pytest.mark.parametrize(
    ("members", "size"),
    [(175, 10), (178, 10), (179, 10), (60, 134), (61, 132), (70, 116)],
)
def test_the_combined_header_stays_within_w3c_limits(members: int, size: int) -> None:
    app = _app_baggage(members, size)
    p = propagation()
    assignments = {f"flag-{i:03d}": "treatment" for i in range(30)}
    header = p.header(assignments, "user-1", "v1", existing=app)
    assert header is not None
    assert len(header.encode()) <= 8192
    assert len(split_baggage(header)) <= 180
    assert header.startswith(app)
    # the next hop (OpenTelemetry Python) keeps the app's members, and what it keeps of
    # flagwire's still verifies
    forwarded = _otel_python_hop(header)
    assert other_members(forwarded) == split_baggage(app)
    result = propagation().decode(forwarded)
    sent = packed_assignments(fw_members(header))
    if sent:
        assert result.trusted, result.problem
        assert dict(result.assignments) == sent
    assert p.dropped == len(assignments) - len(sent)


def test_app_baggage_at_the_limit_gets_no_flagwire_members() -> None:
    app = _app_baggage(180, 10)
    p = propagation()
    assert p.header(BASE, "user-1", "v1", existing=app) == app
    assert p.dropped == len(BASE)


def test_outbound_baggage_counts_the_app_members() -> None:
    flags = beta_flags()
    p = propagation(allowed_hosts=["*"])
    app = _app_baggage(176, 10)
    header = outbound_baggage("http://payments", app, flags=flags, propagation=p)
    assert header is not None and len(split_baggage(header)) <= 180
    assert other_members(header) == split_baggage(app)


REALISTIC_TEAMS = ["checkout", "search", "payments", "growth", "platform"]


def _realistic_flags(n: int) -> dict[str, str]:
    variants = ["control", "treatment", "on", "off", "variant-b"]
    features = ["new-flow", "ranking-v2", "promo-banner", "retry-budget"]
    return {
        f"{REALISTIC_TEAMS[i % 5]}-{features[i % 4]}-{i:03d}": variants[i % 5] for i in range(n)
    }


def test_a_hundred_decided_flags_travel_within_4096_bytes() -> None:
    p = propagation()  # the default caps: 4096 bytes, 64 members
    assignments = _realistic_flags(100)
    assert sum(map(len, assignments)) / 100 >= 20  # realistic key lengths
    members = p.encode(assignments, "user-1234567", "2026.08.1")
    header = ",".join(members)
    assert len(header.encode()) <= 4096
    assert p.dropped == 0
    arrived = propagation().decode(_otel_python_hop(header))
    assert arrived.trusted, arrived.problem
    assert dict(arrived.assignments) == assignments  # 100 of 100

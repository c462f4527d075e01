"""flagwire <-> OpenFeature (``flagwire/openfeature.py``): FlagwireProvider and
OpenFeatureSource, through Starlette and FlagwireMiddleware."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("openfeature")
pytest.importorskip("starlette")

from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode as OFErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails
from openfeature.flag_evaluation import Reason as OFReason
from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from flagwire import (
    ConfigError,
    ErrorCode,
    FlagSet,
    Propagation,
    Reason,
    Source,
    StaticSource,
    context,
    current_flags,
)
from flagwire.asgi import FlagwireMiddleware
from flagwire.openfeature import BridgedFlag, FlagwireProvider, OpenFeatureSource

KEY = "a-shared-secret-of-32-bytes-----"
FIXTURES = Path(__file__).parent / "fixtures" / "openfeature"


class AppClient:
    """Requests to an ASGI app in-process (httpx's ASGI transport, one event loop each)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def get(self, path: str, *, headers: Mapping[str, str] | None = None) -> httpx.Response:
        async def main() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                return await c.get(path, headers=dict(headers or {}))

        return asyncio.run(main())


DOCUMENT: dict[str, Any] = {
    "metadata": {"version": "7", "team": "growth"},
    "flags": {
        "ranking": {
            "state": "ENABLED",
            "variants": {"a": "alpha", "b": "beta", "c": "gamma"},
            "defaultVariant": "a",
            "targeting": {"fractional": [["a", 34], ["b", 33], ["c", 33]]},
            "metadata": {"owner": "search"},
        },
        "beta-ui": {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {"if": [{"==": [{"var": "plan"}, "beta"]}, "on", "off"]},
        },
        "limit": {
            "state": "ENABLED",
            "variants": {"low": 10, "high": 100},
            "defaultVariant": "low",
        },
        "gone": {"state": "DISABLED", "variants": {"x": "x"}, "defaultVariant": "x"},
    },
}


@pytest.fixture(autouse=True)
def _no_providers() -> Iterator[None]:
    api.clear_providers()
    yield
    api.clear_providers()


@pytest.fixture
def flagset() -> FlagSet:
    return FlagSet.from_mapping(DOCUMENT)


def app_for(source: Source | FlagSet, keys: list[str] | None = None) -> AppClient:
    """A Starlette app whose handler asks a flag through OpenFeature and flagwire."""

    async def compare(request: Request) -> JSONResponse:
        key = request.path_params["key"]
        default: Any = request.query_params.get("default", "none")
        client = api.get_client()
        of = client.get_string_details(key, default)
        fw = current_flags().details(key, default)
        again = current_flags().details(key, "other")
        return JSONResponse(
            {
                "of": [of.value, of.variant, str(of.reason), of.error_code and str(of.error_code)],
                "fw": [fw.value, fw.variant, fw.reason.value, fw.error_code and str(fw.error_code)],
                "again": [again.value, again.variant],
                "metadata": dict(of.flag_metadata),
            }
        )

    app = Starlette(routes=[Route("/flag/{key}", compare)])
    app.add_middleware(
        FlagwireMiddleware,
        source=source,
        context=context.headers({"x-user-id": "targetingKey", "x-plan": "plan"}),
        propagation=Propagation(keys=keys) if keys else False,
    )
    return AppClient(app)


# -- FlagwireProvider -----------------------------------------------------------------------


def test_in_a_request_openfeature_gets_the_requests_assignment(flagset: FlagSet) -> None:
    api.set_provider(FlagwireProvider())
    client = app_for(StaticSource(flagset))
    seen = set()
    for n in range(80):
        user = f"user-{n}"
        body = client.get("/flag/ranking", headers={"x-user-id": user}).json()
        assert body["of"][:2] == body["fw"][:2], user
        assert body["again"] == body["fw"][:2]
        assert body["of"][2] == body["fw"][2] == "TARGETING_MATCH"
        # ... and it is what flagwire decides for that targeting key
        expected = flagset.evaluate("ranking", {"targetingKey": user}, "none")
        assert body["fw"][:2] == [expected.value, expected.variant]
        assert body["metadata"] == {"version": "7", "team": "growth", "owner": "search"}
        seen.add(body["of"][1])
    assert seen == {"a", "b", "c"}


def test_a_propagated_decision_reaches_openfeature(flagset: FlagSet) -> None:
    api.set_provider(FlagwireProvider())
    client = app_for(StaticSource(flagset), keys=[KEY])
    upstream = Propagation(keys=[KEY])
    for n in range(20):
        user = f"user-{n}"
        local = flagset.evaluate("ranking", {"targetingKey": user}, "none").variant
        chosen = next(v for v in ("a", "b", "c") if v != local)  # not what we would decide
        baggage = ",".join(upstream.encode({"ranking": chosen}, user, flagset.version_label))
        body = client.get("/flag/ranking", headers={"x-user-id": user, "baggage": baggage}).json()
        value = DOCUMENT["flags"]["ranking"]["variants"][chosen]
        assert body["of"] == [value, chosen, "PROPAGATED", None]
        assert body["fw"] == [value, chosen, "PROPAGATED", None]


def test_propagated_reason_can_be_a_standard_one(flagset: FlagSet) -> None:
    api.set_provider(FlagwireProvider(propagated_reason=OFReason.TARGETING_MATCH))
    client = app_for(StaticSource(flagset), keys=[KEY])
    baggage = ",".join(
        Propagation(keys=[KEY]).encode({"ranking": "c"}, "u1", flagset.version_label)
    )
    body = client.get("/flag/ranking", headers={"x-user-id": "u1", "baggage": baggage}).json()
    assert body["of"] == ["gamma", "c", "TARGETING_MATCH", None]
    assert body["fw"][2] == "PROPAGATED"


def test_in_a_request_type_mismatch_and_not_found(flagset: FlagSet) -> None:
    api.set_provider(FlagwireProvider())
    client = app_for(StaticSource(flagset))
    body = client.get("/flag/beta-ui", headers={"x-plan": "beta"}).json()
    # asked as a string: OpenFeature's client gives the default with TYPE_MISMATCH
    assert body["of"] == ["none", None, "ERROR", "TYPE_MISMATCH"]
    assert body["fw"] == ["none", None, "ERROR", "TYPE_MISMATCH"]
    body = client.get("/flag/missing").json()
    assert body["of"] == ["none", None, "ERROR", "FLAG_NOT_FOUND"]


def test_outside_a_request_the_openfeature_context_decides(flagset: FlagSet) -> None:
    api.set_provider(FlagwireProvider(flagset))
    client = api.get_client()
    beta = EvaluationContext("u1", {"plan": "beta"})
    free = EvaluationContext("u1", {"plan": "free"})
    on = client.get_boolean_details("beta-ui", False, beta)
    assert (on.value, on.variant, on.reason) == (True, "on", "TARGETING_MATCH")
    assert client.get_boolean_value("beta-ui", True, free) is False
    for n in range(30):
        details = client.get_string_details("ranking", "none", EvaluationContext(f"user-{n}"))
        expected = flagset.evaluate("ranking", {"targetingKey": f"user-{n}"}, "none")
        assert (details.value, details.variant) == (expected.value, expected.variant)
    # the global OpenFeature context counts too (merged by the client)
    api.set_evaluation_context(EvaluationContext(attributes={"plan": "beta"}))
    try:
        assert client.get_boolean_value("beta-ui", False) is True
    finally:
        api.clear_evaluation_context()


def test_outside_a_request_without_a_source_uses_the_default_source(flagset: FlagSet) -> None:
    import flagwire

    api.set_provider(FlagwireProvider())
    client = api.get_client()
    missing = client.get_boolean_details("beta-ui", True)
    assert (missing.value, missing.error_code) == (True, OFErrorCode.FLAG_NOT_FOUND)
    flagwire.set_default_source(StaticSource(flagset))
    ctx = EvaluationContext(attributes={"plan": "beta"})
    assert client.get_boolean_value("beta-ui", False, ctx) is True


def test_types_errors_and_reasons_map_to_openfeature(flagset: FlagSet) -> None:
    api.set_provider(FlagwireProvider(flagset))
    client = api.get_client()
    mismatch = client.get_integer_details("ranking", 5)
    assert (mismatch.value, mismatch.error_code, mismatch.reason) == (
        5,
        OFErrorCode.TYPE_MISMATCH,
        OFReason.ERROR,
    )
    assert client.get_boolean_details("limit", True).error_code == OFErrorCode.TYPE_MISMATCH
    not_found = client.get_string_details("nope", "d")
    assert (not_found.value, not_found.error_code) == ("d", OFErrorCode.FLAG_NOT_FOUND)
    assert not_found.error_message and "nope" in not_found.error_message
    number = client.get_float_details("limit", 1.5)
    assert number.value == 10.0 and type(number.value) is float
    assert (number.variant, number.reason) == ("low", "STATIC")
    assert client.get_integer_value("limit", 0) == 10
    disabled = client.get_string_details("gone", "fallback")
    assert (disabled.value, disabled.reason, disabled.error_code) == (
        "fallback",
        "DISABLED",
        None,
    )
    obj = client.get_object_details("ranking", {})
    assert obj.error_code == OFErrorCode.TYPE_MISMATCH


def test_provider_reports_source_changes() -> None:
    from openfeature.event import EventDetails, ProviderEvent

    from flagwire._sources.base import SourceBase as _SourceBase

    class Swappable(_SourceBase):
        pass

    source = Swappable("test")
    source._accept(FlagSet.from_mapping(DOCUMENT))
    events: list[EventDetails] = []
    api.set_provider_and_wait(FlagwireProvider(source), domain="swap")
    client = api.get_client("swap")
    client.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, events.append)
    changed = {**DOCUMENT, "flags": {**DOCUMENT["flags"], "limit": DOCUMENT["flags"]["gone"]}}
    source._accept(FlagSet.from_mapping(changed))
    assert [e.flags_changed for e in events] == [["limit"]]


# -- OpenFeatureSource --------------------------------------------------------------------

CALLS: list[str] = []


def plan_evaluator(flag: InMemoryFlag[Any], ctx: EvaluationContext) -> FlagResolutionDetails[Any]:
    CALLS.append(ctx.targeting_key or "")
    variant = "new" if ctx.attributes.get("plan") == "beta" else flag.default_variant
    return FlagResolutionDetails(
        flag.variants[variant],
        reason=OFReason.TARGETING_MATCH,
        variant=variant,
        flag_metadata=flag.flag_metadata,
    )


def no_variant_evaluator(
    flag: InMemoryFlag[Any], ctx: EvaluationContext
) -> FlagResolutionDetails[Any]:
    # some providers give only a value: it is matched against the declared variants
    value = 250 if (ctx.targeting_key or "").endswith("7") else 10
    return FlagResolutionDetails(value, reason=OFReason.SPLIT)


def in_memory() -> InMemoryProvider:
    return InMemoryProvider(
        {
            "checkout": InMemoryFlag(
                "old",
                {"new": "new-checkout", "old": "old-checkout"},
                flag_metadata={"vendor": "acme"},
                context_evaluator=plan_evaluator,
            ),
            "quota": InMemoryFlag("small", {}, context_evaluator=no_variant_evaluator),
            # InMemoryProvider ignores ``state``: a vendor's kill switch, as it answers
            "killed": InMemoryFlag(
                "on",
                {"on": True, "off": False},
                context_evaluator=lambda flag, ctx: FlagResolutionDetails(
                    False, reason=OFReason.DISABLED
                ),
            ),
            "surprise": InMemoryFlag("odd", {"odd": "not-declared"}),
        }
    )


BRIDGED: dict[str, Any] = {
    "checkout": {
        "variants": {"new": "new-checkout", "old": "old-checkout"},
        "defaultVariant": "old",
    },
    "quota": BridgedFlag({"small": 10, "large": 250}, default_variant="small"),
    "surprise": {"variants": {"fine": "fine"}, "type": "string"},
    "absent": {"variants": {"on": True, "off": False}, "defaultVariant": "off"},
}


def source_app(source: OpenFeatureSource, keys: list[str] | None = None) -> AppClient:
    async def show(request: Request) -> JSONResponse:
        key = request.path_params["key"]
        first = current_flags().details(key)
        current_flags().details(key)  # memoised: the provider is asked once
        return JSONResponse(first.to_dict())

    app = Starlette(routes=[Route("/flag/{key}", show)])
    app.add_middleware(
        FlagwireMiddleware,
        source=source,
        context=context.headers({"x-user-id": "targetingKey", "x-plan": "plan"}),
        propagation=Propagation(keys=keys) if keys else False,
    )
    return AppClient(app)


@pytest.mark.parametrize("through", ["provider", "client"])
def test_an_openfeature_provider_drives_the_middleware(through: str) -> None:
    provider = in_memory()
    if through == "client":
        api.set_provider(provider, domain="vendor")
        target: Any = api.get_client("vendor")
    else:
        target = provider
    source = OpenFeatureSource(target, BRIDGED, version="v1")
    assert source.status.ok and source.flagset.version_label.startswith("v1+")
    client = source_app(source)
    CALLS.clear()
    beta = client.get("/flag/checkout", headers={"x-user-id": "ann", "x-plan": "beta"}).json()
    assert (beta["value"], beta["variant"], beta["reason"]) == (
        "new-checkout",
        "new",
        "TARGETING_MATCH",
    )
    assert beta["flag_metadata"] == {"version": "v1", "vendor": "acme"}
    free = client.get("/flag/checkout", headers={"x-user-id": "bob", "x-plan": "free"}).json()
    assert (free["value"], free["variant"]) == ("old-checkout", "old")
    assert CALLS == ["ann", "bob"]  # once per request, with the request's targeting key
    # a value without a variant name is matched against the declared variants
    for user, variant in (("u7", "large"), ("u8", "small")):
        body = client.get("/flag/quota", headers={"x-user-id": user}).json()
        assert (body["variant"], body["reason"]) == (variant, "SPLIT")
    # errors are ERROR assignments with the caller's default, never exceptions
    killed = source.flagset.evaluate("killed", {}, True)
    assert killed.error_code is ErrorCode.FLAG_NOT_FOUND  # not declared: not bridged
    surprise = client.get("/flag/surprise").json()
    assert (surprise["value"], surprise["reason"], surprise["error_code"]) == (
        None,
        "ERROR",
        "GENERAL",
    )
    assert "not a declared variant" in surprise["error_message"]
    absent = client.get("/flag/absent").json()
    assert (absent["reason"], absent["error_code"]) == ("ERROR", "FLAG_NOT_FOUND")


def test_the_bridged_flag_set_evaluates_and_fits_types() -> None:
    source = OpenFeatureSource(
        in_memory(), {**BRIDGED, "killed": {"variants": {"on": True, "off": False}}}
    )
    flagset = source.flagset
    assert sorted(flagset) == ["absent", "checkout", "killed", "quota", "surprise"]
    assert flagset.string("checkout", "x", {"plan": "beta"}) == "new-checkout"
    assert flagset.evaluate("checkout", {"plan": "beta"}, 0).error_code is ErrorCode.TYPE_MISMATCH
    assert flagset.float("quota", 0.5, {"targetingKey": "u7"}) == 250.0
    killed = flagset.evaluate("killed", {}, True)
    assert (killed.value, killed.reason, killed.variant) == (True, Reason.DISABLED, None)
    # outside a request, current_flags() over this source asks the provider too
    import flagwire

    flagwire.set_default_source(source)
    assert current_flags({"plan": "beta"}).string("checkout", "x") == "new-checkout"


def test_a_raising_provider_gives_errors_not_exceptions() -> None:
    class Broken(InMemoryProvider):
        def resolve_string_details(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("vendor down")

    source = OpenFeatureSource(Broken({}), {"checkout": BRIDGED["checkout"]})
    result = source_app(source).get("/flag/checkout").json()
    assert (result["reason"], result["error_code"]) == ("ERROR", "GENERAL")
    assert "vendor down" in result["error_message"]


def test_propagation_works_with_a_bridged_flag() -> None:
    source = OpenFeatureSource(in_memory(), BRIDGED)
    client = source_app(source, keys=[KEY])
    baggage = ",".join(
        Propagation(keys=[KEY]).encode({"checkout": "new"}, "cy", source.flagset.version_label)
    )
    CALLS.clear()
    body = client.get("/flag/checkout", headers={"x-user-id": "cy", "baggage": baggage}).json()
    assert (body["value"], body["variant"], body["reason"]) == ("new-checkout", "new", "PROPAGATED")
    assert CALLS == []  # the upstream decision stands; the provider is not asked


def test_declarations_are_checked() -> None:
    with pytest.raises(ConfigError, match="default variant"):
        OpenFeatureSource(in_memory(), {"f": {"variants": {"a": 1}, "defaultVariant": "b"}})
    with pytest.raises(ConfigError, match="flag_type"):
        OpenFeatureSource(in_memory(), {"f": {"variants": {"a": 1, "b": "x"}}})
    with pytest.raises(ConfigError, match="not boolean"):
        OpenFeatureSource(in_memory(), {"f": {"variants": {"a": 1}, "type": "boolean"}})
    with pytest.raises(ConfigError, match="client or provider"):
        OpenFeatureSource(object(), {})
    api.set_provider(FlagwireProvider())
    with pytest.raises(ConfigError, match="itself"):
        OpenFeatureSource(api.get_client(), {})


# -- flagd, in-process, from a file -------------------------------------------------------


def test_flagd_in_process_file_mode_drives_the_middleware() -> None:
    flagd = pytest.importorskip("openfeature.contrib.provider.flagd")
    from openfeature.contrib.provider.flagd.config import ResolverType

    path = FIXTURES / "flagd.json"
    provider = flagd.FlagdProvider(
        resolver_type=ResolverType.IN_PROCESS, offline_flag_source_path=str(path)
    )
    api.set_provider_and_wait(provider, domain="flagd")
    try:
        source = OpenFeatureSource(
            api.get_client("flagd"),
            {
                "checkout": {
                    "variants": {"new": "new-checkout", "old": "old-checkout"},
                    "defaultVariant": "old",
                },
                "rollout": {"variants": {"on": True, "off": False}, "defaultVariant": "off"},
            },
        )
        client = source_app(source)
        beta = client.get("/flag/checkout", headers={"x-user-id": "a", "x-plan": "beta"}).json()
        assert (beta["value"], beta["variant"], beta["reason"]) == (
            "new-checkout",
            "new",
            "TARGETING_MATCH",
        )
        free = client.get("/flag/checkout", headers={"x-user-id": "a"}).json()
        assert (free["value"], free["variant"]) == ("old-checkout", "old")
        # flagd's fractional buckets, decided by flagd, agree with flagwire's own
        local = FlagSet.from_path(path)
        seen = set()
        for n in range(40):
            user = f"user-{n}"
            body = client.get("/flag/rollout", headers={"x-user-id": user}).json()
            assert body["variant"] == local.evaluate("rollout", {"targetingKey": user}).variant
            seen.add(body["variant"])
        assert seen == {"on", "off"}
    finally:
        provider.shutdown()

"""Tracked outcomes: ``RequestFlags.track`` / ``flagwire.track``, the Prometheus tracking
counters behind the ASGI middleware and the Flask extension, their label bounds, and
OpenFeature's tracking API through ``FlagwireProvider``."""

from __future__ import annotations

import asyncio
import logging
import random
import string
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from flask import Flask
from openfeature import api
from openfeature.track import TrackingEventDetails
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import flagwire
from flagwire import ConfigError, FlagSet, RequestFlags, activate, context, current_flags
from flagwire.asgi import FlagwireMiddleware
from flagwire.flask import Flagwire
from flagwire.openfeature import FlagwireProvider
from flagwire.prometheus import MAX_EVENT_NAME, PrometheusTelemetry

EVENTS = "flagwire_events_total"
VALUES = "flagwire_event_value_total"
SQUARES = "flagwire_event_value_squared_total"
LABELS = ("flag", "variant", "event")
Key = tuple[str, str, str]

FLAGSET = FlagSet.from_mapping(
    {
        "flags": {
            "new-checkout": {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "off",
                "targeting": {"if": [{"==": [{"var": "plan"}, "beta"]}, "on", "off"]},
            },
            "ranking": {
                "state": "ENABLED",
                "variants": {"classic": "classic", "vector": "vector"},
                "defaultVariant": "classic",
                "targeting": {"if": [{"==": [{"var": "plan"}, "beta"]}, "vector", None]},
            },
        }
    }
)


def counters(registry: CollectorRegistry, name: str) -> dict[Key, float]:
    found: dict[Key, float] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == name:
                key = tuple(sample.labels[label] for label in LABELS)
                found[key] = found.get(key, 0.0) + sample.value  # type: ignore[index]
    return found


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def _checkout() -> dict[str, Any]:
    """Decides one flag, tracks, decides another: both count the events."""
    flags = current_flags()
    new = flags.boolean("new-checkout", False)
    flags.track("checkout", 30.0 if new else 20.0)
    flagwire.track("viewed")  # no value: the count only
    flags.string("ranking", "classic")
    return {"tracked": len(flags.tracked())}


def asgi_app(telemetry: PrometheusTelemetry) -> Starlette:
    async def checkout(request: Request) -> Response:
        return JSONResponse(_checkout())

    async def nothing(request: Request) -> Response:
        flagwire.track("checkout", 5.0)  # no flag decided: nothing to count it for
        return JSONResponse({})

    return Starlette(
        routes=[Route("/checkout", checkout), Route("/nothing", nothing)],
        middleware=[
            Middleware(
                FlagwireMiddleware,
                source=FLAGSET,
                context=context.headers({"x-plan": "plan"}),
                telemetry=[telemetry],
            )
        ],
    )


def flask_app(telemetry: PrometheusTelemetry) -> Flask:
    app = Flask(__name__)
    Flagwire(
        app,
        source=FLAGSET,
        context=context.headers({"x-plan": "plan"}),
        telemetry=[telemetry],
    )
    app.get("/checkout")(_checkout)

    @app.get("/nothing")
    def nothing() -> dict[str, Any]:
        flagwire.track("checkout", 5.0)
        return {}

    return app


def _send(framework: str, telemetry: PrometheusTelemetry, plans: list[str]) -> None:
    calls = [("/checkout", {"x-plan": plan}) for plan in plans] + [("/nothing", {})]
    if framework == "flask":
        client = flask_app(telemetry).test_client()
        for path, headers in calls:
            assert client.get(path, headers=headers).status_code == 200
        return

    async def main() -> None:
        transport = httpx.ASGITransport(app=asgi_app(telemetry))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for path, headers in calls:
                assert (await client.get(path, headers=headers)).status_code == 200

    asyncio.run(main())


@pytest.mark.parametrize("framework", ["asgi", "flask"])
def test_events_count_for_every_flag_the_request_decided(
    framework: str, registry: CollectorRegistry
) -> None:
    _send(framework, PrometheusTelemetry(registry=registry), ["beta", "beta", "free"])

    assert counters(registry, EVENTS) == {
        ("new-checkout", "on", "checkout"): 2,
        ("new-checkout", "on", "viewed"): 2,
        ("new-checkout", "off", "checkout"): 1,
        ("new-checkout", "off", "viewed"): 1,
        # "ranking" was decided after the events were tracked: they count for it too.
        ("ranking", "vector", "checkout"): 2,
        ("ranking", "vector", "viewed"): 2,
        ("ranking", "classic", "checkout"): 1,
        ("ranking", "classic", "viewed"): 1,
    }
    values = counters(registry, VALUES)
    assert values[("new-checkout", "on", "checkout")] == 60.0
    assert values[("new-checkout", "off", "checkout")] == 20.0
    assert values[("ranking", "classic", "checkout")] == 20.0
    # An event without a value leaves the sums alone.
    assert values[("new-checkout", "on", "viewed")] == 0.0
    squares = counters(registry, SQUARES)
    assert squares[("new-checkout", "on", "checkout")] == 2 * 30.0**2
    assert squares[("ranking", "classic", "viewed")] == 0.0


def test_tracked_events_stay_with_the_flags_until_taken() -> None:
    flags = RequestFlags(FLAGSET, {"plan": "beta"})
    flags.track("checkout", 3)
    flags.track("viewed")

    assert flags.tracked() == (("checkout", 3.0), ("viewed", None))
    assert flags.take_tracked() == [("checkout", 3.0), ("viewed", None)]
    assert flags.tracked() == ()
    assert flags.take_tracked() == []


def test_events_of_flags_outside_a_request_are_recorded_when_handed_over(
    registry: CollectorRegistry,
) -> None:
    telemetry = PrometheusTelemetry(registry=registry)
    flags = RequestFlags(FLAGSET, {"plan": "beta"})
    with activate(flags):
        current_flags().boolean("new-checkout", False)
        flagwire.track("export", 4)

    telemetry.record_events(flags)
    telemetry.record_events(flags)  # already recorded: nothing more

    assert counters(registry, EVENTS) == {("new-checkout", "on", "export"): 1}
    assert counters(registry, VALUES) == {("new-checkout", "on", "export"): 4.0}
    assert counters(registry, SQUARES) == {("new-checkout", "on", "export"): 16.0}
    # Only the tracking counters: there was no request to time.
    names = {s.name for m in registry.collect() for s in m.samples}
    assert "flagwire_request_duration_seconds_count" not in names


def test_track_outside_any_request_drops_the_event_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="flagwire"):
        flagwire.track("lonely-event", 1.0)
        flagwire.track("lonely-event", 2.0)
        current_flags().track("lonely-event")

    warnings = [r.getMessage() for r in caplog.records if "lonely-event" in r.getMessage()]
    assert len(warnings) == 1
    assert "outside a request" in warnings[0]


@pytest.mark.parametrize(
    ("event", "value"),
    [("bad-value-nan", float("nan")), ("bad-value-str", "12"), ("bad-value-bool", True), ("", 1)],
)
def test_an_invalid_event_is_dropped_with_a_warning_never_raised(
    event: str, value: Any, caplog: pytest.LogCaptureFixture
) -> None:
    flags = RequestFlags(FLAGSET)
    with caplog.at_level(logging.WARNING, logger="flagwire"):
        flags.track(event, value)

    assert flags.tracked() == ()
    assert any("the event is dropped" in r.getMessage() for r in caplog.records)


def test_a_negative_value_is_not_recorded_in_prometheus_counters(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    telemetry = PrometheusTelemetry(registry=registry)
    flags = RequestFlags(FLAGSET, {"plan": "beta"})
    flags.boolean("new-checkout", False)
    flags.track("refund", -5.0)
    flags.track("checkout", 0)

    with caplog.at_level(logging.WARNING, logger="flagwire"):
        telemetry.record_events(flags)

    assert counters(registry, EVENTS) == {("new-checkout", "on", "checkout"): 1}
    assert any("only go up" in r.getMessage() for r in caplog.records)


def test_declared_events_label_only_those_names(registry: CollectorRegistry) -> None:
    telemetry = PrometheusTelemetry(registry=registry, events=["checkout", "signup"])
    flags = RequestFlags(FLAGSET, {"plan": "free"})
    flags.boolean("new-checkout", False)
    for name in ("checkout", "signup", "surprise", "another", "checkout"):
        flags.track(name, 1)
    telemetry.record_events(flags)

    assert counters(registry, EVENTS) == {
        ("new-checkout", "off", "checkout"): 2,
        ("new-checkout", "off", "signup"): 1,
        ("new-checkout", "off", "_other"): 2,
    }


@pytest.mark.parametrize(
    "options",
    [{"events": ["ok", ""]}, {"events": ["x" * (MAX_EVENT_NAME + 1)]}, {"max_events": -1}],
)
def test_bad_event_bounds_are_a_config_error(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        PrometheusTelemetry(registry=CollectorRegistry(), **options)


def _random_names(rng: random.Random, count: int) -> Iterator[str]:
    alphabet = string.printable + "ßø€😀\x00\n\"'{}=,"
    for _ in range(count):
        yield "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 300)))


@pytest.mark.parametrize("max_events", [0, 7, 50])
def test_ten_thousand_adversarial_event_names_give_a_bounded_number_of_series(
    max_events: int, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    telemetry = PrometheusTelemetry(registry=registry, max_events=max_events)
    rng = random.Random(max_events)
    names = list(_random_names(rng, 10_000))
    plans = ("beta", "free")
    with caplog.at_level(logging.WARNING, logger="flagwire"):
        for start in range(0, len(names), 100):
            flags = RequestFlags(FLAGSET, {"plan": plans[start // 100 % 2]})
            flags.boolean("new-checkout", False)
            flags.string("ranking", "classic")
            for name in names[start : start + 100]:
                flags.track(name, rng.random())
            telemetry.record_events(flags)

    # flags x variants x (event names kept + the overflow label)
    bound = 2 * 2 * (max_events + 1)
    for metric in (EVENTS, VALUES, SQUARES):
        series = counters(registry, metric)
        assert 0 < len(series) <= bound, (metric, len(series))
        assert all(len(event) <= MAX_EVENT_NAME for _, _, event in series)
    events = counters(registry, EVENTS)
    assert sum(events.values()) == 10_000 * 2  # nothing lost, only relabelled
    assert events[("new-checkout", "on", "_other")] > 0
    overflow_warnings = [r for r in caplog.records if "tracked event names" in r.getMessage()]
    assert len(overflow_warnings) == 1


# -- OpenFeature's tracking API ------------------------------------------------------------


@pytest.fixture
def openfeature_client() -> Iterator[Any]:
    api.set_provider(FlagwireProvider(FLAGSET))
    try:
        yield api.get_client()
    finally:
        api.clear_providers()


def test_openfeature_track_records_for_the_request_flags(
    openfeature_client: Any, registry: CollectorRegistry
) -> None:
    telemetry = PrometheusTelemetry(registry=registry)
    flags = RequestFlags(FLAGSET, {"plan": "beta"})
    with activate(flags):
        assert openfeature_client.get_boolean_value("new-checkout", False) is True
        openfeature_client.track("checkout", tracking_event_details=TrackingEventDetails(9.5))
        openfeature_client.track("viewed")

    assert flags.tracked() == (("checkout", 9.5), ("viewed", None))
    telemetry.record_events(flags)
    assert counters(registry, VALUES) == {
        ("new-checkout", "on", "checkout"): 9.5,
        ("new-checkout", "on", "viewed"): 0.0,
    }


def test_openfeature_track_outside_a_request_drops_the_event(
    openfeature_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="flagwire"):
        openfeature_client.track("of-lonely", tracking_event_details=TrackingEventDetails(1))

    assert any("of-lonely" in r.getMessage() for r in caplog.records)

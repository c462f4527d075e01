"""Traces across the two-service example: the gateway (FastAPI, uvicorn) calls the Flask
service (gunicorn); both record OpenTelemetry spans with the real SDK (to a JSON-lines file
each, as the demo does) and flagwire puts the flags on their server spans."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flagwire import FlagSet
from test_e2e import EXAMPLES, Launch, _Launcher

pytestmark = pytest.mark.e2e

USERS = [f"user-{i}" for i in range(12)]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    launcher = _Launcher(tmp_path)
    try:
        yield launcher.start
    finally:
        launcher.close()


FLAGS = ("new-checkout", "search-ranking")


def _spans(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _events(span: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        e["attributes"]["feature_flag.key"]: e["attributes"]
        for e in span["events"]
        if e["name"] == "feature_flag.evaluation"
    }


def test_both_services_put_the_flags_on_their_server_spans(
    launch: Launch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway_spans, service_spans = tmp_path / "gateway.jsonl", tmp_path / "service.jsonl"
    monkeypatch.setenv("FLAGWIRE_PROPAGATION_KEYS", "a-shared-secret-for-this-test-only")
    monkeypatch.setenv("FLAGWIRE_EXAMPLE_SPANS", str(service_spans))
    service = launch("flask", EXAMPLES / "flags-service.yaml")
    monkeypatch.setenv("FLAGWIRE_EXAMPLE_SPANS", str(gateway_spans))
    monkeypatch.setenv("SERVICE_URL", service.url)
    gateway = launch("fastapi", EXAMPLES / "flags.yaml", module="gateway")

    with gateway.client() as client:
        for user in USERS:
            assert client.get("/checkout", headers={"x-user-id": user}).status_code == 200

    edge = FlagSet.from_path(EXAMPLES / "flags.yaml")
    expected = Counter(
        tuple(edge.evaluate(key, {"targetingKey": user}).variant for key in FLAGS) for user in USERS
    )
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for span in _spans(gateway_spans) + _spans(service_spans):
        if span["kind"] == "SpanKind.SERVER" and _events(span):  # not /healthz
            by_trace.setdefault(span["context"]["trace_id"], []).append(span)
    # One trace per request, through both services (the gateway's call carries traceparent).
    assert len(by_trace) == len(USERS)
    seen: Counter[tuple[str | None, ...]] = Counter()
    for servers in by_trace.values():
        assert len(servers) == 2
        variants = set()
        reasons = []
        for span in servers:
            events = _events(span)
            assert set(events) >= set(FLAGS)
            for key in FLAGS:
                event = events[key]
                assert event["feature_flag.key"] == key
                assert event["feature_flag.provider.name"] == "flagwire"
                assert event["feature_flag.set.id"] == "demo"
                assert (
                    span["attributes"][f"flagwire.flag.{key}"]
                    == event["feature_flag.result.variant"]
                )
            variants.add(tuple(events[key]["feature_flag.result.variant"] for key in FLAGS))
            reasons.append(events["new-checkout"]["feature_flag.result.reason"])
            if events["new-checkout"]["feature_flag.result.reason"] == "propagated":
                assert events["new-checkout"]["flagwire.propagated"] is True
                assert events["new-checkout"]["feature_flag.version"].startswith(
                    "2026.11.26-service"
                )
        assert len(variants) == 1  # the same variants on both services
        assert sorted(reasons) == ["propagated", "targeting_match"]  # decided at the gateway
        seen[variants.pop()] += 1
    assert seen == expected

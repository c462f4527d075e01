"""Bad inbound headers, odd flag content and misconfiguration stay harmless on the request
path: real uvicorn and werkzeug servers on loopback, real clients."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry, generate_latest

import flagwire
from attack_servers import recorder, uvicorn_server
from flagwire import ConfigError, FlagSet, Propagation, RequestFlags, context
from flagwire._request.scope import activate
from flagwire.asgi import FlagwireMiddleware
from flagwire.prometheus import PrometheusTelemetry
from flagwire.propagation import bind, flags_from_headers

KEY = "s" * 32
ON_OFF = {"on": True, "off": False}
DOCUMENT = {
    "flags": {
        "vip": {
            "state": "ENABLED",
            "variants": ON_OFF,
            "defaultVariant": "off",
            "targeting": {"if": [{"==": [{"var": "targetingKey"}, "vip-user"]}, "on", "off"]},
        },
    }
}
# A lone surrogate in a variant name and value: JSON allows it, UTF-8 has no form for it.
SURROGATE_TEXT = (
    '{"flags": {"odd": {"state": "ENABLED", "variants": {"\\ud800x": "\\udfff", "b": "b"},'
    ' "defaultVariant": "\\ud800x"}}}'
)


def _app(flagset: FlagSet, **options: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/whoami")
    def whoami(request: Request) -> dict[str, Any]:
        flags = flagwire.current_flags()
        return {"key": flags.context.get("targetingKey"), "vip": flags.boolean("vip")}

    app.add_middleware(FlagwireMiddleware, source=flagset, **options)
    return app


@pytest.fixture
def keys() -> Iterator[Propagation]:
    policy = Propagation([KEY], allowed_hosts=["127.0.0.1"])
    flagwire.set_default_propagation(policy)
    yield policy
    flagwire.set_default_propagation(None)


def _captured(policy: Propagation, key: str = "vip-user") -> str:
    header = policy.header({"vip": "on"}, key, "v1")
    assert header is not None
    return header


def test_a_lone_surrogate_fails_neither_baggage_nor_metrics(keys: Propagation) -> None:
    flagset = FlagSet.from_text(SURROGATE_TEXT, format="json")
    registry = CollectorRegistry()
    telemetry = PrometheusTelemetry(registry=registry)
    app = FastAPI()

    with recorder() as downstream:

        @app.get("/call")
        def call() -> dict[str, Any]:
            from flagwire.httpx import FlagwireTransport

            value = flagwire.current_flags().string("odd", "")
            with httpx.Client(transport=FlagwireTransport()) as client:
                client.get(downstream.url())
            return {"len": len(value)}

        @app.get("/metrics")
        def metrics() -> Any:
            from fastapi.responses import Response

            return Response(generate_latest(registry), media_type="text/plain")

        app.add_middleware(
            FlagwireMiddleware,
            source=flagset,
            context=context.headers({"x-user-id": "targetingKey"}),
            telemetry=[telemetry],
        )
        with uvicorn_server(app) as url:
            answers = [httpx.get(url + "/call", headers={"x-user-id": "u1"}) for _ in range(3)]
            scrape = httpx.get(url + "/metrics")
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert scrape.status_code == 200 and "flagwire_evaluations_total" in scrape.text
    assert any("odd~" in seen.get("baggage", "") for seen in downstream.seen)


def test_a_non_ascii_signature_is_rejected_and_the_users_own_key_kept(keys: Propagation) -> None:
    kid = keys.keys.sign(b"x").split(".")[0]  # type: ignore[union-attr]
    forged = (
        f"fw.ver=1,fw.tk=mallory,fw.fs=v1,fw.exp=9999999999,fw.f.vip=on,fw.sig={kid}.\u00e9\u00e9"
    )
    assert not keys.decode(forged).trusted
    flagset = FlagSet.from_mapping(DOCUMENT)
    assert flags_from_headers({"baggage": forged}, flagset, propagation=keys).upstream == {}
    app = _app(flagset, context=context.headers({"x-user-id": "targetingKey"}))
    with uvicorn_server(app) as url:
        answer = httpx.get(
            url + "/whoami", headers={"x-user-id": "alice", "baggage": forged.encode("latin-1")}
        )
    assert answer.status_code == 200 and answer.json() == {"key": "alice", "vip": False}


def test_forged_long_members_do_not_grow_the_decode_caches(keys: Propagation) -> None:
    def forged(index: int) -> str:
        return f"fw.ver=1,fw.tk=x,fw.f.{index}%41={index:05d}{'%42' * 2650},fw.sig=AAAA.00"

    keys.decode(forged(-1))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(1000):
            assert not keys.decode(forged(index)).trusted
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 4 << 20, f"{grown >> 20} MiB kept after 1000 forged headers"


def test_a_browser_replaying_a_captured_header_keeps_its_own_key(keys: Propagation) -> None:
    header = _captured(keys)
    edge = Propagation([KEY], accept_inbound=False)
    flagset = FlagSet.from_mapping(DOCUMENT)
    browser_id = "b" * 22
    with (
        uvicorn_server(_app(flagset)) as url,
        uvicorn_server(_app(flagset, propagation=edge)) as edge_url,
    ):
        service = httpx.get(url + "/whoami", headers={"baggage": header}).json()
        replay = httpx.get(
            url + "/whoami", headers={"baggage": header}, cookies={"flagwire_id": browser_id}
        ).json()
        at_edge = httpx.get(edge_url + "/whoami", headers={"baggage": header})
    assert service == {"key": "vip-user", "vip": True}  # a service's call is honoured
    assert replay == {"key": browser_id, "vip": False}
    assert at_edge.json()["key"] != "vip-user"


def _whoami_with_cookie() -> FastAPI:
    return _app(FlagSet.from_mapping(DOCUMENT), propagation=False)


def test_a_shared_client_never_carries_the_anonymous_id_between_services() -> None:
    from flagwire.httpx import FlagwireTransport

    flagset = FlagSet.from_mapping(DOCUMENT)
    keys_seen = []
    with (
        uvicorn_server(_whoami_with_cookie()) as url,
        httpx.Client(transport=FlagwireTransport()) as shared,
    ):
        for user in ("u1", "u2", "u3"):
            with activate(RequestFlags(flagset, {"targetingKey": user})):
                answer = shared.get(url + "/whoami")
            keys_seen.append(answer.json()["key"])
        assert "flagwire_id" in shared.cookies  # the downstream did set one
    assert len(set(keys_seen)) == 3, f"users collapsed into {keys_seen}"


def test_a_service_call_gets_no_anonymous_id_and_unverifiable_baggage_warns(
    keys: Propagation, caplog: pytest.LogCaptureFixture
) -> None:
    import flagwire._integration as integration

    header = Propagation(["another key entirely!"]).header({"vip": "on"}, "vip-user", "v1")
    assert header is not None
    flagwire.set_default_propagation(None)  # the keyless service: nothing in the environment
    integration._warn._last = 0.0
    flagset = FlagSet.from_mapping(DOCUMENT)
    with (
        uvicorn_server(_app(flagset, propagation=keys)) as url,
        uvicorn_server(
            _app(flagset)  # no keys in the environment
        ) as keyless,
    ):
        wrong_key = httpx.get(url + "/whoami", headers={"baggage": header})
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="flagwire"):
            no_keys = httpx.get(keyless + "/whoami", headers={"baggage": header})
    for answer in (wrong_key, no_keys):
        assert answer.status_code == 200 and "set-cookie" not in answer.headers
    assert "FLAGWIRE_PROPAGATION_KEYS" in caplog.text


def test_otel_span_names_and_flag_labels_stay_bounded() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from flagwire.otel import OTelTelemetry

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    registry = CollectorRegistry()
    app = FastAPI()

    @app.api_route("/x", methods=["GET", "POST"])
    def x(request: Request) -> dict[str, Any]:
        flags = flagwire.current_flags()
        return {"v": flags.boolean(request.query_params.get("k", "vip"))}

    app.add_middleware(
        FlagwireMiddleware,
        source=FlagSet.from_mapping(DOCUMENT),
        telemetry=[
            OTelTelemetry(server_spans=True, tracer_provider=provider),
            PrometheusTelemetry(registry=registry),
        ],
    )
    with uvicorn_server(app) as url, httpx.Client() as client:
        for index in range(40):
            client.request(f"M{index}X", url + "/x")
            client.get(url + "/x", params={"k": f"from-request-{index}"})
    names = {span.name for span in exporter.get_finished_spans()}
    assert names <= {"GET /x", "_OTHER /x", "_OTHER"}, names
    labels = {
        sample.labels["flag"]
        for metric in registry.collect()
        if metric.name == "flagwire_evaluations"
        for sample in metric.samples
    }
    assert labels == {"_unknown"}


def test_a_flag_read_first_in_a_bound_thread_keeps_the_flask_requests_context() -> None:
    from flask import Flask
    from flask import request as flask_request
    from werkzeug.serving import make_server

    from flagwire.flask import Flagwire, flags

    app = Flask(__name__)
    Flagwire(
        app,
        source=FlagSet.from_mapping(DOCUMENT),
        context=lambda request: {"targetingKey": flask_request.headers.get("x-user-id")},
    )
    pool = ThreadPoolExecutor(2)

    @app.get("/vip")
    def vip() -> dict[str, Any]:
        return {"vip": pool.submit(bind(lambda: flags.boolean("vip"))).result()}

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        answer = httpx.get(f"http://127.0.0.1:{server.port}/vip", headers={"x-user-id": "vip-user"})
    finally:
        server.shutdown()
        pool.shutdown()
    assert answer.json() == {"vip": True}


def test_prometheus_telemetry_twice_on_one_registry_shares_the_metrics() -> None:
    from flask import Flask

    from flagwire.flask import Flagwire

    registry = CollectorRegistry()

    def create_app() -> Flask:
        app = Flask(__name__)
        telemetry = PrometheusTelemetry(registry=registry)
        Flagwire(app, source=FlagSet.from_mapping(DOCUMENT), telemetry=[telemetry])
        app.get("/")(lambda: {"vip": flagwire.current_flags().boolean("vip")})
        return app

    for app in (create_app(), create_app()):
        assert app.test_client().get("/").status_code == 200
    text = generate_latest(registry).decode()
    assert (
        'flagwire_evaluations_total{flag="vip",reason="TARGETING_MATCH",variant="off"} 2.0' in text
    )


def test_a_dict_for_context_is_refused_with_the_fix() -> None:
    from flask import Flask

    from flagwire.flask import Flagwire

    flagset = FlagSet.from_mapping(DOCUMENT)
    with pytest.raises(ConfigError, match=r"context\.headers\("):
        FlagwireMiddleware(FastAPI(), source=flagset, context={"x-user-id": "targetingKey"})
    with pytest.raises(ConfigError, match=r"context\.headers\("):
        Flagwire(Flask(__name__), source=flagset, context={"x-user-id": "targetingKey"})
    with pytest.raises(ConfigError, match="extractor"):
        FlagwireMiddleware(FastAPI(), source=flagset, context=["x-user-id"])  # type: ignore[list-item]


def test_the_asgi_middleware_added_twice_is_reported_and_acts_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flagset = FlagSet.from_mapping(DOCUMENT)
    app = _app(flagset)
    app.add_middleware(FlagwireMiddleware, source=flagset)
    with caplog.at_level(logging.ERROR, logger="flagwire"), uvicorn_server(app) as url:
        answers = [httpx.get(url + "/whoami") for _ in range(3)]
    assert all(len(a.headers.get_list("set-cookie")) == 1 for a in answers)
    assert caplog.text.count("runs inside another FlagwireMiddleware") == 1


@pytest.mark.parametrize(
    "imports",
    [
        "from fastapi import FastAPI",
        "import opentelemetry.instrumentation.flask",
        "import opentelemetry.instrumentation.requests",
    ],
)
def test_otel_propagators_from_the_environment_import_cleanly(imports: str) -> None:
    import os

    code = (
        f"{imports}\n"
        "from opentelemetry import propagate\n"
        "print(json.dumps([type(p).__name__ for p in propagate.get_global_textmap()._propagators]))"
    )
    env = {**os.environ, "OTEL_PROPAGATORS": "tracecontext,baggage,flagwire"}
    done = subprocess.run(
        [sys.executable, "-c", "import json\n" + code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])[-1] == "FlagwirePropagator"

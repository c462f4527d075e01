"""flagwire.grpc: server interceptors (sync and grpc.aio) and client interceptors, with real
servers on 127.0.0.1 (JSON over gRPC, ``tests/e2e_apps/grpc_service.py``)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).with_name("e2e_apps")))
grpc = pytest.importorskip("grpc", reason="needs grpcio: pip install -e '.[grpc]'")

import grpc_service  # noqa: E402
from grpc import aio  # noqa: E402
from grpc_service import SERVICE, decisions, dumps, loads  # noqa: E402
from opentelemetry.instrumentation.grpc import server_interceptor  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

import flagwire  # noqa: E402
from flagwire import FlagSet, Propagation, StaticSource, context  # noqa: E402
from flagwire._telemetry import RequestRecord  # noqa: E402
from flagwire.grpc import (  # noqa: E402
    AioServerInterceptor,
    ClientInterceptor,
    ServerInterceptor,
    aio_client_interceptors,
    target_host,
)
from flagwire.otel import OTelTelemetry  # noqa: E402
from frameworks_support import KEYS, document  # noqa: E402

FLAGS = FlagSet.from_mapping(document("rpc-1", 50, (34, 33, 33)), source="rpc.json")
USER = context.headers({"x-user-id": "targetingKey"})


class Recorder:
    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    def record(self, request: RequestRecord) -> None:
        self.records.append(request)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def propagation() -> Propagation:
    return Propagation(keys=[KEYS])


@pytest.fixture
def sync_server(recorder: Recorder, propagation: Propagation) -> Iterator[str]:
    interceptor = ServerInterceptor(
        source=FLAGS, context=USER, propagation=propagation, telemetry=[recorder]
    )
    server = grpc.server(
        grpc_service.futures.ThreadPoolExecutor(max_workers=4), interceptors=[interceptor]
    )
    server.add_generic_rpc_handlers((grpc_service.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


def call(target: str, method: str, metadata: Any = (), *, interceptor: Any = None) -> Any:
    with grpc.insecure_channel(target) as channel:
        if interceptor is not None:
            channel = grpc.intercept_channel(channel, interceptor)
        path = f"/{SERVICE}/{method}"
        if method == "Stream":
            return list(channel.unary_stream(path, dumps, loads)({}, metadata=metadata))
        return channel.unary_unary(path, dumps, loads)({}, metadata=metadata)


def expected(user: str) -> dict[str, Any]:
    ctx = {"targetingKey": user}
    return {
        "rollout": FLAGS.decide("rollout", ctx).value,
        "color": FLAGS.decide("color", ctx).value,
    }


def test_sync_server_pins_each_calls_flags(sync_server: str) -> None:
    for n in range(20):
        user = f"user-{n}"
        body = call(sync_server, "Decide", [("x-user-id", user)])
        assert body["user"] == user
        assert {k: body[k] for k in ("rollout", "color")} == expected(user)
        streamed = call(sync_server, "Stream", [("x-user-id", user)])
        assert [b["color"] for b in streamed] == [expected(user)["color"]] * 3


def test_telemetry_names_the_method_and_status(sync_server: str, recorder: Recorder) -> None:
    call(sync_server, "Decide", [("x-user-id", "u1")])
    call(sync_server, "Stream", [("x-user-id", "u1")])
    with pytest.raises(grpc.RpcError) as aborted:
        call(sync_server, "Fail", [("x-user-id", "u1")])
    assert aborted.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as crashed:
        call(sync_server, "Crash", [("x-user-id", "u1")])
    assert crashed.value.code() == grpc.StatusCode.UNKNOWN
    with pytest.raises(grpc.RpcError) as unknown:
        call(sync_server, "NoSuchMethod", [("x-user-id", "u1")])  # any name a client likes
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
    seen = [(r.method, r.route, r.status) for r in recorder.records]
    assert seen == [
        ("GRPC", f"/{SERVICE}/Decide", 200),
        ("GRPC", f"/{SERVICE}/Stream", 200),
        ("GRPC", f"/{SERVICE}/Fail", 404),
        ("GRPC", f"/{SERVICE}/Crash", 500),
    ]
    assert list(recorder.records[0].decisions) == ["rollout", "color"]


def test_flag_problems_never_fail_a_call(propagation: Propagation) -> None:
    def broken(call: Any) -> dict[str, Any]:
        raise RuntimeError("extractor bug")

    bad = FlagSet.from_mapping(
        {
            "flags": {
                "color": {
                    "state": "ENABLED",
                    "variants": {"a": "a"},
                    "defaultVariant": "a",
                    "targeting": {"/": [1, 0]},
                }
            }
        }
    )
    for source, extractor in ((FLAGS, broken), (bad, USER)):
        server = grpc.server(
            grpc_service.futures.ThreadPoolExecutor(max_workers=2),
            interceptors=[ServerInterceptor(source=source, context=extractor)],
        )
        server.add_generic_rpc_handlers((grpc_service.handler(),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            body = call(f"127.0.0.1:{port}", "Decide", [("x-user-id", "u1")])
        finally:
            server.stop(0)
        assert body["user"] is None or body["user"] == "u1"
        assert body["color"] in ("none", "a", "red", "green", "blue")


def test_client_sends_signed_flags_only_to_allowed_targets(
    sync_server: str, propagation: Propagation
) -> None:
    upstream = flagwire.RequestFlags(FLAGS, {"targetingKey": "user-8"})
    other = next(c for c in ("red", "green", "blue") if c != expected("user-8")["color"])
    upstream._memo["color"] = FLAGS.propagated("color", other)  # what the caller decided
    with flagwire.activate(upstream):
        body = call(
            sync_server,
            "Decide",
            interceptor=ClientInterceptor(sync_server, propagation=propagation),
        )
        fenced = Propagation(keys=[KEYS], allowed_hosts=["*.internal"])
        outside = call(
            sync_server, "Decide", interceptor=ClientInterceptor(sync_server, propagation=fenced)
        )
    assert (body["user"], body["color"]) == ("user-8", other)
    assert body["reasons"]["color"] == "PROPAGATED"
    assert outside["baggage"] is None and outside["user"] is None


def test_forged_baggage_metadata_changes_nothing(
    sync_server: str, propagation: Propagation
) -> None:
    mine = expected("user-2")["color"]
    other = next(c for c in ("red", "green", "blue") if c != mine)
    signed = propagation.header({"color": other}, "user-2", "x")
    forged = signed.replace(f"color~{other}", f"color~{mine}")
    assert forged != signed
    wrong_key = Propagation(keys=["another-key-0123456789abcdef"]).header(
        {"color": other}, "user-2", "x"
    )
    assert call(sync_server, "Decide", [("baggage", signed)])["color"] == other  # control
    for header in (forged, wrong_key, "fw.ver=1,fw.tk=user-2,fw.f.color=" + other, "fw.x"):
        body = call(sync_server, "Decide", [("baggage", header), ("x-user-id", "user-2")])
        assert (body["user"], body["color"]) == ("user-2", mine)
        assert body["reasons"]["color"] != "PROPAGATED"


def test_opentelemetry_server_spans_get_the_flag_events(propagation: Propagation) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    ours = ServerInterceptor(source=FLAGS, context=USER, telemetry=[OTelTelemetry()])
    server = grpc.server(
        grpc_service.futures.ThreadPoolExecutor(max_workers=2),
        interceptors=[server_interceptor(tracer_provider=provider), ours],
    )
    server.add_generic_rpc_handlers((grpc_service.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        body = call(f"127.0.0.1:{port}", "Decide", [("x-user-id", "user-5")])
    finally:
        server.stop(0)
    (span,) = exporter.get_finished_spans()
    assert span.name == f"/{SERVICE}/Decide"
    events = {e.attributes["feature_flag.key"]: e.attributes for e in span.events}
    assert events["color"]["feature_flag.result.variant"] == body["color"]
    assert span.attributes["flagwire.flag.rollout"] == ("on" if body["rollout"] else "off")


# -- grpc.aio ---------------------------------------------------------------------------------


async def a_decide(request: Any, context: Any) -> dict[str, Any]:
    await asyncio.sleep(0)
    return decisions(context)


async def a_stream(request: Any, context: Any) -> AsyncIterator[dict[str, Any]]:
    for _ in range(3):
        await asyncio.sleep(0)
        yield decisions(context)


async def a_write(request: Any, context: Any) -> None:
    for _ in range(2):
        await context.write(decisions(context))


def test_aio_server_and_client(recorder: Recorder, propagation: Propagation) -> None:
    async def scenario() -> None:
        interceptor = AioServerInterceptor(
            source=FLAGS, context=USER, propagation=propagation, telemetry=[recorder]
        )
        server = aio.server(interceptors=[interceptor])
        methods = {
            "Decide": grpc.unary_unary_rpc_method_handler(a_decide, loads, dumps),
            "Stream": grpc.unary_stream_rpc_method_handler(a_stream, loads, dumps),
            "Write": grpc.unary_stream_rpc_method_handler(a_write, loads, dumps),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        target = f"127.0.0.1:{port}"
        try:
            async with aio.insecure_channel(target) as channel:
                users = [f"user-{n}" for n in range(10)]

                async def one(user: str) -> None:
                    md = (("x-user-id", user),)
                    body = await channel.unary_unary(f"/{SERVICE}/Decide", dumps, loads)(
                        {}, metadata=md
                    )
                    assert {k: body[k] for k in ("rollout", "color")} == expected(user)
                    for name in ("Stream", "Write"):
                        items = [
                            b
                            async for b in channel.unary_stream(f"/{SERVICE}/{name}", dumps, loads)(
                                {}, metadata=md
                            )
                        ]
                        assert {b["user"] for b in items} == {user}
                        assert {b["color"] for b in items} == {expected(user)["color"]}

                await asyncio.gather(*(one(u) for u in users))  # concurrent calls, own flags
            upstream = flagwire.RequestFlags(FLAGS, {"targetingKey": "user-8"})
            upstream.string("color", "none")
            with flagwire.activate(upstream):
                interceptors = aio_client_interceptors(target, propagation=propagation)
                async with aio.insecure_channel(target, interceptors=interceptors) as channel:
                    body = await channel.unary_unary(f"/{SERVICE}/Decide", dumps, loads)({})
                    items = [
                        b
                        async for b in channel.unary_stream(f"/{SERVICE}/Stream", dumps, loads)({})
                    ]
            assert body["user"] == "user-8" and body["reasons"]["color"] == "PROPAGATED"
            assert {b["user"] for b in items} == {"user-8"}
        finally:
            await server.stop(0)

    asyncio.run(scenario())
    routes = {r.route for r in recorder.records}
    assert routes == {f"/{SERVICE}/Decide", f"/{SERVICE}/Stream", f"/{SERVICE}/Write"}
    assert {r.status for r in recorder.records} == {200}


def test_target_host() -> None:
    assert target_host("payments:50051") == "payments:50051"
    assert target_host("dns:///payments.internal:50051") == "payments.internal:50051"
    assert target_host("dns://8.8.8.8/payments:443") == "payments:443"
    assert target_host("ipv4:10.0.0.1:50051,10.0.0.2:50051") == "10.0.0.1:50051"
    assert target_host("unix:/run/grpc.sock") == "localhost"


def test_missing_grpc_names_the_extra() -> None:
    code = "import sys; sys.modules['grpc'] = None; import flagwire.grpc"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert 'pip install -e ".[grpc]"' in result.stderr


def test_static_source_pins_per_call(recorder: Recorder) -> None:
    source = StaticSource(FLAGS)
    swapped = FlagSet.from_mapping(document("rpc-2", 0, (100, 0, 0)))
    seen: list[tuple[str, str]] = []

    def swap(request: Any, context: Any) -> dict[str, Any]:
        first = flagwire.current_flags().string("color", "none")
        source.flagset = swapped
        seen.append((first, flagwire.current_flags().string("color", "none")))
        return {}

    server = grpc.server(
        grpc_service.futures.ThreadPoolExecutor(max_workers=2),
        interceptors=[ServerInterceptor(source=source, context=USER)],
    )
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Swap": grpc.unary_unary_rpc_method_handler(swap, loads, dumps)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    user = next(f"u{n}" for n in range(50) if expected(f"u{n}")["color"] != "red")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            channel.unary_unary(f"/{SERVICE}/Swap", dumps, loads)(
                {}, metadata=[("x-user-id", user)]
            )
            channel.unary_unary(f"/{SERVICE}/Swap", dumps, loads)(
                {}, metadata=[("x-user-id", user)]
            )
    finally:
        server.stop(0)
    assert seen == [(expected(user)["color"],) * 2, ("red", "red")]

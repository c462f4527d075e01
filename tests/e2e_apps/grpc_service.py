"""A gRPC service for ``tests/test_grpc.py`` and the cross-framework journey, JSON over
gRPC (no generated code): ``/flagwire.e2e.Hop/{Decide,Stream,Fail,Crash,Enqueue}``.

``Decide`` answers with the call's decisions; ``Stream`` with them three times;
``Fail`` reads a flag then aborts ``NOT_FOUND``; ``Crash`` raises; ``Enqueue`` publishes
Celery task ``e2e.decide`` (``tests/e2e_apps/celery_app.py``; ``{"task": name}`` picks
another) and answers with its decisions and the task id. Run as a program it serves on
``$GRPC_PORT`` with ``$FLAGWIRE_FLAGS``, spans exported as JSON lines to ``$SPANS_FILE``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from typing import Any

import grpc

import flagwire
from flagwire.grpc import ServerInterceptor

SERVICE = "flagwire.e2e.Hop"


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def loads(data: bytes) -> Any:
    return json.loads(data) if data else None


def decisions(context: Any = None) -> dict[str, Any]:
    flags = flagwire.current_flags()
    rollout = flags.details("rollout", False)
    color = flags.details("color", "none")
    return {
        "user": flags.context.get("targetingKey"),
        "rollout": rollout.value,
        "color": color.value,
        "reasons": {"rollout": rollout.reason.value, "color": color.reason.value},
        "version": flags.flagset.version_label,
        "baggage": dict(context.invocation_metadata()).get("baggage") if context else None,
    }


def decide(request: Any, context: grpc.ServicerContext) -> dict[str, Any]:
    return decisions(context)


def stream(request: Any, context: grpc.ServicerContext) -> Iterator[dict[str, Any]]:
    for _ in range(3):
        yield decisions(context)


def fail(request: Any, context: grpc.ServicerContext) -> None:
    flagwire.current_flags().boolean("rollout", False)
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


def crash(request: Any, context: grpc.ServicerContext) -> None:
    flagwire.current_flags().boolean("rollout", False)
    raise RuntimeError("handler bug")


def enqueue(request: Any, context: grpc.ServicerContext) -> dict[str, Any]:
    import celery_app

    task = celery_app.app.send_task((request or {}).get("task", "e2e.decide"))
    return {**decisions(context), "task": task.id}


HANDLERS: dict[str, Callable[..., Any]] = {
    "Decide": decide,
    "Fail": fail,
    "Crash": crash,
    "Enqueue": enqueue,
}


def handler() -> grpc.GenericRpcHandler:
    methods = {
        name: grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=loads, response_serializer=dumps
        )
        for name, fn in HANDLERS.items()
    }
    methods["Stream"] = grpc.unary_stream_rpc_method_handler(
        stream, request_deserializer=loads, response_serializer=dumps
    )
    return grpc.method_handlers_generic_handler(SERVICE, methods)


def serve(port: int, interceptors: Sequence[Any]) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), interceptors=interceptors)
    server.add_generic_rpc_handlers((handler(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


def _main() -> None:  # pragma: no cover - run by the e2e tests
    from opentelemetry.instrumentation.grpc import server_interceptor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from spans import JsonLinesExporter

    from flagwire.otel import OTelTelemetry

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(os.environ["SPANS_FILE"])))
    source = flagwire.FileSource(os.environ["FLAGWIRE_FLAGS"])
    ours = ServerInterceptor(source=source, telemetry=[OTelTelemetry()])
    server = serve(int(os.environ["GRPC_PORT"]), [server_interceptor(provider), ours])
    print("serving", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    _main()

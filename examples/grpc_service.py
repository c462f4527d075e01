"""A gRPC service with flagwire (JSON over gRPC, so no generated code is needed).

Run it:  ``python examples/grpc_service.py`` (port ``$GRPC_PORT``, default 50051), then
``python examples/grpc_service.py call alice`` calls it as a client would: the client
interceptor sends the caller's flags to the service (an allowed destination).
"""

from __future__ import annotations

import json
import os
import sys
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

import flagwire
from flagwire import context
from flagwire.grpc import ClientInterceptor, ServerInterceptor

PORT = int(os.environ.get("GRPC_PORT", "50051"))
FLAGS = Path(os.environ.get("FLAGWIRE_FLAGS", Path(__file__).with_name("flags.yaml")))
METHOD = "/shop.Checkout/Decide"


def decide(request: Any, ctx: grpc.ServicerContext) -> dict[str, Any]:
    flags = flagwire.current_flags()  # pinned for this call
    return {"user": flags.context.get("targetingKey"), "new": flags.boolean("new-checkout")}


def serve() -> None:
    interceptor = ServerInterceptor(
        source=flagwire.FileSource(FLAGS),
        context=context.headers({"x-user-id": "targetingKey", "x-plan": "plan"}),
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), interceptors=[interceptor])
    handler = grpc.unary_unary_rpc_method_handler(
        decide,
        request_deserializer=json.loads,
        response_serializer=lambda o: json.dumps(o).encode(),
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("shop.Checkout", {"Decide": handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{PORT}")
    server.start()
    print(f"serving on 127.0.0.1:{PORT}", flush=True)
    server.wait_for_termination()


def call(user: str) -> None:
    target = f"localhost:{PORT}"
    channel = grpc.intercept_channel(grpc.insecure_channel(target), ClientInterceptor(target))
    stub = channel.unary_unary(METHOD, lambda o: json.dumps(o).encode(), json.loads)
    print(stub({}, metadata=[("x-user-id", user)]))


if __name__ == "__main__":
    call(sys.argv[2]) if sys.argv[1:2] == ["call"] else serve()

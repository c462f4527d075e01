"""gRPC (``grpcio``): flags pinned per call on servers, propagated by clients.

Server, sync or ``grpc.aio``::

    from flagwire.grpc import AioServerInterceptor, ServerInterceptor

    server = grpc.server(pool, interceptors=[ServerInterceptor(source=FileSource("flags.yaml"))])
    server = grpc.aio.server(interceptors=[AioServerInterceptor(source=source)])

Each call gets its own :class:`~flagwire.RequestFlags`, :func:`flagwire.current_flags` in
the handler (streamed responses included). The context comes from the call's metadata
(``context=flagwire.context.headers({"x-user-id": "targetingKey"})``: extractors receive
an :class:`RpcCall`), and a trusted upstream's assignments from its ``baggage`` metadata.
Telemetry's route label is the full method name (``/shop.Cart/Checkout``), its method
``GRPC`` and its status the HTTP equivalent of the gRPC status code (grpc-gateway's
mapping: ``OK`` 200, ``NOT_FOUND`` 404, ``UNAVAILABLE`` 503, ...). With OpenTelemetry's
gRPC instrumentation, its server span gets the flag events.

Client: the current flags go, signed, to allowed destinations only::

    channel = grpc.intercept_channel(grpc.insecure_channel(target), ClientInterceptor(target))
    channel = grpc.aio.insecure_channel(target, interceptors=aio_client_interceptors(target))
"""

from __future__ import annotations

import inspect
from collections import namedtuple
from collections.abc import Awaitable, Callable, Iterable, Sequence
from time import perf_counter
from typing import Any

from ._engine.flagset import FlagSet
from ._errors import missing_extra
from ._integration import Binding, BoundRequestFlags, ContextSpec, aiterate_with, iterate_with
from ._propagation.policy import Propagation
from ._request.scope import _current
from ._sources.base import Source
from ._telemetry import Telemetry
from .propagation import outbound_baggage

try:
    import grpc
    from grpc import aio
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise missing_extra(exc, "flagwire.grpc", "grpcio", "grpc") from exc

__all__ = [
    "AioServerInterceptor",
    "ClientInterceptor",
    "RpcCall",
    "ServerInterceptor",
    "aio_client_interceptors",
]

Metadata = Iterable[tuple[str, str | bytes]]
_S = grpc.StatusCode
HTTP_STATUS = {
    _S.OK: 200, _S.CANCELLED: 499, _S.UNKNOWN: 500, _S.INVALID_ARGUMENT: 400,
    _S.DEADLINE_EXCEEDED: 504, _S.NOT_FOUND: 404, _S.ALREADY_EXISTS: 409,
    _S.PERMISSION_DENIED: 403, _S.UNAUTHENTICATED: 401, _S.RESOURCE_EXHAUSTED: 429,
    _S.FAILED_PRECONDITION: 400, _S.ABORTED: 409, _S.OUT_OF_RANGE: 400,
    _S.UNIMPLEMENTED: 501, _S.INTERNAL: 500, _S.UNAVAILABLE: 503, _S.DATA_LOSS: 500,
}  # fmt: skip
"""gRPC status code -> the HTTP status telemetry records (grpc-gateway's mapping)."""


class _Headers(dict[str, str]):
    """Metadata by lowercase key (gRPC keys are lowercase), looked up case-insensitively."""

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


def _headers(metadata: Metadata | None) -> _Headers:
    found = _Headers()
    for key, value in metadata or ():
        if isinstance(value, str):  # "-bin" values are bytes: not context
            name = key.lower()
            found[name] = f"{found[name]},{value}" if name in found else value
    return found


class RpcCall:
    """One gRPC call, as context extractors see it.

    Attributes:
        method: The full method name, ``/package.Service/Method``.
        headers: The call's (text) metadata, case-insensitive ``.get``.
        context: The ``grpc.ServicerContext`` (``peer()``, ``auth_context()``, ...).
        remote_addr: The client's address, from ``context.peer()``.
    """

    __slots__ = ("context", "headers", "method", "remote_addr")
    cookies: dict[str, str] = {}  # noqa: RUF012 - no cookies in gRPC; read-only

    def __init__(self, method: str, metadata: Metadata | None, context: Any) -> None:
        self.method = method
        self.headers = _headers(metadata)
        self.context = context
        peer = str(context.peer() or "") if context is not None else ""
        kind, _, address = peer.partition(":")  # ipv4:1.2.3.4:5, ipv6:[::1]:5, unix:/x
        host = address.rpartition(":")[0] if kind in ("ipv4", "ipv6") else ""
        self.remote_addr = host.strip("[]") or None


class _Call:
    """A call's flags, pinned; recorded when the call ends."""

    __slots__ = ("binding", "context", "flags", "method", "started")

    def __init__(self, binding: Binding, details: Any, context: Any) -> None:
        self.binding, self.method, self.context = binding, details.method, context
        self.flags = BoundRequestFlags(
            binding, RpcCall(details.method, details.invocation_metadata, context)
        )
        self.started = perf_counter()

    def finish(self, failure: BaseException | None) -> None:
        if not self.binding.telemetry:
            return
        code = self.context.code() if hasattr(self.context, "code") else None
        if code is None:
            code = _S.OK if failure is None else _S.UNKNOWN
        status = HTTP_STATUS.get(code, 500)
        self.binding.record(self.flags, "GRPC", self.method, status, perf_counter() - self.started)


Start = Callable[[Any], "tuple[_Call, Any]"]


def _async_stream(inner: Callable[..., Any], start: Start) -> Callable[..., Any]:
    async def behaviour(request: Any, context: Any) -> Any:
        call, token = start(context)
        try:
            responses = inner(request, context)
        finally:
            _current.reset(token)
        async for item in aiterate_with(call.flags, responses, call.finish):
            yield item

    return behaviour


def _async_unary(inner: Callable[..., Any], start: Start) -> Callable[..., Any]:
    # also a streaming handler that writes with context.write() and returns None
    async def behaviour(request: Any, context: Any) -> Any:
        call, token = start(context)
        failure = None
        try:
            return await inner(request, context)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            _current.reset(token)
            call.finish(failure)

    return behaviour


def _sync_stream(inner: Callable[..., Any], start: Start) -> Callable[..., Any]:
    def behaviour(request: Any, context: Any) -> Any:
        call, token = start(context)
        try:
            responses = inner(request, context)
        except BaseException as exc:
            call.finish(exc)
            raise
        finally:
            _current.reset(token)
        return iterate_with(call.flags, responses, call.finish)

    return behaviour


def _sync_unary(inner: Callable[..., Any], start: Start) -> Callable[..., Any]:
    def behaviour(request: Any, context: Any) -> Any:
        call, token = start(context)
        failure = None
        try:
            return inner(request, context)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            _current.reset(token)
            call.finish(failure)

    return behaviour


def _wrap(handler: Any, binding: Binding, details: Any) -> Any:
    """``handler`` with every call's flags pinned, for sync and ``grpc.aio`` servers (whose
    handlers may be async generators, coroutines or plain functions)."""
    streams = handler.response_streaming
    kind = ("stream" if handler.request_streaming else "unary") + (
        "_stream" if streams else "_unary"
    )
    inner: Callable[..., Any] = getattr(handler, kind)

    def start(context: Any) -> tuple[_Call, Any]:
        call = _Call(binding, details, context)
        return call, _current.set(call.flags)

    if inspect.isasyncgenfunction(inner):
        behaviour = _async_stream(inner, start)
    elif inspect.iscoroutinefunction(inner):
        behaviour = _async_unary(inner, start)
    else:
        behaviour = (_sync_stream if streams else _sync_unary)(inner, start)
    factory = getattr(grpc, f"{kind}_rpc_method_handler")
    return factory(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _binding(
    source: Source | FlagSet,
    context: ContextSpec,
    propagation: Propagation | bool | None,
    telemetry: Sequence[Telemetry],
) -> Binding:
    return Binding(
        source,
        context if context is not None else _no_context,
        anonymous_cookie=None,  # gRPC has no cookies: the caller sends the targeting key
        propagation=propagation,
        telemetry=telemetry,
    )


def _no_context(call: Any) -> None:
    return None


class ServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Request-scoped flags for a sync ``grpc.server``.

    Args:
        source: A :class:`~flagwire.Source` or :class:`~flagwire.FlagSet`.
        context: An extractor (:class:`RpcCall` -> mapping) or several; default: none
            (the targeting key then comes from a trusted upstream's ``baggage``).
        propagation: How ``baggage`` metadata is trusted (:class:`~flagwire.Propagation`);
            default: from ``$FLAGWIRE_PROPAGATION_KEYS``; ``False`` for none.
        telemetry: Where each finished call's decided flags are recorded.
    """

    def __init__(
        self,
        *,
        source: Source | FlagSet,
        context: ContextSpec = None,
        propagation: Propagation | bool | None = None,
        telemetry: Sequence[Telemetry] = (),
    ) -> None:
        self.binding = _binding(source, context, propagation, telemetry)

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        return None if handler is None else _wrap(handler, self.binding, details)


class AioServerInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    """:class:`ServerInterceptor` for ``grpc.aio.server`` (same arguments)."""

    def __init__(
        self,
        *,
        source: Source | FlagSet,
        context: ContextSpec = None,
        propagation: Propagation | bool | None = None,
        telemetry: Sequence[Telemetry] = (),
    ) -> None:
        self.binding = _binding(source, context, propagation, telemetry)

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        handler = await continuation(details)
        return None if handler is None else _wrap(handler, self.binding, details)


# -- clients ---------------------------------------------------------------------------------


def target_host(target: str) -> str:
    """The host of a channel target: ``dns:///payments:50051`` -> ``payments:50051``."""
    scheme, sep, rest = target.partition(":")
    if not sep or scheme not in ("dns", "ipv4", "ipv6", "unix", "unix-abstract"):
        return target
    if scheme.startswith("unix"):
        return "localhost"
    if rest.startswith("//"):
        rest = rest[2:].partition("/")[2]  # dns://authority/host:port
    return rest.split(",", 1)[0]


class _Outbound:
    """Sets ``baggage`` metadata for a call to one target."""

    def __init__(self, target: str, propagation: Propagation | None = None) -> None:
        self.host = target_host(target)
        self.propagation = propagation

    def metadata(self, metadata: Metadata | None) -> list[tuple[str, str | bytes]]:
        pairs = list(metadata or ())
        existing = [v for k, v in pairs if k.lower() == "baggage" and isinstance(v, str)]
        kept = [(k, v) for k, v in pairs if k.lower() != "baggage"]
        baggage = outbound_baggage(
            self.host, ",".join(existing) or None, propagation=self.propagation
        )
        return [*kept, ("baggage", baggage)] if baggage else kept


_Details = namedtuple(  # grpc's own ClientCallDetails is one too
    "_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
)


class _ClientCallDetails(_Details, grpc.ClientCallDetails):  # type: ignore[misc]
    pass


class ClientInterceptor(
    _Outbound,
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Sends the current flags in ``baggage`` metadata on a sync channel's calls, if
    ``target`` is an allowed destination (:meth:`~flagwire.Propagation.allows`).

    Args:
        target: The channel's target (``payments:50051``, ``dns:///payments:50051``).
        propagation: Default: the process-wide :class:`~flagwire.Propagation`.
    """

    def _details(self, details: Any) -> Any:
        return _ClientCallDetails(
            details.method,
            details.timeout,
            self.metadata(details.metadata),
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    intercept_unary_stream = intercept_unary_unary
    intercept_stream_unary = intercept_unary_unary
    intercept_stream_stream = intercept_unary_unary


class _AioOutbound(_Outbound):
    async def _call(self, continuation: Any, details: Any, request: Any) -> Any:
        replaced = details._replace(metadata=aio.Metadata(*self.metadata(details.metadata)))
        return await continuation(replaced, request)


class _AioUnaryUnary(_AioOutbound, aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    intercept_unary_unary = _AioOutbound._call


class _AioUnaryStream(_AioOutbound, aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    intercept_unary_stream = _AioOutbound._call


class _AioStreamUnary(_AioOutbound, aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    intercept_stream_unary = _AioOutbound._call


class _AioStreamStream(_AioOutbound, aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    intercept_stream_stream = _AioOutbound._call


def aio_client_interceptors(
    target: str, *, propagation: Propagation | None = None
) -> list[aio.ClientInterceptor]:
    """:class:`ClientInterceptor` for ``grpc.aio`` channels: one interceptor per call kind
    (``grpc.aio`` files each interceptor under one kind only)."""
    kinds = (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary, _AioStreamStream)
    return [kind(target, propagation) for kind in kinds]

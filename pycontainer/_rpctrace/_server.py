"""Server interceptors (sync and grpc.aio): a SERVER span per unary call,
child of the caller's ``traceparent``, current while the handler runs (its
own spans and the calls it makes are children of it).

Each method's handler is wrapped once and reused: the interceptor itself does
a dict lookup per call. pycontainer's own services (Management, health,
reflection) are left alone: pycontainer traces them itself, health never.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState

from ._context import attach_span, detach
from ._recorder import EMPTY_TRACE_STATE, span_context
from ._tracing import RpcTracing
from ._w3c import RANDOM_TRACE_ID, SAMPLED, TRACEPARENT, TRACESTATE, parse_traceparent

__all__ = ["AioServerInterceptor", "ServerInterceptor"]

if TYPE_CHECKING:
    _SyncBase = grpc.ServerInterceptor[Any, Any]
    _AioBase = grpc.aio.ServerInterceptor[Any, Any]
else:
    _SyncBase = grpc.ServerInterceptor
    _AioBase = grpc.aio.ServerInterceptor

# Services pycontainer traces (or deliberately does not) on its own.
_OWN = ("/pycontainer.", "/grpc.health.v1.", "/grpc.reflection.")
_CANCELLED = grpc.StatusCode.CANCELLED.value[0]
_UNKNOWN = grpc.StatusCode.UNKNOWN.value[0]
_SERVER = SpanKind.SERVER
_OK = grpc.StatusCode.OK
_time_ns = time.time_ns


# A traced call on its way (a tuple: no object to build and fill, twice a
# call): the context token, then for a recorded call the recording, trace
# id, span id, parent span id (0: none), trace flags, the parent's
# tracestate, the start (wall-clock ns, the SDK's clock for spans), and the
# span's context (made current: the recorder's span reuses it).
_Call = tuple[Any, ...]
_TRACE_FLAGS = tuple(TraceFlags(flags) for flags in range(256))


def _begin(tracing: RpcTracing, name: str, metadata: Iterable[Any] | None) -> _Call | None:
    """Start a call: read its trace context, decide, make it current.
    None when there is nothing to trace and no context to carry on."""
    traceparent = tracestate = None
    for key, value in metadata or ():
        if key == TRACEPARENT:
            traceparent = value
        elif key == TRACESTATE:
            tracestate = value
    parent = parse_traceparent(traceparent) if traceparent is not None else None
    state = TraceState.from_header([tracestate]) if tracestate and parent else None
    recording = tracing._recording or tracing.recording()
    if recording is None:
        if parent is None:
            return None
        # Not recorded: the caller's context still reaches the calls made here.
        remote = SpanContext(parent[0], parent[1], True, _TRACE_FLAGS[parent[2] & 0xFF], state)
        return (attach_span(NonRecordingSpan(remote)),)
    span_id = recording.new_span_id() or 1
    if parent is not None:
        trace_id, parent_id, parent_flags = parent
        random_bit = parent_flags & RANDOM_TRACE_ID
        follow = recording.sampling.remote_parent
        sampled = (
            follow[parent_flags & SAMPLED]
            if follow is not None
            else recording.sampling.sampled(trace_id, parent, True, name, _SERVER)
        )
    else:
        trace_id, parent_id, random_bit = (recording.new_trace_id() or 1), 0, recording.root_flags
        sampled = recording.sampling.sampled(trace_id, None, True, name, _SERVER)
    flags = random_bit | SAMPLED if sampled else random_bit
    own = span_context(
        (trace_id, span_id, False, _TRACE_FLAGS[flags], state or EMPTY_TRACE_STATE, True)
    )
    token = attach_span(NonRecordingSpan(own))
    if not sampled:
        return (token,)
    return (
        token,
        recording,
        trace_id,
        span_id,
        parent_id,
        flags,
        tracestate if parent_id else None,
        _time_ns(),
        own,
    )


def _code_number(code: Any) -> int:
    number: int = code.value[0] if isinstance(code, grpc.StatusCode) else _UNKNOWN
    return number


def _end(
    call: _Call,
    service: str,
    method: str,
    context: Any,
    failure: BaseException | None,
) -> None:
    detach(call[0])
    if len(call) == 1:
        return
    end_ns = _time_ns()
    _, recording, trace_id, span_id, parent_id, flags, tracestate, start_ns, own = call
    code, description = 0, None
    set_code = context.code()
    if set_code is not None and set_code is not _OK:
        code = _code_number(set_code)
        details = context.details()
        description = details.decode("utf-8", "replace") if isinstance(details, bytes) else details
    elif failure is not None:
        if isinstance(failure, asyncio.CancelledError | GeneratorExit):
            code = _CANCELLED
        else:
            code, description = _UNKNOWN, f"{type(failure).__name__}: {failure}"
    recording.recorder.record(
        (
            _SERVER,
            service,
            method,
            trace_id,
            span_id,
            parent_id,
            True,
            flags,
            tracestate,
            start_ns,
            end_ns,
            code,
            context.peer(),
            description,
            own,
        )
    )


def _sync_unary(
    tracing: RpcTracing, method: str, inner: Callable[[Any, Any], Any]
) -> Callable[[Any, Any], Any]:
    service, _, name = method[1:].partition("/")
    full = method[1:]

    def behavior(request: Any, context: Any) -> Any:
        call = _begin(tracing, full, context.invocation_metadata())
        if call is None:
            return inner(request, context)
        try:
            response = inner(request, context)
        except BaseException as exc:
            _end(call, service, name, context, exc)
            raise
        _end(call, service, name, context, None)
        return response

    return behavior


def _aio_unary(
    tracing: RpcTracing, method: str, inner: Callable[[Any, Any], Awaitable[Any]]
) -> Callable[[Any, Any], Awaitable[Any]]:
    service, _, name = method[1:].partition("/")
    full = method[1:]

    async def behavior(request: Any, context: Any) -> Any:
        call = _begin(tracing, full, context.invocation_metadata())
        if call is None:
            return await inner(request, context)
        try:
            response = await inner(request, context)
        except BaseException as exc:
            _end(call, service, name, context, exc)
            raise
        _end(call, service, name, context, None)
        return response

    return behavior


class _Handlers:
    """Each method's handler, wrapped once (or left as it is)."""

    def __init__(self, tracing: RpcTracing, aio: bool) -> None:
        self._tracing = tracing
        self._aio = aio
        # method -> (the handler seen, the one to use)
        self.cache: dict[str, tuple[Any, Any]] = {}

    def get(self, method: str, handler: Any) -> Any:
        cached = self.cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        if len(self.cache) < 10_000:  # methods are few; unknown names are not
            self.cache[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: Any) -> Any:
        if (
            handler is None
            or handler.unary_unary is None
            or method.startswith(_OWN)
            or getattr(handler.unary_unary, "experimental_non_blocking", False)
        ):
            return handler  # streams are not traced; own services are traced apart
        make = _aio_unary if self._aio else _sync_unary
        return grpc.unary_unary_rpc_method_handler(
            make(self._tracing, method, handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class ServerInterceptor(_SyncBase):
    """RpcTracing's sync server interceptor."""

    def __init__(self, tracing: RpcTracing) -> None:
        self._handlers = _Handlers(tracing, aio=False)
        self._cache = self._handlers.cache

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        cached = self._cache.get(method)  # _Handlers.get's hit, without its call
        if cached is not None and cached[0] is handler:
            return cached[1]
        return self._handlers.get(method, handler)


class AioServerInterceptor(_AioBase):
    """RpcTracing's grpc.aio server interceptor."""

    def __init__(self, tracing: RpcTracing) -> None:
        self._handlers = _Handlers(tracing, aio=True)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        return self._handlers.get(handler_call_details.method, handler)

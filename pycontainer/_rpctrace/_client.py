"""Client interceptors (sync and grpc.aio): a CLIENT span per unary call,
child of the current span, its context sent as ``traceparent`` (and the
parent's ``tracestate``) in the call's metadata."""

from __future__ import annotations

import asyncio
import time
from collections import namedtuple
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry.trace import INVALID_SPAN_CONTEXT, SpanKind

from ._context import current_span_context
from ._tracing import Recording, RpcTracing
from ._w3c import RANDOM_TRACE_ID, SAMPLED, TRACEPARENT, TRACESTATE, format_traceparent

__all__ = ["AioClientInterceptor", "ClientInterceptor"]

if TYPE_CHECKING:
    _SyncBase = grpc.UnaryUnaryClientInterceptor[Any, Any]
    _AioBase = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
else:
    _SyncBase = grpc.UnaryUnaryClientInterceptor
    _AioBase = grpc.aio.UnaryUnaryClientInterceptor

_CLIENT = SpanKind.CLIENT
_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED.value[0]
_UNKNOWN = grpc.StatusCode.UNKNOWN.value[0]
_time_ns = time.time_ns


class _CallDetails(
    namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    """The call's details with trace context added to its metadata."""


# A traced call on its way (a tuple, as the server's): the recording, trace
# id, span id, parent span id (0: none), whether the parent is remote, trace
# flags, the parent's tracestate, and the start (wall-clock ns, the SDK's
# clock for spans).
_Call = tuple[Any, ...]


def _names(method: str | bytes, cache: dict[Any, tuple[str, str, str]]) -> tuple[str, str, str]:
    """(service, method, "service/method") of a method path, remembered."""
    names = cache.get(method)
    if names is None:
        path = method.decode() if isinstance(method, bytes) else method
        service, _, name = path.lstrip("/").partition("/")
        names = (service, name, f"{service}/{name}")
        if len(cache) < 10_000:
            cache[method] = names
    return names


def _begin(tracing: RpcTracing, full_name: str) -> tuple[_Call | None, tuple[tuple[str, str], ...]]:
    """Decide on the call's span; the metadata that carries its context."""
    parent = current_span_context()
    recording: Recording | None = tracing._recording or tracing.recording()
    if parent is INVALID_SPAN_CONTEXT or not parent.is_valid:  # (the first: no property call)
        if recording is None:
            return None, ()
        trace_id, parent_id, random_bit = (recording.new_trace_id() or 1), 0, recording.root_flags
        parent_ids = None
        tracestate = None
        remote = False
    else:
        remote = parent.is_remote
        trace_id, parent_id = parent.trace_id, parent.span_id
        random_bit = parent.trace_flags & RANDOM_TRACE_ID
        parent_ids = (trace_id, parent_id, parent.trace_flags)
        tracestate = parent.trace_state.to_header() if parent.trace_state else None
        if recording is None:  # not recorded: the context passes on as it is
            return None, _carrier(
                format_traceparent(trace_id, parent_id, parent.trace_flags), tracestate
            )
    span_id = recording.new_span_id() or 1
    sampling = recording.sampling
    sampled = sampling.always
    if sampled is None:
        sampled = sampling.sampled(trace_id, parent_ids, False, full_name, _CLIENT)
    if not sampled:
        return None, _carrier(format_traceparent(trace_id, span_id, random_bit), tracestate)
    flags = SAMPLED | random_bit
    call = (
        recording,
        trace_id,
        span_id,
        parent_id,
        remote,
        flags,
        tracestate,
        _time_ns(),
    )
    traceparent = format_traceparent(trace_id, span_id, flags)
    if tracestate:
        return call, ((TRACEPARENT, traceparent), (TRACESTATE, tracestate))
    return call, ((TRACEPARENT, traceparent),)


def _carrier(traceparent: str, tracestate: str | None) -> tuple[tuple[str, str], ...]:
    if tracestate:
        return ((TRACEPARENT, traceparent), (TRACESTATE, tracestate))
    return ((TRACEPARENT, traceparent),)


def _with_context(metadata: Any, carrier: tuple[tuple[str, str], ...]) -> tuple[Any, ...]:
    """The call's metadata with the trace context in place of any it had."""
    if not metadata:
        return carrier
    kept = tuple(m for m in metadata if m[0] not in (TRACEPARENT, TRACESTATE))
    return kept + carrier


def _end(
    call: _Call,
    names: tuple[str, str, str],
    code: int,
    description: str | None,
    target: str | None,
) -> None:
    end_ns = _time_ns()
    recording, trace_id, span_id, parent_id, remote, flags, tracestate, start_ns = call
    recording.recorder.record(
        (
            _CLIENT,
            names[0],
            names[1],
            trace_id,
            span_id,
            parent_id,
            remote,
            flags,
            tracestate,
            start_ns,
            end_ns,
            code,
            target,
            description,
            None,
        )
    )


def _outcome(future: Any) -> tuple[int, str | None]:
    """Status code number and error details of a finished sync call."""
    try:
        code = future.code()
    except Exception:
        return _UNKNOWN, None
    if code is _OK or code is None:
        return 0, None
    details = future.details() if hasattr(future, "details") else None
    number = code.value[0] if isinstance(code, grpc.StatusCode) else _UNKNOWN
    return number, details


class ClientInterceptor(_SyncBase):
    """RpcTracing's sync client interceptor (unary-unary calls)."""

    def __init__(self, tracing: RpcTracing, target: str | None = None) -> None:
        self._tracing = tracing
        self._target = target
        self._names: dict[Any, tuple[str, str, str]] = {}

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        d = client_call_details
        names = _names(d.method, self._names)
        call, carrier = _begin(self._tracing, names[2])
        if not carrier:
            return continuation(d, request)
        details = _CallDetails(
            d.method,
            d.timeout,
            _with_context(d.metadata, carrier),
            d.credentials,
            getattr(d, "wait_for_ready", None),
            getattr(d, "compression", None),
        )
        outcome = continuation(details, request)
        if call is None:
            return outcome
        target = self._target

        def finish(future: Any) -> None:
            code, description = _outcome(future)
            _end(call, names, code, description, target)

        if outcome.done():  # a blocking call: finished already
            finish(outcome)
        else:  # .future(): when it finishes
            outcome.add_done_callback(finish)
        return outcome


class AioClientInterceptor(_AioBase):
    """RpcTracing's grpc.aio client interceptor (unary-unary calls)."""

    def __init__(self, tracing: RpcTracing, target: str | None = None) -> None:
        self._tracing = tracing
        self._target = target
        self._names: dict[Any, tuple[str, str, str]] = {}

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        d = client_call_details
        names = _names(d.method, self._names)
        call, carrier = _begin(self._tracing, names[2])
        if not carrier:
            return await continuation(d, request)
        details = grpc.aio.ClientCallDetails(
            d.method,
            d.timeout,
            grpc.aio.Metadata(*_with_context(d.metadata, carrier)),
            d.credentials,
            d.wait_for_ready,
        )
        rpc = await continuation(details, request)
        if call is None:
            return rpc
        code, description = 0, None
        try:
            await rpc  # its end is the span's; the caller awaits the same outcome
        except grpc.aio.AioRpcError as exc:
            code, description = exc.code().value[0], exc.details()
        except asyncio.CancelledError:
            code = _CANCELLED
            raise
        except Exception as exc:
            code, description = _UNKNOWN, f"{type(exc).__name__}: {exc}"
        finally:
            _end(call, names, code, description, self._target)
        return rpc

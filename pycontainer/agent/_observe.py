"""Per-call observation of RPC handlers: statistics, a server span, and the
mapping of :class:`RequestError` to a rich gRPC status.

pycontainer adds its services to a server the app already built, so it
cannot install server interceptors there; instead it wraps its own method
handlers. The same wrapping is offered as sync and aio server interceptors
for the app's own services. (opentelemetry-instrumentation-grpc's
interceptors have open bugs with streams and cannot be applied to handlers
alone; this wrapper uses only the OpenTelemetry API.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent import futures
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode

from .._errors import RequestError, code_number, resource_exhausted, status_code
from .._errors import abort as _aio_abort
from .._handler_cache import HandlerCache
from ._hosting import is_own_method
from ._metrics import MethodStats, RpcStats

_OK = grpc.StatusCode.OK
_CANCELLED = code_number(grpc.StatusCode.CANCELLED)
# Marks behaviours this module made, so that they are never wrapped twice.
_OBSERVED = "_pycontainer_observed"


class _Undecodable:
    """A request message that did not decode: the behaviour answers it with
    INVALID_ARGUMENT. (Left to grpcio, a deserializer's exception is UNKNOWN on
    a grpc.aio server and INTERNAL on a sync one, and the sync server's path
    for it keeps memory per call: issue 8's fuzzing.)"""

    def __init__(self, deserializer: Callable[[bytes], Any], error: Exception) -> None:
        owner = getattr(deserializer, "__self__", None)
        descriptor = getattr(owner, "DESCRIPTOR", None)
        self.type_name: str = getattr(descriptor, "full_name", "the request type")
        self.error = error

    def request_error(self) -> RequestError:
        return RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request is not a valid serialized {self.type_name} "
            f"({type(self.error).__name__}): send one encoded by that message's schema",
        )


def _decoded(request: Any) -> Any:
    """``request``, or the INVALID_ARGUMENT of one that did not decode."""
    if isinstance(request, _Undecodable):
        raise request.request_error()
    return request


if TYPE_CHECKING:
    # grpc-stubs makes the interceptor bases generic; grpcio's are not, at run time.
    _SyncInterceptorBase = grpc.ServerInterceptor[Any, Any]
    _AioInterceptorBase = grpc.aio.ServerInterceptor[Any, Any]
else:
    _SyncInterceptorBase = grpc.ServerInterceptor
    _AioInterceptorBase = grpc.aio.ServerInterceptor


# How long a stream waits for a slot at the limit before it is refused.
_SLOT_WAIT = 0.25


class StreamSlots:
    """Admission of long-lived streams on a sync server, whose handlers run in
    pycontainer's own thread pool (grpcio's experimental_thread_pool) so that
    watchers never take threads from the app's pool."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pool = futures.ThreadPoolExecutor(
            # A few spare threads so that refusals are answered at once.
            max_workers=limit + 4,
            thread_name_prefix="pycontainer-stream",
        )
        self._freed = threading.Condition()
        self._active = 0

    def acquire(self) -> None:
        """Take a slot, waiting at most _SLOT_WAIT for one at the limit: a
        client that cancels a stream and opens the next at once may be heard
        before grpc tells of the first's end (another thread), and is not
        refused for that."""
        with self._freed:
            if not self._freed.wait_for(lambda: self._active < self.limit, _SLOT_WAIT):
                raise resource_exhausted(
                    f"too many open pycontainer streams ({self.limit}); close a log or "
                    "metrics watcher, or raise stream_limit in ContainerSettings"
                )
            self._active += 1

    def release(self) -> None:
        with self._freed:
            self._active -= 1
            self._freed.notify()

    def admit(self, context: grpc.ServicerContext) -> Callable[[], None]:
        """Take a slot for the call of ``context``; the function that gives it
        back, once, whoever calls it first: grpc when the call ends (a
        cancelled stream's handler notices only at its next poll, and a client
        that closed its streams is not refused meanwhile), or the handler."""
        self.acquire()
        lock = threading.Lock()
        held = True

        def release() -> None:
            nonlocal held
            with lock:
                if not held:
                    return
                held = False
            self.release()

        if not context.add_callback(release):
            release()  # the call has ended already
        return release

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class _Metadata(Getter[Any]):
    """Carrier getter over gRPC invocation metadata."""

    @staticmethod
    def get(carrier: Any, key: str) -> list[str] | None:
        values = [v for k, v in carrier if k == key]
        return [v if isinstance(v, str) else v.decode() for v in values] or None

    @staticmethod
    def keys(carrier: Any) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _Metadata()


class Observer:
    """Wraps method handlers; shared by every server a container is added to."""

    def __init__(self, stats: RpcStats, tracer: trace.Tracer) -> None:
        self.stats = stats
        self.tracer = tracer

    def _span(self, method: str, context: Any) -> trace.Span:
        carrier = context.invocation_metadata() or ()
        parent = propagate.extract(carrier, getter=_GETTER)
        service, _, name = method.lstrip("/").partition("/")
        return self.tracer.start_span(
            method.lstrip("/"),
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        )

    def wrap(
        self,
        method: str,
        handler: grpc.RpcMethodHandler[Any, Any],
        *,
        aio: bool,
        traced: bool,
        slots: StreamSlots | None = None,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """A handler that observes ``handler``'s calls."""
        behavior_of = (
            handler.unary_unary
            or handler.unary_stream
            or handler.stream_unary
            or handler.stream_stream
        )
        if getattr(behavior_of, "experimental_non_blocking", False) or getattr(
            behavior_of, _OBSERVED, False
        ):
            # Already observed (pycontainer's own handlers seen again by the
            # interceptor), or a callback-style handler whose signature differs.
            return handler
        stats = self.stats.method(method)

        def deserialize(data: bytes) -> Any:
            stats.received(len(data))
            if handler.request_deserializer is None:
                return data
            try:
                return handler.request_deserializer(data)
            except Exception as exc:  # DecodeError, or a custom deserializer's
                return _Undecodable(handler.request_deserializer, exc)

        def serialize(message: Any) -> bytes:
            data: bytes = (
                handler.response_serializer(message) if handler.response_serializer else message
            )
            stats.sent(len(data))
            return data

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary
            if not traced and slots is None:  # the app's RPCs: counted, nothing else
                behavior = (
                    _counted_aio_unary(stats, inner_uu)
                    if aio
                    else _counted_sync_unary(stats, inner_uu)
                )
            else:
                behavior = (
                    self._aio_unary(method, stats, inner_uu, traced)
                    if aio
                    else self._sync_unary(method, stats, inner_uu, traced, slots)
                )
            setattr(behavior, _OBSERVED, True)
            return grpc.unary_unary_rpc_method_handler(behavior, deserialize, serialize)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream
            stream_behavior = (
                self._aio_stream(method, stats, inner_us, traced)
                if aio
                else self._sync_stream(method, stats, inner_us, traced, slots)
            )
            setattr(stream_behavior, _OBSERVED, True)
            return grpc.unary_stream_rpc_method_handler(stream_behavior, deserialize, serialize)
        if handler.stream_stream is not None:
            # Bidirectional streams: only undecodable requests are seen to.
            inner_ss = handler.stream_stream
            bidi = _aio_bidi(inner_ss) if aio else _sync_bidi(inner_ss)
            setattr(bidi, _OBSERVED, True)
            return grpc.stream_stream_rpc_method_handler(bidi, deserialize, serialize)
        # Client streams: left alone.
        return handler

    def _finish(
        self,
        stats: MethodStats,
        span: trace.Span | None,
        code: int,
        started: float,
        error: BaseException | None = None,
    ) -> None:
        stats.end(code, time.perf_counter() - started)
        if span is not None:
            span.set_attribute("rpc.grpc.status_code", code)
            if code != 0:
                message = str(error) if error else status_code(code).name
                span.set_status(Status(StatusCode.ERROR, message))
                if error is not None and not isinstance(error, RequestError):
                    span.record_exception(error)
            span.end()

    def _sync_unary(
        self,
        method: str,
        stats: MethodStats,
        inner: Callable[..., Any],
        traced: bool,
        slots: StreamSlots | None = None,
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        def behavior(request: Any, context: grpc.ServicerContext) -> Any:
            stats.begin()
            started = time.perf_counter()
            span = self._span(method, context) if traced else None
            token = otel_context.attach(trace.set_span_in_context(span)) if span else None
            code = 0
            error: BaseException | None = None
            release: Callable[[], None] | None = None
            try:
                if slots is not None:
                    release = slots.admit(context)
                return inner(_decoded(request), context)
            except RequestError as exc:
                code, error = code_number(exc.code), exc
                context.abort_with_status(exc.to_status())
            except Exception as exc:
                code, error = code_number(_code_of(context, grpc.StatusCode.UNKNOWN)), exc
                raise
            finally:
                if release is not None:
                    release()
                if token is not None:
                    otel_context.detach(token)
                self._finish(stats, span, code, started, error)

        if slots is not None:  # a long call (a CPU profile): run it in our pool
            behavior.experimental_thread_pool = slots.pool  # type: ignore[attr-defined]
        return behavior

    def _sync_stream(
        self,
        method: str,
        stats: MethodStats,
        inner: Callable[..., Any],
        traced: bool,
        slots: StreamSlots | None,
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        def behavior(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            stats.begin()
            started = time.perf_counter()
            span = self._span(method, context) if traced else None
            code = 0
            error: BaseException | None = None
            release: Callable[[], None] | None = None
            try:
                if slots is not None:
                    release = slots.admit(context)
                with trace.use_span(span, end_on_exit=False) if span else _nothing():
                    yield from inner(_decoded(request), context)
                if not context.is_active():
                    code = _CANCELLED
            except RequestError as exc:
                code, error = code_number(exc.code), exc
                context.abort_with_status(exc.to_status())
            except GeneratorExit:
                code = _CANCELLED
                raise
            except Exception as exc:
                code, error = code_number(_code_of(context, grpc.StatusCode.UNKNOWN)), exc
                raise
            finally:
                if release is not None:
                    release()
                self._finish(stats, span, code, started, error)

        if slots is not None:
            # grpcio's sync server runs this behaviour in our pool, not the app's.
            behavior.experimental_thread_pool = slots.pool  # type: ignore[attr-defined]
        return behavior

    def _aio_unary(
        self, method: str, stats: MethodStats, inner: Callable[..., Awaitable[Any]], traced: bool
    ) -> Callable[[Any, Any], Awaitable[Any]]:
        async def behavior(request: Any, context: Any) -> Any:
            stats.begin()
            started = time.perf_counter()
            span = self._span(method, context) if traced else None
            code = 0
            error: BaseException | None = None
            try:
                with trace.use_span(span, end_on_exit=False) if span else _nothing():
                    return await inner(_decoded(request), context)
            except RequestError as exc:
                code, error = code_number(exc.code), exc
                await _aio_abort(context, exc)
            except Exception as exc:
                code, error = code_number(_code_of(context, grpc.StatusCode.UNKNOWN)), exc
                raise
            finally:
                self._finish(stats, span, code, started, error)

        return behavior

    def _aio_stream(
        self,
        method: str,
        stats: MethodStats,
        # An async generator, or a coroutine that writes with context.write()
        # (grpc-stubs types every handler behaviour as a sync one).
        inner: Callable[..., Any],
        traced: bool,
    ) -> Callable[[Any, Any], AsyncIterator[Any]]:
        async def behavior(request: Any, context: Any) -> AsyncIterator[Any]:
            stats.begin()
            started = time.perf_counter()
            span = self._span(method, context) if traced else None
            code = 0
            error: BaseException | None = None
            try:
                with trace.use_span(span, end_on_exit=False) if span else _nothing():
                    result = inner(_decoded(request), context)
                    if hasattr(result, "__aiter__"):
                        async for item in result:
                            yield item
                    else:  # a handler that writes with context.write()
                        await result
            except RequestError as exc:
                code, error = code_number(exc.code), exc
                await _aio_abort(context, exc)
            except BaseException as exc:
                import asyncio

                if isinstance(exc, asyncio.CancelledError | GeneratorExit):
                    code = _CANCELLED
                else:
                    code, error = code_number(_code_of(context, grpc.StatusCode.UNKNOWN)), exc
                raise
            finally:
                self._finish(stats, span, code, started, error)

        return behavior


def _counted_sync_unary(
    stats: MethodStats, inner: Callable[..., Any]
) -> Callable[[Any, grpc.ServicerContext], Any]:
    """Observer._sync_unary without a span or a stream slot: what each of the
    app's calls pays for being counted."""
    clock = time.perf_counter

    def behavior(request: Any, context: grpc.ServicerContext) -> Any:
        stats.begin()
        started = clock()
        code = 0
        try:
            if request.__class__ is _Undecodable:  # _decoded(), inlined
                raise request.request_error()
            return inner(request, context)
        except RequestError as exc:
            code = code_number(exc.code)
            context.abort_with_status(exc.to_status())
        except Exception:
            code = code_number(_code_of(context, grpc.StatusCode.UNKNOWN))
            raise
        finally:
            stats.end(code, clock() - started)

    return behavior


def _counted_aio_unary(
    stats: MethodStats, inner: Callable[..., Awaitable[Any]]
) -> Callable[[Any, Any], Awaitable[Any]]:
    """_counted_sync_unary for grpc.aio."""
    clock = time.perf_counter

    async def behavior(request: Any, context: Any) -> Any:
        stats.begin()
        started = clock()
        code = 0
        try:
            if request.__class__ is _Undecodable:  # _decoded(), inlined
                raise request.request_error()
            return await inner(request, context)
        except RequestError as exc:
            code = code_number(exc.code)
            await _aio_abort(context, exc)
        except Exception:
            code = code_number(_code_of(context, grpc.StatusCode.UNKNOWN))
            raise
        finally:
            stats.end(code, clock() - started)

    return behavior


def _sync_bidi(inner: Callable[..., Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
    def behavior(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from inner((_decoded(r) for r in requests), context)
        except RequestError as exc:
            context.abort_with_status(exc.to_status())

    return behavior


def _aio_bidi(inner: Callable[..., Any]) -> Callable[[Any, Any], AsyncIterator[Any]]:
    async def decoded(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            yield _decoded(request)

    async def behavior(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        try:
            result = inner(decoded(requests), context)
            if hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            else:  # a handler that writes with context.write()
                await result
        except RequestError as exc:
            await _aio_abort(context, exc)

    return behavior


def _code_of(context: Any, default: grpc.StatusCode) -> grpc.StatusCode:
    """The code an abort set on the context, else ``default``."""
    try:
        code = context.code()
    except Exception:  # older grpcio without ServicerContext.code()
        return default
    if isinstance(code, grpc.StatusCode) and code != _OK:
        return code
    return default


class _nothing:  # lower-case: a null context manager that types cleanly
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def guarded(
    handler: grpc.RpcMethodHandler[Any, Any], *, aio: bool
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` answering a request that does not decode with INVALID_ARGUMENT
    naming its type, and otherwise as it is: nothing counted, nothing traced
    (pycontainer's health and reflection services, which are no app RPCs)."""
    behavior_of = handler.unary_unary or handler.unary_stream or handler.stream_stream
    decode = handler.request_deserializer
    if (
        decode is None
        or behavior_of is None
        or getattr(behavior_of, "experimental_non_blocking", False)
        or getattr(behavior_of, _OBSERVED, False)
    ):
        return handler

    def deserialize(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception as exc:  # DecodeError, or a custom deserializer's
            return _Undecodable(decode, exc)

    marked: Callable[..., Any]
    if handler.unary_unary is not None:
        inner = handler.unary_unary
        if aio:

            async def aio_unary(request: Any, context: Any) -> Any:
                if isinstance(request, _Undecodable):
                    await _aio_abort(context, request.request_error())
                return await inner(request, context)

            marked = aio_unary
        else:

            def sync_unary(request: Any, context: grpc.ServicerContext) -> Any:
                if isinstance(request, _Undecodable):
                    context.abort_with_status(request.request_error().to_status())
                return inner(request, context)

            marked = sync_unary
        setattr(marked, _OBSERVED, True)
        return grpc.unary_unary_rpc_method_handler(marked, deserialize, handler.response_serializer)
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream
        if aio:

            async def aio_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                if isinstance(request, _Undecodable):
                    await _aio_abort(context, request.request_error())
                result: Any = inner_us(request, context)
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                else:  # a handler that writes with context.write()
                    await result

            marked = aio_stream
        else:

            def sync_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                if isinstance(request, _Undecodable):
                    context.abort_with_status(request.request_error().to_status())
                yield from inner_us(request, context)

            marked = sync_stream
        setattr(marked, _OBSERVED, True)
        return grpc.unary_stream_rpc_method_handler(
            marked, deserialize, handler.response_serializer
        )
    assert handler.stream_stream is not None
    marked = _aio_bidi(handler.stream_stream) if aio else _sync_bidi(handler.stream_stream)
    setattr(marked, _OBSERVED, True)
    return grpc.stream_stream_rpc_method_handler(marked, deserialize, handler.response_serializer)


class ServerInterceptor(_SyncInterceptorBase):
    """Counts the app's own RPCs (sync server) into the container's metrics.

    pycontainer's own services (``_hosting.OWN_SERVICES``) are not the app's
    RPCs: they are not counted here, only :func:`guarded` (a container's
    handlers are already, and pass unchanged). Each method's wrapped handler
    is made once, at its first call.
    """

    def __init__(self, observer: Observer) -> None:
        self._handlers = HandlerCache(
            lambda method, handler: (
                guarded(handler, aio=False)
                if is_own_method(method)
                else observer.wrap(method, handler, aio=False, traced=False)
            )
        )

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        kept = self._handlers.kept.get(handler_call_details.method)
        if kept is not None and kept[0] is handler:  # get(), inlined: one call less
            known: grpc.RpcMethodHandler[Any, Any] = kept[1]
            return known
        observed: grpc.RpcMethodHandler[Any, Any] = self._handlers.get(
            handler_call_details.method, handler
        )
        return observed


class AioServerInterceptor(_AioInterceptorBase):
    """Counts the app's own RPCs (grpc.aio server) into the container's metrics
    (as :class:`ServerInterceptor` does)."""

    def __init__(self, observer: Observer) -> None:
        self._handlers = HandlerCache(
            lambda method, handler: (
                guarded(handler, aio=True)
                if is_own_method(method)
                else observer.wrap(method, handler, aio=True, traced=False)
            )
        )

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        kept = self._handlers.kept.get(handler_call_details.method)
        if kept is not None and kept[0] is handler:  # get(), inlined: one call less
            known: grpc.RpcMethodHandler[Any, Any] = kept[1]
            return known
        observed: grpc.RpcMethodHandler[Any, Any] = self._handlers.get(
            handler_call_details.method, handler
        )
        return observed

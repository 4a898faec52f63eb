"""The role check as gRPC server interceptors, for sync and asyncio servers.

gRPC's server interceptors see the method name but not the call's TLS peer,
so the interceptor wraps the method's handler: the wrapper reads the peer's
identity from the call context, asks the :class:`Authorizer`, and ends the
call with its status before the servicer runs, or runs the servicer as is.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from pycontainer._handler_cache import HandlerCache
from pycontainer.security._identity import Identity
from pycontainer.security._peer import HasAuthContext, peer_identity
from pycontainer.security._roles import Authorizer, Denial

if TYPE_CHECKING:
    # grpc-stubs makes the interceptor bases generic; grpcio's are not, at run time.
    _SyncInterceptorBase = grpc.ServerInterceptor[Any, Any]
    _AioInterceptorBase = grpc.aio.ServerInterceptor[Any, Any]
    _Handler = grpc.RpcMethodHandler[Any, Any]
else:
    _SyncInterceptorBase = grpc.ServerInterceptor
    _AioInterceptorBase = grpc.aio.ServerInterceptor

Identify = Callable[[HasAuthContext], Identity | None]
# Told of each refused call (method, the caller's identity or None, why):
# an audit trail records refusals too.
OnDenied = Callable[[str, Identity | None, Denial], None]

_Behaviour = Callable[[Any, Any], Any]
# (request_streaming, response_streaming) -> the handler's behaviour field, its factory.
_KINDS: dict[tuple[bool, bool], tuple[str, Callable[..., _Handler]]] = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


# The marks of a sync callback-style behaviour that grpc's server looks for.
_NON_BLOCKING = ("experimental_non_blocking", "experimental_thread_pool")


def _behaviour(handler: _Handler) -> _Behaviour:
    name, _ = _KINDS[(handler.request_streaming, handler.response_streaming)]
    behaviour: _Behaviour = getattr(handler, name)
    return behaviour


def _rebuild(handler: _Handler, behaviour: _Behaviour) -> _Handler:
    """The same method handler with another behaviour (same (de)serializers)."""
    _, factory = _KINDS[(handler.request_streaming, handler.response_streaming)]
    return factory(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class AuthorizationInterceptor(_SyncInterceptorBase):
    """Refuses calls outside the caller's roles on a sync ``grpc.server``."""

    def __init__(
        self,
        authorizer: Authorizer,
        identify: Identify = peer_identity,
        on_denied: OnDenied | None = None,
    ) -> None:
        self._authorizer = authorizer
        self._identify = identify
        self._on_denied = on_denied
        # The checked handler of each method is made once, not per call.
        self._handlers = HandlerCache(self._checked)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], _Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        kept = self._handlers.kept.get(handler_call_details.method)
        if kept is not None and kept[0] is handler:  # get(), inlined: one call less
            known: _Handler = kept[1]
            return known
        checked: _Handler = self._handlers.get(handler_call_details.method, handler)
        return checked

    def _checked(self, method: str, handler: _Handler) -> _Handler:
        if not self._authorizer.guards(method):
            return handler  # every call goes through: nothing to wrap
        behaviour = _behaviour(handler)

        def checked(request: Any, context: grpc.ServicerContext, *callback: Any) -> Any:
            identity = self._identify(context)
            denial = self._authorizer.check(identity, method)
            if denial is not None:
                if self._on_denied is not None:
                    self._on_denied(method, identity, denial)
                context.abort(denial.code, denial.message)
            # A streaming response is the iterator the servicer returns, unchanged.
            return behaviour(request, context, *callback)

        # grpc gives a behaviour marked experimental_non_blocking (our sync
        # Health.Watch) a send callback, as a third argument: so the wrapper
        # is marked alike, and passes it on.
        for attribute in _NON_BLOCKING:
            if hasattr(behaviour, attribute):
                setattr(checked, attribute, getattr(behaviour, attribute))
        return _rebuild(handler, checked)


class AioAuthorizationInterceptor(_AioInterceptorBase):
    """Refuses calls outside the caller's roles on a ``grpc.aio`` server."""

    def __init__(
        self,
        authorizer: Authorizer,
        identify: Identify = peer_identity,
        on_denied: OnDenied | None = None,
    ) -> None:
        self._authorizer = authorizer
        self._identify = identify
        self._on_denied = on_denied
        # The checked handler of each method is made once, not per call.
        self._handlers = HandlerCache(self._checked)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            # gRPC passes None for unknown methods (UNIMPLEMENTED), whatever the stubs say.
            return None
        kept = self._handlers.kept.get(handler_call_details.method)
        if kept is not None and kept[0] is handler:  # get(), inlined: one call less
            known: _Handler = kept[1]
            return known
        checked: _Handler = self._handlers.get(handler_call_details.method, handler)
        return checked

    def _checked(self, method: str, handler: _Handler) -> _Handler:
        if not self._authorizer.guards(method):
            return handler  # every call goes through: nothing to wrap
        behaviour = _behaviour(handler)

        async def authorize(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            identity = self._identify(context)
            denial = self._authorizer.check(identity, method)
            if denial is not None:
                if self._on_denied is not None:
                    self._on_denied(method, identity, denial)
                await context.abort(denial.code, denial.message)

        if not handler.response_streaming:

            async def checked_unary(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> Any:
                await authorize(context)
                result = behaviour(request, context)
                return await result if inspect.isawaitable(result) else result

            return _rebuild(handler, checked_unary)

        if inspect.isasyncgenfunction(behaviour):
            # gRPC tells the kinds of streaming servicer apart by their function type,
            # so the wrapper of an async generator is one too.
            async def checked_stream(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                await authorize(context)
                async for response in behaviour(request, context):
                    yield response

            return _rebuild(handler, checked_stream)

        async def checked_writer(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            # A coroutine servicer that answers with context.write().
            await authorize(context)
            result = behaviour(request, context)
            if inspect.isawaitable(result):
                await result
                return
            for response in _sync_iterator(result):
                await context.write(response)

        return _rebuild(handler, checked_writer)


def _sync_iterator(result: Any) -> Iterator[Any]:
    return iter(result) if result is not None else iter(())

"""Putting a container's services on a server: registering handler groups,
and learning which services the server carries, for reflection to list."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import grpc

__all__ = [
    "OWN_SERVICES",
    "ServiceNames",
    "current_loop",
    "is_own_method",
    "register",
    "register_services",
]

# The services pycontainer puts on a server, as method-name prefixes: their
# calls are authorized by role (_tls), and they are not the app's RPCs (the
# app interceptor leaves them to pycontainer's own wrapping).
OWN_SERVICES = (
    "/pycontainer.v1.Management/",
    "/grpc.health.v1.Health/",
    "/grpc.reflection.",
    "/grpc.channelz.",
)


def is_own_method(method: str) -> bool:
    """Whether ``method`` (a full name, "/service/Method") is of pycontainer's services."""
    return method.startswith(OWN_SERVICES)


def register(
    server: Any, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
) -> None:
    """Add one service's handlers to a sync or aio server (both registration
    paths, so that servers with registered-method lookup find them too)."""
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    if hasattr(server, "add_registered_method_handlers"):
        server.add_registered_method_handlers(service, handlers)


if TYPE_CHECKING:
    _GenericHandlerBase = grpc.GenericRpcHandler[Any, Any]
else:  # grpc-stubs makes it generic; grpcio's is not, at run time
    _GenericHandlerBase = grpc.GenericRpcHandler


class _Methods(_GenericHandlerBase):
    """Several services' handlers as one generic handler, by full method name.

    grpcio asks each generic handler of a server in turn for every call it has
    no registered method for, so the app's own RPCs (added after pycontainer's)
    would pay one lookup per pycontainer service; this way they pay one."""

    def __init__(self, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]) -> None:
        self._handlers = handlers

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        return self._handlers.get(handler_call_details.method)


def register_services(
    server: Any, groups: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]]
) -> None:
    """register() for several services at once: one generic handler for them
    all, plus registered methods per service on a sync server (found without
    asking the generic handlers). Not on a grpc.aio server: its main loop
    waits on one pending request per registered method, and goes through all
    of them for every call (asyncio.wait), so each method registered there
    costs every RPC of the server, the app's too."""
    methods = {
        f"/{service}/{name}": handler
        for service, handlers in groups.items()
        for name, handler in handlers.items()
    }
    server.add_generic_rpc_handlers((_Methods(methods),))
    if hasattr(server, "add_registered_method_handlers") and not isinstance(
        server, grpc.aio.Server
    ):
        for service, handlers in groups.items():
            server.add_registered_method_handlers(service, handlers)


def current_loop() -> asyncio.AbstractEventLoop:
    """The running loop, else the one this thread would get."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.get_event_loop_policy().get_event_loop()


class ServiceNames:
    """The services one container's reflection lists: those named to it, and
    those of the servers it is on (registered before, as far as grpcio lets
    them be read, and after, by observing the servers' registration calls)."""

    def __init__(self) -> None:
        self._names: set[str] = set()

    def add(self, names: Iterable[str]) -> None:
        self._names.update(names)

    def sorted(self) -> list[str]:
        return sorted(self._names)

    def track(self, server: Any) -> None:
        """Learn the services of ``server`` now and from now on."""
        state = getattr(server, "_state", None)  # sync server internals, best effort
        for handler in getattr(state, "generic_handlers", ()):
            if isinstance(handler, grpc.ServiceRpcHandler):
                self._names.add(handler.service_name())
        for method in getattr(state, "registered_method_handlers", {}):
            self._names.add(method.lstrip("/").split("/")[0])
        tracked: weakref.WeakSet[ServiceNames] | None = getattr(
            server, "_pycontainer_tracked", None
        )
        if tracked is not None:  # its calls are observed already: join in
            tracked.add(self)
            return
        tracked = weakref.WeakSet([self])
        server._pycontainer_tracked = tracked
        add_generic = server.add_generic_rpc_handlers
        add_registered = getattr(server, "add_registered_method_handlers", None)

        def add_generic_rpc_handlers(generic_handlers: Any) -> None:
            for handler in generic_handlers:
                if isinstance(handler, grpc.ServiceRpcHandler):
                    for names in tracked:
                        names.add((handler.service_name(),))
            add_generic(generic_handlers)

        server.add_generic_rpc_handlers = add_generic_rpc_handlers
        if add_registered is not None:

            def add_registered_method_handlers(service_name: str, method_handlers: Any) -> None:
                for names in tracked:
                    names.add((service_name,))
                add_registered(service_name, method_handlers)

            server.add_registered_method_handlers = add_registered_method_handlers

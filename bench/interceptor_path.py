"""The Python work a server does per unary call around the handler, without
the network: finding the handler through grpcio's interceptor pipeline, then
decoding, the behaviour, encoding. Thread CPU time, best of several runs, so
that it holds on a loaded machine where the end-to-end rows are noisy.

    .venv/bin/python -m bench.interceptor_path

Each figure is shown beside bare grpcio and beside bare grpcio with as many
empty interceptors (``return continuation(details)``) as pycontainer installs:
the difference between those two is what grpcio charges for having any
interceptor at all; the rest is pycontainer's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
from grpc import _interceptor
from grpc._cython import cygrpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import pycontainer

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
ECHO = "/demo.Echo/Echo"
CALLS = 20_000
RUNS = 7


class _Details:
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


class _Context:
    """What the behaviours ask of a servicer context on a call that succeeds."""

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def code(self) -> None:
        return None


class _Handlers:
    """A server's generic handlers, as grpcio's lookup walks them."""

    def __init__(self) -> None:
        self.generic: list[Any] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        pass

    def find(self, details: Any) -> Any:
        for handler in self.generic:
            found = handler.service(details)
            if found is not None:
                return found
        return None


class _AioHandlers(_Handlers, grpc.aio.Server):  # type: ignore[misc]
    """The same, taken for a grpc.aio server (pycontainer adds aio services)."""


_AioHandlers.__abstractmethods__ = frozenset()


class _Noop(grpc.ServerInterceptor):  # type: ignore[misc]
    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        return continuation(details)


class _AioNoop(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        return await continuation(details)


def _sync_cost(interceptors: list[Any], server: _Handlers, method: str, data: bytes) -> float:
    pipeline = _interceptor.service_pipeline(interceptors)
    details, context = _Details(method), _Context()
    best = float("inf")
    for _ in range(RUNS):
        t0 = time.thread_time()
        for _ in range(CALLS):
            h = pipeline.execute(server.find, details) if pipeline else server.find(details)
            request = h.request_deserializer(data) if h.request_deserializer else data
            response = h.unary_unary(request, context)
            if h.response_serializer:
                h.response_serializer(response)
        best = min(best, (time.thread_time() - t0) / CALLS)
    return best * 1e6


async def _aio_cost(interceptors: list[Any], server: _Handlers, method: str, data: bytes) -> float:
    details, context = _Details(method), _Context()
    best = float("inf")
    for _ in range(RUNS):
        t0 = time.thread_time()
        for _ in range(CALLS):
            if interceptors:
                h = await cygrpc._run_interceptor(iter(interceptors), server.find, details)
            else:
                h = server.find(details)
            request = h.request_deserializer(data) if h.request_deserializer else data
            response = await h.unary_unary(request, context)
            if h.response_serializer:
                h.response_serializer(response)
        best = min(best, (time.thread_time() - t0) / CALLS)
    return best * 1e6


def _echo() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        "demo.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda r, c: r)}
    )


def measure() -> list[tuple[str, float, float, float]]:
    """(what, bare µs, bare + empty interceptors µs, pycontainer µs) per path."""
    check = health_pb2.HealthCheckRequest().SerializeToString()
    container = pycontainer.Container(pycontainer.ContainerSettings(name="bench-path"))
    try:
        bare = _Handlers()
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), bare)
        ours = _Handlers()
        container.add_to_server(ours)
        app, embedded = _Handlers(), _Handlers()
        app.add_generic_rpc_handlers((_echo(),))
        container.add_to_server(embedded)
        embedded.add_generic_rpc_handlers((_echo(),))
        both = [container.authorization_interceptor(), container.server_interceptor()]
        rows = [
            (
                "sync health Check (authorization + app interceptors)",
                _sync_cost([], bare, HEALTH_CHECK, check),
                _sync_cost([_Noop(), _Noop()], bare, HEALTH_CHECK, check),
                _sync_cost(both, ours, HEALTH_CHECK, check),
            ),
            (
                "sync app unary RPC (app interceptor)",
                _sync_cost([], app, ECHO, b"x"),
                _sync_cost([_Noop()], app, ECHO, b"x"),
                _sync_cost([container.server_interceptor()], app, ECHO, b"x"),
            ),
            (
                "sync app unary RPC, embedded (authorization + app interceptors)",
                _sync_cost([], app, ECHO, b"x"),
                _sync_cost([_Noop(), _Noop()], app, ECHO, b"x"),
                _sync_cost(both, embedded, ECHO, b"x"),
            ),
        ]
        rows.append(asyncio.run(_aio_rows(check)))
        return rows
    finally:
        container.close()


async def _aio_rows(check: bytes) -> tuple[str, float, float, float]:
    container = pycontainer.Container(pycontainer.ContainerSettings(name="bench-path-aio"))
    try:
        bare = _Handlers()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), bare)
        ours = _AioHandlers()
        container.add_to_server(ours)
        both = [container.aio_authorization_interceptor(), container.aio_server_interceptor()]
        return (
            "aio health Check (authorization + app interceptors)",
            await _aio_cost([], bare, HEALTH_CHECK, check),
            await _aio_cost([_AioNoop(), _AioNoop()], bare, HEALTH_CHECK, check),
            await _aio_cost(both, ours, HEALTH_CHECK, check),
        )
    finally:
        container.close()


def main() -> None:
    print("| path | bare µs | bare + empty interceptors µs | pycontainer µs | grpcio | ours |")
    print("|---|---|---|---|---|---|")
    for what, bare, floor, ours in measure():
        print(
            f"| {what} | {bare:.2f} | {floor:.2f} | {ours:.2f} | "
            f"+{floor - bare:.2f} | +{ours - floor:.2f} |"
        )


if __name__ == "__main__":
    main()

"""The container's app interceptor on real sync and aio servers: the app's own
RPCs counted per method and status (each method's wrapped handler made once),
pycontainer's own services not counted as app RPCs, and grpc's own endings of
a call (a code the handler set, a response that does not serialize) kept."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support import make_container, wait_until

import pycontainer
from pycontainer.security import AuthorizationInterceptor, Authorizer
from pycontainer.v1 import management_pb2, management_pb2_grpc, metrics_pb2

SERVICE = "demo.Shop"
# The app's methods: what each does, named by what the client should see.
GET, MISSING, CRASH, QUIET, TYPED, BAD_OUT, SLOW = (
    f"/{SERVICE}/{name}" for name in ("Get", "Missing", "Crash", "Quiet", "Typed", "BadOut", "Slow")
)


class _Unserializable:
    pass


def _refuse(message: Any) -> bytes:
    raise TypeError("this response cannot be serialized")


def _shop(aio: bool, slow_gate: threading.Event) -> grpc.GenericRpcHandler:
    """demo.Shop, with sync or async behaviours doing the same."""

    def get(request: bytes, context: Any) -> bytes:
        return b"item:" + request

    def missing(context: Any) -> None:
        context.abort(grpc.StatusCode.NOT_FOUND, "no such item")

    def crash() -> None:
        raise RuntimeError("the app broke")

    def quiet(context: Any) -> None:
        # Ends the call without raising: grpc sends the code set here.
        context.set_code(grpc.StatusCode.NOT_FOUND)
        context.set_details("quietly not found")

    def typed(request: health_pb2.HealthCheckRequest) -> health_pb2.HealthCheckResponse:
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    behaviours: dict[str, Callable[[Any, Any], Any]]
    if aio:

        async def a_get(request: bytes, context: Any) -> bytes:
            return get(request, context)

        async def a_missing(request: bytes, context: Any) -> None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such item")

        async def a_crash(request: bytes, context: Any) -> None:
            crash()

        async def a_quiet(request: bytes, context: Any) -> None:
            quiet(context)

        async def a_typed(request: Any, context: Any) -> Any:
            return typed(request)

        async def a_bad_out(request: bytes, context: Any) -> Any:
            return _Unserializable()

        async def a_slow(request: bytes, context: Any) -> bytes:
            await asyncio.to_thread(slow_gate.wait, 10)
            return request

        behaviours = {
            "Get": a_get,
            "Missing": a_missing,
            "Crash": a_crash,
            "Quiet": a_quiet,
            "Typed": a_typed,
            "BadOut": a_bad_out,
            "Slow": a_slow,
        }
    else:

        def s_slow(request: bytes, context: Any) -> bytes:
            slow_gate.wait(10)
            return request

        behaviours = {
            "Get": get,
            "Missing": lambda r, c: missing(c),
            "Crash": lambda r, c: crash(),
            "Quiet": lambda r, c: quiet(c),
            "Typed": lambda r, c: typed(r),
            "BadOut": lambda r, c: _Unserializable(),
            "Slow": s_slow,
        }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(behaviour)
        for name, behaviour in behaviours.items()
    }
    handlers["Typed"] = grpc.unary_unary_rpc_method_handler(
        behaviours["Typed"],
        request_deserializer=health_pb2.HealthCheckRequest.FromString,
        response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
    )
    handlers["BadOut"] = grpc.unary_unary_rpc_method_handler(
        behaviours["BadOut"], response_serializer=_refuse
    )
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


@dataclass
class App:
    kind: str
    container: pycontainer.Container
    channel: grpc.Channel
    slow_gate: threading.Event

    def figures(self) -> dict[str, metrics_pb2.RpcMethodMetrics]:
        return {m.method: m for m in self.container.rpc_stats.figures()}

    def call(self, method: str, request: bytes = b"x") -> Any:
        return self.channel.unary_unary(method)(request, timeout=10)


def _sync_app(container: pycontainer.Container, gate: threading.Event) -> Iterator[App]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[container.authorization_interceptor(), container.server_interceptor()],
    )
    container.add_to_server(server)
    server.add_generic_rpc_handlers((_shop(False, gate),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield App("sync", container, channel, gate)
    finally:
        gate.set()
        channel.close()
        server.stop(None)


def _aio_app(container: pycontainer.Container, gate: threading.Event) -> Iterator[App]:
    loop = asyncio.new_event_loop()
    box: dict[str, Any] = {}

    async def start() -> None:
        server = grpc.aio.server(
            interceptors=[
                container.aio_authorization_interceptor(),
                container.aio_server_interceptor(),
            ]
        )
        container.add_to_server(server)
        server.add_generic_rpc_handlers((_shop(True, gate),))
        box["port"] = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        box["server"] = server

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    channel = grpc.insecure_channel(f"127.0.0.1:{box['port']}")
    try:
        yield App("aio", container, channel, gate)
    finally:
        gate.set()
        channel.close()
        asyncio.run_coroutine_threadsafe(box["server"].stop(None), loop).result(10)

        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await loop.shutdown_asyncgens()

        asyncio.run_coroutine_threadsafe(drain(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(params=["sync", "aio"])
def app(request: pytest.FixtureRequest) -> Iterator[App]:
    container = make_container("shop")
    gate = threading.Event()
    start = _sync_app if request.param == "sync" else _aio_app
    try:
        yield from start(container, gate)
    finally:
        container.close()


def _code(app: App, method: str, request: bytes = b"x") -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        app.call(method, request)
    error = info.value
    assert isinstance(error, grpc.Call)
    return error.code()


def test_each_method_counted_with_its_own_statuses(app: App) -> None:
    """Calls of several methods, interleaved, each land on their method with
    their status: the handler each method's wrapper was made for, every time."""
    for _ in range(3):
        assert app.call(GET, b"abc") == b"item:abc"
        assert _code(app, MISSING) == grpc.StatusCode.NOT_FOUND
    assert _code(app, CRASH) == grpc.StatusCode.UNKNOWN
    assert app.call(GET, b"z") == b"item:z"

    def settled() -> bool:
        figures = app.figures()
        return all(
            m in figures and figures[m].latency_seconds.count == n
            for m, n in ((GET, 4), (MISSING, 3), (CRASH, 1))
        )

    wait_until(settled, what="every call counted")
    figures = app.figures()
    get, missing, crash = figures[GET], figures[MISSING], figures[CRASH]
    assert (get.calls_started, get.calls_ok, get.calls_failed, get.calls_in_flight) == (4, 4, 0, 0)
    assert dict(get.status_codes) == {"OK": 4}
    assert (get.messages_received, get.bytes_received) == (4, 3 * 3 + 1)
    assert (get.messages_sent, get.bytes_sent) == (4, 3 * len(b"item:abc") + len(b"item:z"))
    assert (missing.calls_started, missing.calls_ok, missing.calls_failed) == (3, 0, 3)
    assert dict(missing.status_codes) == {"NOT_FOUND": 3}
    assert missing.messages_sent == 0
    assert dict(crash.status_codes) == {"UNKNOWN": 1}


def test_pycontainer_services_are_not_app_rpcs(app: App) -> None:
    """Health and reflection calls are not counted (nor twice their Management
    neighbours): the app's figures are the app's RPCs and Management's."""
    health = health_pb2_grpc.HealthStub(app.channel)
    for _ in range(5):
        health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    reflection = reflection_pb2_grpc.ServerReflectionStub(app.channel)
    list(
        reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
    )
    management_pb2_grpc.ManagementStub(app.channel).GetInfo(
        management_pb2.GetInfoRequest(), timeout=10
    )
    app.call(GET)
    info = "/pycontainer.v1.Management/GetInfo"
    wait_until(
        lambda: GET in app.figures() and app.figures().get(info, None) is not None,
        what="the app's call and GetInfo counted",
    )
    figures = app.figures()
    assert sorted(figures) == [GET, info]
    assert figures[info].calls_started == 1
    assert figures[GET].calls_started == 1


def test_undecodable_request_of_an_app_method(app: App) -> None:
    """An app method with a protobuf request type: a request that does not
    decode is INVALID_ARGUMENT naming the type, and counted so."""
    assert app.call(TYPED, b"") == health_pb2.HealthCheckResponse(status=1).SerializeToString()
    with pytest.raises(grpc.RpcError) as info:
        app.call(TYPED, b"\xff\xff")
    error = info.value
    assert isinstance(error, grpc.Call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "grpc.health.v1.HealthCheckRequest" in (error.details() or "")
    wait_until(lambda: TYPED in app.figures() and app.figures()[TYPED].latency_seconds.count == 2)
    assert dict(app.figures()[TYPED].status_codes) == {"OK": 1, "INVALID_ARGUMENT": 1}


def test_grpc_endings_kept(app: App) -> None:
    """A code the handler set without raising reaches the client; a response
    that does not serialize ends as grpc ends it without the interceptor
    (INTERNAL on a sync server, UNKNOWN on grpc.aio)."""
    assert _code(app, QUIET) == grpc.StatusCode.NOT_FOUND
    unserializable = grpc.StatusCode.INTERNAL if app.kind == "sync" else grpc.StatusCode.UNKNOWN
    assert _code(app, BAD_OUT) == unserializable
    wait_until(
        lambda: BAD_OUT in app.figures() and app.figures()[BAD_OUT].latency_seconds.count == 1
    )
    # Counted when its behaviour returned; nothing was sent.
    assert app.figures()[BAD_OUT].messages_sent == 0


def test_a_running_call_is_in_flight(app: App) -> None:
    done = futures.ThreadPoolExecutor(max_workers=1).submit(app.call, SLOW, b"s")
    try:
        wait_until(
            lambda: SLOW in app.figures() and app.figures()[SLOW].calls_in_flight == 1,
            what="the slow call in flight",
        )
        assert app.figures()[SLOW].calls_started == 1
        assert app.figures()[SLOW].messages_received == 1
    finally:
        app.slow_gate.set()
    assert done.result(10) == b"s"
    wait_until(lambda: app.figures()[SLOW].calls_in_flight == 0, what="the slow call ended")
    assert app.figures()[SLOW].calls_ok == 1


# -- the authorization interceptor's handlers ---------------------------------------------
class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def _handler() -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.unary_unary_rpc_method_handler(lambda request, context: request)


class _GuardsOne(Authorizer):
    def guards(self, method: str) -> bool:
        return method == GET


def test_authorization_wraps_only_guarded_methods_once_each() -> None:
    interceptor = AuthorizationInterceptor(_GuardsOne())
    free, guarded = _handler(), _handler()
    # A method nobody checks keeps its own handler: no wrapper on its calls.
    assert interceptor.intercept_service(lambda d: free, _Details(MISSING)) is free
    first = interceptor.intercept_service(lambda d: guarded, _Details(GET))
    assert first is not guarded
    assert interceptor.intercept_service(lambda d: guarded, _Details(GET)) is first
    # Another handler for the method (registered anew) gets a wrapper of its own.
    other = _handler()
    second = interceptor.intercept_service(lambda d: other, _Details(GET))
    assert second is not first
    assert second is not other


class _Peek(grpc.ServerInterceptor):  # type: ignore[misc]
    """An app's interceptor listed before pycontainer's: it wraps the handler it
    is given and looks at each request."""

    def __init__(self) -> None:
        self.seen: list[object] = []

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        behaviour = handler.unary_unary

        def peeking(request: Any, context: Any) -> Any:
            self.seen.append(request)
            return behaviour(request, context)

        return grpc.unary_unary_rpc_method_handler(
            peeking, handler.request_deserializer, handler.response_serializer
        )


def test_an_interceptor_before_ours_sees_messages() -> None:
    """pycontainer's handler keeps the method's message types: an interceptor
    listed before it gets the decoded request, as without pycontainer."""
    container = make_container("peeked")
    peek = _Peek()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2),
        interceptors=[peek, container.server_interceptor()],
    )
    server.add_generic_rpc_handlers((_shop(False, threading.Event()),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            channel.unary_unary(TYPED)(
                health_pb2.HealthCheckRequest(service="db").SerializeToString(), timeout=10
            )
        assert peek.seen == [health_pb2.HealthCheckRequest(service="db")]
        wait_until(lambda: TYPED in {m.method for m in container.rpc_stats.figures()})
        (typed,) = container.rpc_stats.figures()
        assert (typed.calls_ok, typed.messages_received, typed.messages_sent) == (1, 1, 1)
    finally:
        server.stop(None)
        container.close()

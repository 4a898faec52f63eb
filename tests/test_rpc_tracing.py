"""RpcTracing (pycontainer.telemetry): client and server spans of an app's
own unary RPCs, over real servers and sockets, exported through the SDK's
span processors (an in-memory exporter), for sync and grpc.aio."""

from __future__ import annotations

import datetime
import random
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_ON,
    ParentBased,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanKind, StatusCode

import pycontainer
from pycontainer._rpctrace._sampling import Sampling
from pycontainer._rpctrace._w3c import format_traceparent, parse_traceparent
from pycontainer.client import ManagementClient
from pycontainer.telemetry import RpcTracing
from pycontainer.v1 import management_pb2

ECHO = "/demo.Echo/Echo"
FAIL = "/demo.Echo/Fail"
MISSING = "/demo.Echo/Missing"
INJECT = "/demo.Echo/Inject"
HOUR = datetime.timedelta(hours=1)


def _provider(sampler: Any = None) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler) if sampler is not None else TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _inject_context() -> bytes:
    """What a handler's own outgoing calls would carry (the OTel API's view)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent", "").encode()


def _sync_handlers(provider: TracerProvider) -> grpc.GenericRpcHandler:
    tracer = provider.get_tracer("app")

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        with tracer.start_as_current_span("app work"):  # a child of the server span
            return request

    def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
        raise RuntimeError("the database is down")

    def missing(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, "no such order")

    def inject(request: bytes, context: grpc.ServicerContext) -> bytes:
        return _inject_context()

    return grpc.method_handlers_generic_handler(
        "demo.Echo",
        {
            name: grpc.unary_unary_rpc_method_handler(fn)
            for name, fn in (
                ("Echo", echo),
                ("Fail", fail),
                ("Missing", missing),
                ("Inject", inject),
            )
        },
    )


def _aio_handlers(provider: TracerProvider) -> grpc.GenericRpcHandler:
    tracer = provider.get_tracer("app")

    async def echo(request: bytes, context: Any) -> bytes:
        with tracer.start_as_current_span("app work"):
            return request

    async def fail(request: bytes, context: Any) -> bytes:
        raise RuntimeError("the database is down")

    async def missing(request: bytes, context: Any) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such order")

    async def inject(request: bytes, context: Any) -> bytes:
        return _inject_context()

    return grpc.method_handlers_generic_handler(
        "demo.Echo",
        {
            name: grpc.unary_unary_rpc_method_handler(fn)
            for name, fn in (
                ("Echo", echo),
                ("Fail", fail),
                ("Missing", missing),
                ("Inject", inject),
            )
        },
    )


@dataclass
class SyncApp:
    address: str
    server: grpc.Server

    def channel(self, tracing: RpcTracing | None, how: str = "wrapper") -> grpc.Channel:
        channel = grpc.insecure_channel(self.address)
        if tracing is None:
            return channel
        if how == "wrapper":
            return tracing.intercept_channel(channel, self.address)
        return grpc.intercept_channel(channel, tracing.client_interceptor(self.address))


@pytest.fixture
def sync_app() -> Iterator[Callable[[RpcTracing, TracerProvider], SyncApp]]:
    servers: list[grpc.Server] = []

    def start(tracing: RpcTracing, provider: TracerProvider) -> SyncApp:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4), interceptors=[tracing.server_interceptor()]
        )
        server.add_generic_rpc_handlers((_sync_handlers(provider),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return SyncApp(f"127.0.0.1:{port}", server)

    yield start
    for server in servers:
        server.stop(None)


def _by_kind(spans: tuple[ReadableSpan, ...], name: str) -> dict[SpanKind, ReadableSpan]:
    found = {s.kind: s for s in spans if s.name == name}
    assert len(found) == len([s for s in spans if s.name == name]), spans
    return found


def _pair(spans: tuple[ReadableSpan, ...], method: str) -> tuple[ReadableSpan, ReadableSpan]:
    pair = _by_kind(spans, method[1:])
    return pair[SpanKind.CLIENT], pair[SpanKind.SERVER]


def _check_pair(client: ReadableSpan, server: ReadableSpan, address: str) -> None:
    """A client and a server span of one call: linked, and with the RPC
    semantic conventions' attributes."""
    assert client.kind == SpanKind.CLIENT
    assert server.kind == SpanKind.SERVER
    assert client.name == server.name
    assert client.context is not None
    assert server.context is not None
    assert server.context.trace_id == client.context.trace_id
    assert server.parent is not None
    assert server.parent.span_id == client.context.span_id
    assert server.parent.is_remote
    service, rpc_method = client.name.split("/")
    for span in (client, server):
        attributes = span.attributes or {}
        assert attributes["rpc.system"] == "grpc"
        assert attributes["rpc.service"] == service
        assert attributes["rpc.method"] == rpc_method
        assert span.start_time is not None
        assert span.end_time is not None
        assert 0 < span.start_time <= span.end_time
        assert span.instrumentation_scope is not None
        assert span.instrumentation_scope.name == "pycontainer.rpc"
    host, port = address.rsplit(":", 1)
    assert (client.attributes or {})["server.address"] == host
    assert (client.attributes or {})["server.port"] == int(port)
    assert (server.attributes or {})["network.peer.address"] == "127.0.0.1"


@pytest.mark.parametrize("how", ["wrapper", "interceptor"])
def test_sync_unary_spans_link_client_to_server(sync_app: Any, how: str) -> None:
    provider, exporter = _provider()
    tracing = RpcTracing(provider, export_delay=HOUR)
    app = sync_app(tracing, provider)
    with app.channel(tracing, how) as channel:
        assert channel.unary_unary(ECHO)(b"hi", timeout=10) == b"hi"
        response, call = channel.unary_unary(ECHO).with_call(b"again", timeout=10)
        assert response == b"again"
        assert call.code() == grpc.StatusCode.OK
        assert channel.unary_unary(ECHO).future(b"later", timeout=10).result() == b"later"
    tracing.force_flush()
    spans = exporter.get_finished_spans()
    ours = [s for s in spans if s.name == "demo.Echo/Echo"]
    assert len(ours) == 6  # three calls, a client and a server span each
    clients = sorted(
        (s for s in ours if s.kind == SpanKind.CLIENT), key=lambda s: s.start_time or 0
    )
    servers = {s.parent.span_id: s for s in ours if s.kind == SpanKind.SERVER and s.parent}
    for client in clients:
        assert client.parent is None  # no current span: a root
        assert client.context is not None
        server = servers[client.context.span_id]
        _check_pair(client, server, app.address)
        for span in (client, server):
            assert (span.attributes or {})["rpc.grpc.status_code"] == 0
            assert span.status.status_code == StatusCode.UNSET
    # The handler's own span is a child of the server span.
    work = [s for s in spans if s.name == "app work"]
    assert len(work) == 3
    assert {w.parent.span_id for w in work if w.parent} == {
        s.context.span_id for s in servers.values() if s.context
    }
    assert tracing.dropped == 0


def test_client_span_is_child_of_the_current_span(sync_app: Any) -> None:
    provider, exporter = _provider()
    tracing = RpcTracing(provider, export_delay=HOUR)
    app = sync_app(tracing, provider)
    outer_span = provider.get_tracer("cli").start_as_current_span("pycontainer get")
    with app.channel(tracing) as channel, outer_span as outer:
        channel.unary_unary(ECHO)(b"x", timeout=10)
    tracing.force_flush()
    pair = _by_kind(exporter.get_finished_spans(), "demo.Echo/Echo")
    client = pair[SpanKind.CLIENT]
    assert client.parent is not None
    assert client.parent.span_id == outer.get_span_context().span_id
    assert client.context is not None
    assert client.context.trace_id == outer.get_span_context().trace_id


def test_trace_context_reaches_the_handlers_own_calls(sync_app: Any) -> None:
    """What the handler propagates (as the manager does into Lifecycle
    commands) names the server span: a trace joins across hops."""
    provider, exporter = _provider()
    tracing = RpcTracing(provider, export_delay=HOUR)
    app = sync_app(tracing, provider)
    with app.channel(tracing) as channel:
        carried = channel.unary_unary(INJECT)(b"", timeout=10).decode()
    tracing.force_flush()
    server = _by_kind(exporter.get_finished_spans(), "demo.Echo/Inject")[SpanKind.SERVER]
    assert server.context is not None
    assert parse_traceparent(carried) == (server.context.trace_id, server.context.span_id, 0x03)


def test_spans_reach_every_processor_of_the_provider(sync_app: Any) -> None:
    """A batch processor and a simple one on one provider: each gets every span."""
    provider, simple = _provider()
    batched = InMemorySpanExporter()
    provider.add_span_processor(BatchSpanProcessor(batched, schedule_delay_millis=3_600_000))
    tracing = RpcTracing(provider, export_delay=HOUR)
    app = sync_app(tracing, provider)
    with app.channel(tracing) as channel:
        assert channel.unary_unary(ECHO)(b"hi", timeout=10) == b"hi"
    tracing.force_flush()
    provider.force_flush()
    for exporter in (simple, batched):
        client, server = _pair(exporter.get_finished_spans(), ECHO)
        _check_pair(client, server, app.address)


@pytest.mark.parametrize("how", ["wrapper", "interceptor"])
def test_sync_errors_are_recorded(sync_app: Any, how: str) -> None:
    provider, exporter = _provider()
    tracing = RpcTracing(provider, export_delay=HOUR)
    app = sync_app(tracing, provider)
    with app.channel(tracing, how) as channel:
        with pytest.raises(grpc.RpcError) as failed:
            channel.unary_unary(FAIL)(b"x", timeout=10)
        assert failed.value.code() == grpc.StatusCode.UNKNOWN
        with pytest.raises(grpc.RpcError) as missing:
            channel.unary_unary(MISSING)(b"x", timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    tracing.force_flush()
    spans = exporter.get_finished_spans()
    fail = _by_kind(spans, "demo.Echo/Fail")
    for span in fail.values():
        assert (span.attributes or {})["rpc.grpc.status_code"] == 2
        assert span.status.status_code == StatusCode.ERROR
    assert "the database is down" in (fail[SpanKind.SERVER].status.description or "")
    not_found = _by_kind(spans, "demo.Echo/Missing")
    for span in not_found.values():
        assert (span.attributes or {})["rpc.grpc.status_code"] == 5
    # NOT_FOUND is the caller's error: the client's span, not the server's.
    assert not_found[SpanKind.CLIENT].status.status_code == StatusCode.ERROR
    assert not_found[SpanKind.CLIENT].status.description == "no such order"
    assert not_found[SpanKind.SERVER].status.status_code == StatusCode.UNSET
    _check_pair(*_pair(spans, FAIL), app.address)


def test_unsampled_calls_are_not_recorded(sync_app: Any) -> None:
    """A client that samples nothing sends its decision (flags 00); the
    server's parent-based sampler (the default) follows it."""
    server_provider, server_spans = _provider()
    client_provider, client_spans = _provider(ALWAYS_OFF)
    server_tracing = RpcTracing(server_provider, export_delay=HOUR)
    client_tracing = RpcTracing(client_provider, export_delay=HOUR)
    app = sync_app(server_tracing, server_provider)
    with app.channel(client_tracing) as channel:
        carried = channel.unary_unary(INJECT)(b"", timeout=10).decode()
        # A caller's unsampled context, by hand.
        raw = grpc.insecure_channel(app.address)
        parent = format_traceparent(0x1234, 0x5678, 0)
        raw.unary_unary(ECHO)(b"x", timeout=10, metadata=(("traceparent", parent),))
        raw.close()
    for tracing in (server_tracing, client_tracing):
        tracing.force_flush()
    ids = parse_traceparent(carried)
    assert ids is not None
    assert ids[2] & 0x01 == 0
    assert client_spans.get_finished_spans() == ()
    assert [s for s in server_spans.get_finished_spans() if s.name.startswith("demo.")] == []
    assert server_tracing.dropped == client_tracing.dropped == 0


def test_a_sampled_caller_is_followed_by_a_server_without_a_client_interceptor(
    sync_app: Any,
) -> None:
    provider, exporter = _provider()
    tracing = RpcTracing(provider, export_delay=HOUR)
    app = sync_app(tracing, provider)
    trace_id, parent_id = random.getrandbits(128), random.getrandbits(64)
    with grpc.insecure_channel(app.address) as raw:
        raw.unary_unary(ECHO)(
            b"x",
            timeout=10,
            metadata=(
                ("traceparent", format_traceparent(trace_id, parent_id, 0x01)),
                ("tracestate", "vendor=opaque"),
            ),
        )
        # An invalid header starts a new trace (W3C): still recorded, as a root.
        raw.unary_unary(ECHO)(
            b"x", timeout=10, metadata=(("traceparent", "00-" + "0" * 32 + "-" + "1" * 16 + "-01"),)
        )
    tracing.force_flush()
    servers = [
        s
        for s in exporter.get_finished_spans()
        if s.name == "demo.Echo/Echo" and s.kind == SpanKind.SERVER
    ]
    assert len(servers) == 2
    joined, fresh = servers
    assert joined.context is not None
    assert joined.context.trace_id == trace_id
    assert joined.parent is not None
    assert joined.parent.span_id == parent_id
    assert joined.context.trace_state.get("vendor") == "opaque"
    assert fresh.parent is None
    assert fresh.context is not None
    assert fresh.context.trace_id


def test_shutdown_flushes_the_queue(sync_app: Any) -> None:
    provider, exporter = _provider()
    # Nothing would be exported for an hour, nor by batch: only shutdown does.
    tracing = RpcTracing(provider, export_delay=HOUR, batch_size=10_000)
    app = sync_app(tracing, provider)
    with app.channel(tracing) as channel:
        for _ in range(5):
            channel.unary_unary(ECHO)(b"x", timeout=10)
    recording = tracing.recording()
    assert recording is not None
    thread = recording.recorder._thread
    assert thread is not None
    assert thread.is_alive()
    tracing.shutdown()
    assert not thread.is_alive()
    assert len([s for s in exporter.get_finished_spans() if s.name == "demo.Echo/Echo"]) == 10
    # Calls after shutdown are served, and not recorded (nor counted as lost).
    with app.channel(tracing) as channel:
        assert channel.unary_unary(ECHO)(b"y", timeout=10) == b"y"
    assert len([s for s in exporter.get_finished_spans() if s.name == "demo.Echo/Echo"]) == 10
    assert not tracing.enabled
    assert tracing.dropped == 0


class _Gate(SpanProcessor):
    """A span processor that holds the exporting thread until opened."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.entered.set()
        self.open.wait(30)
        self.spans.append(span)


def test_a_full_queue_drops_and_counts(sync_app: Any) -> None:
    gate = _Gate()
    provider = TracerProvider()
    provider.add_span_processor(gate)
    tracing = RpcTracing(provider, max_queue_size=4, batch_size=1, export_delay=HOUR)
    # The handler's own spans go elsewhere: the gate holds only our thread.
    app = sync_app(tracing, TracerProvider())
    calls = 20
    with app.channel(tracing) as channel:
        for _ in range(calls):
            assert channel.unary_unary(ECHO)(b"x", timeout=10) == b"x"  # never held up
    assert gate.entered.wait(10)  # the thread holds one span, the queue four
    assert tracing.dropped >= 2 * calls - 5
    gate.open.set()
    tracing.shutdown()
    traced = [s for s in gate.spans if s.name == "demo.Echo/Echo"]
    assert len(traced) + tracing.dropped == 2 * calls  # each either exported or counted


def test_no_sdk_provider_records_nothing_and_passes_context_on(sync_app: Any) -> None:
    tracing = RpcTracing(trace.NoOpTracerProvider())
    app = sync_app(tracing, TracerProvider())
    sent = format_traceparent(random.getrandbits(128), random.getrandbits(64), 0x01)
    with grpc.insecure_channel(app.address) as raw:
        carried = raw.unary_unary(INJECT)(b"", timeout=10, metadata=(("traceparent", sent),))
    assert carried.decode() == sent
    assert tracing.recording() is None
    assert tracing.dropped == 0


# -- grpc.aio -------------------------------------------------------------------------------
async def test_aio_unary_spans_and_errors() -> None:
    provider, exporter = _provider()
    tracing = RpcTracing(provider, export_delay=HOUR)
    server = grpc.aio.server(interceptors=[tracing.aio_server_interceptor()])
    server.add_generic_rpc_handlers((_aio_handlers(provider),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    address = f"127.0.0.1:{port}"
    try:
        async with grpc.aio.insecure_channel(
            address, interceptors=[tracing.aio_client_interceptor(address)]
        ) as channel:
            assert await channel.unary_unary(ECHO)(b"hi", timeout=10) == b"hi"
            carried = (await channel.unary_unary(INJECT)(b"", timeout=10)).decode()
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await channel.unary_unary(FAIL)(b"x", timeout=10)
            assert failed.value.code() == grpc.StatusCode.UNKNOWN
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await channel.unary_unary(MISSING)(b"x", timeout=10)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await server.stop(None)
    tracing.force_flush()
    spans = exporter.get_finished_spans()
    _check_pair(*_pair(spans, ECHO), address)
    work = next(s for s in spans if s.name == "app work")
    echo_server = _by_kind(spans, "demo.Echo/Echo")[SpanKind.SERVER]
    assert work.parent is not None
    assert echo_server.context is not None
    assert work.parent.span_id == echo_server.context.span_id
    inject_server = _by_kind(spans, "demo.Echo/Inject")[SpanKind.SERVER]
    assert inject_server.context is not None
    assert parse_traceparent(carried) == (
        inject_server.context.trace_id,
        inject_server.context.span_id,
        0x03,
    )
    fail = _by_kind(spans, "demo.Echo/Fail")
    assert {(s.attributes or {})["rpc.grpc.status_code"] for s in fail.values()} == {2}
    assert {s.status.status_code for s in fail.values()} == {StatusCode.ERROR}
    missing_spans = _by_kind(spans, "demo.Echo/Missing")
    assert {(s.attributes or {})["rpc.grpc.status_code"] for s in missing_spans.values()} == {5}
    assert missing_spans[SpanKind.SERVER].status.status_code == StatusCode.UNSET
    assert missing_spans[SpanKind.CLIENT].status.status_code == StatusCode.ERROR
    tracing.shutdown()


# -- the parts --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, 1),
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, 0),
        ),
        # A later version may add fields; its first four read as version 00's.
        (
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later",
            (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, 1),
        ),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),  # upper case
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),  # zero trace id
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),  # zero span id
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),  # version ff
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", None),  # 00 with more
        ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", None),  # short
        ("", None),
    ],
)
def test_traceparent_parsing_follows_w3c(header: str, expected: Any) -> None:
    assert parse_traceparent(header) == expected
    if expected is not None:
        assert parse_traceparent(format_traceparent(*expected)) == expected


@pytest.mark.parametrize(
    "sampler",
    [
        ALWAYS_ON,
        ALWAYS_OFF,
        DEFAULT_ON,
        TraceIdRatioBased(0.3),
        ParentBased(TraceIdRatioBased(0.5)),
        ParentBased(
            ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON, local_parent_not_sampled=ALWAYS_ON
        ),
    ],
)
def test_sampling_decides_as_the_sdk_sampler(sampler: Any) -> None:
    sampling = Sampling(sampler)
    rng = random.Random(9)
    for _ in range(500):
        trace_id = rng.getrandbits(128)
        parent = rng.choice([None, (trace_id, rng.getrandbits(64), rng.choice([0, 1]))])
        remote = rng.choice([True, False])
        context = None
        if parent is not None:
            span_context = trace.SpanContext(
                parent[0], parent[1], remote, trace.TraceFlags(parent[2])
            )
            context = trace.set_span_in_context(trace.NonRecordingSpan(span_context))
        expected = sampler.should_sample(context, trace_id, "m").decision.is_sampled()
        assert sampling.sampled(trace_id, parent, remote, "m", SpanKind.SERVER) == expected
        if parent is not None and remote and sampling.remote_parent is not None:
            assert sampling.remote_parent[parent[2] & 1] == expected
        if sampling.always is not None:  # the client's shortcut
            assert sampling.always == expected


def test_sampling_shortcut_is_only_for_one_decision() -> None:
    """``always`` (what the client asks first) is set only when no parent or
    trace id could change the decision."""
    assert Sampling(ALWAYS_ON).always is True
    assert Sampling(ALWAYS_OFF).always is False
    assert Sampling(DEFAULT_ON).always is None  # a parent that is not sampled
    assert Sampling(TraceIdRatioBased(0.3)).always is None
    all_on = ParentBased(
        ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON, local_parent_not_sampled=ALWAYS_ON
    )
    assert Sampling(all_on).always is True


# -- with a container ---------------------------------------------------------------------------
def test_container_traces_app_rpcs_and_leaves_its_own_services_to_itself() -> None:
    """container.tracing_interceptor() on the app's server: the app's call gets
    our SERVER span; pycontainer's Management call only the container's own."""
    provider, exporter = _provider()
    container = pycontainer.Container(
        pycontainer.ContainerSettings(name="traced-app", log_level=None),
        tracer_provider=provider,
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[container.server_interceptor(), container.tracing_interceptor()],
    )
    server.add_generic_rpc_handlers((_sync_handlers(provider),))
    container.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    address = f"127.0.0.1:{port}"
    try:
        assert container.rpc_tracing.enabled
        with container.rpc_tracing.intercept_channel(
            grpc.insecure_channel(address), address
        ) as channel:
            assert channel.unary_unary(ECHO)(b"x", timeout=10) == b"x"
        with ManagementClient(address) as management:
            management.get_info(management_pb2.GetInfoRequest())
    finally:
        server.stop(None)
        container.close()
    container.rpc_tracing.force_flush()
    spans = exporter.get_finished_spans()
    _check_pair(*_pair(spans, ECHO), address)
    info = [s for s in spans if s.name == "pycontainer.v1.Management/GetInfo"]
    assert len(info) == 1
    assert info[0].instrumentation_scope is not None
    assert info[0].instrumentation_scope.name == "pycontainer"


def test_hosted_server_traces_management_once() -> None:
    provider, exporter = _provider()
    traced = pycontainer.Container(
        pycontainer.ContainerSettings(name="hosted", log_level=None), tracer_provider=provider
    )
    untraced = pycontainer.Container(
        pycontainer.ContainerSettings(name="hosted-plain", log_level=None),
        tracer_provider=trace.NoOpTracerProvider(),
    )
    assert traced.rpc_tracing.enabled
    assert not untraced.rpc_tracing.enabled
    hosted = pycontainer.serve_in_background(traced)
    try:
        with ManagementClient(f"127.0.0.1:{hosted.port}") as management:
            management.get_info(management_pb2.GetInfoRequest())
    finally:
        hosted.stop()
        traced.close()
        untraced.close()
    traced.rpc_tracing.force_flush()
    # The Management call is traced once, by the container, not again by us.
    names = [(s.name, s.instrumentation_scope.name) for s in exporter.get_finished_spans()]
    assert ("pycontainer.v1.Management/GetInfo", "pycontainer") in names
    assert all(scope != "pycontainer.rpc" for _, scope in names), names

"""Rows of the servers an app hosts: health Check (P1), the app's own unary
RPCs (P6), and the cost of mutual TLS, each against bare grpcio."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

import pycontainer
from pycontainer import security
from pycontainer.client import ManagementClient
from pycontainer.telemetry import RpcTracing
from pycontainer.v1 import management_pb2

from .capacity import ECHO, HEALTH_CHECK, cpu_per_call
from .harness import Context, Row, Sample

WARMUP_CALLS = 200


def make_container(name: str, **settings: Any) -> pycontainer.Container:
    """A container as an app gets it: log capture at INFO, tracing and
    metrics at their defaults (unless ``settings`` say otherwise)."""
    return pycontainer.Container(pycontainer.ContainerSettings(name=name, **settings))


# Each round alternates the two in slices this long (at least 4 a round), so
# that both see the same moments of a noisy machine: on 2 shared cores, slices
# of a second left whole rounds to one side's luck.
SLICE_SECONDS = 0.05
# Fixed slices, for rows that alternate their own way (rows_logs' P3d).
SLICES = 4


def slices(ctx: Context) -> int:
    """How many slices each side gets in a round."""
    return max(4, round(ctx.seconds / SLICE_SECONDS))


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls/s of ``fn`` called back to back for ``seconds`` (after a warm-up)."""
    calls, elapsed = _calls(fn, seconds)
    return calls / elapsed


def _calls(fn: Callable[[], object], seconds: float) -> tuple[int, float]:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n, time.perf_counter() - t0


def alternate(ctx: Context, ours: Callable[[], object], bare: Callable[[], object]) -> list[Sample]:
    """Calls/s of both in each round, in alternating slices (bare first)."""
    for _ in range(WARMUP_CALLS):
        bare()
        ours()
    out = []
    for _ in range(ctx.rounds):
        totals = {"ours": [0, 0.0], "bare": [0, 0.0]}
        for _ in range(slices(ctx)):
            for side, fn in (("bare", bare), ("ours", ours)):
                n, t = _calls(fn, ctx.seconds / slices(ctx))
                totals[side][0] += n
                totals[side][1] += t
        out.append(
            Sample(
                ours=totals["ours"][0] / totals["ours"][1],
                bare=totals["bare"][0] / totals["bare"][1],
            )
        )
    return out


# -- TLS material ----------------------------------------------------------------------
@dataclass
class Pki:
    """A CA, a server leaf and an admin user's client leaf in ``directory``."""

    server: security.CredentialFiles
    client: security.CredentialFiles
    identity: security.Identity

    def server_credentials(self) -> grpc.ServerCredentials:
        return security.server_credentials(self.server)

    def channel(self, address: str, *, aio: bool = False) -> Any:
        credentials = security.channel_credentials(self.client)
        options = security.server_name_options(self.identity)
        if aio:
            return grpc.aio.secure_channel(address, credentials, options=options)
        return grpc.secure_channel(address, credentials, options=options)


@contextlib.contextmanager
def pki(identity: security.Identity) -> Iterator[Pki]:
    with tempfile.TemporaryDirectory(prefix="bench-pki-") as tmp:
        ca = security.CertificateAuthority.open(Path(tmp) / "ca")
        server = security.CredentialFiles.in_directory(Path(tmp) / "server")
        client = security.CredentialFiles.in_directory(Path(tmp) / "client")
        security.ensure_leaf(ca, server, identity, hosts=["127.0.0.1"])
        security.ensure_leaf(ca, client, security.user("admin"))
        yield Pki(server, client, identity)


def _listen(server: Any, tls: Pki | None) -> str:
    if tls is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", tls.server_credentials())
    return f"127.0.0.1:{port}"


def _dial(address: str, tls: Pki | None, *, aio: bool = False) -> Any:
    if tls is not None:
        return tls.channel(address, aio=aio)
    return grpc.aio.insecure_channel(address) if aio else grpc.insecure_channel(address)


# -- P1: health Check ------------------------------------------------------------------
def sync_health(ctx: Context, tls: bool) -> list[Sample]:
    """A pycontainer-hosted sync server (its authorization and app interceptors,
    log capture, tracing at its default) against a bare grpcio health servicer."""
    container = make_container("bench-health")
    identity = security.container(container.id)
    with pki(identity) if tls else contextlib.nullcontext() as creds:
        bare = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), bare)
        ours = grpc.server(
            futures.ThreadPoolExecutor(max_workers=16),
            interceptors=[container.authorization_interceptor(), container.server_interceptor()],
        )
        container.add_to_server(ours)
        addresses = [_listen(s, creds) for s in (bare, ours)]
        for s in (bare, ours):
            s.start()
        container.start()
        channels = [_dial(a, creds) for a in addresses]
        try:
            req = health_pb2.HealthCheckRequest()
            bare_call, our_call = (health_pb2_grpc.HealthStub(ch).Check for ch in channels)
            return alternate(
                ctx, lambda: our_call(req, timeout=10), lambda: bare_call(req, timeout=10)
            )
        finally:
            for ch in channels:
                ch.close()
            bare.stop(None)
            ours.stop(None)
            container.close()


def aio_health(ctx: Context, tls: bool) -> list[Sample]:
    return asyncio.run(_aio_health(ctx, tls))


async def _aio_health(ctx: Context, tls: bool) -> list[Sample]:
    container = make_container("bench-health-aio")
    identity = security.container(container.id)
    with pki(identity) if tls else contextlib.nullcontext() as creds:
        bare = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), bare)
        ours = grpc.aio.server(
            interceptors=[
                container.aio_authorization_interceptor(),
                container.aio_server_interceptor(),
            ]
        )
        container.add_to_server(ours)
        addresses = [_listen(s, creds) for s in (bare, ours)]
        for s in (bare, ours):
            await s.start()
        await container.astart()
        channels = [_dial(a, creds, aio=True) for a in addresses]
        req = health_pb2.HealthCheckRequest()
        stubs = [health_pb2_grpc.HealthStub(ch) for ch in channels]

        async def calls(stub: Any, seconds: float) -> tuple[int, float]:
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                await stub.Check(req, timeout=10)
                n += 1
            return n, time.perf_counter() - t0

        try:
            for stub in stubs:
                for _ in range(WARMUP_CALLS):
                    await stub.Check(req, timeout=10)
            out = []
            for _ in range(ctx.rounds):
                totals = [[0, 0.0], [0, 0.0]]  # bare, ours
                for _ in range(slices(ctx)):
                    for side, stub in enumerate(stubs):
                        n, t = await calls(stub, ctx.seconds / slices(ctx))
                        totals[side][0] += n
                        totals[side][1] += t
                bare_rate, our_rate = (n / t for n, t in totals)
                out.append(Sample(ours=our_rate, bare=bare_rate))
            return out
        finally:
            for ch in channels:
                await ch.close()
            await bare.stop(None)
            await ours.stop(None)
            container.close()


def tls_cost(ctx: Context) -> list[Sample]:
    """One bare health server with a plaintext and an mTLS port (the CA of
    pycontainer.security): the cost of TLS itself, apart from pycontainer."""
    with pki(security.MANAGER) as creds:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        plain, secure = _listen(server, None), _listen(server, creds)
        server.start()
        channels = [_dial(plain, None), _dial(secure, creds)]
        try:
            req = health_pb2.HealthCheckRequest()
            plain_call, tls_call = (health_pb2_grpc.HealthStub(ch).Check for ch in channels)
            return alternate(
                ctx, lambda: tls_call(req, timeout=10), lambda: plain_call(req, timeout=10)
            )
        finally:
            for ch in channels:
                ch.close()
            server.stop(None)


# -- P6: the app's own RPCs --------------------------------------------------------------
def _echo_handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        "demo.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda r, c: r)}
    )


def interceptor_only(ctx: Context) -> list[Sample]:
    """The app's unary RPC through pycontainer's app interceptor / without it."""
    container = make_container("bench-icpt")
    servers, channels = [], []
    for interceptors in ([], [container.server_interceptor()]):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), interceptors=interceptors)
        server.add_generic_rpc_handlers((_echo_handler(),))
        address = _listen(server, None)
        server.start()
        servers.append(server)
        channels.append(grpc.insecure_channel(address))
    try:
        bare_echo, our_echo = (ch.unary_unary("/demo.Echo/Echo") for ch in channels)
        return alternate(
            ctx, lambda: our_echo(b"x", timeout=10), lambda: bare_echo(b"x", timeout=10)
        )
    finally:
        for ch, server in zip(channels, servers, strict=True):
            ch.close()
            server.stop(None)
        container.close()


def embedded_app(ctx: Context) -> list[Sample]:
    """A sync app (4 worker threads) with pycontainer embedded (its interceptors,
    its services, 2 StreamLogs and 2 WatchMetrics watchers open from another
    client, as `pycontainer logs -f` / `top` are) / the same app without."""
    container = make_container("bench-embedded", stream_limit=16)
    ours = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[container.authorization_interceptor(), container.server_interceptor()],
    )
    container.add_to_server(ours)
    ours.add_generic_rpc_handlers((_echo_handler(),))
    bare = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    bare.add_generic_rpc_handlers((_echo_handler(),))
    our_address, bare_address = _listen(ours, None), _listen(bare, None)
    ours.start()
    bare.start()
    container.start()
    watchers = ManagementClient(our_address)
    streams: list[Iterator[Any]] = []
    for _ in range(2):
        streams.append(watchers.stream_logs(management_pb2.StreamLogsRequest(follow=True)))
        streams.append(
            watchers.watch_metrics(
                management_pb2.WatchMetricsRequest(
                    interval=duration_pb2.Duration(nanos=100_000_000)
                )
            )
        )
    drainers = [threading.Thread(target=_drain, args=(s,), daemon=True) for s in streams]
    for t in drainers:
        t.start()
    channels = [grpc.insecure_channel(a) for a in (our_address, bare_address)]
    try:
        # Something for the log watchers to carry, once they are open.
        logging.getLogger("bench.app").warning("watchers are open")
        our_echo, bare_echo = (ch.unary_unary("/demo.Echo/Echo") for ch in channels)
        return alternate(
            ctx, lambda: our_echo(b"x", timeout=10), lambda: bare_echo(b"x", timeout=10)
        )
    finally:
        watchers.close()  # cancels their streams: each drainer ends
        for t in drainers:
            t.join(5)
        for ch in channels:
            ch.close()
        ours.stop(None)
        bare.stop(None)
        container.close()


# -- P2: the app's RPCs traced ---------------------------------------------------------------
class _DiscardSpans(SpanExporter):
    """An exporter that sends nothing: exporting is the exporter's own cost,
    the same for any instrumentation; the row measures making the spans."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Any) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def _traced_provider() -> tuple[TracerProvider, _DiscardSpans]:
    exporter = _DiscardSpans()
    provider = TracerProvider(sampler=ALWAYS_ON)  # 100%
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider, exporter


def _echo_pair(
    server_interceptors: list[Any], wrap: Callable[[grpc.Channel, str], grpc.Channel]
) -> tuple[list[grpc.Server], list[grpc.Channel]]:
    """An untraced echo server and channel, and one with the interceptors."""
    servers, channels = [], []
    for interceptors in ([], server_interceptors):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), interceptors=interceptors)
        server.add_generic_rpc_handlers((_echo_handler(),))
        address = _listen(server, None)
        server.start()
        servers.append(server)
        channel = grpc.insecure_channel(address)
        channels.append(wrap(channel, address) if interceptors else channel)
    return servers, channels


def _traced_echo(
    ctx: Context,
    servers: list[grpc.Server],
    channels: list[grpc.Channel],
    provider: TracerProvider,
    exporter: _DiscardSpans,
) -> list[Sample]:
    try:
        bare_echo, our_echo = (ch.unary_unary("/demo.Echo/Echo") for ch in channels)
        samples = alternate(
            ctx, lambda: our_echo(b"x", timeout=10), lambda: bare_echo(b"x", timeout=10)
        )
    finally:
        for ch, server in zip(channels, servers, strict=True):
            ch.close()
            server.stop(None)
    provider.shutdown()
    if exporter.spans == 0:
        raise RuntimeError("no span was exported: the row measured no tracing")
    samples[-1].note = f"{exporter.spans:,} spans exported"
    return samples


def traced_app(ctx: Context) -> list[Sample]:
    """The app's unary RPC with pycontainer's client and server tracing at
    100% (spans built off the call path, through a BatchSpanProcessor) /
    the same app untraced."""
    provider, exporter = _traced_provider()
    tracing = RpcTracing(provider)
    servers, channels = _echo_pair([tracing.server_interceptor()], tracing.intercept_channel)
    try:
        return _traced_echo(ctx, servers, channels, provider, exporter)
    finally:
        tracing.shutdown()


def stock_traced_app(ctx: Context) -> list[Sample]:
    """The same with opentelemetry-instrumentation-grpc's interceptors."""
    from opentelemetry.instrumentation.grpc import (
        client_interceptor,
        grpcext,
        server_interceptor,
    )

    provider, exporter = _traced_provider()
    servers, channels = _echo_pair(
        [server_interceptor(tracer_provider=provider)],
        lambda ch, _address: grpcext.intercept_channel(
            ch, client_interceptor(tracer_provider=provider)
        ),
    )
    return _traced_echo(ctx, servers, channels, provider, exporter)


def _drain(stream: Iterator[Any]) -> None:
    for _ in stream:  # a cancelled stream just ends (pycontainer.client)
        pass


ROWS = [
    Row(
        "p1-sync",
        "P1",
        "≥ 0.95",
        "health Check, sync server, plaintext, sequential",
        "bare grpcio health servicer, same kind",
        "calls/s",
        True,
        lambda ctx: sync_health(ctx, tls=False),
    ),
    Row(
        "p1-sync-mtls",
        "P1",
        "≥ 0.95",
        "health Check, sync server, mTLS (the default), sequential",
        "bare grpcio health servicer over the same mTLS",
        "calls/s",
        True,
        lambda ctx: sync_health(ctx, tls=True),
    ),
    Row(
        "p1-aio",
        "P1",
        "≥ 0.95",
        "health Check, aio server, plaintext, sequential",
        "bare grpcio aio health servicer",
        "calls/s",
        True,
        lambda ctx: aio_health(ctx, tls=False),
    ),
    Row(
        "p1-aio-mtls",
        "P1",
        "≥ 0.95",
        "health Check, aio server, mTLS (the default), sequential",
        "bare grpcio aio health servicer over the same mTLS",
        "calls/s",
        True,
        lambda ctx: aio_health(ctx, tls=True),
    ),
    Row(
        "tls-cost",
        "",
        "context",
        "bare health Check over mTLS (pycontainer.security's CA) ÷ plaintext",
        "the same bare server's plaintext port",
        "calls/s",
        True,
        tls_cost,
    ),
    Row(
        "p6-interceptor",
        "P6",
        "≥ 0.95 (part of P6)",
        "app unary RPC with pycontainer's app interceptor, sequential",
        "the same server without it",
        "calls/s",
        True,
        interceptor_only,
    ),
    Row(
        "p6-embedded",
        "P6",
        "≥ 0.95",
        "sync app unary RPC, pycontainer embedded (interceptors, 2 log + 2 metrics watchers)",
        "the same app without pycontainer",
        "calls/s",
        True,
        embedded_app,
    ),
    Row(
        "p2-tracing",
        "P2",
        "≥ 0.85",
        "app unary RPC, pycontainer's client + server tracing at 100%, sync, sequential",
        "the same app untraced",
        "calls/s",
        True,
        traced_app,
    ),
    Row(
        "p2-stock-otel",
        "",
        "context",
        "app unary RPC, opentelemetry-instrumentation-grpc client + server at 100%, sync",
        "the same app untraced",
        "calls/s",
        True,
        stock_traced_app,
    ),
    # Capacity: server CPU per call at saturation (bench/capacity.py); the
    # ratio is bare ÷ pycontainer, so that ≥ 0.95 is the goal, as above.
    *(
        Row(
            f"p1-{kind}{'-mtls' if tls else ''}-cpu",
            "P1",
            "≥ 0.95",
            f"health Check, {kind} server, {'mTLS' if tls else 'plaintext'}, "
            "server CPU per call at saturation",
            f"bare grpcio {kind} health servicer, same load",
            "µs CPU/call",
            False,
            lambda ctx, kind=kind, tls=tls: cpu_per_call(
                ctx, f"health-{kind}", HEALTH_CHECK, b"", tls=tls
            ),
        )
        for kind in ("sync", "aio")
        for tls in (False, True)
    ),
    # What grpcio itself charges for having interceptors at all: bare grpcio
    # with 2 empty ones (as many as pycontainer's) ÷ without, same load.
    *(
        Row(
            f"floor-{kind}-cpu",
            "",
            "context",
            f"health Check, {kind} server, plaintext, bare grpcio with 2 empty interceptors, "
            "server CPU per call at saturation",
            "the same server without interceptors, same load",
            "µs CPU/call",
            False,
            lambda ctx, kind=kind: cpu_per_call(
                ctx, f"health-{kind}-noop", HEALTH_CHECK, b"", tls=False
            ),
        )
        for kind in ("sync", "aio")
    ),
    Row(
        "floor-echo-cpu",
        "",
        "context",
        "app unary RPC, sync server (4 workers), bare grpcio with 2 empty interceptors, "
        "server CPU per call at saturation",
        "the same server without interceptors, same load",
        "µs CPU/call",
        False,
        lambda ctx: cpu_per_call(ctx, "echo-noop", ECHO, b"x", tls=False),
    ),
    Row(
        "p6-interceptor-cpu",
        "P6",
        "≥ 0.95 (part of P6)",
        "app unary RPC with pycontainer's app interceptor, server CPU per call at saturation",
        "the same server without it, same load",
        "µs CPU/call",
        False,
        lambda ctx: cpu_per_call(ctx, "echo-interceptor", ECHO, b"x", tls=False),
    ),
    Row(
        "p6-embedded-cpu",
        "P6",
        "≥ 0.95",
        "sync app unary RPC, pycontainer embedded (interceptors, 2 log + 2 metrics "
        "watchers), server CPU per call at saturation",
        "the same app without pycontainer, same load",
        "µs CPU/call",
        False,
        lambda ctx: cpu_per_call(ctx, "echo-embedded", ECHO, b"x", tls=False, watchers=True),
    ),
]

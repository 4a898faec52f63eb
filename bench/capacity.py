"""Server CPU per call at saturation: each server (pycontainer's and bare
grpcio's) in a process of its own, loaded by client processes that keep many
calls in flight; the servers' CPU time (user + system, all threads: their own
``time.process_time()``, asked over a pipe, precise where psutil's clock
ticks are 10 ms) over the calls they answered.

Both servers run for the whole row; the load goes to one, then the other, in
alternating slices, so that both see the same moments of a noisy machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import tempfile
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .harness import Context, Sample

# Client processes, and calls each keeps in flight: enough to keep a
# GIL-bound server busy on 2 cores, few enough to leave it a core.
CLIENTS = 2
IN_FLIGHT = 8
# Slices of the load, alternating between the servers, at least this long
# (a slice starts and ends IN_FLIGHT calls in each client: ~ms).
SLICE_SECONDS = 0.25
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
ECHO = "/demo.Echo/Echo"
NOTE = "CPU µs per call; ratio: bare ÷ pycontainer (≥ 0.95 is the goal)"

_spawn = multiprocessing.get_context("spawn")


@dataclass(frozen=True)
class Tls:
    """Where the bench's PKI is (pycontainer.security's CA), as paths a child can use."""

    directory: str
    container_id: str

    def files(self, who: str) -> Any:
        from pycontainer import security

        return security.CredentialFiles.in_directory(Path(self.directory) / who)


@contextlib.contextmanager
def pki(container_id: str) -> Iterator[Tls]:
    from pycontainer import security

    with tempfile.TemporaryDirectory(prefix="bench-capacity-pki-") as tmp:
        ca = security.CertificateAuthority.open(Path(tmp) / "ca")
        server = security.CredentialFiles.in_directory(Path(tmp) / "server")
        client = security.CredentialFiles.in_directory(Path(tmp) / "client")
        security.ensure_leaf(ca, server, security.container(container_id), hosts=["127.0.0.1"])
        security.ensure_leaf(ca, client, security.user("admin"))
        yield Tls(tmp, container_id)


# -- the servers (in their own processes) ------------------------------------------------
def _echo_handler() -> Any:
    import grpc

    return grpc.method_handlers_generic_handler(
        "demo.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda r, c: r)}
    )


def _port(server: Any, tls: Tls | None) -> int:
    from pycontainer import security

    if tls is None:
        port: int = server.add_insecure_port("127.0.0.1:0")
    else:
        creds = security.server_credentials(tls.files("server"))
        port = server.add_secure_port("127.0.0.1:0", creds)
    return port


class _Noop:
    """An empty interceptor: what grpcio charges for having one at all."""

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        return continuation(details)


class _AioNoop:
    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        return await continuation(details)


def _serve(kind: str, ours: bool, container_id: str, tls: Tls | None, conn: Connection) -> None:
    """A server of ``kind`` until told to stop; sends its port first. The
    "-noop" kinds put bare grpcio with 2 empty interceptors on the ours side."""
    if kind.startswith("health-aio"):
        asyncio.run(_serve_aio(kind, ours, container_id, tls, conn))
        return
    if kind in ("health-sync-noop", "echo-noop"):
        import grpc
        from grpc_health.v1 import health, health_pb2_grpc

        noops = [_noop(grpc.ServerInterceptor, _Noop) for _ in range(2)] if ours else []
        workers = 16 if kind == "health-sync-noop" else 4
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), interceptors=noops)
        if kind == "echo-noop":
            server.add_generic_rpc_handlers((_echo_handler(),))
        else:
            health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        port = _port(server, tls)
        server.start()
        conn.send(port)
        _answer(conn)
        server.stop(None)
        return
    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    import pycontainer

    container = None
    if kind == "health-sync":
        workers, interceptors = 16, []
        if ours:
            container = pycontainer.Container(
                pycontainer.ContainerSettings(name="bench-capacity", id=container_id)
            )
            interceptors = [container.authorization_interceptor(), container.server_interceptor()]
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers), interceptors=interceptors
        )
        if container is not None:
            container.add_to_server(server)
        else:
            health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    else:  # "echo-embedded" / "echo-interceptor": the app's own unary RPC, 4 workers
        interceptors = []
        if ours:
            container = pycontainer.Container(
                pycontainer.ContainerSettings(
                    name="bench-capacity", id=container_id, stream_limit=16
                )
            )
            interceptors = (
                [container.authorization_interceptor(), container.server_interceptor()]
                if kind == "echo-embedded"
                else [container.server_interceptor()]
            )
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=interceptors)
        if container is not None and kind == "echo-embedded":
            container.add_to_server(server)
        server.add_generic_rpc_handlers((_echo_handler(),))
    port = _port(server, tls)
    server.start()
    if container is not None:
        container.start()
    conn.send(port)
    _answer(conn)
    server.stop(None)
    if container is not None:
        container.close()


def _answer(conn: Connection) -> None:
    """Tell this process's CPU seconds when asked, until told to stop."""
    while conn.recv() == "cpu":
        conn.send(time.process_time())


def _noop(base: Any, body: Any) -> Any:
    """An instance of ``body``'s interceptor on grpcio's interceptor ``base``."""
    return type(body.__name__, (body, base), {})()


async def _serve_aio(
    kind: str, ours: bool, container_id: str, tls: Tls | None, conn: Connection
) -> None:
    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    import pycontainer

    container = None
    if kind == "health-aio-noop":
        noops = [_noop(grpc.aio.ServerInterceptor, _AioNoop) for _ in range(2)] if ours else []
        server = grpc.aio.server(interceptors=noops)
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    elif ours:
        container = pycontainer.Container(
            pycontainer.ContainerSettings(name="bench-capacity", id=container_id)
        )
        server = grpc.aio.server(
            interceptors=[
                container.aio_authorization_interceptor(),
                container.aio_server_interceptor(),
            ]
        )
        container.add_to_server(server)
    else:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = _port(server, tls)
    await server.start()
    if container is not None:
        await container.astart()
    conn.send(port)
    await asyncio.to_thread(_answer, conn)
    await server.stop(None)
    if container is not None:
        container.close()


# -- the load (in client processes) ------------------------------------------------------
def _load(
    addresses: list[str], method: str, request: bytes, tls: Tls | None, conn: Connection
) -> None:
    asyncio.run(_aload(addresses, method, request, tls, conn))


async def _aload(
    addresses: list[str], method: str, request: bytes, tls: Tls | None, conn: Connection
) -> None:
    import grpc

    from pycontainer import security

    if tls is None:
        channels = [grpc.aio.insecure_channel(a) for a in addresses]
    else:
        creds = security.channel_credentials(tls.files("client"))
        options = security.server_name_options(security.container(tls.container_id))
        channels = [grpc.aio.secure_channel(a, creds, options=options) for a in addresses]
    calls = [ch.unary_unary(method) for ch in channels]
    loop = asyncio.get_running_loop()

    async def caller(call: Any, until: float) -> int:
        n = 0
        while loop.time() < until:
            await call(request, timeout=10)
            n += 1
        return n

    conn.send("ready")
    while True:
        command = await asyncio.to_thread(conn.recv)
        if command is None:
            break
        side, seconds = command
        until = loop.time() + seconds
        counts = await asyncio.gather(*(caller(calls[side], until) for _ in range(IN_FLIGHT)))
        conn.send(sum(counts))
    for ch in channels:
        await ch.close()


# -- the row -----------------------------------------------------------------------------
def cpu_per_call(
    ctx: Context, kind: str, method: str, request: bytes, *, tls: bool, watchers: bool = False
) -> list[Sample]:
    """Server CPU µs per call of ``kind``'s servers, pycontainer's and bare."""
    container_id = "bench-capacity-0001"
    with pki(container_id) if tls else contextlib.nullcontext() as creds:
        servers, links = [], []
        try:
            for ours in (False, True):  # bare is side 0, ours side 1
                parent, child = _spawn.Pipe()
                proc = _spawn.Process(
                    target=_serve, args=(kind, ours, container_id, creds, child), daemon=True
                )
                proc.start()
                servers.append(proc)
                links.append(parent)
            if not all(link.poll(60) for link in links):
                raise RuntimeError(f"the {kind} servers did not start within 60 s")
            addresses = [f"127.0.0.1:{link.recv()}" for link in links]
            with _watching(addresses[1], creds) if watchers else contextlib.nullcontext():
                return _measure(ctx, links, addresses, method, request, creds)
        finally:
            for link in links:
                with contextlib.suppress(OSError):
                    link.send("stop")
            for proc in servers:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
                    proc.join()


def _measure(
    ctx: Context,
    servers: list[Connection],
    addresses: list[str],
    method: str,
    request: bytes,
    tls: Tls | None,
) -> list[Sample]:
    clients, links = [], []
    try:
        for _ in range(CLIENTS):
            parent, child = _spawn.Pipe()
            proc = _spawn.Process(
                target=_load, args=(addresses, method, request, tls, child), daemon=True
            )
            proc.start()
            clients.append(proc)
            links.append(parent)
        for link in links:
            if not link.poll(60) or link.recv() != "ready":
                raise RuntimeError("a load process did not start within 60 s")

        def cpu_seconds(side: int) -> float:
            servers[side].send("cpu")
            seconds: float = servers[side].recv()
            return seconds

        def run(side: int, seconds: float) -> tuple[int, float]:
            before = cpu_seconds(side)
            for link in links:
                link.send((side, seconds))
            calls = sum(link.recv() for link in links)
            return calls, cpu_seconds(side) - before

        for side in (0, 1):  # warm up both
            run(side, min(0.5, ctx.seconds))
        out = []
        for _ in range(ctx.rounds):
            totals = [[0, 0.0], [0, 0.0]]  # calls, CPU seconds: bare, ours
            slices = max(2, round(ctx.seconds / SLICE_SECONDS))
            for _ in range(slices):
                for side in (0, 1):
                    calls, cpu = run(side, ctx.seconds / slices)
                    totals[side][0] += calls
                    totals[side][1] += cpu
            bare, ours = (cpu / max(1, calls) * 1e6 for calls, cpu in totals)
            out.append(Sample(ours=ours, bare=bare, ratio=bare / ours, note=NOTE))
        return out
    finally:
        for link in links:
            with contextlib.suppress(OSError):
                link.send(None)
        for proc in clients:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()


@contextlib.contextmanager
def _watching(address: str, tls: Tls | None) -> Iterator[None]:
    """2 StreamLogs and 2 WatchMetrics followers of ``address``, from this
    process (as `pycontainer logs -f` / `top` are), for the duration."""
    import threading

    from google.protobuf import duration_pb2

    from pycontainer.client import ManagementClient
    from pycontainer.v1 import management_pb2

    if tls is not None:
        raise NotImplementedError("watchers are opened over plaintext only")
    client = ManagementClient(address)
    streams: list[Any] = []
    for _ in range(2):
        streams.append(client.stream_logs(management_pb2.StreamLogsRequest(follow=True)))
        streams.append(
            client.watch_metrics(
                management_pb2.WatchMetricsRequest(
                    interval=duration_pb2.Duration(nanos=100_000_000)
                )
            )
        )
    drainers = [threading.Thread(target=_drain, args=(s,), daemon=True) for s in streams]
    for t in drainers:
        t.start()
    try:
        yield
    finally:
        client.close()  # cancels their streams: each drainer ends
        for t in drainers:
            t.join(5)


def _drain(stream: Iterator[Any]) -> None:
    for _ in stream:
        pass

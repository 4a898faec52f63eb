"""Manager benchmarks, each against bare grpcio measured in the same run.

    .venv/bin/python bench/manager_bench.py [--stops 200] [--sessions 2000]
    .venv/bin/python bench/manager_bench.py --stops 20 --sessions 200 --agents 2  # quick

1. StopContainer -> on_stop latency (p50, p99): an operator's StopContainer
   until the container's on_stop hook runs (two hops: operator -> manager,
   manager -> container over its Lifecycle stream), against a bare grpcio
   unary round trip.
2. Sessions one manager holds: simulated agents in a few processes each keep
   Lifecycle streams open (registered, RUNNING); the manager's RSS against a
   bare grpc.aio server holding as many bidirectional streams.
"""

from __future__ import annotations

import argparse
import datetime
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent import futures

import grpc
import psutil

import pycontainer
from pycontainer.testing import container_host, manager_host
from pycontainer.v1 import manager_pb2

_STOP_TIMEOUT = datetime.timedelta(seconds=10)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bare_unary_latency(n: int) -> list[float]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda r, c: r)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    out = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        echo = channel.unary_unary("/bench.Echo/Echo")
        for _ in range(50):
            echo(b"x")
        for _ in range(n):
            t0 = time.perf_counter()
            echo(b"x")
            out.append(time.perf_counter() - t0)
    server.stop(None)
    return out


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {predicate}")
        time.sleep(0.01)


def stop_latency(n: int) -> list[float]:
    latencies = []
    with tempfile.TemporaryDirectory() as state, manager_host(state) as manager:
        for i in range(n):
            hit: list[float] = []
            hooks = pycontainer.Hooks(
                on_stop=lambda reason, deadline, hit=hit: hit.append(time.perf_counter())
            )
            settings = pycontainer.ContainerSettings(name=f"stop-{i}", log_level=None)
            with container_host(settings, manager=manager, hooks=hooks) as host:
                container = host.container
                wait_until(lambda c=container: c.state == pycontainer.State.RUNNING)
                t0 = time.perf_counter()
                manager.client.stop_container(
                    manager_pb2.StopContainerRequest(container=container.id),
                    timeout=_STOP_TIMEOUT,
                )
                latencies.append(hit[0] - t0)
    return latencies


# -- sessions ----------------------------------------------------------------------------
AGENT = r"""
import asyncio, sys, grpc
from pycontainer.v1 import container_pb2, lifecycle_pb2, lifecycle_pb2_grpc
target, first, count, method = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

async def session(stub, i, ready):
    queue = asyncio.Queue()
    queue.put_nowait(lifecycle_pb2.ConnectRequest(register=lifecycle_pb2.Registration(
        identity=container_pb2.ContainerIdentity(id=f"sim-{i}", name=f"sim-{i}"),
        state=container_pb2.LIFECYCLE_STATE_RUNNING, pid=i)))
    async def requests():
        while True:
            yield await queue.get()
    call = stub(requests())
    async for _ in call:
        ready.release()

async def main():
    async with grpc.aio.insecure_channel(target) as channel:
        if method == "manager":
            stub = lifecycle_pb2_grpc.LifecycleStub(channel).Connect
        else:
            stub = channel.stream_stream("/bench.Hold/Hold",
                request_serializer=lifecycle_pb2.ConnectRequest.SerializeToString,
                response_deserializer=lifecycle_pb2.ConnectResponse.FromString)
        ready = asyncio.Semaphore(0)
        tasks = [asyncio.ensure_future(session(stub, first + i, ready)) for i in range(count)]
        for _ in range(count):
            await ready.acquire()
        print("ready", flush=True)
        await asyncio.gather(*tasks)
asyncio.run(main())
"""

BARE = r"""
import asyncio, sys, grpc
from pycontainer.v1 import lifecycle_pb2
async def hold(request_iterator, context):
    async for _ in request_iterator:
        yield lifecycle_pb2.ConnectResponse(registered=lifecycle_pb2.RegistrationAck())
async def main():
    server = grpc.aio.server(options=[("grpc.server.max_pending_requests", 20000),
        ("grpc.server.max_pending_requests_hard_limit", 40000),
        ("grpc.max_concurrent_streams", 100000)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Hold", {
        "Hold": grpc.stream_stream_rpc_method_handler(hold,
            request_deserializer=lifecycle_pb2.ConnectRequest.FromString,
            response_serializer=lifecycle_pb2.ConnectResponse.SerializeToString)}),))
    server.add_insecure_port(sys.argv[1])
    await server.start()
    print("serving", flush=True)
    await server.wait_for_termination()
asyncio.run(main())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def held_sessions(sessions: int, agents: int, bare: bool) -> tuple[float, float]:
    """(RSS MiB of the server process holding the sessions, seconds to connect all)."""
    port = _free_port()
    target = f"127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as state:
        if bare:
            server = subprocess.Popen(
                [sys.executable, "-c", BARE, target], stdout=subprocess.PIPE, text=True
            )
        else:
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pycontainer.cli",
                    "manager",
                    "--listen",
                    target,
                    "--state-dir",
                    state,
                    "--heartbeat",
                    "60s",
                    # The simulated agents dial plaintext (the default is mutual TLS).
                    "--insecure",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
        assert server.stdout is not None
        server.stdout.readline()
        idle_rss = psutil.Process(server.pid).memory_info().rss
        per = sessions // agents
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    AGENT,
                    target,
                    str(i * per),
                    str(per),
                    "bare" if bare else "manager",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(agents)
        ]
        try:
            for p in procs:
                assert p.stdout is not None
                line = p.stdout.readline()
                assert line.strip() == "ready", f"agent failed: {line!r}"
            elapsed = time.perf_counter() - t0
            time.sleep(1.0)
            rss = psutil.Process(server.pid).memory_info().rss
        finally:
            for p in procs:
                p.kill()
                p.wait()
            server.terminate()
            server.wait(10)
    return (rss - idle_rss) / 2**20, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stops", type=int, default=200, help="stop latency samples")
    parser.add_argument("--sessions", type=int, default=2000, help="sessions to hold")
    parser.add_argument("--agents", type=int, default=4, help="agent processes")
    args = parser.parse_args()

    bare = bare_unary_latency(args.stops * 5)
    stops = stop_latency(args.stops)
    print(f"{'figure':46} {'bare grpcio':>12} {'pycontainer':>12} {'ratio':>7}")
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        b, s = percentile(bare, q) * 1e3, percentile(stops, q) * 1e3
        print(
            f"{'StopContainer -> on_stop latency ' + name + ' (ms)':46} {b:>12.2f} {s:>12.2f}"
            f" {s / b:>7.2f}"
        )
    print(
        f"  (bare: one unary round trip; mean stop {statistics.mean(stops) * 1e3:.2f} ms "
        f"over {len(stops)} stops)"
    )
    bare_mib, bare_s = held_sessions(args.sessions, args.agents, bare=True)
    mgr_mib, mgr_s = held_sessions(args.sessions, args.agents, bare=False)
    print(
        f"{'RSS for ' + str(args.sessions) + ' sessions (MiB over idle)':46} {bare_mib:>12.1f}"
        f" {mgr_mib:>12.1f} {mgr_mib / max(bare_mib, 0.1):>7.2f}"
    )
    print(
        f"{'time to connect them all (s)':46} {bare_s:>12.1f} {mgr_s:>12.1f} {mgr_s / bare_s:>7.2f}"
    )
    print(
        f"  ({mgr_mib * 1024 / args.sessions:.1f} KiB per manager session; "
        f"bare {bare_mib * 1024 / args.sessions:.1f} KiB per stream)"
    )


if __name__ == "__main__":
    main()

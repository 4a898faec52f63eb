"""P4 at scale: N simulated containers registered with one manager, and a
stop of a selected set of them, each against a bare grpc.aio server doing
the same in the same run.

    .venv/bin/python -m bench.manager_scale --sessions 20000 --agents 4
    .venv/bin/python -m bench.manager_scale --sessions 2000 --agents 2   # quick

Simulated agents (a few processes, each holding many Lifecycle streams on one
channel) register RUNNING with a label ``set``: the first N/20 ``a``, the
next N/2 ``b``, the rest ``c``. Measured, for the manager
(`pycontainer manager --insecure`) and for a bare grpc.aio server holding as
many bidirectional streams:

- registration: from spawning the agents until every stream has its first
  answer (the manager's RegistrationAck);
- RSS of the server process once all are held;
- stop of set ``a`` (1,000 of 20,000), then of set ``b`` (10,000): from the
  request until every targeted agent has received its Stop command (the
  agents note the time, CLOCK_MONOTONIC, shared by processes). The manager
  gets one StopContainers request with a label selector; the bare server one
  unary call after which it writes a Stop command down each of those
  streams. A simulated agent answers the manager as a container does: the
  state change to STOPPED, the command's result, then the end of its stream.

The manager runs with --heartbeat 600s: the simulated agents send no
heartbeats (the cost of idle sessions' heartbeats is P7's row), and a 20,000
run is not cut short by the watchdog. Each stop also prints when its first
Stop arrived and when the call was answered.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil

from pycontainer.v1 import manager_pb2, manager_pb2_grpc

from .manager_bench import _free_port

AGENT = r"""
import asyncio, os, sys, time, grpc
from pycontainer.v1 import container_pb2, lifecycle_pb2, lifecycle_pb2_grpc
target, first, count, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
a_end, b_end = int(sys.argv[5]), int(sys.argv[6])
S = container_pb2
stops = []

def label(i):
    return "a" if i < a_end else "b" if i < b_end else "c"

async def session(stub, i, ready):
    queue = asyncio.Queue()
    queue.put_nowait(lifecycle_pb2.ConnectRequest(register=lifecycle_pb2.Registration(
        identity=container_pb2.ContainerIdentity(id=f"sim-{i}", name=f"sim-{i}",
            labels={"set": label(i)}),
        state=S.LIFECYCLE_STATE_RUNNING, pid=i)))
    async def requests():
        while True:
            message = await queue.get()
            if message is None:
                return
            yield message
    first = True
    try:
        async for response in stub(requests()):
            first = await answer(response, queue, first, ready)
    except grpc.aio.AioRpcError as exc:
        if first:  # never registered: say why, and end (the bench waits for "ready")
            print(f"failed {exc.code().name}: {exc.details()}", flush=True)
            os._exit(1)

async def answer(response, queue, first, ready):
    if first:
        ready.release()
    if response.WhichOneof("message") == "command" and response.command.HasField("stop"):
        stops.append(time.monotonic())
        if mode == "manager":
            cid = response.command.id
            queue.put_nowait(lifecycle_pb2.ConnectRequest(state_change=lifecycle_pb2.StateChange(
                from_state=S.LIFECYCLE_STATE_RUNNING, to_state=S.LIFECYCLE_STATE_STOPPED,
                command_id=cid)))
            queue.put_nowait(lifecycle_pb2.ConnectRequest(command_result=lifecycle_pb2.CommandResult(
                command_id=cid, state=S.LIFECYCLE_STATE_STOPPED)))
            queue.put_nowait(None)
    return False

async def report():
    told = 0
    while True:
        await asyncio.sleep(0.02)
        if len(stops) != told:
            new, told = stops[told:], len(stops)
            print(f"stops {told} {max(stops):.6f} {min(new):.6f}", flush=True)

async def main():
    options = [("grpc.max_concurrent_streams", 100000)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        if mode == "manager":
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
        reporter = asyncio.ensure_future(report())
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(3600)
asyncio.run(main())
"""

BARE = r"""
import asyncio, sys, grpc, uuid
from pycontainer.v1 import container_pb2, lifecycle_pb2
held = {}  # label -> queues

async def hold(request_iterator, context):
    queue = asyncio.Queue()
    first = await anext(aiter(request_iterator))
    held.setdefault(first.register.identity.labels["set"], []).append(queue)
    yield lifecycle_pb2.ConnectResponse(registered=lifecycle_pb2.RegistrationAck())
    while True:
        yield await queue.get()

async def stop(request, context):
    for queue in held.get(request.decode(), []):
        queue.put_nowait(lifecycle_pb2.ConnectResponse(command=lifecycle_pb2.Command(
            id=uuid.uuid4().hex, stop=lifecycle_pb2.StopCommand())))
    return b""

async def main():
    server = grpc.aio.server(options=[("grpc.server.max_pending_requests", 20000),
        ("grpc.server.max_pending_requests_hard_limit", 40000),
        ("grpc.max_concurrent_streams", 100000),
        ("grpc.server_max_unrequested_time_in_server", 3600)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Hold", {
        "Hold": grpc.stream_stream_rpc_method_handler(hold,
            request_deserializer=lifecycle_pb2.ConnectRequest.FromString,
            response_serializer=lifecycle_pb2.ConnectResponse.SerializeToString),
        "Stop": grpc.unary_unary_rpc_method_handler(stop)}),))
    server.add_insecure_port(sys.argv[1])
    await server.start()
    print("serving", flush=True)
    await server.wait_for_termination()
asyncio.run(main())
"""


@dataclasses.dataclass
class Figures:
    """One side's figures (seconds, MiB)."""

    register_s: float
    rss_mib: float
    stop_a_s: float
    stop_b_s: float


class _Agent:
    """One agent process; a thread reads what it says of the stops it received."""

    def __init__(self, command: list[str]) -> None:
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self.count = 0
        self.last = 0.0
        # The earliest stop of each report (the first of a phase is among them).
        self.firsts: list[float] = []
        self.lock = threading.Lock()
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"agent failed: {line!r} (exit {self.proc.poll()})")
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.split()
            if len(parts) == 4 and parts[0] == "stops":
                with self.lock:
                    self.count, self.last = int(parts[1]), float(parts[2])
                    self.firsts.append(float(parts[3]))

    def seen(self) -> tuple[int, float]:
        with self.lock:
            return self.count, self.last


def _wait_stops(agents: list[_Agent], wanted: int, timeout: float) -> float:
    """CLOCK_MONOTONIC when the last of ``wanted`` stops (over all agents) arrived."""
    deadline = time.monotonic() + timeout
    while True:
        seen = [a.seen() for a in agents]
        if sum(c for c, _ in seen) >= wanted:
            return max(t for _, t in seen)
        if time.monotonic() > deadline:
            got = sum(c for c, _ in seen)
            raise TimeoutError(f"{got} of {wanted} stops received within {timeout:g}s")
        time.sleep(0.01)


@contextlib.contextmanager
def _server(bare: bool, target: str) -> Iterator[subprocess.Popen[str]]:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as state:
        if bare:
            command = [sys.executable, "-c", BARE, target]
        else:
            command = [sys.executable, "-m", "pycontainer.cli", "manager", "--listen", target]
            command += ["--state-dir", state, "--heartbeat", "600s", "--insecure"]
        server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            server.stdout.readline()
            yield server
        finally:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)


@contextlib.contextmanager
def _profiled(pid: int, out: Path | None, phase: str) -> Iterator[None]:
    """py-spy record of process ``pid`` over the block, into ``out``/``phase``.txt
    (raw collapsed stacks); nothing without ``out``."""
    if out is None:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    command = [
        str(Path(sys.executable).with_name("py-spy")),
        "record",
        "-r",
        "100",
        "-f",
        "raw",
        "--nonblocking",
    ]
    command += ["-o", str(out / f"{phase}.txt"), "--pid", str(pid)]
    if os.environ.get("BENCH_PYSPY_NATIVE"):  # C frames too (the collector, grpc-core)
        command.append("--native")
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # attached
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)


def measure(
    sessions: int, agents: int, bare: bool, timeout: float = 300.0, profile: Path | None = None
) -> Figures:
    a_end, b_end = sessions // 20, sessions // 20 + sessions // 2
    target = f"127.0.0.1:{_free_port()}"
    with _server(bare, target) as server:
        t0 = time.perf_counter()
        held: list[_Agent] = []
        per = sessions // agents
        mode = "bare" if bare else "manager"

        def agent(i: int) -> None:
            first = str(i * per)
            command = [sys.executable, "-c", AGENT, target, first, str(per), mode]
            held.append(_Agent([*command, str(a_end), str(b_end)]))

        try:
            starting = [threading.Thread(target=agent, args=(i,)) for i in range(agents)]
            with _profiled(server.pid, profile, "register"):
                for thread in starting:
                    thread.start()
                for thread in starting:
                    thread.join(timeout)
            if len(held) != agents:
                raise RuntimeError(f"{agents - len(held)} agents did not connect")
            register_s = time.perf_counter() - t0
            time.sleep(1.0)
            rss = psutil.Process(server.pid).memory_info().rss / 2**20
            with _profiled(server.pid, profile, "stop-a"):
                stop_a = _stop(target, bare, "a", held, a_end, timeout)
            with _profiled(server.pid, profile, "stop-b"):
                stop_b = _stop(target, bare, "b", held, b_end, timeout)
        finally:
            for each in held:
                each.proc.kill()
                each.proc.wait()
    return Figures(register_s, rss, stop_a, stop_b)


def _stop(
    target: str, bare: bool, label: str, agents: list[_Agent], total: int, timeout: float
) -> float:
    """Seconds from the request until the last of the set's agents has its Stop."""
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        if bare:
            call = channel.unary_unary(
                "/bench.Hold/Stop", request_serializer=None, response_deserializer=None
            )
            t0 = time.monotonic()
            future = call.future(label.encode(), timeout=timeout)
        else:
            stub = manager_pb2_grpc.ManagerStub(channel)
            request = manager_pb2.StopContainersRequest(label_selector=f"set={label}")
            t0 = time.monotonic()
            future = stub.StopContainers.future(request, timeout=timeout)
        last = _wait_stops(agents, total, timeout)
        future.result(timeout=timeout)
        done = time.monotonic()
    first = min(t for a in agents for t in a.firsts if t >= t0)
    print(
        f"  stop of set {label}: first Stop at {first - t0:.3f}s, last {last - t0:.3f}s, "
        f"answered at {done - t0:.3f}s",
        file=sys.stderr,
        flush=True,
    )
    return last - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20000)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--only", choices=("bare", "manager"), help="one side only")
    parser.add_argument("--profile", type=Path, help="py-spy the manager's phases into DIR")
    args = parser.parse_args(argv)
    out: dict[str, object] = {}
    for side in ("bare", "manager"):
        if args.only and side != args.only:
            continue
        profile = args.profile if side == "manager" else None
        f = measure(args.sessions, args.agents, bare=side == "bare", profile=profile)
        out[side] = dataclasses.asdict(f)
        print(side, json.dumps(out[side]), file=sys.stderr, flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

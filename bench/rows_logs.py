"""Rows of the logs: StreamLogs throughput (P3), follow latency (P3c) and the
cost of log capture to the app (P3d)."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from pycontainer.client import ManagementClient
from pycontainer.v1 import (
    container_pb2,
    logs_pb2,
    management_pb2,
    management_pb2_grpc,
    manager_pb2,
    spec_pb2,
)

from .harness import ROOT, Context, Row, Sample, percentile
from .rows_servers import SLICES, make_container

# The streams of a benchmark carry up to 64 MiB messages (10,000 entries a batch).
_LARGE_MESSAGES = [("grpc.max_receive_message_length", 64 << 20)]
MAX_BATCH = 10_000
ATTRIBUTES = {"path": "/api/v1/items", "status": "200", "method": "GET", "thread": "worker-7"}
SEVERITY_INFO = 9


# -- P3: entries/s of a full buffer ------------------------------------------------------
# The P3: StreamLogs of a full buffer to a Python client that decodes
# every batch, against a bare grpcio server streaming the same entries
# serialized beforehand. The entries are logged before the clock starts, as
# the bare server's are serialized before it: what logging costs the app is
# P3d's row; p3-live measures both together.
MESSAGE = "processed request id={}"
REGEX = r"request id=\d+$"  # every entry matches: the filter runs on each, all are sent


def _fill(buffer: Any, total: int, attributes: dict[str, str] | None) -> None:
    for i in range(total):
        buffer.append(SEVERITY_INFO, "INFO", "bench.worker", MESSAGE.format(i), attributes)


class _Served:
    """A container with ``total`` entries logged, on a sync grpc.server."""

    def __init__(self, total: int, attributes: dict[str, str] | None) -> None:
        self.container = make_container("bench-logs", log_capacity=max(total, 1), log_level=None)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.container.add_to_server(self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.container.start()
        _fill(self.container.logs, total, attributes)

    def close(self) -> None:
        self.server.stop(None)
        self.container.close()


class _Bare:
    """A bare grpcio server streaming ``total`` entries as batches of
    ``batch``, each serialized once beforehand."""

    def __init__(self, total: int, batch: int, attributes: dict[str, str] | None) -> None:
        payload = management_pb2.StreamLogsResponse(
            entries=_entries(batch, attributes)
        ).SerializeToString()
        batches = max(1, total // batch)

        def stream(request: bytes, context: Any) -> Iterator[bytes]:
            for _ in range(batches):
                yield payload

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handler = grpc.method_handlers_generic_handler(
            "bench.Logs", {"Stream": grpc.unary_stream_rpc_method_handler(stream)}
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def close(self) -> None:
        self.server.stop(None)


def _read(port: int, bare: bool, request: management_pb2.StreamLogsRequest) -> tuple[int, float]:
    """Entries received and seconds taken by one stream, every batch decoded."""
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=_LARGE_MESSAGES) as channel:
        if bare:
            call = channel.unary_stream(
                "/bench.Logs/Stream",
                response_deserializer=management_pb2.StreamLogsResponse.FromString,
            )
            responses = call(b"", timeout=300)
        else:
            responses = management_pb2_grpc.ManagementStub(channel).StreamLogs(request, timeout=300)
        seen, t0 = 0, time.perf_counter()
        for response in responses:
            seen += len(response.entries)
        return seen, time.perf_counter() - t0


def full_buffer(ctx: Context, attributes: dict[str, str] | None, pattern: str = "") -> list[Sample]:
    total = ctx.count(1_000_000, minimum=100_000)
    request = management_pb2.StreamLogsRequest(max_batch_size=MAX_BATCH, pattern=pattern)
    out = []
    for _ in range(ctx.rounds):
        served = _Served(total, attributes)
        try:
            seen, elapsed = _read(served.port, False, request)
        finally:
            served.close()
        if seen != total:
            raise RuntimeError(f"StreamLogs sent {seen:,} of {total:,} entries")
        bare = _Bare(total, MAX_BATCH, attributes)
        try:
            bare_seen, bare_elapsed = _read(bare.port, True, request)
        finally:
            bare.close()
        out.append(
            Sample(
                seen / elapsed,
                bare_seen / bare_elapsed,
                note=f"{total:,} entries a round, batches of {MAX_BATCH:,}",
            )
        )
    return out


# -- P3, K followers: clients in processes of their own ------------------------------------
FOLLOWERS = 4
_CLIENT = """
import sys, time, grpc
from pycontainer.v1 import management_pb2, management_pb2_grpc
port, bare = sys.argv[1], sys.argv[2] == "bare"
options = [("grpc.max_receive_message_length", 64 << 20)]
with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
    grpc.channel_ready_future(channel).result(timeout=60)
    print("ready", flush=True)
    sys.stdin.readline()  # go
    t0 = time.monotonic()
    if bare:
        call = channel.unary_stream(
            "/bench.Logs/Stream",
            response_deserializer=management_pb2.StreamLogsResponse.FromString,
        )
        responses = call(b"", timeout=300)
    else:
        request = management_pb2.StreamLogsRequest(max_batch_size=10000)
        responses = management_pb2_grpc.ManagementStub(channel).StreamLogs(request, timeout=300)
    seen = sum(len(r.entries) for r in responses)
    print(seen, t0, time.monotonic())
"""


def _followers(port: int, bare: bool, k: int) -> float:
    """Entries/s of ``k`` streams together, each read by a client process
    of its own that decodes every batch; all start at once."""
    side = "bare" if bare else "ours"
    clients = [
        subprocess.Popen(
            [sys.executable, "-c", _CLIENT, str(port), side],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(k)
    ]
    try:
        for c in clients:
            if c.stdout is None or c.stdout.readline().strip() != "ready":
                raise RuntimeError("a log client process did not start")
        for c in clients:
            assert c.stdin is not None
            c.stdin.write("go\n")
            c.stdin.flush()
        results = [c.communicate(timeout=300)[0].split() for c in clients]
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
                c.wait()
    seen = sum(int(r[0]) for r in results)
    start, end = min(float(r[1]) for r in results), max(float(r[2]) for r in results)
    return seen / (end - start)


def followers(ctx: Context) -> list[Sample]:
    total = ctx.count(1_000_000, minimum=100_000)
    out = []
    for _ in range(ctx.rounds):
        served = _Served(total, ATTRIBUTES)
        try:
            ours = _followers(served.port, False, FOLLOWERS)
        finally:
            served.close()
        bare_server = _Bare(total, MAX_BATCH, ATTRIBUTES)
        try:
            bare = _followers(bare_server.port, True, FOLLOWERS)
        finally:
            bare_server.close()
        out.append(
            Sample(ours, bare, note=f"{FOLLOWERS} streams of {total:,} entries a round, together")
        )
    return out


# -- P3, live: entries/s in one follow stream while they are logged ------------------------
def _follow_rate(total: int, attributes: dict[str, str] | None) -> tuple[float, float]:
    """Entries/s one follow stream receives (a Python client decoding every
    batch) while ``total`` entries are appended as fast as the process can;
    also the mean batch size."""
    container = make_container("bench-logs", log_capacity=1 << 20, log_level=None)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    container.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    container.start()
    buffer = container.logs
    try:
        with ManagementClient(f"127.0.0.1:{port}", options=_LARGE_MESSAGES) as client:
            seen = missed = batches = 0
            # The stream is live once the retained warm-up entry comes back.
            buffer.append(SEVERITY_INFO, "INFO", "bench.worker", "warm-up", attributes)
            stream = client.stream_logs(
                management_pb2.StreamLogsRequest(follow=True, tail=1, max_batch_size=MAX_BATCH)
            )
            next(stream)

            def produce() -> None:
                for i in range(total):
                    buffer.append(
                        SEVERITY_INFO,
                        "INFO",
                        "bench.worker",
                        MESSAGE.format(i),
                        attributes,
                    )

            producer = threading.Thread(target=produce)
            t0 = time.perf_counter()
            producer.start()
            for batch in stream:
                seen += len(batch.entries)
                missed += batch.missed
                batches += 1
                if seen + missed >= total:
                    break
            elapsed = time.perf_counter() - t0
            stream.close()  # cancels the call
            producer.join()
    finally:
        server.stop(None)
        container.close()
    return seen / elapsed, seen / max(1, batches)


def _entries(count: int, attributes: dict[str, str] | None) -> list[logs_pb2.LogEntry]:
    now = time.time_ns()
    return [
        logs_pb2.LogEntry(
            sequence=i + 1,
            time=timestamp_pb2.Timestamp(seconds=now // 10**9, nanos=now % 10**9),
            severity=SEVERITY_INFO,  # type: ignore[arg-type]
            severity_text="INFO",
            logger="bench.worker",
            message=MESSAGE.format(i),
            attributes=attributes or {},
        )
        for i in range(count)
    ]


def _bare_rate(total: int, batch: int, attributes: dict[str, str] | None) -> float:
    """Entries/s a bare grpcio server streams of the same entries, serialized
    once beforehand, to a client decoding every batch as StreamLogsResponse."""
    bare = _Bare(total, batch, attributes)
    try:
        seen, elapsed = _read(bare.port, True, management_pb2.StreamLogsRequest())
        return seen / elapsed
    finally:
        bare.close()


def stream_logs(ctx: Context, attributes: dict[str, str] | None) -> list[Sample]:
    total = ctx.count(1_000_000, minimum=100_000)
    out = []
    for _ in range(ctx.rounds):
        ours, mean_batch = _follow_rate(total, attributes)
        # The bare server sends batches of the size pycontainer's stream averaged.
        batch = max(1, min(MAX_BATCH, round(mean_batch)))
        bare = _bare_rate(max(total, batch), batch, attributes)
        out.append(Sample(ours, bare, note=f"{total:,} entries a round, logged meanwhile"))
    return out


# -- P3c: follow latency at a low rate -------------------------------------------------
def _latencies_ours(count: int, interval: float) -> list[float]:
    container = make_container("bench-follow", log_level=None)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    container.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    container.start()
    buffer = container.logs
    sent: dict[str, float] = {}
    out: list[float] = []
    try:
        with ManagementClient(f"127.0.0.1:{port}") as client:
            buffer.append(SEVERITY_INFO, "INFO", "bench", "warm-up")
            stream = client.stream_logs(management_pb2.StreamLogsRequest(follow=True, tail=1))
            next(stream)

            def produce() -> None:
                for i in range(count):
                    time.sleep(interval)
                    key = f"entry {i}"
                    sent[key] = time.perf_counter()
                    buffer.append(SEVERITY_INFO, "INFO", "bench", key, ATTRIBUTES)

            producer = threading.Thread(target=produce)
            producer.start()
            for batch in stream:
                now = time.perf_counter()
                out.extend(now - sent[e.message] for e in batch.entries)
                if len(out) >= count:
                    break
            stream.close()  # cancels the call
            producer.join()
    finally:
        server.stop(None)
        container.close()
    return out


def _latencies_bare(count: int, interval: float) -> list[float]:
    """A bare grpcio server-stream that sends each entry (serialized as it
    comes, from a queue) when it is put."""
    pending: queue.Queue[tuple[str, float] | None] = queue.Queue()
    sent: dict[str, float] = {}

    def stream(request: bytes, context: Any) -> Iterator[bytes]:
        yield b""  # the stream is open
        while (item := pending.get()) is not None:
            entry = logs_pb2.LogEntry(message=item[0], logger="bench", attributes=ATTRIBUTES)
            yield management_pb2.StreamLogsResponse(entries=[entry]).SerializeToString()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "bench.Follow", {"Stream": grpc.unary_stream_rpc_method_handler(stream)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    out: list[float] = []
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream(
                "/bench.Follow/Stream",
                response_deserializer=management_pb2.StreamLogsResponse.FromString,
            )
            responses = call(b"", timeout=120)
            next(responses)

            def produce() -> None:
                for i in range(count):
                    time.sleep(interval)
                    key = f"entry {i}"
                    sent[key] = time.perf_counter()
                    pending.put((key, sent[key]))
                pending.put(None)

            producer = threading.Thread(target=produce)
            producer.start()
            for response in responses:
                now = time.perf_counter()
                out.extend(now - sent[e.message] for e in response.entries)
            producer.join()
    finally:
        server.stop(None)
    return out


def follow_latency(ctx: Context) -> list[Sample]:
    count = ctx.count(200, minimum=15)
    interval = 0.02  # 50 entries/s: a quiet service
    out = []
    for _ in range(ctx.rounds):
        bare = _latencies_bare(count, interval)
        ours = _latencies_ours(count, interval)
        out.append(
            Sample(
                _p99(ours),
                _p99(bare),
                ours_latencies=ours,
                bare_latencies=bare,
                note=f"{count} entries a round at 50/s; headline p99",
            )
        )
    return out


def _p99(values: list[float]) -> float:
    return percentile(values, 0.99)


# -- P3d: logger.info with capture -----------------------------------------------------
def _timed_calls(logger: logging.Logger, seconds: float) -> tuple[int, float]:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for i in range(100):
            logger.info("processed request id=%d path=%s", i, "/api/v1/items")
        n += 100
    return n, time.perf_counter() - t0


def _per_call(ours: logging.Logger, bare: logging.Logger, seconds: float) -> tuple[float, float]:
    """Seconds per logger.info call of each, in alternating slices."""
    totals = [[0, 0.0], [0, 0.0]]
    for _ in range(SLICES):
        for side, logger in enumerate((bare, ours)):
            n, t = _timed_calls(logger, seconds / SLICES)
            totals[side][0] += n
            totals[side][1] += t
    bare_cost, our_cost = (t / n for n, t in totals)
    return our_cost, bare_cost


def logging_cost(ctx: Context) -> list[Sample]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers = []
    container = make_container("bench-capture", log_capacity=1 << 16)
    container.start()  # installs the capture on the root logger
    captured = logging.getLogger("bench.captured")
    bare = logging.getLogger("bench.devnull")
    bare.propagate = False
    bare.setLevel(logging.INFO)
    devnull = open(os.devnull, "w")  # noqa: SIM115 - closed below
    handler = logging.StreamHandler(devnull)
    bare.addHandler(handler)
    try:
        _per_call(captured, bare, 0.05)  # warm-up
        return [Sample(*_per_call(captured, bare, ctx.seconds)) for _ in range(ctx.rounds)]
    finally:
        bare.removeHandler(handler)
        devnull.close()
        container.close()
        root.handlers, root.level = saved_handlers, saved_level


# -- P3b: a sidecar's program through the manager to `pycontainer logs -f` ------------
# Prints "ready", waits for its go file, then N lines (argv: N, the go file,
# lines per second or 0 for as fast as Python writes them, how long to stay
# after) and "done"; then stays (its end would end the follower's stream).
_PRINTER = """\
import os, sys, time
n, go, rate = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.002)
write = sys.stdout.write
burst = n if not rate else max(1, rate // 100)
start = time.perf_counter()
for first in range(0, n, burst):
    for i in range(first, min(n, first + burst)):
        write(f"processed request id={i} path=/api/v1/items status=200\\n")
    if rate:
        sys.stdout.flush()
        delay = start + (first + burst) / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
write("done\\n")
sys.stdout.flush()
time.sleep(int(sys.argv[4]))
"""
_LINE = b"processed request id="
_DONE = re.compile(rb"(?m)\bdone$")
_MISSED = re.compile(r"(\d+) entries missed")
_CLI = (sys.executable, "-m", "pycontainer.cli")
# The default ring of a sidecar (ContainerSettings.log_capacity).
_DEFAULT_CAPACITY = 10_000
# The rate below which nothing may be lost (the P3b target).
_PACED_RATE = 100_000


class _LineCounter:
    """Counts the program's lines in a byte stream read on its own thread,
    until "done" comes (or the stream ends)."""

    def __init__(self, stream: Any) -> None:
        self.count = 0
        self.done = threading.Event()
        self.done_at = 0.0
        self.ready = threading.Event()
        self._stream = stream
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        carry = b""
        fd = self._stream.fileno()
        while chunk := os.read(fd, 1 << 20):
            data = carry + chunk
            self.count += data.count(_LINE) - carry.count(_LINE)
            if not self.ready.is_set() and b"ready" in data:
                self.ready.set()
            if _DONE.search(data):
                self.done_at = time.perf_counter()
                self.done.set()
            carry = data[-64:]
        self.done.set()
        self.ready.set()


def _bare_lines(program: Path, total: int, tmp: Path) -> float:
    """Lines/s of the program's stdout read straight from its pipe."""
    go = tmp / "go-bare"
    go.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, str(program), str(total), str(go), "0", "0"], stdout=subprocess.PIPE
    )
    try:
        counter = _LineCounter(proc.stdout)
        counter.ready.wait(30)
        t0 = time.perf_counter()
        go.touch()
        if not counter.done.wait(120):
            raise TimeoutError("the bare reader never saw the program's last line")
        return counter.count / (counter.done_at - t0)
    finally:
        proc.kill()
        proc.wait()


class _Fleet:
    """A manager in its own process (mutual TLS unless ``plaintext``) and the
    client settings of a CLI and of this process for it."""

    def __init__(self, tmp: Path, plaintext: bool) -> None:
        self.state = tmp / "state"
        self.env = {k: v for k, v in os.environ.items() if k != "PYCONTAINER_INSECURE"}
        args = [*_CLI, "manager", "--listen", "127.0.0.1:0", "--state-dir", str(self.state)]
        if plaintext:
            args.append("--insecure")
        out = tmp / "manager.out"
        with open(out, "wb") as sink:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=self.env,  # (without $PYCONTAINER_INSECURE: --insecure says)
            )
        deadline = time.monotonic() + 30
        self.address = ""
        while time.monotonic() < deadline and self.proc.poll() is None:
            text = out.read_text()
            if "serving on " in text:
                self.address = text.split("serving on ", 1)[1].split()[0]
                break
            time.sleep(0.05)
        if not self.address:
            self.close()
            raise RuntimeError(f"the manager did not serve: {out.read_text()[-2000:]}")
        from pycontainer.client import PLAINTEXT, ManagerClient, Transport
        from pycontainer.security import MANAGER

        if plaintext:
            self.env["PYCONTAINER_INSECURE"] = "1"
            transport = PLAINTEXT
        else:
            self.env["PYCONTAINER_TLS_DIR"] = str(self.state / "admin")
            transport = Transport(self.state / "admin", MANAGER)
        self.client = ManagerClient(self.address, transport=transport)
        from pycontainer.v1 import manager_pb2_grpc

        self.stub = manager_pb2_grpc.ManagerStub(self.client.channel)

    def close(self) -> None:
        with contextlib.suppress(AttributeError):
            self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _ours_lines(
    fleet: _Fleet, program: Path, total: int, tmp: Path, *, name: str, capacity: int, rate: int
) -> tuple[float, int, int]:
    """Lines/s from a sidecar-run program (``rate`` lines/s, 0: at full
    speed) through the fleet's manager to `pycontainer logs -f` (stdout to a
    pipe this reads); lines lost, and the misses the CLI reported."""
    cli: subprocess.Popen[bytes] | None = None
    go = tmp / f"go-{name}"
    sidecars: list[int] = []
    try:
        spec = spec_pb2.ContainerSpec(
            name=name,
            runtime=spec_pb2.RUNTIME_KIND_PROCESS,
            command=[sys.executable, str(program), str(total), str(go), str(rate), "600"],
            sidecar=True,
            log_capacity=capacity,
        )
        launched = fleet.stub.RunContainer(manager_pb2.RunContainerRequest(spec=spec), timeout=60)
        sidecars.extend(c.pid for c in launched.containers if c.pid)

        def running() -> bool:
            got = fleet.stub.GetContainer(
                manager_pb2.GetContainerRequest(container=name), timeout=10
            ).container
            return got.state == container_pb2.LIFECYCLE_STATE_RUNNING and bool(
                got.identity.endpoints
            )

        deadline = time.monotonic() + 60
        while not running():
            if time.monotonic() > deadline:
                raise TimeoutError("the sidecar never ran")
            time.sleep(0.05)
        errors = tmp / f"cli-{name}.err"
        with open(errors, "wb") as err:
            cli = subprocess.Popen(
                [*_CLI, "logs", "-f", name, "--manager", fleet.address],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                env=fleet.env,
            )
        counter = _LineCounter(cli.stdout)
        if not counter.ready.wait(60):
            raise TimeoutError(f"the CLI never showed the first line: {errors.read_text()}")
        t0 = time.perf_counter()
        go.touch()
        if not counter.done.wait(max(60.0, total / 5_000)):
            raise TimeoutError(f"the CLI never showed the last line ({counter.count:,} came)")
        elapsed = counter.done_at - t0
        received = counter.count
        cli.terminate()
        cli.wait(10)
        reported = sum(int(n) for n in _MISSED.findall(errors.read_text()))
        stop = manager_pb2.StopContainerRequest(container=name)
        stop.grace_period.FromSeconds(5)
        with contextlib.suppress(grpc.RpcError):
            fleet.stub.StopContainer(stop, timeout=30)
        return received / elapsed, total - received, reported
    finally:
        if cli is not None and cli.poll() is None:
            cli.kill()
            cli.wait()
        # The sidecar outlives a manager by design (its program dies with it).
        for pid in sidecars:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def logs_follow(ctx: Context, plaintext: bool) -> list[Sample]:
    total = ctx.count(400_000, minimum=100_000)
    paced = ctx.count(300_000, minimum=100_000)
    out = []
    with tempfile.TemporaryDirectory(prefix="bench-p3b-") as name:
        tmp = Path(name)
        program = tmp / "printer.py"
        program.write_text(_PRINTER)
        fleet = _Fleet(tmp, plaintext)
        try:
            for round_ in range(ctx.rounds):
                bare = _bare_lines(program, total, tmp)
                ours, lost, reported = _ours_lines(
                    fleet,
                    program,
                    total,
                    tmp,
                    name=f"burst-{round_}",
                    capacity=total + 1000,
                    rate=0,
                )
                note = (
                    f"{total:,} lines at full speed, log capacity {total + 1000:,}: "
                    f"lost {lost:,} (reported {reported:,})"
                )
                if round_ == ctx.rounds - 1:
                    # Paced at the target with the default ring: nothing may be lost.
                    _, paced_lost, paced_reported = _ours_lines(
                        fleet,
                        program,
                        paced,
                        tmp,
                        name="paced",
                        capacity=_DEFAULT_CAPACITY,
                        rate=_PACED_RATE,
                    )
                    note += (
                        f"; {paced:,} at {_PACED_RATE:,}/s, default capacity "
                        f"{_DEFAULT_CAPACITY:,}: lost {paced_lost:,} (reported {paced_reported:,})"
                    )
                out.append(Sample(ours, bare, note=note))
        finally:
            fleet.close()
    return out


ROWS = [
    Row(
        "p3-attrs",
        "P3",
        "≥ 0.8 of bare",
        "StreamLogs of a full buffer, one stream, 4-attribute entries, client decodes",
        "bare grpcio streaming the same entries pre-serialized, same batch size",
        "entries/s",
        True,
        lambda ctx: full_buffer(ctx, ATTRIBUTES),
    ),
    Row(
        "p3-plain",
        "P3",
        "≥ 0.8 of bare, ≥ 2M/s",
        "StreamLogs of a full buffer, one stream, entries without attributes",
        "bare grpcio streaming the same entries pre-serialized, same batch size",
        "entries/s",
        True,
        lambda ctx: full_buffer(ctx, None),
    ),
    Row(
        "p3-regex",
        "P3",
        "≥ 500k/s",
        f"StreamLogs of a full buffer filtered by pattern {REGEX!r} (every entry matches), "
        "4-attribute entries",
        "bare grpcio streaming the same entries pre-serialized (no filter)",
        "entries/s",
        True,
        lambda ctx: full_buffer(ctx, ATTRIBUTES, REGEX),
    ),
    Row(
        "p3-followers",
        "P3",
        "≈ K x one (≥ 0.8 of bare)",
        f"{FOLLOWERS} StreamLogs streams of a full buffer at once, a client process each, "
        "4-attribute entries, aggregate",
        f"bare grpcio streaming the same entries pre-serialized to {FOLLOWERS} client processes",
        "entries/s",
        True,
        followers,
    ),
    Row(
        "p3-live",
        "",
        "context",
        "StreamLogs follow, one stream, 4-attribute entries appended meanwhile in the "
        "same process (buffer.append), client decodes",
        "bare grpcio streaming the same entries pre-serialized, same batch size",
        "entries/s",
        True,
        lambda ctx: stream_logs(ctx, ATTRIBUTES),
    ),
    Row(
        "p3c-follow-latency",
        "P3c",
        "p99 ≤ 20 ms",
        "StreamLogs follow latency of one entry at 50 entries/s (append → client)",
        "bare grpcio server-stream sending each entry as it is queued",
        "ms",
        False,
        follow_latency,
        latency=True,
        scale=1e3,
    ),
    Row(
        "p3d-logging",
        "P3d",
        "≤ 1.0",
        "logger.info(...) with pycontainer's log capture, per call",
        "a logger with a StreamHandler to /dev/null",
        "µs/call",
        False,
        logging_cost,
        scale=1e6,
    ),
    Row(
        "p3b-logs-follow",
        "P3b",
        "≥ 100,000 lines/s, none lost below it",
        "lines/s of a sidecar-run program's stdout through a manager (mutual TLS, as shipped) "
        "to `pycontainer logs -f` (stdout to a pipe)",
        "the same program's stdout read straight from its pipe",
        "lines/s",
        True,
        lambda ctx: logs_follow(ctx, plaintext=False),
    ),
    Row(
        "p3b-logs-follow-plain",
        "P3b",
        "≥ 100,000 lines/s, none lost below it",
        "as p3b-logs-follow, the manager plaintext (--insecure)",
        "the same program's stdout read straight from its pipe",
        "lines/s",
        True,
        lambda ctx: logs_follow(ctx, plaintext=True),
    ),
]

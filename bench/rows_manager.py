"""Rows of the manager and the CLI: StopContainer -> on_stop latency and the
SIGKILL at the grace deadline (P5), sessions held (P4), and a CLI verb's wall
time (P8)."""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import psutil
from google.protobuf import duration_pb2

from pycontainer import security
from pycontainer.testing import ManagerHost
from pycontainer.v1 import container_pb2, manager_pb2, spec_pb2

from . import manager_bench, manager_cpu, manager_scale
from .harness import MIN_ROUNDS, ROOT, Context, Row, Sample, percentile

_CALL_TIMEOUT = 60.0
_WAIT = 60.0


def _seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


def _wait(predicate: Callable[[], bool], what: str, timeout: float = _WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout:g}s")
        time.sleep(0.01)


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _manager() -> Iterator[ManagerHost]:
    with tempfile.TemporaryDirectory(prefix="bench-manager-") as state:
        host = ManagerHost(state)
        try:
            yield host
        finally:
            host.close()


# -- P5: StopContainer -> on_stop ------------------------------------------------------
def stop_latency(ctx: Context) -> list[Sample]:
    n = ctx.count(100, minimum=8)
    out = []
    for _ in range(ctx.rounds):
        bare = manager_bench.bare_unary_latency(n)
        ours = manager_bench.stop_latency(n)
        out.append(
            Sample(
                percentile(ours, 0.99),
                percentile(bare, 0.99),
                ours_latencies=ours,
                bare_latencies=bare,
                note=f"{n} stops a round; headline p99",
            )
        )
    return out


# -- P5: SIGKILL at the grace deadline -------------------------------------------------
# A container whose on_stop hangs the whole process (SIGSTOP: it can neither
# finish nor end itself), so only the manager's kill can end it.
_FROZEN_ON_STOP = r"""
import os, signal, sys
import pycontainer
def on_stop(reason, deadline):
    os.kill(os.getpid(), signal.SIGSTOP)
container = pycontainer.Container(
    pycontainer.ContainerSettings(name=sys.argv[1], log_level=None),
    hooks=pycontainer.Hooks(on_stop=on_stop),
)
pycontainer.run(container)
"""

# A program that ignores SIGTERM and says when it does.
_IGNORES_TERM = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(600)"
)


def _ignores_sigterm(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def _death_time(pid: int, timeout: float) -> float:
    """perf_counter() when process ``pid`` is gone (or a zombie), polled at 1 ms."""
    process = psutil.Process(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return time.perf_counter()
        except psutil.NoSuchProcess:
            return time.perf_counter()
        time.sleep(0.001)
    raise TimeoutError(f"pid {pid} still alive after {timeout:g}s")


def _watch_death(pid: int, timeout: float) -> Callable[[], float]:
    """Start polling now; the returned function waits for the time of death."""
    box: dict[str, float | BaseException] = {}

    def poll() -> None:
        try:
            box["t"] = _death_time(pid, timeout)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()

    def result() -> float:
        thread.join(timeout + 5)
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["t"]  # type: ignore[return-value]

    return result


def _bare_kill_offset(grace: float) -> float:
    """A bare Python supervisor: SIGTERM, SIGKILL from a timer at the deadline;
    seconds from the deadline to the process's end."""
    child = subprocess.Popen(
        [sys.executable, "-c", _IGNORES_TERM], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        child.stdout.readline()
        died = _watch_death(child.pid, grace + 30)
        t0 = time.perf_counter()
        child.send_signal(signal.SIGTERM)
        timer = threading.Timer(max(0.0, t0 + grace - time.perf_counter()), child.kill)
        timer.start()
        return died() - (t0 + grace)
    finally:
        child.kill()
        child.wait(10)


def _manager_kill_offset(host: ManagerHost, name: str, grace: float) -> float:
    spec = spec_pb2.ContainerSpec(
        name=name,
        runtime=spec_pb2.RUNTIME_KIND_PROCESS,
        command=["python", "-c", _FROZEN_ON_STOP, name],
        working_dir=str(ROOT),
    )
    [launched] = host.stub.RunContainer(
        manager_pb2.RunContainerRequest(spec=spec), timeout=_CALL_TIMEOUT
    ).containers
    cid = launched.identity.id

    def running() -> manager_pb2.Container | None:
        c = host.stub.GetContainer(
            manager_pb2.GetContainerRequest(container=cid), timeout=_CALL_TIMEOUT
        ).container
        ok = c.state == container_pb2.LIFECYCLE_STATE_RUNNING and c.connected and c.pid
        return c if ok else None

    _wait(lambda: running() is not None, f"{name} running and connected")
    found = running()
    assert found is not None
    died = _watch_death(found.pid, grace + 30)
    t0 = time.perf_counter()
    host.stub.StopContainer(
        manager_pb2.StopContainerRequest(container=cid, grace_period=_seconds(grace)),
        timeout=_CALL_TIMEOUT,
    )
    return died() - (t0 + grace)


def _sidecar_kill_offset(host: ManagerHost, name: str, grace: float) -> float:
    command = [
        sys.executable,
        "-m",
        "pycontainer.sidecar",
        "--manager",
        host.address,
        "--name",
        name,
        "--grace",
        "30s",
        "--",
        sys.executable,
        "-c",
        _IGNORES_TERM,
    ]
    with _environment(PYCONTAINER_INSECURE="1"):
        sidecar = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    try:

        def running() -> bool:
            listed = host.stub.ListContainers(
                manager_pb2.ListContainersRequest(), timeout=_CALL_TIMEOUT
            ).containers
            return any(
                c.identity.name == name and c.state == container_pb2.LIFECYCLE_STATE_RUNNING
                for c in listed
            )

        _wait(running, f"{name} running")
        [program] = psutil.Process(sidecar.pid).children()
        # RUNNING comes at the spawn: the program ignores SIGTERM a moment later.
        _wait(lambda: _ignores_sigterm(program.pid), "the program ignoring SIGTERM")
        died = _watch_death(program.pid, grace + 30)
        t0 = time.perf_counter()
        try:
            host.stub.StopContainer(
                manager_pb2.StopContainerRequest(container=name, grace_period=_seconds(grace)),
                timeout=_CALL_TIMEOUT,
            )
        except grpc.RpcError as exc:
            # The sidecar reports the kill as a stop that did not finish: its
            # on_stop's SIGKILL, or its lifecycle giving up on on_stop, at
            # the same deadline.
            details = str(exc.details())
            if exc.code() != grpc.StatusCode.ABORTED or (
                "SIGKILL" not in details and "overran" not in details
            ):
                raise
        return died() - (t0 + grace)
    finally:
        with contextlib.suppress(ProcessLookupError):
            sidecar.kill()
        sidecar.wait(10)


def _kill_row(ctx: Context, ours: Callable[[ManagerHost, str, float], float]) -> list[Sample]:
    grace = 0.5 if ctx.quick else 1.0
    per_round = 1 if ctx.quick else 3
    out = []
    with _manager() as host:
        for r in range(ctx.rounds):
            bare = [_bare_kill_offset(grace) for _ in range(per_round)]
            mine = [ours(host, f"kill-{r}-{i}", grace) for i in range(per_round)]
            o, b = statistics.median(mine), statistics.median(bare)
            out.append(
                Sample(
                    o,
                    b,
                    ours_latencies=mine,
                    bare_latencies=bare,
                    ratio=(grace + o) / (grace + b),
                    note=f"grace {grace:g} s, {per_round} kill(s) a round; negative is early; "
                    "ratio of the stop-to-kill times",
                )
            )
    return out


# -- P4 at scale: registration, RSS, stops of N/20 and N/2 -------------------------------
# One measurement per round serves the four rows (bench/manager_scale.py).
_scale_rounds: dict[tuple[int, int, int], list[tuple[manager_scale.Figures, ...]]] = {}


def _scale(ctx: Context) -> tuple[int, list[tuple[manager_scale.Figures, ...]]]:
    # Quick: 600 (the full run's 20,000 is what the goal is about; the quick
    # run's budget is 2 minutes for every row).
    n = ctx.count(20_000, minimum=200) * 3 // 10 if ctx.quick else ctx.count(20_000)
    agents = 2 if ctx.quick else 4
    # The fewest rounds the harness takes: a round at 20,000 is a minute or
    # two of both servers (the full run's budget).
    rounds = MIN_ROUNDS
    key = (n, agents, rounds)
    if key not in _scale_rounds:
        _scale_rounds[key] = [
            (
                manager_scale.measure(n, agents, bare=True),
                manager_scale.measure(n, agents, bare=False),
            )
            for _ in range(rounds)
        ]
    return n, _scale_rounds[key]


def _scale_row(ctx: Context, figure: str, what: Callable[[int], str]) -> list[Sample]:
    n, rounds = _scale(ctx)
    return [
        Sample(getattr(ours, figure), getattr(bare, figure), note=what(n)) for bare, ours in rounds
    ]


# -- P7: the manager's CPU ---------------------------------------------------------------
def _cpu_row(ctx: Context, sessions: int, metrics: bool) -> list[Sample]:
    processes = 2 if ctx.quick else 4
    # CPU time is read to the nanosecond (manager_cpu._cpu_seconds); a window
    # of the quick run is 2 s, of the full run 6 s (5 rounds, both servers).
    window = 2.0 if ctx.quick else 6.0
    out = []
    # Both held at once (connecting 10,000 sessions takes minutes), their
    # windows alternating: each round sees the same noise, and the other's.
    with (
        manager_cpu.held(sessions, processes, True, metrics) as bare_server,
        manager_cpu.held(sessions, processes, False, metrics) as our_server,
    ):
        rounds = [
            (bare_server.window(window), our_server.window(window)) for _ in range(ctx.rounds)
        ]
    for bare, ours in rounds:
        note = f"{sessions:,} sessions in {processes} processes, plaintext, {window:g} s window"
        if metrics:
            note += (
                f"; snapshots/s to the watcher {ours.snapshots_per_second:,.0f} "
                f"(bare {bare.snapshots_per_second:,.0f})"
            )
        out.append(Sample(ours.cpu_percent, bare.cpu_percent, note=note))
    return out


# -- P8: the CLI -------------------------------------------------------------------------
def _pycontainer_command() -> list[str]:
    script = Path(sys.executable).with_name("pycontainer")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pycontainer.cli"]


def _byte_compiled() -> None:
    """pycontainer's modules compiled, as pip leaves an installed package (and
    as grpcio is): with $PYTHONDONTWRITEBYTECODE set, an editable checkout
    would otherwise compile every module from source on each run of the
    command, which a user's install never does."""
    sources = [str(ROOT / "pycontainer"), str(ROOT / "generated")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *sources], check=True, timeout=120)


# The same ListContainers call without pycontainer: raw bytes, undecoded (a
# bare client has no pycontainer to import the messages from). With a
# certificate directory and a server name: over mutual TLS.
_BARE_LIST = r"""
import sys, grpc
target = sys.argv[1]
if len(sys.argv) > 2:
    directory, server_name = sys.argv[2], sys.argv[3]
    blocks = open(directory + "/tls.pem", "rb").read().split(b"-----END ")
    pem = [b + b"-----END " + r.split(b"\n", 1)[0] + b"\n" for b, r in zip(blocks, blocks[1:])]
    key = b"".join(p for p in pem if b"PRIVATE KEY" in p)
    chain = b"".join(p for p in pem if b"CERTIFICATE" in p)
    trust = open(directory + "/ca.pem", "rb").read()
    credentials = grpc.ssl_channel_credentials(trust, key, chain)
    options = [("grpc.ssl_target_name_override", server_name)]
    channel = grpc.secure_channel(target, credentials, options=options)
else:
    channel = grpc.insecure_channel(target)
reply = channel.unary_unary("/pycontainer.v1.Manager/ListContainers")(b"", timeout=60)
print(len(reply))
"""

# Simulated containers over mutual TLS: one channel per session, each with
# the certificate of its own container identity.
_TLS_AGENT = r"""
import asyncio, sys, grpc
from pycontainer import security
from pycontainer.v1 import container_pb2, lifecycle_pb2, lifecycle_pb2_grpc
target, certs, count = sys.argv[1], sys.argv[2], int(sys.argv[3])

async def session(i, ready):
    files = security.CredentialFiles.in_directory(f"{certs}/sim-{i}")
    channel = grpc.aio.secure_channel(target, security.channel_credentials(files),
        options=security.server_name_options(security.MANAGER))
    queue = asyncio.Queue()
    queue.put_nowait(lifecycle_pb2.ConnectRequest(register=lifecycle_pb2.Registration(
        identity=container_pb2.ContainerIdentity(id=f"sim-{i}", name=f"sim-{i}"),
        state=container_pb2.LIFECYCLE_STATE_RUNNING, pid=i)))
    async def requests():
        while True:
            yield await queue.get()
    async for _ in lifecycle_pb2_grpc.LifecycleStub(channel).Connect(requests()):
        ready.release()

async def main():
    ready = asyncio.Semaphore(0)
    tasks = [asyncio.ensure_future(session(i, ready)) for i in range(count)]
    for _ in range(count):
        await ready.acquire()
    print("ready", flush=True)
    await asyncio.gather(*tasks)
asyncio.run(main())
"""


def _wall(command: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=120)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command[:3])} exited {done.returncode}: {done.stderr.decode()[-300:]}"
        )
    return elapsed


def cli_ps(ctx: Context, tls: bool) -> list[Sample]:
    _byte_compiled()
    containers = 100
    per_round = 1 if ctx.quick else 3
    out = []
    with contextlib.ExitStack() as stack:
        state = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-manager-"))
        host = ManagerHost(state, insecure=not tls)
        stack.callback(host.close)
        if tls:
            certs = Path(state) / "bench-sims"
            ca = security.CertificateAuthority.open(state)
            for i in range(containers):
                files = security.CredentialFiles.in_directory(certs / f"sim-{i}")
                files.write(ca.issue(security.container(f"sim-{i}")), ca.certificate_pem)
            agent_command = [sys.executable, "-c", _TLS_AGENT, host.address, str(certs)]
            agent_command.append(str(containers))
            admin = str(Path(state) / "admin")
            ps = [*_pycontainer_command(), "ps", "--manager", host.address, "--cert-dir", admin]
            server_name = security.MANAGER.dns_name or ""
            bare = [sys.executable, "-c", _BARE_LIST, host.address, admin, server_name]
        else:
            agent_command = [sys.executable, "-c", manager_bench.AGENT, host.address, "0"]
            agent_command += [str(containers), "manager"]
            ps = [*_pycontainer_command(), "ps", "--manager", host.address, "--insecure"]
            bare = [sys.executable, "-c", _BARE_LIST, host.address]
        agent = subprocess.Popen(agent_command, stdout=subprocess.PIPE, text=True)
        stack.callback(agent.wait, 10)
        stack.callback(agent.kill)
        assert agent.stdout is not None
        if agent.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the simulated containers did not connect ({agent.poll()})")

        def all_listed() -> bool:
            listed = host.stub.ListContainers(
                manager_pb2.ListContainersRequest(), timeout=_CALL_TIMEOUT
            ).containers
            return sum(c.connected for c in listed) == containers

        _wait(all_listed, f"{containers} containers listed as connected")
        for _ in range(ctx.rounds):
            b = statistics.median(_wall(bare) for _ in range(per_round))
            o = statistics.median(_wall(ps) for _ in range(per_round))
            note = f"{containers} containers, {'mutual TLS' if tls else 'plaintext'}"
            out.append(Sample(o, b, note=note))
    return out


def cli_help(ctx: Context) -> list[Sample]:
    _byte_compiled()
    per_round = 1 if ctx.quick else 3
    ours = [*_pycontainer_command(), "--help"]
    bare = [sys.executable, "-c", "import grpc"]
    out = []
    for _ in range(ctx.rounds):
        b = statistics.median(_wall(bare) for _ in range(per_round))
        out.append(Sample(statistics.median(_wall(ours) for _ in range(per_round)), b))
    return out


ROWS = [
    Row(
        "p5-stop-latency",
        "P5",
        "p99 ≤ 10 ms",
        "StopContainer → on_stop hook running (operator → manager → container)",
        "one bare grpcio unary round trip",
        "ms",
        False,
        stop_latency,
        latency=True,
        scale=1e3,
    ),
    Row(
        "p5-kill-manager",
        "P5",
        "deadline + ≤ 50 ms, never early",
        "SIGKILL minus grace deadline, manager's process runtime (on_stop hangs the process)",
        "a bare Python supervisor: SIGTERM, then SIGKILL from a timer at the deadline",
        "ms",
        False,
        lambda ctx: _kill_row(ctx, _manager_kill_offset),
        latency=True,
        scale=1e3,
    ),
    Row(
        "p5-kill-sidecar",
        "P5",
        "deadline + ≤ 50 ms, never early",
        "SIGKILL minus grace deadline, sidecar (the program ignores SIGTERM)",
        "a bare Python supervisor: SIGTERM, then SIGKILL from a timer at the deadline",
        "ms",
        False,
        lambda ctx: _kill_row(ctx, _sidecar_kill_offset),
        latency=True,
        scale=1e3,
    ),
    Row(
        "p4-register",
        "P4",
        "≤ 1.5 x bare (20,000 within 60 s)",
        "time to register N simulated containers (Lifecycle.Connect + RegistrationAck)",
        "a bare grpc.aio server holding as many bidirectional streams",
        "s",
        False,
        lambda ctx: _scale_row(
            ctx, "register_s", lambda n: f"{n:,} sessions, agents in a few processes, plaintext"
        ),
    ),
    Row(
        "p4-rss",
        "P4",
        "≤ 1 GiB at 20,000",
        "RSS of the manager holding N sessions",
        "RSS of the bare grpc.aio server holding as many streams",
        "MiB",
        False,
        lambda ctx: _scale_row(ctx, "rss_mib", lambda n: f"{n:,} sessions"),
    ),
    Row(
        "p4-stop-1k",
        "P4",
        "≤ 0.5 s (1,000 of 20,000), or ≤ 1.5 x bare",
        "one StopContainers -l request until each of N/20 of N agents has its Stop",
        "a bare server writing a Stop message down as many of its N streams",
        "s",
        False,
        lambda ctx: _scale_row(ctx, "stop_a_s", lambda n: f"{n // 20:,} of {n:,}"),
    ),
    Row(
        "p4-stop-10k",
        "P4",
        "≤ 3 s (10,000 of 20,000), or ≤ 1.5 x bare",
        "one StopContainers -l request until each of N/2 of N agents has its Stop",
        "a bare server writing a Stop message down as many of its N streams",
        "s",
        False,
        lambda ctx: _scale_row(ctx, "stop_b_s", lambda n: f"{n // 2:,} of {n:,}"),
    ),
    Row(
        "p7-idle-sessions",
        "P7",
        "< 10 % of a core at 10,000",
        "manager CPU (% of a core) with N idle Lifecycle sessions (the full run: 10,000)",
        "a bare grpc.aio server holding as many streams with the same traffic: the "
        "heartbeat interval the manager advertises, each beat answered, keepalive pings "
        "at the manager's liveness bound (manager_cpu)",
        "%",
        False,
        # Quick: 500 sessions (connecting them to both servers is most of the row).
        lambda ctx: _cpu_row(ctx, ctx.count(10_000) // (2 if ctx.quick else 1), metrics=False),
    ),
    Row(
        "p7-watch-metrics",
        "P7",
        "< 50 % of a core at 1,000",
        "manager CPU (% of a core) holding N sessions while one watcher follows "
        "WatchMetrics of all N at 1 s (the full run: 1,000)",
        "a bare grpc.aio server holding as many streams and forwarding the N "
        "WatchMetrics streams merged, as bytes tagged with the container id",
        "%",
        False,
        lambda ctx: _cpu_row(ctx, ctx.count(1000, minimum=200), metrics=True),
    ),
    Row(
        "p8-ps",
        "P8",
        "≤ 1.5",
        "`pycontainer ps` wall time against a manager with 100 containers, plaintext",
        "a bare Python grpcio client making the same ListContainers call",
        "s",
        False,
        lambda ctx: cli_ps(ctx, tls=False),
    ),
    Row(
        "p8-ps-mtls",
        "P8",
        "≤ 1.5",
        "`pycontainer ps` wall time against a manager with 100 containers, mTLS (the default)",
        "a bare Python grpcio client making the same ListContainers call over the same mTLS",
        "s",
        False,
        lambda ctx: cli_ps(ctx, tls=True),
    ),
    Row(
        "p8-help",
        "P8",
        "< 0.3 s",
        "`pycontainer --help` wall time",
        "`python -c 'import grpc'`",
        "s",
        False,
        cli_help,
    ),
]

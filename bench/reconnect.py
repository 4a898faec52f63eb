"""kill -9 of the manager with many containers connected, and the time until
all of them are back.

    .venv/bin/python bench/reconnect.py --containers 1000 --workers 4
    .venv/bin/python bench/reconnect.py --containers 100 --workers 2 --json   # quick

N real containers (pycontainer.agent Containers, each with its own Lifecycle
session: its own thread, event loop and channel) live in K worker processes
(fewer processes than containers, to fit a small machine); the manager is
`pycontainer manager --insecure` in a process of its own with a state
directory. Every container is started by the manager and checkpointed through
the Manager API (bytes of its own, checked by SHA-256); then the manager is
killed with SIGKILL and a successor started on the same address and state.
Measured: the time from the successor's spawn until every container's session
is registered again (as each container saw it, and as ListContainers shows
it), registrations the successor knew before anyone dialled back, checkpoints
restored byte-exact (RestoreContainer with the id kept from before the kill,
compared in the container), hooks run more than once (must be 0), and the
manager's RSS, threads and open files before the kill and once all are back.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
_WAIT = 0.05  # polling step of every bounded wait


def payload(seed: str, container_id: str, size: int) -> bytes:
    """The checkpoint of one container: ``size`` bytes of its own."""
    out = bytearray()
    block = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{container_id}:{block}".encode()).digest()
        block += 1
    return bytes(out[:size])


def container_ids(first: int, count: int) -> list[str]:
    return [f"rc-{i:05d}" for i in range(first, first + count)]


# -- a worker process: `count` containers -------------------------------------------------
def worker(args: argparse.Namespace) -> int:
    """Containers dialled in to the manager; answers the orchestrator's lines
    on stdin ("report", "quit") with JSON lines on stdout."""
    import logging

    import pycontainer

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    lock = threading.Lock()
    calls: dict[str, dict[str, int]] = {}
    restored: dict[str, str] = {}

    def count(cid: str, hook: str) -> None:
        with lock:
            calls.setdefault(cid, {}).setdefault(hook, 0)
            calls[cid][hook] += 1

    def hooks(cid: str) -> pycontainer.Hooks:
        def on_restore(state: bytes) -> None:
            count(cid, "restore")
            restored[cid] = hashlib.sha256(state).hexdigest()

        def on_checkpoint() -> bytes:
            count(cid, "checkpoint")
            return payload(args.seed, cid, args.checkpoint_bytes)

        return pycontainer.Hooks(
            on_start=lambda: count(cid, "start"),
            on_checkpoint=on_checkpoint,
            on_restore=on_restore,
            on_pause=lambda: count(cid, "pause"),
            on_resume=lambda: count(cid, "resume"),
        )

    containers = []
    for cid in container_ids(args.first, args.count):
        settings = pycontainer.ContainerSettings(
            name=cid, id=cid, log_level=None, install_meter_provider=False
        )
        containers.append(pycontainer.Container(settings, hooks=hooks(cid)))
    connections = [c.connect(args.manager) for c in containers]
    back_at: dict[str, float] = {}

    def send(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    def watch() -> None:
        """When each session after the first was registered (wall clock, so
        the orchestrator compares it with its own)."""
        announced_running = False
        while True:
            now = time.time()
            for cid, connection in zip(
                container_ids(args.first, args.count), connections, strict=True
            ):
                if cid not in back_at and connection.sessions >= 2:
                    back_at[cid] = now
            running = all(
                c.state == pycontainer.State.RUNNING and n.sessions >= 1
                for c, n in zip(containers, connections, strict=True)
            )
            if running and not announced_running:
                announced_running = True
                send({"event": "running"})
            if len(back_at) == len(connections):
                send({"event": "back", "times": sorted(back_at.values())})
                return
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()
    import psutil

    for line in sys.stdin:
        command = line.strip()
        if command == "report":
            with lock:
                send(
                    {
                        "event": "report",
                        "calls": calls,
                        "restored": restored,
                        "sessions": {
                            cid: n.sessions
                            for cid, n in zip(
                                container_ids(args.first, args.count), connections, strict=True
                            )
                        },
                        "threads": threading.active_count(),
                        "rss": psutil.Process().memory_info().rss,
                    }
                )
        elif command == "quit":
            break
    # The bench is over: no drain, no goodbyes (the manager may be gone).
    os._exit(0)


# -- the orchestrator ------------------------------------------------------------------
class Worker:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        assert proc.stdout is not None
        self._out: IO[str] = proc.stdout

    def read(self, event: str, timeout: float) -> dict[str, Any]:
        """The next JSON line of this event (earlier lines of others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"worker {self.proc.pid}: no {event!r} within {timeout:g}s")
            ready, _, _ = select.select([self._out], [], [], left)
            if not ready:
                continue
            line = self._out.readline()
            if not line:
                raise RuntimeError(f"worker {self.proc.pid} exited ({self.proc.poll()})")
            message: dict[str, Any] = json.loads(line)
            if message.get("event") == event:
                return message

    def tell(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()


def _free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _start_manager(address: str, state_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as err:
        return subprocess.Popen(
            [
                *_pycontainer(),
                "manager",
                "--listen",
                address,
                "--state-dir",
                str(state_dir),
                "--insecure",
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _pycontainer() -> list[str]:
    return [sys.executable, "-m", "pycontainer.cli"]


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(_WAIT)


def _listening(address: str) -> bool:
    """Whether the port accepts TCP connections (a probe no load delays)."""
    host, port = address.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) == 0


def _process_figures(pid: int) -> dict[str, Any]:
    import psutil

    process = psutil.Process(pid)
    return {
        "rss": process.memory_info().rss,
        "threads": process.num_threads(),
        "fds": process.num_fds(),
        "tcp": dict(collections.Counter(c.status for c in process.net_connections("tcp"))),
    }


@contextlib.contextmanager
def _reaped(procs: list[subprocess.Popen[Any]]) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


def run(
    containers: int,
    workers: int,
    *,
    checkpoint_bytes: int = 1024,
    timeout: float = 300.0,
    settle: float = 0.0,
) -> dict[str, Any]:
    """One kill -9 and successor with ``containers`` over ``workers``
    processes; the figures (see the module's docstring)."""
    import grpc

    from pycontainer.v1 import manager_pb2, manager_pb2_grpc

    seed = os.urandom(8).hex()
    address = _free_address()
    with tempfile.TemporaryDirectory(prefix="reconnect-") as tmp:
        state_dir = Path(tmp) / "state"
        log = Path(tmp) / "manager.err"
        procs: list[subprocess.Popen[Any]] = []
        with _reaped(procs):
            procs.append(first := _start_manager(address, state_dir, log))
            channel = grpc.insecure_channel(address)
            stub = manager_pb2_grpc.ManagerStub(channel)

            def listed() -> list[manager_pb2.Container]:
                return list(
                    stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=10).containers
                )

            def serving() -> bool:
                try:
                    stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=1)
                except grpc.RpcError:
                    return False
                return True

            _wait(serving, 30, "the manager to serve")
            per = [containers // workers + (i < containers % workers) for i in range(workers)]
            pool: list[Worker] = []
            first_id = 0
            for n in per:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        str(Path(__file__).resolve()),
                        "--worker",
                        "--manager",
                        address,
                        "--first",
                        str(first_id),
                        "--count",
                        str(n),
                        "--seed",
                        seed,
                        "--checkpoint-bytes",
                        str(checkpoint_bytes),
                    ],
                    cwd=ROOT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                procs.append(proc)
                pool.append(Worker(proc))
                first_id += n
            started = time.monotonic()
            for w in pool:
                w.read("running", timeout)
            up_seconds = time.monotonic() - started
            ids = container_ids(0, containers)

            # A checkpoint of each, through the Manager API.
            def checkpoint(cid: str) -> tuple[str, str, str]:
                r = stub.CheckpointContainer(
                    manager_pb2.CheckpointContainerRequest(container=cid), timeout=60
                )
                return cid, r.checkpoint_id, r.sha256

            with futures.ThreadPoolExecutor(8) as executor:
                taken = {cid: (ckpt, sha) for cid, ckpt, sha in executor.map(checkpoint, ids)}
            expected = {
                cid: hashlib.sha256(payload(seed, cid, checkpoint_bytes)).hexdigest() for cid in ids
            }
            stored_exact = sum(taken[cid][1] == expected[cid] for cid in ids)
            before = _process_figures(first.pid)

            # kill -9, and a successor on the same address and state.
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            killed_at = time.time()
            procs.append(successor := _start_manager(address, state_dir, log))
            spawned_at = time.time()
            _wait(lambda: _listening(address), 60, "the successor to listen")
            listening_at = time.time()
            _wait(serving, 60, "the successor to serve")
            serving_at = time.time()
            known = {c.identity.id for c in listed()}
            kept = len(known & set(ids))

            # Back: every container's second session registered.
            times = sorted(t for w in pool for t in w.read("back", timeout)["times"])
            back_at = times[-1]

            def all_connected() -> bool:
                return sum(c.connected for c in listed()) == containers

            _wait(all_connected, timeout, "ListContainers to show every container connected")
            listed_at = time.time()
            after = _process_figures(successor.pid)

            # Checkpoints kept: the id from before the kill, restored, compared
            # by the container itself.
            now = {c.identity.id: c for c in listed()}
            ids_kept = sum(now[cid].last_checkpoint_id == taken[cid][0] for cid in ids)
            states = {c.state for c in now.values()}

            def restore(cid: str) -> None:
                stub.RestoreContainer(
                    manager_pb2.RestoreContainerRequest(container=cid, checkpoint_id=taken[cid][0]),
                    timeout=60,
                )

            with futures.ThreadPoolExecutor(8) as executor:
                list(executor.map(restore, ids))
            calls: dict[str, dict[str, int]] = {}
            restored: dict[str, str] = {}
            sessions: dict[str, int] = {}
            worker_threads = worker_rss = 0
            for w in pool:
                w.tell("report")
                report = w.read("report", 60)
                calls.update(report["calls"])
                restored.update(report["restored"])
                sessions.update(report["sessions"])
                worker_threads += report["threads"]
                worker_rss += report["rss"]
            # Connections the successor holds beyond the sessions are idle
            # ones it closes after a minute (max_connection_idle_ms).
            time.sleep(settle)
            settled = _process_figures(successor.pid) if settle else None
            for w in pool:
                w.tell("quit")
            channel.close()
            end = _process_figures(successor.pid)
            exact = sum(restored.get(cid) == expected[cid] for cid in ids)
            twice = sum(n > 1 for per_hook in calls.values() for n in per_hook.values())
            once = {"start": 1, "checkpoint": 1, "restore": 1}
            from pycontainer.v1 import container_pb2

            return {
                "containers": containers,
                "workers": workers,
                "checkpoint_bytes": checkpoint_bytes,
                "first_start_seconds": round(up_seconds, 2),
                "back_seconds": round(back_at - spawned_at, 2),
                "back_seconds_from_kill": round(back_at - killed_at, 2),
                "back_seconds_from_serving": round(back_at - serving_at, 2),
                "listed_connected_seconds": round(listed_at - spawned_at, 2),
                "successor_listening_seconds": round(listening_at - spawned_at, 2),
                "successor_serving_seconds": round(serving_at - spawned_at, 2),
                "back_after_listening": {
                    q: round(times[min(len(times) - 1, int(f * len(times)))] - listening_at, 2)
                    for q, f in (("first", 0.0), ("p50", 0.5), ("p90", 0.9), ("last", 1.0))
                },
                "registrations_kept": kept,
                "checkpoints_stored_exact": stored_exact,
                "checkpoint_ids_kept": ids_kept,
                "checkpoints_restored_exact": exact,
                "hooks_run_twice": twice,
                "hooks_as_expected": sum(calls.get(cid) == once for cid in ids),
                "sessions_not_two": sum(sessions.get(cid) != 2 for cid in ids),
                "states_after": sorted(container_pb2.LifecycleState.Name(s) for s in states),
                "manager_before": before,
                "manager_after": after,
                "manager_end": end,
                "manager_settled": settled,
                "settle_seconds": settle,
                "worker_threads": worker_threads,
                "worker_rss": worker_rss,
            }


def _print(result: dict[str, Any]) -> None:
    mb = 1 << 20
    b, a = result["manager_before"], result["manager_after"]
    n = result["containers"]
    print(
        f"{n} containers in {result['workers']} worker processes "
        f"(first start {result['first_start_seconds']} s)\n"
        f"kill -9 of the manager; its successor listened after "
        f"{result['successor_listening_seconds']} s, answered ListContainers after "
        f"{result['successor_serving_seconds']} s\n"
        f"back after it listened (s): {result['back_after_listening']}\n"
        f"all {n} back {result['back_seconds']} s after the successor's spawn "
        f"({result['back_seconds_from_kill']} s after the kill, "
        f"{result['back_seconds_from_serving']} s after it served; ListContainers showed all "
        f"connected at {result['listed_connected_seconds']} s)\n"
        f"registrations kept {result['registrations_kept']}/{n}, checkpoint ids kept "
        f"{result['checkpoint_ids_kept']}/{n}, checkpoints restored byte-exact "
        f"{result['checkpoints_restored_exact']}/{n}, hooks run twice "
        f"{result['hooks_run_twice']}\n"
        f"manager RSS {b['rss'] / mb:.1f} MB -> {a['rss'] / mb:.1f} MB, threads "
        f"{b['threads']} -> {a['threads']}, fds {b['fds']} -> {a['fds']} "
        f"(at the end {result['manager_end']['fds']}); workers' threads "
        f"{result['worker_threads']}, RSS {result['worker_rss'] / mb:.0f} MB"
    )
    if result["manager_settled"] is not None:
        s = result["manager_settled"]
        print(
            f"{result['settle_seconds']:g} s later: manager RSS {s['rss'] / mb:.1f} MB, "
            f"fds {s['fds']}, TCP {s['tcp']}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--checkpoint-bytes", type=int, default=1024)
    parser.add_argument("--timeout", type=float, default=300.0, help="bound of each wait, s")
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="then wait this long (s) and measure the manager again (70: past its idle limit)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--manager", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--seed", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    result = run(
        args.containers,
        args.workers,
        checkpoint_bytes=args.checkpoint_bytes,
        timeout=args.timeout,
        settle=args.settle,
    )
    if args.json:
        print(json.dumps(result))
    else:
        _print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

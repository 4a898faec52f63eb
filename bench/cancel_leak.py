"""Native memory per cancelled stream: a real manager process, one container
(the asyncio example app) it launched, and a client that opens a stream,
reads its first message and cancels it, N times per kind. Per call: the
manager's C heap in use (glibc mallinfo2: what leaks, whatever fragmentation
does), its RSS and the container's RSS; at the end what a malloc_trim(0) of
the manager gives back. See grpc/grpc#43360 and pycontainer/manager/_upstream.py.

    .venv/bin/python bench/cancel_leak.py [--calls 2000] [--kinds WatchEvents,...]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from support import free_address, running_and_connected, wait_container, wait_until  # noqa: E402

from pycontainer.v1 import (  # noqa: E402
    container_pb2,
    management_pb2,
    management_pb2_grpc,
    manager_pb2,
    manager_pb2_grpc,
    spec_pb2,
)


def _spec(name: str) -> spec_pb2.ContainerSpec:
    spec = spec_pb2.ContainerSpec(
        name=name,
        runtime=spec_pb2.RUNTIME_KIND_PROCESS,
        command=["python", "examples/async_app.py", "--listen", "127.0.0.1:0"],
        working_dir=str(ROOT),
        labels={"leak": "yes"},
    )
    spec.grace_period.FromSeconds(5)
    return spec


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--containers", type=int, default=1)
    parser.add_argument(
        "--kinds",
        default="WatchEvents,manager StreamLogs,manager WatchMetrics,StreamLogs,WatchMetrics",
    )
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="leak-"))
    address = free_address()
    env = dict(os.environ, MALLINFO_FILE=str(tmp / "mallinfo"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "bench/_mallinfo_manager.py",
            "--listen",
            address,
            "--state-dir",
            str(tmp / "state"),
            "--heartbeat",
            "1s",
        ],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "manager.err", "wb"),  # noqa: SIM115 - lives as long as the manager
        env=env,
    )
    pids: list[int] = []
    try:
        channel = grpc.insecure_channel(address)
        stub = manager_pb2_grpc.ManagerStub(channel)

        def serving() -> bool:
            try:
                stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=1)
            except grpc.RpcError:
                return False
            return True

        wait_until(serving, 20, "manager")
        names = [f"leak-{i}" for i in range(args.containers)]
        for name in names:
            stub.RunContainer(manager_pb2.RunContainerRequest(spec=_spec(name)), timeout=30)
        got = [wait_container(stub, n, running_and_connected, n, 60) for n in names]
        pids = [c.pid for c in got]
        [endpoint] = [
            e.address
            for e in got[0].identity.endpoints
            if e.kind == container_pb2.ENDPOINT_KIND_MANAGEMENT
        ]
        direct = grpc.insecure_channel(endpoint)
        management = management_pb2_grpc.ManagementStub(direct)
        follow = manager_pb2.StreamLogsFilter(follow=True, tail=5)
        opens: dict[str, Callable[[], Any]] = {
            "WatchEvents": lambda: stub.WatchEvents(
                manager_pb2.WatchEventsRequest(include_history=True), timeout=15
            ),
            "manager StreamLogs": lambda: stub.StreamLogs(
                manager_pb2.ManagerStreamLogsRequest(label_selector="leak=yes", filter=follow),
                timeout=15,
            ),
            "manager StreamLogs history": lambda: stub.StreamLogs(
                manager_pb2.ManagerStreamLogsRequest(
                    label_selector="leak=yes", filter=manager_pb2.StreamLogsFilter(tail=5)
                ),
                timeout=15,
            ),
            "manager StreamLogs quiet": lambda: stub.StreamLogs(
                manager_pb2.ManagerStreamLogsRequest(
                    label_selector="leak=yes",
                    filter=manager_pb2.StreamLogsFilter(
                        follow=True, tail=5, contains="pipeline started"
                    ),
                ),
                timeout=15,
            ),
            "manager WatchMetrics": lambda: stub.WatchMetrics(
                manager_pb2.ManagerWatchMetricsRequest(label_selector="leak=yes"), timeout=15
            ),
            "StreamLogs": lambda: management.StreamLogs(
                management_pb2.StreamLogsRequest(follow=True, tail=5), timeout=15
            ),
            "WatchMetrics": lambda: management.WatchMetrics(
                management_pb2.WatchMetricsRequest(), timeout=15
            ),
        }
        manager = psutil.Process(proc.pid)
        app = psutil.Process(pids[0])
        kinds = args.kinds.split(",")
        # Warm-up: every kind a little, so first-use allocations are not counted.
        for kind in kinds:
            for _ in range(200):
                _one(opens[kind])
        for r in range(args.rounds):
            for kind in kinds:
                m0, a0 = manager.memory_info().rss, app.memory_info().rss
                h0 = _heap(proc.pid, tmp / "mallinfo")
                t0 = time.monotonic()
                for _ in range(args.calls):
                    _one(opens[kind])
                dt = time.monotonic() - t0
                time.sleep(0.5)
                m1, a1 = manager.memory_info().rss, app.memory_info().rss
                h1 = _heap(proc.pid, tmp / "mallinfo")
                print(
                    f"round {r} {kind:22s}: manager heap {(h1 - h0) / args.calls:6.0f} B/call, "
                    f"RSS {(m1 - m0) / args.calls:7.0f} B/call "
                    f"(RSS {m1 / 2**20:.1f} MB), app {(a1 - a0) / args.calls:7.0f} B/call "
                    f"({args.calls / dt:.0f} calls/s)",
                    flush=True,
                )
        rss = manager.memory_info().rss
        (tmp / "mallinfo").unlink(missing_ok=True)
        os.kill(proc.pid, signal.SIGUSR2)
        wait_until((tmp / "mallinfo").exists, 10, "the manager's malloc_trim")
        print(
            f"manager RSS {rss / 2**20:.1f} MB, after malloc_trim(0) "
            f"{manager.memory_info().rss / 2**20:.1f} MB"
        )
        direct.close()
        channel.close()
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        proc.terminate()
        proc.wait(15)
    return 0


def _heap(pid: int, path: Path) -> int:
    """The manager's C heap bytes in use (its SIGUSR1 report)."""
    path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    wait_until(path.exists, 10, "the manager's mallinfo")
    return int(path.read_text().split()[0])


def _one(open_stream: Callable[[], Any]) -> None:
    stream = open_stream()
    try:
        next(stream, None)
    except grpc.RpcError as exc:
        if exc.code() not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE):
            raise
    finally:
        stream.cancel()


if __name__ == "__main__":
    sys.exit(main())

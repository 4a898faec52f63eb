"""A bounded soak: a real manager process and three containers it launched (the
sync example app, the asyncio example app, a shell loop under the sidecar),
every stream kind open at once and more opened and closed all along, while
two of the containers are restarted or stopped and started round after round.
At the end the manager's and the long-lived container's RSS and open file
descriptors are what they were after a warm-up round (RSS within 15%, fds
within a small slack).

    PYCONTAINER_SOAK_SECONDS=240 .venv/bin/pytest -s tests/test_soak.py   # longer, by hand
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import free_address, running_and_connected, wait_container, wait_until

from pycontainer.v1 import (
    container_pb2,
    management_pb2,
    management_pb2_grpc,
    manager_pb2,
    manager_pb2_grpc,
    spec_pb2,
)

ROOT = Path(__file__).resolve().parent.parent
SOAK_SECONDS = float(os.environ.get("PYCONTAINER_SOAK_SECONDS", "45"))
# Rounds before the baseline: the manager's allocator and caches (the mesh's
# resources, the event ring) fill in the first rounds; with the churn twice
# as fast since its streams no longer wait on a busy pool, two were too few
# (+17% once, +3-4% usually, over the same 45 s).
WARM_UP_ROUNDS = 5
RSS_GROWTH = 0.15  # at most this much more RSS at the end than after warm-up
FD_SLACK = 3  # file descriptors more than after warm-up, at most
STREAM_WAIT = 15.0  # bound on any stream's first message
SETTLE_WAIT = 20.0  # bound on the figures' settling after the last round
RESTART_WAIT = 60.0  # bound on a restart (a process start on a loaded machine)


def _spec(name: str, command: list[str], *, sidecar: bool = False) -> spec_pb2.ContainerSpec:
    spec = spec_pb2.ContainerSpec(
        name=name,
        runtime=spec_pb2.RUNTIME_KIND_PROCESS,
        command=command,
        working_dir=str(ROOT),
        labels={"soak": "yes"},
        sidecar=sidecar,
    )
    spec.grace_period.FromSeconds(5)
    return spec


SPECS = [
    # Long-lived: never restarted; its process is measured too.
    _spec("soak-async", ["python", "examples/async_app.py", "--listen", "127.0.0.1:0"]),
    # Restarted every round.
    _spec("soak-sync", ["python", "examples/sync_app.py", "--listen", "127.0.0.1:0"]),
    # Stopped, then started again, every round.
    _spec(
        "soak-sidecar",
        ["sh", "-c", 'i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.1; done'],
        sidecar=True,
    ),
]
LONG_LIVED = "soak-async"
KINDS = [
    "WatchEvents",
    "manager StreamLogs",
    "manager WatchMetrics",
    "StreamLogs",
    "WatchMetrics",
    "Health.Watch",
]


class Follower:
    """A server stream read on its own thread until cancelled: how many
    messages came, and any error but the cancellation."""

    def __init__(self, name: str, open_stream: Callable[[], Any]) -> None:
        self.name = name
        self.count = 0
        self.error: BaseException | None = None
        self._stream = open_stream()
        self._thread = threading.Thread(target=self._read, name=f"follow-{name}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for _ in self._stream:
                self.count += 1
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = exc

    def wait_for(self, count: int, timeout: float = STREAM_WAIT) -> None:
        wait_until(
            lambda: self.count >= count or self.error is not None, timeout, f"{self.name} #{count}"
        )
        assert self.error is None, f"{self.name}: {self.error}"

    def close(self) -> bool:
        """Cancel the stream; True if its reader ended."""
        self._stream.cancel()
        self._thread.join(10)
        return not self._thread.is_alive()


def _management_endpoint(container: manager_pb2.Container) -> str:
    [endpoint] = [
        e.address
        for e in container.identity.endpoints
        if e.kind == container_pb2.ENDPOINT_KIND_MANAGEMENT
    ]
    return endpoint


class RssPeak:
    """The highest RSS of a process, sampled on a thread of its own until closed."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.peak = 0
        self._process = psutil.Process(pid)
        self._stop = threading.Event()
        self._every = every
        self._thread = threading.Thread(target=self._sample, name="rss-peak", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self._every):
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self._process.memory_info().rss)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _figures(pid: int) -> tuple[int, int]:
    process = psutil.Process(pid)
    return process.memory_info().rss, process.num_fds()


@contextlib.contextmanager
def _manager_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    address = free_address()
    err = open(tmp_path / "manager.err", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "tests/apps/run_manager.py",
            "--listen",
            address,
            "--state-dir",
            str(tmp_path / "state"),
            "--heartbeat",
            "1s",
        ],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    try:
        yield proc, address
    finally:
        if proc.poll() is None:
            proc.terminate()  # the containers it launched keep running: ended below
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        err.close()


class Churn:
    """Opens, reads and closes one stream of every kind after another, on its
    own thread, until stopped; paced by the streams' own messages."""

    def __init__(self, manager: manager_pb2_grpc.ManagerStub, target: Callable[[], str]) -> None:
        self._manager = manager
        self._target = target  # the restarted container's Management endpoint now
        self.rounds = 0
        self.answered: dict[str, int] = {}  # streams of each kind that answered
        # Streams the client still waited on past their deadline (cancelled).
        self.stalled: list[str] = []
        # The last streams opened: (name, seconds it took, how it ended), for a failure's message.
        self.recent: collections.deque[tuple[str, float, str]] = collections.deque(maxlen=12)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._resume = threading.Event()
        self._resume.set()
        self._thread = threading.Thread(target=self._run, name="churn", daemon=True)
        self._thread.start()

    def _opens(self) -> list[tuple[str, Callable[[], Any]]]:
        m = self._manager
        follow = manager_pb2.StreamLogsFilter(follow=True, tail=5)
        return [
            (
                "WatchEvents",
                lambda: m.WatchEvents(
                    manager_pb2.WatchEventsRequest(include_history=True), timeout=STREAM_WAIT
                ),
            ),
            (
                "manager StreamLogs",
                lambda: m.StreamLogs(
                    manager_pb2.ManagerStreamLogsRequest(label_selector="soak=yes", filter=follow),
                    timeout=STREAM_WAIT,
                ),
            ),
            (
                "manager WatchMetrics",
                lambda: m.WatchMetrics(
                    manager_pb2.ManagerWatchMetricsRequest(label_selector="soak=yes"),
                    timeout=STREAM_WAIT,
                ),
            ),
        ]

    def _direct(self, channel: grpc.Channel) -> list[tuple[str, Callable[[], Any]]]:
        management = management_pb2_grpc.ManagementStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        return [
            (
                "StreamLogs",
                lambda: management.StreamLogs(
                    management_pb2.StreamLogsRequest(follow=True, tail=5), timeout=STREAM_WAIT
                ),
            ),
            (
                "WatchMetrics",
                lambda: management.WatchMetrics(
                    management_pb2.WatchMetricsRequest(), timeout=STREAM_WAIT
                ),
            ),
            (
                "Health.Watch",
                lambda: health.Watch(health_pb2.HealthCheckRequest(), timeout=STREAM_WAIT),
            ),
        ]

    def _one(self, name: str, open_stream: Callable[[], Any], opened_on: str = "") -> None:
        """Open one stream and read its first message; ``opened_on``: the
        restarted container's endpoint it went to, for its direct streams."""
        started, outcome = time.monotonic(), "ended"
        self.recent.append((name, 0.0, "open"))
        stream = open_stream()
        # Every stream has a deadline (STREAM_WAIT), and grpcio's sync client
        # was once seen still waiting 30 s past it, in next() of a direct
        # StreamLogs whose container's server had just sent GOAWAY (shutting
        # down for a restart). Such a call is cancelled a little past its
        # deadline and counted (stalled), so that it shows in the figures
        # instead of holding the churn still; what this test measures (RSS
        # and fds under churn) goes on.
        watchdog = threading.Timer(STREAM_WAIT + 5.0, stream.cancel)
        watchdog.daemon = True
        watchdog.start()
        try:
            # None: ended at once (a container between runs).
            if next(stream, None) is not None:
                outcome = "answered"
                self.answered[name] = self.answered.get(name, 0) + 1
        except grpc.RpcError as exc:
            outcome = exc.code().name
            if exc.code() == grpc.StatusCode.CANCELLED and not watchdog.is_alive():
                outcome = "stalled past its deadline: cancelled"
                self.stalled.append(name)
            # The restarted container may be between runs: its streams end.
            # Or, opened on a run as it was being stopped (the churn learns
            # of the next run only once it is up), such a stream was seen to
            # get nothing until its deadline: excused only when that run has
            # since been replaced; a live run's silence is still a failure.
            elif exc.code() not in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.CANCELLED,
            ) and not (
                exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                and opened_on
                and self._target() != opened_on
            ):
                raise AssertionError(
                    f"{name}: {exc.code().name} {exc.details()}; the last streams: "
                    f"{list(self.recent)}"
                ) from exc
        finally:
            watchdog.cancel()
            stream.cancel()
            self.recent[-1] = (name, time.monotonic() - started, outcome)

    def _pause_here(self) -> None:
        """Between two streams: hold still while a measurement asks (so that a
        pause waits for one stream, not for the rest of a round)."""
        if not self._resume.is_set():
            self._paused.set()
            self._resume.wait()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for name, open_stream in self._opens():
                    self._pause_here()
                    self._one(name, open_stream)
                target = self._target()
                with grpc.insecure_channel(target) as channel:
                    for name, open_stream in self._direct(channel):
                        self._pause_here()
                        self._one(name, open_stream, opened_on=target)
                self.rounds += 1
        except BaseException as exc:
            self.error = exc
            self._paused.set()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No churn stream open while the block runs (a measurement)."""
        self._paused.clear()
        self._resume.clear()
        try:
            # A churn that failed before this pause cleared its flag has
            # ended: say why, not that it did not pause.
            deadline = time.monotonic() + 3 * STREAM_WAIT
            while (
                not self._paused.wait(0.1)
                and self._thread.is_alive()
                and time.monotonic() < deadline
            ):
                pass
            assert self.error is None, f"churn: {self.error!r}\n{self.stack()}"
            assert self._paused.is_set(), f"the churn did not pause:\n{self.stack()}"
            yield
        finally:
            self._resume.set()

    def stack(self) -> str:
        """Where the churn thread is now (for a failure's message)."""
        frame = sys._current_frames().get(self._thread.ident or 0)
        where = "".join(traceback.format_stack(frame)) if frame is not None else "(ended)"
        streams = "\n".join(f"  {n}: {t:.2f} s, {o}" for n, t, o in self.recent)
        return f"{where}\nthe last streams:\n{streams}"

    def close(self) -> bool:
        """Stop churning; True if the thread ended."""
        self._stop.set()
        self._resume.set()
        self._thread.join(3 * STREAM_WAIT)
        return not self._thread.is_alive()


@pytest.mark.timeout(SOAK_SECONDS + 300)
def test_soak_rss_and_fds_stay_flat(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with _manager_process(tmp_path) as (manager_proc, address):
        channel = grpc.insecure_channel(address)
        stub = manager_pb2_grpc.ManagerStub(channel)
        followers: list[Follower] = []
        churn: Churn | None = None
        direct: grpc.Channel | None = None
        pids: set[int] = set()  # of every run launched, killed at the end if alive
        peak: RssPeak | None = None
        try:
            wait_until(lambda: _serving(stub), 20, "the manager serving")
            for spec in SPECS:
                stub.RunContainer(manager_pb2.RunContainerRequest(spec=spec), timeout=30)
            running = {
                spec.name: wait_container(
                    stub, spec.name, running_and_connected, f"{spec.name} running", RESTART_WAIT
                )
                for spec in SPECS
            }
            pids.update(c.pid for c in running.values())
            long_lived = running[LONG_LIVED]
            direct = held = grpc.insecure_channel(_management_endpoint(long_lived))

            # Held for the whole soak: every stream kind at once.
            follow = manager_pb2.StreamLogsFilter(follow=True, tail=1)
            followers = [
                Follower(
                    "held WatchEvents",
                    lambda: stub.WatchEvents(manager_pb2.WatchEventsRequest(include_history=True)),
                ),
                Follower(
                    "held manager StreamLogs",
                    lambda: stub.StreamLogs(
                        manager_pb2.ManagerStreamLogsRequest(containers=[LONG_LIVED], filter=follow)
                    ),
                ),
                Follower(
                    "held manager WatchMetrics",
                    lambda: stub.WatchMetrics(
                        manager_pb2.ManagerWatchMetricsRequest(containers=[LONG_LIVED])
                    ),
                ),
                Follower(
                    "held StreamLogs",
                    lambda: management_pb2_grpc.ManagementStub(held).StreamLogs(
                        management_pb2.StreamLogsRequest(follow=True, tail=1)
                    ),
                ),
                Follower(
                    "held WatchMetrics",
                    lambda: management_pb2_grpc.ManagementStub(held).WatchMetrics(
                        management_pb2.WatchMetricsRequest()
                    ),
                ),
                Follower(
                    "held Health.Watch",
                    lambda: health_pb2_grpc.HealthStub(held).Watch(health_pb2.HealthCheckRequest()),
                ),
            ]
            for follower in followers:
                follower.wait_for(1)

            endpoint = {"soak-sync": _management_endpoint(running["soak-sync"])}
            churn = Churn(stub, lambda: endpoint["soak-sync"])

            def one_round() -> None:
                restarted = stub.RestartContainer(
                    manager_pb2.RestartContainerRequest(container="soak-sync"),
                    timeout=RESTART_WAIT,
                ).container
                got = wait_container(
                    stub, "soak-sync", running_and_connected, "soak-sync back", RESTART_WAIT
                )
                assert got.restarts == restarted.restarts
                pids.add(got.pid)
                endpoint["soak-sync"] = _management_endpoint(got)
                stub.StopContainer(
                    manager_pb2.StopContainerRequest(container="soak-sidecar"),
                    timeout=RESTART_WAIT,
                )
                wait_container(
                    stub,
                    "soak-sidecar",
                    lambda c: c.HasField("exit_code"),
                    "soak-sidecar exited",
                    RESTART_WAIT,
                )
                stub.RestartContainer(
                    manager_pb2.RestartContainerRequest(container="soak-sidecar"),
                    timeout=RESTART_WAIT,
                )
                pids.add(
                    wait_container(
                        stub,
                        "soak-sidecar",
                        running_and_connected,
                        "soak-sidecar back",
                        RESTART_WAIT,
                    ).pid
                )

            def measure() -> dict[str, tuple[int, int]]:
                with churn.paused():
                    return {
                        "manager": _figures(manager_proc.pid),
                        LONG_LIVED: _figures(long_lived.pid),
                    }

            for _ in range(WARM_UP_ROUNDS):
                one_round()
            baseline = measure()
            peak = RssPeak(manager_proc.pid)
            counts = [f.count for f in followers]
            started = time.monotonic()
            rounds = 0
            while time.monotonic() - started < SOAK_SECONDS:
                one_round()
                rounds += 1
                assert churn.error is None, f"churn: {churn.error!r}"
            soaked = time.monotonic() - started

            # Every held stream is still up; those that stream steadily moved on.
            for follower, before in zip(followers, counts, strict=True):
                assert follower.error is None, f"{follower.name}: {follower.error}"
                if "Health" not in follower.name:  # health changes never here
                    follower.wait_for(before + 1)

            # File descriptors settle (a connection of the last round being
            # closed), and so does RSS: grpc core's own threads were seen
            # (gdb: an event_engine thread in malloc, every Python thread
            # idle) taking 300-700 MB for a few seconds, about one soak in
            # ten, and handing it back to the system within ten; a leak never
            # comes back. Bounded, then compared; the peak is printed.
            def settled() -> bool:
                end = measure()
                return all(
                    end[k][1] <= baseline[k][1] + FD_SLACK
                    and end[k][0] <= baseline[k][0] * (1 + RSS_GROWTH)
                    for k in baseline
                )

            with contextlib.suppress(AssertionError):
                wait_until(settled, SETTLE_WAIT, "file descriptors and RSS to settle")
            end = measure()
            peak.close()
            mb = 1 << 20
            lines = [
                f"soak {soaked:.0f} s: {rounds} rounds after {WARM_UP_ROUNDS} warm-up "
                f"(restart + stop/start each), {churn.rounds} churn rounds of 6 streams, "
                f"{len(followers)} streams held; churn streams answered: {churn.answered}; "
                f"stalled past their deadline (cancelled): {churn.stalled or 'none'}"
            ]
            for key in baseline:
                (rss0, fds0), (rss1, fds1) = baseline[key], end[key]
                lines.append(
                    f"{key}: RSS {rss0 / mb:.1f} -> {rss1 / mb:.1f} MB "
                    f"({(rss1 - rss0) / rss0:+.1%}), fds {fds0} -> {fds1}"
                    + (f"; peak RSS {peak.peak / mb:.1f} MB" if key == "manager" else "")
                )
            with capsys.disabled():
                print("\n" + "\n".join(lines))
            assert rounds >= 2, lines
            assert churn.rounds >= rounds, lines
            # Every kind was answered, the restarted container's own streams
            # (refused while it is between runs) once a round at least.
            assert all(churn.answered.get(kind, 0) >= rounds for kind in KINDS), lines
            for key in baseline:
                (rss0, fds0), (rss1, fds1) = baseline[key], end[key]
                assert rss1 <= rss0 * (1 + RSS_GROWTH), lines
                assert fds1 <= fds0 + FD_SLACK, lines
            # Closed at the end of a soak, the streams end (teardown closes
            # them again, which does nothing, after a failure).
            assert churn.close(), f"the churn did not end:\n{churn.stack()}"
            assert churn.error is None, f"churn: {churn.error!r}"
            for follower in followers:
                assert follower.close(), f"{follower.name} did not end when cancelled"
        finally:
            if peak is not None:
                peak.close()
            # The containers first: whatever fails below, none outlives the test.
            with contextlib.suppress(Exception):
                _stop_all(stub)
            for pid in pids:  # each run leads its own process group
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
            if churn is not None:
                churn.close()
            for follower in followers:
                follower.close()
            if direct is not None:
                direct.close()
            channel.close()


def _serving(stub: manager_pb2_grpc.ManagerStub) -> bool:
    try:
        stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=1)
    except grpc.RpcError:
        return False
    return True


def _stop_all(stub: manager_pb2_grpc.ManagerStub) -> None:
    """Stop what the manager launched (its exit leaves containers running)."""
    for container in stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=5).containers:
        if container.connected:
            request = manager_pb2.StopContainerRequest(container=container.identity.id)
            request.grace_period.FromSeconds(5)
            with contextlib.suppress(grpc.RpcError):
                stub.StopContainer(request, timeout=30)
        # Whatever outlived its stop (a sidecar's program too: its own group).
        if container.pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(container.pid, signal.SIGKILL)

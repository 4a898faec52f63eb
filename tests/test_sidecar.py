"""The sidecar: a program that knows nothing of pycontainer (a bash script,
tests/apps/sidecar_app.sh) supervised by `python -m pycontainer.sidecar` run
as a process of its own, seen through the Management API, grpc.health.v1 and
a manager, with real processes, signals and sockets."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import http.server
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from google.protobuf import duration_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from support import ManagerHost, wait_until

from pycontainer.cli import _run
from pycontainer.manager._runtime import sidecar_launch
from pycontainer.sidecar import (
    Prober,
    Severities,
    SidecarSettings,
    parse_probe,
    parse_rule,
    run_probe,
    settings_from_args,
    settings_from_spec,
    spec_from_args,
)
from pycontainer.spec import SPEC_ENV, encode_spec
from pycontainer.units import DEFAULT_GRACE_PERIOD
from pycontainer.v1 import (
    container_pb2,
    logs_pb2,
    management_pb2,
    management_pb2_grpc,
    manager_pb2,
    manager_pb2_grpc,
    spec_pb2,
)
from pycontainer.v1 import health_pb2 as pc_health_pb2

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "tests" / "apps" / "sidecar_app.sh")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# -- a sidecar process -------------------------------------------------------------------------
class SidecarProcess:
    """`python -m pycontainer.sidecar ARGS` with its output collected."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pycontainer.sidecar", *args],
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        self._channel: grpc.Channel | None = None

    @staticmethod
    def _read(stream: object, into: list[str]) -> None:
        with stream:  # type: ignore[attr-defined]
            for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
                into.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def err_text(self) -> str:
        return "\n".join(self.stderr)

    @property
    def address(self) -> str:
        box: dict[str, str] = {}

        def served() -> bool:
            for line in list(self.stderr):
                found = re.search(r"Management API on (\S+?)(,|$)", line)
                if found:
                    box["address"] = found.group(1)
                    return True
            assert self.proc.poll() is None, f"sidecar exited:\n{self.err_text()}"
            return False

        wait_until(served, timeout=15, what="the sidecar serving")
        return box["address"]

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.address)
        return self._channel

    @property
    def management(self) -> management_pb2_grpc.ManagementStub:
        return management_pb2_grpc.ManagementStub(self.channel)

    def health(self, service: str = "") -> int:
        stub = health_pb2_grpc.HealthStub(self.channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(response.status)

    def child(self) -> psutil.Process:
        box: dict[str, psutil.Process] = {}

        def started() -> bool:
            children = psutil.Process(self.proc.pid).children()
            # The exec helper becomes the program: wait until it has.
            for c in children:
                with contextlib.suppress(psutil.Error):
                    if c.name() == "bash":
                        box["child"] = c
                        return True
            return False

        wait_until(started, timeout=10, what="the program started")
        # Its first line: the script has set its TERM trap.
        wait_until(lambda: "tick 1" in self.stdout, timeout=10, what="the program's output")
        return box["child"]

    def close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def wait(self, timeout: float) -> int:
        self.close_channel()
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return code

    def reap(self) -> None:
        """Kill what is left (the sidecar and its program's group)."""
        self.close_channel()
        with contextlib.suppress(psutil.Error):
            for c in psutil.Process(self.proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    c.kill()
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        for reader in self._readers:
            reader.join(5)


@pytest.fixture
def sidecars() -> Iterator[list[SidecarProcess]]:
    started: list[SidecarProcess] = []
    yield started
    for s in started:
        s.reap()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _entries(sidecar: SidecarProcess, **filters: object) -> list[logs_pb2.LogEntry]:
    request = management_pb2.StreamLogsRequest(**filters)  # type: ignore[arg-type]
    out: list[logs_pb2.LogEntry] = []
    for response in sidecar.management.StreamLogs(request, timeout=5):
        out.extend(response.entries)
    return out


def _seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


# -- standalone: logs, metrics, health, graceful stop ------------------------------------------
def test_logs_metrics_health_and_a_graceful_stop(sidecars: list[SidecarProcess]) -> None:
    sidecar = SidecarProcess(
        *("--name", "shell", "--grace", "10s", "--label", "lang=bash"),
        *("--severity-rule", "^heartbeat=debug"),
        *("--", "bash", APP),
    )
    sidecars.append(sidecar)
    child = sidecar.child()
    wait_until(lambda: sidecar.health() == SERVING, what="SERVING")
    assert sidecar.health("readiness") == SERVING
    assert sidecar.health("liveness") == SERVING
    info = sidecar.management.GetInfo(management_pb2.GetInfoRequest(), timeout=5)
    assert info.identity.name == "shell"
    assert info.identity.labels["lang"] == "bash"
    assert info.identity.grace_period.seconds == 10
    assert info.state == container_pb2.LIFECYCLE_STATE_RUNNING
    checks = sidecar.management.GetHealth(management_pb2.GetHealthRequest(), timeout=5).checks
    assert {c.name for c in checks} == {"liveness", "readiness"}

    # Logs: one entry per line, loggers stdout/stderr, severities by stream,
    # by the default rule (leading level words) and by --severity-rule.
    def logged() -> bool:
        messages = {e.message for e in _entries(sidecar)}
        return {"tick 2", "note 2", "heartbeat 2"} <= messages

    wait_until(logged, what="two rounds of output in StreamLogs")
    by_message = {e.message: e for e in _entries(sidecar)}
    expected = {
        "tick 1": ("stdout", logs_pb2.SEVERITY_INFO, "INFO"),
        "note 1": ("stderr", logs_pb2.SEVERITY_WARN, "WARN"),
        "ERROR something broke": ("stdout", logs_pb2.SEVERITY_ERROR, "ERROR"),
        "DEBUG verbose detail": ("stderr", logs_pb2.SEVERITY_DEBUG, "DEBUG"),
        "heartbeat 1": ("stdout", logs_pb2.SEVERITY_DEBUG, "DEBUG"),
    }
    for message, (logger, severity, text) in expected.items():
        entry = by_message[message]
        assert (entry.logger, entry.severity, entry.severity_text) == (logger, severity, text), (
            message
        )
    assert by_message["tick 1"].attributes["log.iostream"] == "stdout"
    assert by_message["tick 1"].attributes["process.pid"] == str(child.pid)
    stderr_only = _entries(sidecar, logger="stderr")
    assert stderr_only
    assert {e.logger for e in stderr_only} == {"stderr"}
    errors = _entries(sidecar, min_severity=logs_pb2.SEVERITY_ERROR, logger="stdout")
    assert [e.message for e in errors] == ["ERROR something broke"]
    assert "tick 1" in sidecar.stdout  # echoed on the sidecar's own stdout
    assert "note 1" in sidecar.stderr

    # Metrics: the sidecar's own process figures, and the program's as app metrics.
    stream = sidecar.management.WatchMetrics(
        management_pb2.WatchMetricsRequest(
            interval=_seconds(0.1), metric_filters=["process.child.*"]
        ),
        timeout=10,
    )
    snapshot = next(iter(stream)).snapshot
    stream.cancel()  # type: ignore[no-untyped-call]
    assert snapshot.process.pid == sidecar.proc.pid
    metrics = {m.name: m for m in snapshot.metrics}
    assert set(metrics) == {
        "process.child.cpu.seconds",
        "process.child.memory.rss",
        "process.child.threads",
        "process.child.processes",
    }
    [rss] = metrics["process.child.memory.rss"].points
    assert rss.attributes["process.pid"] == str(child.pid)
    assert rss.as_int > 100_000
    [threads] = metrics["process.child.threads"].points
    assert threads.as_int >= 1
    [cpu] = metrics["process.child.cpu.seconds"].points
    assert cpu.as_double >= 0.0
    assert metrics["process.child.memory.rss"].unit == "By"

    # SIGTERM to the sidecar: SIGTERM to the program, which says "graceful".
    started = time.monotonic()
    sidecar.proc.send_signal(signal.SIGTERM)
    assert sidecar.wait(10) == 0
    assert time.monotonic() - started < 5
    assert "graceful" in sidecar.stdout
    assert _gone(child.pid)
    assert "exited with status 0" in sidecar.err_text()


@contextlib.contextmanager
def _accepting_listener() -> Iterator[int]:
    """A loopback port that accepts (and closes) every connection: one that is
    never accepted fills its backlog after 17 connects, 1.7 s of a 100 ms tcp
    probe, and every later probe times out (a false liveness failure once a
    loaded machine makes the test run that long)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def accept() -> None:
        with contextlib.suppress(OSError):  # closed: the test is over
            while True:
                connection, _ = listener.accept()
                connection.close()

    acceptor = threading.Thread(target=accept, name="probe-target", daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1]
    finally:
        # shutdown wakes the blocked accept() (close alone does not on Linux).
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        acceptor.join(5)


def test_a_failing_exec_readiness_probe_turns_not_serving_after_the_threshold(
    sidecars: list[SidecarProcess], tmp_path: Path
) -> None:
    flag = tmp_path / "ready"
    flag.touch()
    with _accepting_listener() as port:  # what the liveness tcp probe connects to
        sidecar = SidecarProcess(
            *("--name", "probed", "--grace", "5s"),
            *("--readiness-exec", f"test -f {flag}"),
            *("--liveness-tcp", str(port)),
            *("--probe-period", "100ms", "--probe-failure-threshold", "3"),
            *("--", "bash", APP),
        )
        sidecars.append(sidecar)
        wait_until(lambda: sidecar.health("readiness") == SERVING, what="ready")
        assert sidecar.health("liveness") == SERVING
        flag.unlink()
        wait_until(lambda: sidecar.health("readiness") == NOT_SERVING, what="not ready")
        assert sidecar.health() == NOT_SERVING
        assert sidecar.health("liveness") == SERVING  # readiness failures only
        report = sidecar.management.GetHealth(
            management_pb2.GetHealthRequest(check_names=["readiness"]), timeout=5
        )
        [check] = report.checks
        assert check.kind == pc_health_pb2.CHECK_KIND_READINESS
        assert "exec probe failed with status 1" in check.message
        assert "threshold 3" in check.message
        flag.touch()
        wait_until(lambda: sidecar.health("readiness") == SERVING, what="ready again")
        sidecar.proc.send_signal(signal.SIGTERM)
        assert sidecar.wait(10) == 0


# -- through a manager: pause, resume, checkpoint, restore, stop -------------------------------
def _container(stub: manager_pb2_grpc.ManagerStub, name: str) -> manager_pb2.Container | None:
    try:
        return stub.GetContainer(
            manager_pb2.GetContainerRequest(container=name), timeout=5
        ).container
    except grpc.RpcError:
        return None


def test_pause_resume_checkpoint_restore_and_stop_through_a_manager(
    sidecars: list[SidecarProcess], tmp_path: Path
) -> None:
    counter = tmp_path / "counter"
    restored = tmp_path / "restored"
    pre_stop = tmp_path / "pre-stop"
    manager = ManagerHost(str(tmp_path / "state"))
    try:
        sidecar = SidecarProcess(
            *("--manager", manager.address, "--name", "managed", "--grace", "10s"),
            "--checkpoint-cmd",
            f"sh -c 'echo \"pid=$PYCONTAINER_CHILD_PID count=$(cat {counter})\"'",
            *("--restore-cmd", f"sh -c 'cat > {restored}'"),
            *("--pre-stop", f"sh -c 'echo stopping > {pre_stop}'"),
            *("--", "bash", APP),
            env={"SIDECAR_APP_STATE": str(counter)},
        )
        sidecars.append(sidecar)

        def running() -> bool:
            c = _container(manager.stub, "managed")
            return c is not None and c.state == container_pb2.LIFECYCLE_STATE_RUNNING

        wait_until(running, timeout=15, what="started by the manager")
        got = _container(manager.stub, "managed")
        assert got is not None
        assert got.pid == sidecar.proc.pid
        assert got.identity.endpoints[0].kind == container_pb2.ENDPOINT_KIND_MANAGEMENT
        child = sidecar.child()
        descendants = [child, *child.children(recursive=True)]

        manager.stub.PauseContainer(
            manager_pb2.PauseContainerRequest(container="managed"), timeout=10
        )
        for proc in descendants:  # the whole group is stopped ('T')
            with contextlib.suppress(psutil.NoSuchProcess):
                assert proc.status() == psutil.STATUS_STOPPED
        assert sidecar.health("readiness") == NOT_SERVING
        manager.stub.ResumeContainer(
            manager_pb2.ResumeContainerRequest(container="managed"), timeout=10
        )
        assert child.status() != psutil.STATUS_STOPPED
        wait_until(lambda: sidecar.health() == SERVING, what="SERVING after resume")

        checkpoint = manager.stub.CheckpointContainer(
            manager_pb2.CheckpointContainerRequest(container="managed"), timeout=10
        )
        assert checkpoint.size_bytes > 0
        manager.stub.RestoreContainer(
            manager_pb2.RestoreContainerRequest(
                container="managed", checkpoint_id=checkpoint.checkpoint_id
            ),
            timeout=10,
        )
        state = restored.read_text()  # the checkpoint's stdout, given to restore's stdin
        assert re.fullmatch(rf"pid={child.pid} count=\d+\n", state), state

        stopped = manager.stub.StopContainer(
            manager_pb2.StopContainerRequest(container="managed", grace_period=_seconds(10)),
            timeout=30,
        )
        assert stopped.container.state == container_pb2.LIFECYCLE_STATE_STOPPED
        assert sidecar.wait(10) == 0
        assert "graceful" in sidecar.stdout
        assert pre_stop.read_text() == "stopping\n"
        assert _gone(child.pid)
    finally:
        manager.stop()


def test_the_readiness_probe_reaches_the_manager_as_it_flips(
    sidecars: list[SidecarProcess], tmp_path: Path
) -> None:
    flag = tmp_path / "ready"
    manager = ManagerHost(str(tmp_path / "state"))
    try:
        sidecar = SidecarProcess(
            *("--manager", manager.address, "--name", "probed", "--grace", "5s"),
            *("--readiness-exec", f"test -f {flag}"),
            *("--probe-period", "100ms", "--probe-failure-threshold", "1"),
            *("--", "bash", APP),
        )
        sidecars.append(sidecar)

        def seen(ready: bool) -> Callable[[], bool]:
            def check() -> bool:
                c = _container(manager.stub, "probed")
                return (
                    c is not None
                    and c.state == container_pb2.LIFECYCLE_STATE_RUNNING
                    and c.HasField("readiness")
                    and c.readiness.ready is ready
                )

            return check

        # Started by the manager; its probe fails (no flag yet): not ready.
        wait_until(seen(False), timeout=15, what="RUNNING, not ready")
        flag.touch()
        wait_until(seen(True), what="ready")
        flag.unlink()
        wait_until(seen(False), what="not ready again")
        flag.touch()
        wait_until(seen(True), what="ready again")
        stopped = manager.stub.StopContainer(
            manager_pb2.StopContainerRequest(container="probed", grace_period=_seconds(5)),
            timeout=30,
        )
        assert stopped.container.state == container_pb2.LIFECYCLE_STATE_STOPPED
        assert stopped.container.readiness.ready is False  # a stop is not ready
        assert sidecar.wait(10) == 0
    finally:
        manager.stop()


def test_a_manager_sees_a_stop_while_paused_and_a_program_that_failed(
    sidecars: list[SidecarProcess], tmp_path: Path
) -> None:
    manager = ManagerHost(str(tmp_path / "state"))
    try:
        paused = SidecarProcess(
            *("--manager", manager.address, "--name", "paused", "--grace", "10s"),
            *("--", "bash", APP),
        )
        failing = SidecarProcess(
            *("--manager", manager.address, "--name", "failing"),
            *("--", "bash", "-c", "sleep 1; echo 'fatal: disk on fire' >&2; exit 3"),
        )
        sidecars.extend([paused, failing])

        def state_of(name: str) -> int:
            c = _container(manager.stub, name)
            return c.state if c is not None else -1

        wait_until(
            lambda: state_of("paused") == container_pb2.LIFECYCLE_STATE_RUNNING,
            timeout=15,
            what="started by the manager",
        )
        child = paused.child()
        manager.stub.PauseContainer(
            manager_pb2.PauseContainerRequest(container="paused"), timeout=10
        )
        assert child.status() == psutil.STATUS_STOPPED
        stopped = manager.stub.StopContainer(
            manager_pb2.StopContainerRequest(container="paused", grace_period=_seconds(10)),
            timeout=30,
        )
        assert stopped.container.state == container_pb2.LIFECYCLE_STATE_STOPPED
        assert paused.wait(10) == 0
        assert "graceful" in paused.stdout  # continued, so it could handle its SIGTERM

        # Exiting by itself with status 3: FAILED, the status as the error.
        assert failing.wait(15) == 3
        wait_until(
            lambda: state_of("failing") == container_pb2.LIFECYCLE_STATE_FAILED,
            what="FAILED at the manager",
        )
        got = _container(manager.stub, "failing")
        assert got is not None
        assert "the program exited with status 3" in got.error
        assert "fatal: disk on fire" in failing.stderr
    finally:
        manager.stop()


def test_a_sidecar_spec_launched_by_the_manager_from_a_directory_with_a_decoy_package(
    tmp_path: Path,
) -> None:
    """`sidecar: true`: the manager hands the sidecar the spec itself, and the
    working directory (here holding a `pycontainer/` of its own, as a source
    checkout does) cannot shadow the installed package."""
    workdir = tmp_path / "checkout"
    decoy = workdir / "pycontainer"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("raise ImportError('the decoy pycontainer was imported')\n")
    manager = ManagerHost(str(tmp_path / "state"))
    try:
        spec = spec_pb2.ContainerSpec(
            name="scripted",
            labels={"lang": "bash"},
            runtime=spec_pb2.RUNTIME_KIND_PROCESS,
            command=[
                "bash",
                "-c",
                'echo "spec=${PYCONTAINER_SPEC:-none} test=$SIDECAR_TEST cwd=$PWD"; exec bash "$0"',
                APP,
            ],
            grace_period=_seconds(10),
            readiness_probe=spec_pb2.Probe(
                exec=spec_pb2.ExecProbe(command=["true"]), period=_seconds(0.2)
            ),
            working_dir=str(workdir),
            env={"SIDECAR_TEST": "1"},
            sidecar=True,
        )
        [launched] = manager.stub.RunContainer(
            manager_pb2.RunContainerRequest(spec=spec), timeout=30
        ).containers
        cid = launched.identity.id

        def running() -> bool:
            c = _container(manager.stub, cid)
            return c is not None and c.state == container_pb2.LIFECYCLE_STATE_RUNNING

        wait_until(running, timeout=15, what="the launched sidecar running")
        got = _container(manager.stub, cid)
        assert got is not None
        assert got.pid == launched.pid  # registered under the id the runtime gave it
        assert got.identity.name == "scripted"
        assert got.identity.labels["lang"] == "bash"
        assert got.identity.grace_period.seconds == 10
        [endpoint] = got.identity.endpoints
        with grpc.insecure_channel(endpoint.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            wait_until(
                lambda: stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING,
                what="SERVING",
            )
            management = management_pb2_grpc.ManagementStub(channel)

            def lines() -> list[str]:
                request = management_pb2.StreamLogsRequest(logger="stdout")
                return [
                    e.message for r in management.StreamLogs(request, timeout=5) for e in r.entries
                ]

            wait_until(lambda: "tick 1" in lines(), what="the program's output")
            # The program runs in the spec's directory with the spec's
            # environment; the spec was for the sidecar alone.
            assert f"spec=none test=1 cwd={workdir}" in lines()
        stopped = manager.stub.StopContainer(
            manager_pb2.StopContainerRequest(container=cid, grace_period=_seconds(10)),
            timeout=30,
        )
        assert stopped.container.state == container_pb2.LIFECYCLE_STATE_STOPPED

        def exited() -> bool:
            c = _container(manager.stub, cid)
            return c is not None and c.HasField("exit_code")

        wait_until(exited, timeout=15, what="the sidecar's exit")
        final = _container(manager.stub, cid)
        assert final is not None
        assert final.exit_code == 0
    finally:
        with contextlib.suppress(Exception):
            manager.call(manager.manager.runtimes[spec_pb2.RUNTIME_KIND_PROCESS].close)
        manager.stop()


def test_the_sidecar_launch_is_the_spec_not_flags() -> None:
    spec = spec_pb2.ContainerSpec(
        name="web",
        command=["python", "-m", "http.server"],
        working_dir="relative/dir",
        sidecar=True,
    )
    command, env = sidecar_launch(spec)
    assert command == [sys.executable, "-P", "-m", "pycontainer.sidecar"]
    assert set(env) == {SPEC_ENV}
    resolved = spec_pb2.ContainerSpec()
    resolved.CopyFrom(spec)
    resolved.command[0] = sys.executable  # "python" is the manager's interpreter
    resolved.working_dir = os.path.abspath("relative/dir")  # where the sidecar starts
    assert env[SPEC_ENV] == encode_spec(resolved)


def test_a_spec_in_the_environment_runs_standalone(sidecars: list[SidecarProcess]) -> None:
    spec = spec_pb2.ContainerSpec(
        name="from-env", command=["bash", "-c", "echo from the spec; exit 4"]
    )
    sidecar = SidecarProcess(env={SPEC_ENV: encode_spec(spec)})
    sidecars.append(sidecar)
    assert sidecar.wait(15) == 4, sidecar.err_text()
    assert "from the spec" in sidecar.stdout
    assert "pycontainer-sidecar[from-env]" in sidecar.err_text()

    mixed = SidecarProcess("--name", "x", "--", "true", env={SPEC_ENV: encode_spec(spec)})
    sidecars.append(mixed)
    assert mixed.wait(15) == 2
    assert "PYCONTAINER_SPEC describes the container: drop --name, a command" in mixed.err_text()
    broken = SidecarProcess(env={SPEC_ENV: "%%%"})
    sidecars.append(broken)
    assert broken.wait(15) == 2
    assert "PYCONTAINER_SPEC is not base64" in broken.err_text()


# -- the end of the program --------------------------------------------------------------------
def test_a_program_ignoring_term_is_killed_at_the_grace_deadline(
    sidecars: list[SidecarProcess],
) -> None:
    sidecar = SidecarProcess(
        "--name", "stubborn", "--grace", "1s", "--", "bash", APP, "ignore-term"
    )
    sidecars.append(sidecar)
    child = sidecar.child()
    wait_until(lambda: sidecar.health() == SERVING, what="SERVING")
    sidecar.close_channel()
    started = time.monotonic()
    sidecar.proc.send_signal(signal.SIGTERM)
    code = sidecar.wait(10)
    elapsed = time.monotonic() - started
    assert code == 137, sidecar.err_text()
    assert 0.7 <= elapsed < 4.0, elapsed
    assert _gone(child.pid)
    assert "graceful" not in sidecar.stdout
    err = sidecar.err_text()
    assert "did not exit within its grace period" in err
    assert "was killed by SIGKILL" in err


def _ignores_sigterm(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def test_the_programs_kill_never_comes_before_the_grace_deadline(
    sidecars: list[SidecarProcess],
) -> None:
    """From the stop's start (the SIGTERM to the sidecar, before its
    deadline begins) to the program's death is at least the grace period,
    measured from outside (the program cannot see SIGKILL); the upper bound
    is generous (the benchmark measures how close it comes)."""
    grace = 0.5
    sidecar = SidecarProcess(
        "--name", "punctual", "--grace", "500ms", "--", "bash", APP, "ignore-term"
    )
    sidecars.append(sidecar)
    child = sidecar.child()
    wait_until(lambda: sidecar.health() == SERVING, what="SERVING")
    wait_until(lambda: _ignores_sigterm(child.pid), what="the program ignoring SIGTERM")
    sidecar.close_channel()

    def dead() -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            while child.status() != psutil.STATUS_ZOMBIE:
                time.sleep(0.001)

    watch = threading.Thread(target=dead, daemon=True)
    watch.start()
    started = time.monotonic()
    sidecar.proc.send_signal(signal.SIGTERM)
    watch.join(10)
    died = time.monotonic() - started
    assert not watch.is_alive(), "the program still lives 10 s after its stop began"
    assert grace <= died < grace + 1.5, died
    assert sidecar.wait(10) == 137, sidecar.err_text()


def test_a_program_exiting_by_itself_ends_the_sidecar_with_its_status(
    sidecars: list[SidecarProcess],
) -> None:
    sidecar = SidecarProcess(
        "--name", "short", "--", "bash", "-c", "echo bye; sleep 0.3; exit 3", "--token=s3cret"
    )
    sidecars.append(sidecar)
    assert sidecar.wait(15) == 3
    assert "bye" in sidecar.stdout
    err = sidecar.err_text()
    assert "started bash (3 arguments)" in err
    assert "s3cret" not in err
    assert "exited with status 3" in err
    assert "-> FAILED" in err  # the container FAILED, the status kept as its error


def test_a_program_that_cannot_run_exits_127(sidecars: list[SidecarProcess]) -> None:
    sidecar = SidecarProcess("--name", "missing", "--", "/nonexistent/program", "--flag")
    sidecars.append(sidecar)
    assert sidecar.wait(15) == 127
    err = sidecar.err_text()
    assert "cannot run /nonexistent/program (1 argument)" in err
    assert "--flag" not in err  # arguments may hold secrets: counted, never logged


def test_the_program_dies_with_a_killed_sidecar(sidecars: list[SidecarProcess]) -> None:
    sidecar = SidecarProcess("--name", "orphan", "--", "bash", APP)
    sidecars.append(sidecar)
    child = sidecar.child()
    sidecar.proc.kill()
    sidecar.wait(10)
    wait_until(lambda: _gone(child.pid), timeout=5, what="the program killed with the sidecar")


# -- probes (in this process, against real servers) --------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_http_tcp_grpc_and_exec_probes() -> None:
    http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    servicer.set("", SERVING)
    servicer.set("db", NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, grpc_server)
    grpc_port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]  # bound, never listening: refused
        try:
            http_port = http_server.server_address[1]
            assert run_probe(parse_probe("http", f"{http_port}/healthz"))[0]
            ok, message = run_probe(parse_probe("http", f"127.0.0.1:{http_port}/other"))
            assert not ok
            assert "503" in message
            assert run_probe(parse_probe("tcp", str(http_port)))[0]
            assert not run_probe(parse_probe("tcp", str(closed_port)))[0]
            assert run_probe(parse_probe("grpc", str(grpc_port)))[0]
            ok, message = run_probe(parse_probe("grpc", f"{grpc_port}/db"))
            assert not ok
            assert "NOT_SERVING" in message
            assert run_probe(parse_probe("exec", "true"))[0]
            assert not run_probe(parse_probe("exec", "false"))[0]
            ok, message = run_probe(
                spec_pb2.Probe(
                    exec=spec_pb2.ExecProbe(command=["sleep", "5"]), timeout=_seconds(0.2)
                )
            )
            assert not ok
            assert "timed out" in message
            ok, message = run_probe(parse_probe("exec", "/nonexistent/probe"))
            assert not ok
        finally:
            http_server.shutdown()
            http_server.server_close()
            grpc_server.stop(None)


def test_prober_counts_failures_against_the_threshold() -> None:
    reports: list[tuple[bool, str]] = []
    prober = Prober(
        "readiness",
        spec_pb2.Probe(exec=spec_pb2.ExecProbe(command=["true"]), failure_threshold=2),
        lambda serving, message: reports.append((serving, message)),
        initial=False,
    )
    prober.observe(True, "ok")
    prober.observe(False, "bad")  # 1 of 2: still serving
    prober.observe(False, "bad")  # 2 of 2: not serving
    prober.observe(True, "ok")
    assert [serving for serving, _ in reports] == [True, True, False, True]
    assert "1 of 2" in reports[1][1]
    assert "threshold 2" in reports[2][1]


# -- severities and arguments ------------------------------------------------------------------
def test_severity_rules() -> None:
    severities = Severities([parse_rule("^audit:=error"), parse_rule("a=b=fatal")])
    from pycontainer.sidecar._severity import INFO, WARN

    def text(line: str, default: object = INFO) -> str:
        return severities.classify(line, default).text  # type: ignore[arg-type]

    assert text("audit: user x") == "ERROR"
    assert text("set a=b now") == "FATAL"  # split at the last '='
    assert text("plain line") == "INFO"
    assert text("plain line", WARN) == "WARN"
    assert text("ERROR: disk full") == "ERROR"
    assert text("[warn] slow") == "WARN"
    assert text("2024-05-01 12:00:00,123 DEBUG cache miss") == "DEBUG"
    assert text('ts=1 level=error msg="x"') == "ERROR"
    assert text("errors found: 0") == "INFO"  # a word, not a prefix
    assert text("debugging is fun") == "INFO"
    assert Severities(defaults=False).classify("ERROR x", INFO).text == "INFO"
    with pytest.raises(ValueError, match="unknown level"):
        parse_rule("x=loud")
    with pytest.raises(ValueError, match="REGEX=LEVEL"):
        parse_rule("nolevel")


def _run_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pycontainer")
    _run.add_parser(parser.add_subparsers(dest="command_name"))
    return parser.parse_args(["run", *argv])


def test_run_flags_build_a_container_spec_and_take_the_specs_path() -> None:
    args = _run_args(
        *("--name", "web", "--label", "tier=front", "--priority", "4"),
        *("--cpu", "500m", "--memory", "256Mi", "--grace", "20s"),
        *("--liveness-tcp", "8000", "--liveness-period", "2s"),
        *("--liveness-failure-threshold", "5", "--probe-timeout", "500ms"),
        *("--readiness-exec", "sh -c 'test -f /tmp/ready file'"),
        *("--pre-stop", "sh -c 'kill -USR1 $PYCONTAINER_CHILD_PID'"),
        *("--checkpoint-cmd", "cat 'state file'", "--restore-cmd", "tee out"),
        *("--workdir", "/srv", "--listen", "127.0.0.1:0", "--stop-signal", "INT"),
        *("--", "./server", "--port", "8080"),
    )
    assert args.func is _run.run
    spec = spec_from_args(args)
    assert spec == spec_pb2.ContainerSpec(
        name="web",
        labels={"tier": "front"},
        command=["./server", "--port", "8080"],
        working_dir="/srv",
        priority=4,
        resources=container_pb2.ResourceRequirements(cpu_millis=500, memory_bytes=256 << 20),
        grace_period=_seconds(20),
        liveness_probe=spec_pb2.Probe(
            tcp=spec_pb2.TcpProbe(host="127.0.0.1", port=8000),
            period=_seconds(2),
            timeout=_seconds(0.5),
            failure_threshold=5,
        ),
        readiness_probe=spec_pb2.Probe(
            exec=spec_pb2.ExecProbe(command=["sh", "-c", "test -f /tmp/ready file"]),
            timeout=_seconds(0.5),
        ),
        hooks=spec_pb2.HookCommands(
            pre_stop=["sh", "-c", "kill -USR1 $PYCONTAINER_CHILD_PID"],
            checkpoint=["cat", "state file"],
            restore=["tee", "out"],
        ),
        sidecar=True,
    )
    settings = settings_from_args(args, environ={})
    container = settings.container
    assert (container.name, container.labels, container.priority) == ("web", {"tier": "front"}, 4)
    assert (container.cpu_millis, container.memory_bytes) == (500, 256 << 20)
    assert settings.grace_period == datetime.timedelta(seconds=20)
    assert settings.command == ["./server", "--port", "8080"]
    assert settings.liveness == spec.liveness_probe
    assert settings.readiness == spec.readiness_probe
    assert settings.pre_stop == ("sh", "-c", "kill -USR1 $PYCONTAINER_CHILD_PID")
    assert (settings.checkpoint, settings.restore) == (("cat", "state file"), ("tee", "out"))
    assert settings.cwd == "/srv"
    assert settings.stop_signal == signal.SIGINT

    # The same spec handed over in the environment: the same settings.
    from_env = settings_from_args(
        _run_args("--stop-signal", "INT"), environ={SPEC_ENV: encode_spec(spec)}
    )
    assert _without_id(from_env) == _without_id(settings)
    with pytest.raises(ValueError, match="drop --grace, --liveness-exec/http/tcp/grpc, a command"):
        settings_from_args(
            _run_args("--grace", "1s", "--liveness-tcp", "1", "--", "x"),
            environ={SPEC_ENV: encode_spec(spec)},
        )

    # Unset stays unset: the default grace period, no probes.
    bare = settings_from_args(_run_args("--", "/bin/prog"), environ={})
    assert bare.container.name == "prog"
    assert bare.grace_period == DEFAULT_GRACE_PERIOD
    assert (bare.liveness, bare.readiness) == (None, None)
    named = settings_from_spec(
        spec_pb2.ContainerSpec(command=["x"]), environ={"PYCONTAINER_NAME": "given"}
    )
    assert named.container.name == "given"


def _without_id(settings: SidecarSettings) -> dict[str, Any]:
    """The settings as a dict, less the container's id (random when not given)."""
    fields = dataclasses.asdict(settings)
    fields["container"].pop("id")
    return fields


def test_bad_run_flags_say_what_to_fix() -> None:
    with pytest.raises(SystemExit):
        _run_args("--liveness-tcp", "1", "--liveness-exec", "true", "--", "x")
    with pytest.raises(SystemExit):
        _run_args("--probe-period", "0s", "--", "x")
    with pytest.raises(SystemExit):
        _run_args("--liveness-tcp", "99999", "--", "x")
    with pytest.raises(ValueError, match="no program to run"):
        settings_from_args(_run_args("--name", "x"), environ={})
    with pytest.raises(ValueError, match="the readiness probe's period must be more than 0s"):
        settings_from_spec(
            spec_pb2.ContainerSpec(
                command=["x"],
                readiness_probe=spec_pb2.Probe(
                    tcp=spec_pb2.TcpProbe(port=1), period=duration_pb2.Duration()
                ),
            )
        )

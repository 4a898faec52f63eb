"""Restart policies: a container that ends is replaced as its spec says, and
restored from its last checkpoint when the spec asks for it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from support import ManagerHost, wait_until

from pycontainer.testing import manager_host
from pycontainer.v1 import container_pb2, manager_pb2, spec_pb2

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "tests" / "apps" / "connected_app.py")
S = container_pb2


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ManagerHost]:
    # Stopped as a manager's shutdown stops them, or their restart policy
    # would replace what a kill ended.
    with manager_host(tmp_path / "state", graceful=True) as host:
        yield host


def _get(manager: ManagerHost, name: str) -> manager_pb2.Container:
    return manager.stub.GetContainer(
        manager_pb2.GetContainerRequest(container=name), timeout=5
    ).container


def _events(manager: ManagerHost, name: str) -> list[manager_pb2.Event]:
    return [e for e in manager.manager.events.history() if e.container_name == name]


def test_crashed_process_is_restarted_and_restored(manager: ManagerHost, tmp_path: Path) -> None:
    spec = spec_pb2.ContainerSpec(
        name="phoenix",
        runtime=spec_pb2.RUNTIME_KIND_PROCESS,
        command=["python", APP, "--state-file", str(tmp_path / "phoenix.json")],
        working_dir=str(ROOT),
        restart_policy=spec_pb2.RESTART_POLICY_ON_FAILURE,
        checkpoint_policy=spec_pb2.CHECKPOINT_POLICY_ON_STOP,
    )
    spec.restart_backoff.FromMilliseconds(100)
    [launched] = manager.stub.RunContainer(
        manager_pb2.RunContainerRequest(spec=spec), timeout=30
    ).containers
    wait_until(lambda: _get(manager, "phoenix").state == S.LIFECYCLE_STATE_RUNNING, 20, "start")
    saved = manager.stub.CheckpointContainer(
        manager_pb2.CheckpointContainerRequest(container="phoenix"), timeout=10
    )
    assert saved.size_bytes > 0
    # The app saved the counter it put in the checkpoint (tests/apps/connected_app.py).
    checkpointed = json.loads((tmp_path / "phoenix.json").read_text())["counter"]
    first_pid = _get(manager, "phoenix").pid
    os.kill(first_pid, signal.SIGKILL)  # a crash
    wait_until(
        lambda: (
            _get(manager, "phoenix").restarts == 1
            and _get(manager, "phoenix").state == S.LIFECYCLE_STATE_RUNNING
            and _get(manager, "phoenix").connected
        ),
        30,
        "the replacement to run",
    )
    again = _get(manager, "phoenix")
    assert again.identity.id == launched.identity.id
    assert again.pid != first_pid
    kinds = [e.type for e in _events(manager, "phoenix")]
    assert manager_pb2.EVENT_TYPE_RESTARTED in kinds
    restarted = next(
        e for e in _events(manager, "phoenix") if e.type == manager_pb2.EVENT_TYPE_RESTARTED
    )
    assert "restoring its last checkpoint" in restarted.message
    # The replacement got the checkpoint's state through on_restore, then
    # on_start counted one more (a fresh start would be at 1).
    state = json.loads((tmp_path / "phoenix.json").read_text())
    assert state["calls"].get("restore") == 1
    assert state["counter"] == checkpointed + 1


def test_operator_stop_is_not_restarted(manager: ManagerHost) -> None:
    """An operator's stop is never restarted, whatever the policy. Proven
    against a control with the same policy and backoff whose process is
    killed *after* the stopped one exited: once the control has been
    restarted, a restart of the stopped one (due earlier) would have been
    too."""

    def spec(name: str) -> spec_pb2.ContainerSpec:
        spec = spec_pb2.ContainerSpec(
            name=name,
            runtime=spec_pb2.RUNTIME_KIND_PROCESS,
            command=["python", APP],
            working_dir=str(ROOT),
            restart_policy=spec_pb2.RESTART_POLICY_ALWAYS,
        )
        spec.restart_backoff.FromMilliseconds(100)
        return spec

    for name in ("steady", "control"):
        manager.stub.RunContainer(manager_pb2.RunContainerRequest(spec=spec(name)), timeout=30)
    for name in ("steady", "control"):
        wait_until(
            lambda n=name: _get(manager, n).state == S.LIFECYCLE_STATE_RUNNING,  # type: ignore[misc]
            20,
            f"{name} to start",
        )
    # "python" in a spec is the manager's own interpreter.
    assert psutil.Process(_get(manager, "steady").pid).cmdline()[0] == sys.executable
    manager.stub.StopContainer(manager_pb2.StopContainerRequest(container="steady"), timeout=30)
    wait_until(lambda: _get(manager, "steady").HasField("exit_code"), 20, "the process to exit")
    os.kill(_get(manager, "control").pid, signal.SIGKILL)
    # Until its replacement runs: one still being launched would outlive the
    # manager's shutdown at teardown (and dial in to a later test's manager).
    wait_until(
        lambda: (
            _get(manager, "control").restarts == 1
            and _get(manager, "control").state == S.LIFECYCLE_STATE_RUNNING
            and _get(manager, "control").connected
        ),
        30,
        "the control's replacement to run",
    )
    got = _get(manager, "steady")
    assert got.restarts == 0
    assert got.state == S.LIFECYCLE_STATE_STOPPED
    assert got.exit_code == 0
    assert manager_pb2.EVENT_TYPE_RESTARTED not in [e.type for e in _events(manager, "steady")]


def test_a_hung_process_is_killed_at_the_end_of_its_grace(manager: ManagerHost) -> None:
    """A process that answers nothing (SIGSTOPped) gets SIGKILL from its
    runtime once the grace period is over: a stop that
    worked (as docker stop reports it), STOPPED with the runtime's -9."""
    spec = spec_pb2.ContainerSpec(
        name="frozen",
        runtime=spec_pb2.RUNTIME_KIND_PROCESS,
        command=["python", APP],
        working_dir=str(ROOT),
    )
    manager.stub.RunContainer(manager_pb2.RunContainerRequest(spec=spec), timeout=30)
    wait_until(lambda: _get(manager, "frozen").state == S.LIFECYCLE_STATE_RUNNING, 20, "start")
    os.kill(_get(manager, "frozen").pid, signal.SIGSTOP)
    request = manager_pb2.StopContainerRequest(container="frozen")
    request.grace_period.FromMilliseconds(500)
    started = time.monotonic()
    response = manager.stub.StopContainer(request, timeout=60)
    assert response.killed
    assert time.monotonic() - started < 20  # grace 0.5 s, not the 70 s limit
    got = _get(manager, "frozen")
    assert got.exit_code == -9
    assert got.state == S.LIFECYCLE_STATE_STOPPED
    assert got.reason == "killed after its 500ms grace period"
    assert got.HasField("finish_time")
    assert got.launched


def _death_watch(pid: int) -> threading.Thread:
    """A thread that ends when process ``pid`` is dead (a zombie or gone),
    polled every millisecond: a SIGKILL the process itself cannot see."""

    def watch() -> None:
        process = psutil.Process(pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            while process.status() != psutil.STATUS_ZOMBIE:
                time.sleep(0.001)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_the_kill_of_a_hung_process_never_comes_before_its_deadline(
    manager: ManagerHost,
) -> None:
    """From the stop's start (before the manager even hears of it) to the
    process's death is at least the grace period: the kill is not early. The
    upper bound is generous (the benchmark measures how close it comes)."""
    spec = spec_pb2.ContainerSpec(
        name="frozen",
        runtime=spec_pb2.RUNTIME_KIND_PROCESS,
        command=["python", APP],
        working_dir=str(ROOT),
    )
    manager.stub.RunContainer(manager_pb2.RunContainerRequest(spec=spec), timeout=30)
    wait_until(lambda: _get(manager, "frozen").state == S.LIFECYCLE_STATE_RUNNING, 20, "start")
    pid = _get(manager, "frozen").pid
    os.kill(pid, signal.SIGSTOP)
    grace = 1.0
    request = manager_pb2.StopContainerRequest(container="frozen")
    request.grace_period.FromMilliseconds(int(grace * 1000))
    watch = _death_watch(pid)
    started = time.monotonic()
    stop = manager.stub.StopContainer.future(request, timeout=60)
    watch.join(30)
    died = time.monotonic() - started
    assert not watch.is_alive(), "the process still lives 30 s after its stop began"
    assert stop.result().killed
    assert grace <= died < grace + 1.5, died

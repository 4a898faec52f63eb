"""The manager with containers in processes of their own: launched by hand
(--manager) and by the manager's process runtime (RunContainer); graceful
stops, on_stop overrunning its grace, kill -9 of a container, and kill -9 of
the manager itself with the containers reconnecting to its successor."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from support import free_address as _free_address
from support import make_container, start_sync_host, stop_and_wait_exit, wait_until
from support import running_and_connected as _running_and_connected
from support import wait_container as _wait_container

import pycontainer
from pycontainer.testing import ManagerHost
from pycontainer.v1 import (
    container_pb2,
    management_pb2,
    management_pb2_grpc,
    manager_pb2,
    manager_pb2_grpc,
    spec_pb2,
)

S = container_pb2
E = manager_pb2
REPO = Path(__file__).resolve().parent.parent
APP = "tests/apps/connected_app.py"
RUN_MANAGER = "tests/apps/run_manager.py"


# -- helpers -------------------------------------------------------------------------------
def _seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


def _spawn(tmp_path: Path, name: str, *args: str, manager: str) -> subprocess.Popen[bytes]:
    """connected_app.py as a child of the test, dialling ``manager``."""
    out = open(tmp_path / f"{name}.out", "wb")  # noqa: SIM115 - closed in _reap
    err = open(tmp_path / f"{name}.err", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, APP, "--name", name, "--manager", manager, *args],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=err,
    )
    proc._files = (out, err)  # type: ignore[attr-defined]
    return proc


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL if still alive; always wait and close its files."""
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    for f in getattr(proc, "_files", ()):
        f.close()


def _kill_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _event(
    stub: manager_pb2_grpc.ManagerStub,
    predicate: Callable[[manager_pb2.Event], bool],
    *,
    container: str = "",
    timeout: float = 15.0,
) -> manager_pb2.Event:
    """The first event (history included) matching ``predicate``."""
    stream = stub.WatchEvents(
        manager_pb2.WatchEventsRequest(include_history=True, container=container),
        timeout=timeout,
    )
    seen: list[str] = []
    try:
        for response in stream:
            event = response.event
            if predicate(event):
                return event
            seen.append(f"{E.EventType.Name(event.type)} {event.container_id}: {event.message}")
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
    finally:
        stream.cancel()  # type: ignore[no-untyped-call]
    raise AssertionError(f"no such event within {timeout:g}s; saw:\n" + "\n".join(seen))


def _state_file(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _spec(name: str, *args: str) -> spec_pb2.ContainerSpec:
    return spec_pb2.ContainerSpec(
        name=name,
        runtime=spec_pb2.RUNTIME_KIND_PROCESS,
        command=["python", APP, "--name", name, *args],
        working_dir=str(REPO),
    )


# -- 1. separate processes -----------------------------------------------------------------
def test_process_started_by_hand_registers_runs_and_stops_cleanly(
    manager: ManagerHost, tmp_path: Path
) -> None:
    state = tmp_path / "hand.json"
    proc = _spawn(
        tmp_path,
        "by-hand",
        *("--priority", "7", "--cpu-millis", "100", "--memory-bytes", "1048576"),
        *("--grace", "12", "--stop-seconds", "0.3"),
        "--state-file",
        str(state),
        manager=manager.address,
    )
    try:
        got = _wait_container(manager.stub, "by-hand", _running_and_connected, "running")
        assert got.pid == proc.pid
        assert got.identity.priority == 7
        assert got.identity.resources.cpu_millis == 100
        assert got.identity.resources.memory_bytes == 1 << 20
        assert got.identity.grace_period.seconds == 12
        assert got.identity.endpoints[0].kind == S.ENDPOINT_KIND_MANAGEMENT
        stopped = manager.stub.StopContainer(
            manager_pb2.StopContainerRequest(container="by-hand", grace_period=_seconds(10)),
            timeout=30,
        )
        assert stopped.container.state == S.LIFECYCLE_STATE_STOPPED
        assert proc.wait(15) == 0
        assert b"on_stop done" in (tmp_path / "by-hand.out").read_bytes()
        data = _state_file(state)
        assert data["calls"] == {"start": 1, "stop": 1, "stop_done": 1}
        assert data["stop_reason"] == "requested"
    finally:
        _reap(proc)


def test_process_launched_by_run_container_starts_and_exits_zero(
    manager: ManagerHost, tmp_path: Path
) -> None:
    state = tmp_path / "launched.json"
    response = manager.stub.RunContainer(
        manager_pb2.RunContainerRequest(
            spec=_spec("launched", "--stop-seconds", "0.3", "--state-file", str(state))
        ),
        timeout=30,
    )
    [launched] = response.containers
    cid = launched.identity.id
    assert launched.pid > 0
    got = _wait_container(manager.stub, cid, _running_and_connected, "running")
    assert got.pid == launched.pid  # the id came through $PYCONTAINER_CONTAINER_ID
    assert got.identity.name == "launched"
    exited = stop_and_wait_exit(manager.stub, cid)
    assert exited.exit_code == 0
    assert exited.state == S.LIFECYCLE_STATE_STOPPED
    _event(
        manager.stub,
        lambda e: e.type == E.EVENT_TYPE_EXITED and "status 0" in e.message,
        container=cid,
    )
    data = _state_file(state)
    assert data["calls"] == {"start": 1, "stop": 1, "stop_done": 1}


# -- 2. on_stop overrunning its grace ------------------------------------------------------
def test_on_stop_overrunning_grace_ends_the_process_at_its_deadline(
    manager: ManagerHost, tmp_path: Path
) -> None:
    state = tmp_path / "slow.json"
    response = manager.stub.RunContainer(
        manager_pb2.RunContainerRequest(
            spec=_spec("slow", "--stop-seconds", "30", "--state-file", str(state))
        ),
        timeout=30,
    )
    [launched] = response.containers
    cid = launched.identity.id
    _wait_container(manager.stub, cid, _running_and_connected, "running")
    began = time.monotonic()
    # Ended at the deadline: by itself (137, as SIGKILL would) or by the
    # manager's SIGKILL at the same deadline (-9), whichever came first; a
    # stop that worked, answered when the process ended, not after the stop's
    # time limit.
    response = manager.stub.StopContainer(
        manager_pb2.StopContainerRequest(container=cid, grace_period=_seconds(0.5)),
        timeout=30,
    )
    assert response.killed
    exited = _wait_container(
        manager.stub, cid, lambda c: c.HasField("exit_code"), "exit status", timeout=15
    )
    assert time.monotonic() - began < 20
    assert exited.exit_code in (137, -9)
    assert exited.state == S.LIFECYCLE_STATE_STOPPED
    assert exited.reason == "killed after its 500ms grace period"
    if exited.exit_code == 137:  # it ended itself, after telling why
        assert "overran" in exited.error
    _event(
        manager.stub,
        lambda e: e.type == E.EVENT_TYPE_EXITED and f"status {exited.exit_code}" in e.message,
        container=cid,
    )
    data = _state_file(state)
    assert data["calls"].get("stop") == 1
    assert "stop_done" not in data["calls"]


def test_on_stop_overrun_of_a_process_started_by_hand(manager: ManagerHost, tmp_path: Path) -> None:
    proc = _spawn(tmp_path, "slow-hand", "--stop-seconds", "30", manager=manager.address)
    try:
        _wait_container(manager.stub, "slow-hand", _running_and_connected, "running")
        stop = manager.stub.StopContainer.future(
            manager_pb2.StopContainerRequest(container="slow-hand", grace_period=_seconds(0.5)),
            timeout=60,
        )
        try:
            assert proc.wait(10) == 137
            # Not the manager's child: it sees the session end (and FAILED when
            # the last report got out before the hard exit).
            gone = _wait_container(manager.stub, "slow-hand", lambda c: not c.connected, "lost")
            assert gone.state in (S.LIFECYCLE_STATE_STOPPING, S.LIFECYCLE_STATE_FAILED)
        finally:
            stop.cancel()  # type: ignore[no-untyped-call]
    finally:
        _reap(proc)


# -- 3. kill -9 of a container -------------------------------------------------------------
def test_kill_9_of_a_container_process_is_detected(manager: ManagerHost, tmp_path: Path) -> None:
    by_hand = _spawn(tmp_path, "victim-hand", manager=manager.address)
    [launched] = manager.stub.RunContainer(
        manager_pb2.RunContainerRequest(spec=_spec("victim-run")), timeout=30
    ).containers
    rid = launched.identity.id
    try:
        _wait_container(manager.stub, "victim-hand", _running_and_connected, "running")
        _wait_container(manager.stub, rid, _running_and_connected, "running")
        killed_at = time.monotonic()
        by_hand.kill()
        _kill_pid(launched.pid)

        hand = _wait_container(manager.stub, "victim-hand", lambda c: not c.connected, "lost")
        assert hand.error == "lost contact with the container"
        _event(manager.stub, lambda e: e.type == E.EVENT_TYPE_LOST, container="victim-hand")

        run = _wait_container(
            manager.stub, rid, lambda c: not c.connected and c.HasField("exit_code"), "exited"
        )
        assert run.exit_code == -9
        assert run.state == S.LIFECYCLE_STATE_FAILED
        assert run.error == "process exited with status -9"
        _event(manager.stub, lambda e: e.type == E.EVENT_TYPE_LOST, container=rid)
        _event(
            manager.stub,
            lambda e: e.type == E.EVENT_TYPE_EXITED and "status -9" in e.message,
            container=rid,
        )
        # A few heartbeats of 0.5 s (the stream's end is usually seen at once).
        assert time.monotonic() - killed_at < 10
        assert by_hand.wait(5) == -signal.SIGKILL
    finally:
        _reap(by_hand)  # the launched one: the fixture's runtime.close()


def test_session_dropped_mid_command_resends_it_without_running_it_twice(
    manager: ManagerHost,
) -> None:
    calls: list[str] = []
    release = threading.Event()

    def on_pause() -> None:
        release.wait(30)  # until the session was dropped and opened again
        calls.append("pause")

    hooks = pycontainer.Hooks(on_start=lambda: calls.append("start"), on_pause=on_pause)
    container = make_container("flaky", hooks=hooks)
    host = start_sync_host(container)
    connection = container.connect(manager.address)
    try:
        wait_until(lambda: container.state == pycontainer.State.RUNNING, what="running")
        pause = manager.stub.PauseContainer.future(
            manager_pb2.PauseContainerRequest(container="flaky"), timeout=30
        )
        wait_until(lambda: container.state == pycontainer.State.PAUSING, what="pausing")
        # The manager drops the session (as its watchdog does with a silent one).
        entry = manager.manager.entries[container.id]
        manager.call(lambda: _close_session(entry))
        wait_until(lambda: connection.sessions >= 2, timeout=15, what="reconnected")
        release.set()
        paused = pause.result(30)  # the resent command's result, on the new session
        assert paused.container.state == S.LIFECYCLE_STATE_PAUSED
        assert calls == ["start", "pause"]
        _event(manager.stub, lambda e: e.type == E.EVENT_TYPE_LOST, container="flaky")
    finally:
        release.set()
        host.stop()


async def _close_session(entry: Any) -> None:
    assert entry.session is not None
    entry.session.close()


# -- 4. kill -9 of the manager -------------------------------------------------------------
def _start_manager(
    tmp_path: Path, address: str, state_dir: Path, tag: str
) -> subprocess.Popen[bytes]:
    out = open(tmp_path / f"manager-{tag}.out", "wb")  # noqa: SIM115 - closed in _reap
    err = open(tmp_path / f"manager-{tag}.err", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, RUN_MANAGER, "--listen", address, "--state-dir", str(state_dir)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=err,
    )
    proc._files = (out, err)  # type: ignore[attr-defined]
    return proc


def _serving(stub: manager_pb2_grpc.ManagerStub) -> bool:
    try:
        stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=1)
    except grpc.RpcError:
        return False
    return True


def _info(address: str) -> management_pb2.GetInfoResponse:
    with grpc.insecure_channel(address) as channel:
        return management_pb2_grpc.ManagementStub(channel).GetInfo(
            management_pb2.GetInfoRequest(), timeout=5
        )


def test_manager_killed_mid_session_containers_reconnect_to_its_successor(
    tmp_path: Path,
) -> None:
    address = _free_address()
    state_dir = tmp_path / "manager-state"
    managers = [_start_manager(tmp_path, address, state_dir, "first")]
    channel = grpc.insecure_channel(address)
    stub = manager_pb2_grpc.ManagerStub(channel)
    calls: dict[str, int] = {}
    lock = threading.Lock()

    pause_may_end = threading.Event()

    def count(hook: str, until: threading.Event | None = None) -> Callable[[], None]:
        def hook_fn() -> None:
            if until is not None:
                until.wait(30)
            with lock:
                calls[hook] = calls.get(hook, 0) + 1

        return hook_fn

    hooks = pycontainer.Hooks(
        on_start=count("start"),
        on_pause=count("pause", until=pause_may_end),
        on_resume=count("resume"),
    )
    container = make_container("inproc", hooks=hooks)
    host = start_sync_host(container)
    container.add_endpoint("management", host.target, kind="management")
    state_file = tmp_path / "outproc.json"
    proc = _spawn(tmp_path, "outproc", "--state-file", str(state_file), manager=address)
    try:
        wait_until(lambda: _serving(stub), timeout=20, what="first manager serving")
        connection = container.connect(address)
        _wait_container(stub, "inproc", _running_and_connected, "running")
        out = _wait_container(stub, "outproc", _running_and_connected, "running")
        out_address = out.identity.endpoints[0].address

        # A pause in flight when the manager dies: its result is lost.
        pause = stub.PauseContainer.future(
            manager_pb2.PauseContainerRequest(container="inproc"), timeout=30
        )
        wait_until(lambda: container.state == pycontainer.State.PAUSING, what="pausing")
        managers[0].kill()
        managers[0].wait(10)
        with pytest.raises(grpc.RpcError) as info:
            pause.result(30)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        pause_may_end.set()  # its manager is gone: the pause ends now

        # The containers carry on without a manager.
        wait_until(lambda: container.state == pycontainer.State.PAUSED, what="pause finished")
        assert _info(out_address).state == S.LIFECYCLE_STATE_RUNNING
        assert _info(host.target).state == S.LIFECYCLE_STATE_PAUSED
        assert connection.sessions == 1

        # A successor on the same address and state: both register again.
        managers.append(_start_manager(tmp_path, address, state_dir, "second"))
        wait_until(lambda: _serving(stub), timeout=20, what="second manager serving")
        inproc = _wait_container(
            stub,
            "inproc",
            lambda c: c.connected and c.state == S.LIFECYCLE_STATE_PAUSED,
            "reconnected, paused",
            timeout=30,
        )
        out = _wait_container(stub, "outproc", _running_and_connected, "reconnected", timeout=30)
        assert out.pid == proc.pid
        assert inproc.identity.id == container.id
        assert connection.sessions == 2
        for name in ("inproc", "outproc"):
            # The history holds the first manager's events too (the journal):
            # the successor's registration is a reconnection, known from the state dir.
            _event(
                stub,
                lambda e: e.type == E.EVENT_TYPE_REGISTERED and e.message.startswith("reconnected"),
                container=name,
            )

        # The pause ran once; the successor drives the container on.
        stub.ResumeContainer(manager_pb2.ResumeContainerRequest(container="inproc"), timeout=10)
        listed = stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=5).containers
        assert [(c.identity.name, c.state, c.connected) for c in listed] == [
            ("inproc", S.LIFECYCLE_STATE_RUNNING, True),
            ("outproc", S.LIFECYCLE_STATE_RUNNING, True),
        ]
        assert calls == {"start": 1, "pause": 1, "resume": 1}
        assert _state_file(state_file)["calls"] == {"start": 1}
    finally:
        pause_may_end.set()
        channel.close()
        for manager in managers:
            _reap(manager)
        _reap(proc)
        host.stop()

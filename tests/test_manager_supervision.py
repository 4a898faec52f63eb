"""Everything the manager launched, it can stop: programs that never register
(reported after their start timeout, stopped by SIGTERM then SIGKILL through
the runtime), grace periods with presence and bounds, the operator's
restart, kill and delete, the bound on ended records, and no traceback when
a client gives up waiting on a stop. A real manager and real processes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from support import ManagerHost, wait_until
from support import running_and_connected as _running_and_connected
from support import wait_container as _wait_container

from pycontainer.v1 import container_pb2, manager_pb2, spec_pb2

S = container_pb2
E = manager_pb2
REPO = Path(__file__).resolve().parent.parent
APP = "tests/apps/connected_app.py"


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def _plain(name: str, script: str, start_timeout: float = 1.0) -> spec_pb2.ContainerSpec:
    """A program that is not a pycontainer app, launched without the sidecar."""
    spec = spec_pb2.ContainerSpec(
        name=name, runtime=spec_pb2.RUNTIME_KIND_PROCESS, command=["sh", "-c", script]
    )
    spec.start_timeout.CopyFrom(_duration(start_timeout))
    return spec


def _app(name: str, *args: str) -> spec_pb2.ContainerSpec:
    return spec_pb2.ContainerSpec(
        name=name,
        runtime=spec_pb2.RUNTIME_KIND_PROCESS,
        command=["python", APP, *args],
        working_dir=str(REPO),
    )


def _run(manager: ManagerHost, spec: spec_pb2.ContainerSpec) -> manager_pb2.Container:
    [launched] = manager.stub.RunContainer(
        manager_pb2.RunContainerRequest(spec=spec), timeout=30
    ).containers
    return launched


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes; the runtime reaps its children.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    return True


def _events(manager: ManagerHost, container: str) -> list[manager_pb2.Event]:
    request = manager_pb2.WatchEventsRequest(
        include_history=True, history_only=True, container=container
    )
    return [r.event for r in manager.stub.WatchEvents(request, timeout=10)]


def _stop(
    manager: ManagerHost, container: str, grace: float | None = None, timeout: float = 30
) -> manager_pb2.StopContainerResponse:
    request = manager_pb2.StopContainerRequest(container=container)
    if grace is not None:
        request.grace_period.CopyFrom(_duration(grace))
    response: manager_pb2.StopContainerResponse = manager.stub.StopContainer(
        request, timeout=timeout
    )
    return response


# -- 1. a program that never registers ------------------------------------------------------
def test_an_unregistered_program_is_reported_and_stopped_through_its_runtime(
    manager: ManagerHost,
) -> None:
    launched = _run(manager, _plain("plain", "sleep 1000"))
    cid = launched.identity.id
    assert launched.launched
    reported = _wait_container(
        manager.stub, cid, lambda c: c.reason.startswith("not registered"), "reported", 10
    )
    assert reported.reason == (
        "not registered 1s after launch: is it a pycontainer app? "
        "set sidecar: true to run any program"
    )
    assert reported.state == S.LIFECYCLE_STATE_CREATED
    assert not reported.connected
    assert any(e.message == reported.reason for e in _events(manager, cid))
    assert _alive(launched.pid)

    response = _stop(manager, cid, grace=5)
    # sh ends on SIGTERM (it does not trap it): within the grace period.
    assert not response.killed
    stopped = response.container
    assert stopped.state == S.LIFECYCLE_STATE_STOPPED
    assert stopped.exit_code == -15
    assert stopped.reason == "stopped (exit status -15)"
    assert stopped.HasField("finish_time")
    wait_until(lambda: not _alive(launched.pid), 5, "the process gone")


def test_a_program_ignoring_sigterm_is_killed_at_the_deadline_and_zero_grace_is_zero(
    manager: ManagerHost, tmp_path: Path
) -> None:
    """grace 0 is no grace at all (not the 30s default): SIGKILL at once."""
    trapped = tmp_path / "trapped"
    launched = _run(manager, _plain("stubborn", f"trap '' TERM; touch {trapped}; sleep 1000"))
    cid = launched.identity.id
    wait_until(trapped.exists, 10, "the trap set")
    began = time.monotonic()
    response = _stop(manager, cid, grace=0)
    assert time.monotonic() - began < 5
    assert response.killed
    assert response.container.state == S.LIFECYCLE_STATE_STOPPED
    assert response.container.exit_code == -9
    assert response.container.reason == "killed after its 0s grace period"
    wait_until(lambda: not _alive(launched.pid), 5, "the process gone")


def test_scale_to_zero_stops_unregistered_replicas(manager: ManagerHost) -> None:
    spec = _plain("flock", "sleep 1000", start_timeout=30)
    spec.replicas = 2
    spec.grace_period.CopyFrom(_duration(2))
    launched = manager.stub.RunContainer(
        manager_pb2.RunContainerRequest(spec=spec), timeout=30
    ).containers
    left = manager.stub.ScaleContainer(
        manager_pb2.ScaleContainerRequest(container="flock", replicas=0), timeout=30
    )
    assert list(left.containers) == []
    for container in launched:
        wait_until(lambda c=container: not _alive(c.pid), 5, "replica gone")


def test_evict_stops_an_unregistered_program(manager: ManagerHost) -> None:
    launched = _run(manager, _plain("squatter", "sleep 1000", start_timeout=30))
    request = manager_pb2.EvictContainerRequest(container=launched.identity.id)
    request.grace_period.CopyFrom(_duration(2))
    evicted = manager.stub.EvictContainer(request, timeout=30).container
    assert evicted.state == S.LIFECYCLE_STATE_STOPPED
    wait_until(lambda: not _alive(launched.pid), 5, "the process gone")


# -- 2 and 3. grace periods ---------------------------------------------------------------
def test_stop_grace_zero_of_a_connected_app_kills_it_at_once(manager: ManagerHost) -> None:
    launched = _run(manager, _app("slowstop", "--stop-seconds", "20"))
    cid = launched.identity.id
    _wait_container(manager.stub, cid, _running_and_connected, "running")
    began = time.monotonic()
    response = _stop(manager, cid, grace=0)
    assert time.monotonic() - began < 10  # not the 20 s its on_stop takes, nor 30 s
    assert response.killed
    assert response.container.state == S.LIFECYCLE_STATE_STOPPED
    assert response.container.reason == "killed after its 0s grace period"
    assert response.container.exit_code in (137, -9)


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(-1, "must be 0 or more (at most 1h), got -1s"), (3601, "must be at most 1h, got 1h1s")],
)
def test_a_grace_period_out_of_bounds_is_refused(
    manager: ManagerHost, seconds: int, expected: str
) -> None:
    launched = _run(manager, _plain("bounded", "sleep 1000", start_timeout=30))
    for call, request in (
        (
            manager.stub.StopContainer,
            manager_pb2.StopContainerRequest(container=launched.identity.id),
        ),
        (
            manager.stub.EvictContainer,
            manager_pb2.EvictContainerRequest(container=launched.identity.id),
        ),
        (
            manager.stub.RestartContainer,
            manager_pb2.RestartContainerRequest(container=launched.identity.id),
        ),
    ):
        request.grace_period.seconds = seconds
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "grace_period" in (info.value.details() or "")
        assert expected in (info.value.details() or "")


@pytest.mark.parametrize(
    ("field", "seconds", "expected"),
    [
        ("grace_period", 7200, "spec.grace_period: must be from 0s to 1h, got 2h"),
        ("start_timeout", 0.5, "spec.start_timeout: must be from 1s to 1h, got 500ms"),
    ],
)
def test_a_spec_with_durations_out_of_bounds_is_refused(
    manager: ManagerHost, field: str, seconds: float, expected: str
) -> None:
    spec = _plain("unbounded", "sleep 1000")
    getattr(spec, field).CopyFrom(_duration(seconds))
    with pytest.raises(grpc.RpcError) as info:
        manager.stub.RunContainer(manager_pb2.RunContainerRequest(spec=spec), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == expected
    listed = manager.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=10)
    assert list(listed.containers) == []


# -- 4. restart, kill, delete --------------------------------------------------------------
def test_restart_stops_gracefully_and_starts_again(manager: ManagerHost) -> None:
    launched = _run(manager, _app("phoenix"))
    cid = launched.identity.id
    first = _wait_container(manager.stub, cid, _running_and_connected, "running")
    request = manager_pb2.RestartContainerRequest(container=cid)
    request.grace_period.CopyFrom(_duration(5))
    again = manager.stub.RestartContainer(request, timeout=60).container
    assert again.restarts == 1
    assert again.state == S.LIFECYCLE_STATE_RUNNING
    assert again.pid != first.pid
    assert not _alive(first.pid)
    kinds = [e.type for e in _events(manager, cid)]
    assert E.EVENT_TYPE_RESTARTED in kinds


def test_restart_of_a_container_not_launched_here_is_refused(manager: ManagerHost) -> None:
    from support import connected_container

    container, host = connected_container(manager, "by-hand")
    try:
        _wait_container(manager.stub, container.id, lambda c: c.connected, "connected")
        with pytest.raises(grpc.RpcError) as info:
            manager.stub.RestartContainer(
                manager_pb2.RestartContainerRequest(container=container.id), timeout=10
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "not launched by this manager" in (info.value.details() or "")
        with pytest.raises(grpc.RpcError) as info:
            manager.stub.KillContainer(
                manager_pb2.KillContainerRequest(container=container.id), timeout=10
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        container.close()
        host.stop()


def test_kill_sends_the_signal_now_and_the_container_ends_stopped(
    manager: ManagerHost,
) -> None:
    launched = _run(manager, _plain("target", "sleep 1000", start_timeout=30))
    cid = launched.identity.id
    with pytest.raises(grpc.RpcError) as info:
        manager.stub.KillContainer(
            manager_pb2.KillContainerRequest(container=cid, signal="SIGBOGUS"), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert "'SIGBOGUS' is not a signal" in details
    assert "KILL" in details
    assert "TERM" in details
    assert _alive(launched.pid)

    manager.stub.KillContainer(
        manager_pb2.KillContainerRequest(container=cid, signal="term"), timeout=10
    )
    ended = _wait_container(manager.stub, cid, lambda c: c.HasField("exit_code"), "exited", 10)
    assert ended.state == S.LIFECYCLE_STATE_STOPPED
    assert ended.exit_code == -15
    assert ended.reason == "killed by SIGTERM"
    assert not _alive(launched.pid)


def test_kill_defaults_to_sigkill(manager: ManagerHost) -> None:
    launched = _run(manager, _plain("target9", "sleep 1000", start_timeout=30))
    manager.stub.KillContainer(
        manager_pb2.KillContainerRequest(container=launched.identity.id), timeout=10
    )
    ended = _wait_container(
        manager.stub, launched.identity.id, lambda c: c.HasField("exit_code"), "exited", 10
    )
    assert ended.exit_code == -9
    assert ended.reason == "killed by SIGKILL"


def test_delete_only_an_ended_container_and_purge_its_checkpoints(manager: ManagerHost) -> None:
    launched = _run(manager, _plain("doomed", "sleep 1000", start_timeout=30))
    cid = launched.identity.id
    with pytest.raises(grpc.RpcError) as info:
        manager.stub.DeleteContainer(manager_pb2.DeleteContainerRequest(container=cid), timeout=10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "stop it first" in (info.value.details() or "")

    store = manager.manager.store
    mine = store.put_checkpoint(cid, "doomed", b"state")
    purged: list[str] = []
    manager.manager.add_purger(purged.append)
    _stop(manager, cid, grace=1)
    removed = manager.stub.DeleteContainer(
        manager_pb2.DeleteContainerRequest(container=cid, purge=True), timeout=10
    ).container
    assert removed.identity.id == cid
    with pytest.raises(grpc.RpcError) as info:
        manager.stub.GetContainer(manager_pb2.GetContainerRequest(container=cid), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert store.get_container(cid) is None
    assert purged == [cid]
    with pytest.raises(Exception, match="no checkpoint"):
        store.get_checkpoint(mine.id)


def test_delete_without_purge_keeps_the_checkpoints_of_its_name(manager: ManagerHost) -> None:
    launched = _run(manager, _plain("kept", "exit 0", start_timeout=30))
    cid = launched.identity.id
    mine = manager.manager.store.put_checkpoint(cid, "kept", b"state")
    ended = _wait_container(manager.stub, cid, lambda c: c.HasField("exit_code"), "exited", 10)
    assert ended.state == S.LIFECYCLE_STATE_STOPPED
    assert ended.reason == "exited with status 0"
    manager.stub.DeleteContainer(manager_pb2.DeleteContainerRequest(container=cid), timeout=10)
    assert manager.manager.store.get_checkpoint(mine.id)[1] == b"state"


# -- 5. bounded memory ---------------------------------------------------------------------
def test_ended_records_are_bounded_oldest_ended_first(tmp_path: Path) -> None:
    manager = ManagerHost(str(tmp_path / "state"), max_ended_containers=3)
    purged: list[str] = []
    manager.manager.add_purger(purged.append)
    try:
        ids = []
        for n in range(5):
            cid = _run(manager, _plain(f"brief{n}", "exit 0")).identity.id
            _wait_container(manager.stub, cid, lambda c: c.HasField("exit_code"), "exited", 10)
            ids.append(cid)
        listed = manager.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=10)
        assert sorted(c.identity.id for c in listed.containers) == sorted(ids[2:])
        assert manager.manager.store_writer.flushed(10)  # the store is written behind
        assert sorted(r.id for r in manager.manager.store.list_containers()) == sorted(ids[2:])
        assert purged == ids[:2]  # what they left (retained logs) goes with them
    finally:
        manager.stop()
    # A manager with a smaller bound forgets the excess of what it finds.
    successor = ManagerHost(str(tmp_path / "state"), max_ended_containers=1)
    try:
        listed = successor.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=10)
        assert [c.identity.id for c in listed.containers] == [ids[-1]]
    finally:
        successor.stop()


# -- 7. a client that gives up waiting ------------------------------------------------------
def test_a_stop_whose_client_gave_up_still_kills_at_the_deadline_without_a_traceback(
    manager: ManagerHost, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    trapped = tmp_path / "trapped"
    launched = _run(manager, _plain("abandoned", f"trap '' TERM; touch {trapped}; sleep 1000", 30))
    cid = launched.identity.id
    wait_until(trapped.exists, 10, "the trap set")
    with pytest.raises(grpc.RpcError) as info:
        _stop(manager, cid, grace=1, timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with caplog.at_level(logging.INFO):
        ended = _wait_container(manager.stub, cid, lambda c: c.HasField("exit_code"), "killed", 10)
        assert ended.state == S.LIFECYCLE_STATE_STOPPED
        assert ended.reason == "killed after its 1s grace period"
        gc.collect()
        manager.call(_settle)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def _settle() -> None:
    import asyncio

    gc.collect()
    await asyncio.sleep(0.1)


def test_cli_stop_killed_at_the_deadline_succeeds_and_says_so(
    manager: ManagerHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pycontainer.cli import main

    trapped = tmp_path / "trapped"
    launched = _run(
        manager, _plain("deaf", f"trap '' TERM; touch {trapped}; sleep 1000", start_timeout=30)
    )
    wait_until(trapped.exists, 10, "the trap set")
    capsys.readouterr()
    code = main(["stop", "--grace", "0", launched.identity.id, "--manager", manager.address])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.strip().endswith("STOPPED (killed at the end of its grace period)"), out
    assert not _alive(launched.pid)


def test_a_process_runs_until_its_exit_is_reported() -> None:
    """ProcessRuntime.running stays true until its exit listeners heard the
    exit: a restart that saw the old process gone before its exit was
    reported started the new run, and the late report of the old one's end
    then settled the new run as STOPPED ("exited with status 0")."""
    from pycontainer.manager import Launch, ProcessRuntime

    async def main() -> None:
        runtime = ProcessRuntime()
        reported: list[tuple[str, int]] = []

        async def listener(container_id: str, code: int) -> None:
            reported.append((container_id, code))

        runtime.add_exit_listener(listener)
        spec = spec_pb2.ContainerSpec(name="brief", command=["sh", "-c", "exit 3"])
        await runtime.launch(Launch("c1", spec, "127.0.0.1:1"))
        deadline = time.monotonic() + 30
        while runtime.running("c1"):  # every turn of the loop, as a waiter would look
            assert time.monotonic() < deadline, "the process never ended"
            await asyncio.sleep(0)
        assert reported == [("c1", 3)]
        await runtime.close()

    for _ in range(20):
        asyncio.run(main())

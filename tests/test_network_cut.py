"""A network cut between the manager and a container, through a fault-injecting
TCP proxy on loopback (tests/faultproxy.py): both sides notice within the
heartbeat timeout, the container re-registers when the network heals, and a
command caught by the cut (run, its result lost) is resent and answered from
the container's memory, never run twice."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from faultproxy import FaultProxy
from support import ManagerHost, make_container, start_sync_host, wait_until

import pycontainer
from pycontainer.testing import TEST_HEARTBEAT
from pycontainer.v1 import container_pb2, manager_pb2

S = container_pb2
E = manager_pb2
# The manager here takes LOST_AFTER silent heartbeats as a lost session, the
# container 3 intervals but at least 5 s (pycontainer.agent._connector); the
# rest is slack for a loaded machine. gRPC's keepalive alone (10 s + 5 s)
# would not make it.
LOST_AFTER = 6
NOTICED_WITHIN = max(LOST_AFTER * TEST_HEARTBEAT.total_seconds(), 5.0) + 3.0


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ManagerHost]:
    host = ManagerHost(str(tmp_path / "state"), lost_after_heartbeats=LOST_AFTER)
    try:
        yield host
    finally:
        host.stop()


@pytest.fixture
def proxy(manager: ManagerHost) -> Iterator[FaultProxy]:
    proxy = FaultProxy(manager.address)
    try:
        yield proxy
    finally:
        proxy.close()


def test_a_cut_is_noticed_by_both_sides_and_healed_without_running_a_command_twice(
    manager: ManagerHost, proxy: FaultProxy
) -> None:
    calls: list[str] = []
    in_pause = threading.Event()
    release = threading.Event()

    def on_pause() -> None:
        in_pause.set()
        release.wait(30)  # until the network is cut: its result goes nowhere
        calls.append("pause")

    hooks = pycontainer.Hooks(on_start=lambda: calls.append("start"), on_pause=on_pause)
    container = make_container("cut", hooks=hooks)
    host = start_sync_host(container)
    connection = container.connect(proxy.address)
    try:
        wait_until(lambda: container.state == pycontainer.State.RUNNING, 15, "running")
        wait_until(lambda: _connected(manager, container.id), 15, "registered")
        pause = manager.stub.PauseContainer.future(
            manager_pb2.PauseContainerRequest(container=container.id), timeout=30
        )
        assert in_pause.wait(10), "the pause reached the container"

        proxy.cut()
        cut_at = time.monotonic()
        release.set()  # the pause finishes; its result and PAUSED are lost in the cut
        wait_until(
            lambda: not _connected(manager, container.id), NOTICED_WITHIN, "the manager saw it"
        )
        wait_until(
            lambda: not connection.connected.is_set(), NOTICED_WITHIN, "the container saw it"
        )
        assert time.monotonic() - cut_at < NOTICED_WITHIN
        assert container.state == pycontainer.State.PAUSED  # it kept running meanwhile
        assert not pause.done()  # the manager does not know how the pause ended

        # It tries again while the cut lasts, reaches nothing, gives that up
        # as silent too (no answer to its registration) and tries once more.
        wait_until(lambda: proxy.black_holed >= 2, 2 * NOTICED_WITHIN, "retries in the cut")

        proxy.heal()
        wait_until(lambda: connection.sessions >= 2, 15, "re-registered")
        wait_until(lambda: _connected(manager, container.id), 15, "connected again")
        paused = pause.result(30)  # answered on the new session
        assert paused.container.state == S.LIFECYCLE_STATE_PAUSED
        assert calls == ["start", "pause"]  # run exactly once
        shown = manager.stub.GetContainer(
            manager_pb2.GetContainerRequest(container=container.id), timeout=5
        ).container
        assert shown.connected
        assert shown.state == S.LIFECYCLE_STATE_PAUSED
        assert _lost_event(manager, container.id)
    finally:
        release.set()
        connection.close()
        host.stop()


def _lost_event(manager: ManagerHost, cid: str) -> bool:
    """Whether the history shows the container's session lost."""
    stream = manager.stub.WatchEvents(
        manager_pb2.WatchEventsRequest(include_history=True, container=cid), timeout=5
    )
    try:
        return any(response.event.type == E.EVENT_TYPE_LOST for response in stream)
    except grpc.RpcError as exc:  # the history was read; the watch times out
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
        return False
    finally:
        stream.cancel()


def _connected(manager: ManagerHost, cid: str) -> bool:
    entry = manager.manager.registry.get(cid)
    return entry is not None and entry.connected

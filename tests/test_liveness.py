"""Liveness of Lifecycle sessions: a container whose connection dies is seen
lost by gRPC keepalive within heartbeat_interval * lost_after_heartbeats,
however rare its Lifecycle heartbeats are; one whose connection still
answers pings but which sends nothing is seen lost by the watchdog after
lost_after_heartbeats idle heartbeats."""

from __future__ import annotations

import datetime
import queue
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from faultproxy import FaultProxy
from support import ManagerHost, make_container, start_sync_host, wait_until

import pycontainer
from pycontainer.manager import ManagerSettings
from pycontainer.manager._liveness import keepalive_options, with_keepalive
from pycontainer.units import duration_from_proto
from pycontainer.v1 import container_pb2, lifecycle_pb2, lifecycle_pb2_grpc, manager_pb2

S = container_pb2
E = manager_pb2
PING = datetime.timedelta(milliseconds=500)
LOST_AFTER = 6
# The keepalive bound (3 s here), with slack for a loaded machine: far below
# the idle heartbeats' own (LOST_AFTER minutes), so only keepalive makes it.
NOTICED_WITHIN = PING.total_seconds() * LOST_AFTER + 7.0


class SilentSession:
    """A Lifecycle session that registers and then sends nothing at all (no
    heartbeats): its liveness is its connection's alone."""

    def __init__(self, address: str, cid: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self._requests: queue.Queue[lifecycle_pb2.ConnectRequest | None] = queue.Queue()
        identity = S.ContainerIdentity(id=cid, name=cid)
        registration = lifecycle_pb2.Registration(
            identity=identity, state=S.LIFECYCLE_STATE_RUNNING, pid=1
        )
        self._requests.put(lifecycle_pb2.ConnectRequest(register=registration))
        self.call = lifecycle_pb2_grpc.LifecycleStub(self.channel).Connect(self._iterate())

    def _iterate(self) -> Iterator[lifecycle_pb2.ConnectRequest]:
        while (message := self._requests.get()) is not None:
            yield message

    def first(self) -> lifecycle_pb2.ConnectResponse:
        return next(self.call)

    def close(self) -> None:
        self._requests.put(None)
        self.call.cancel()
        self.channel.close()


def _connected(manager: ManagerHost, cid: str) -> bool:
    entry = manager.manager.registry.get(cid)
    return entry is not None and entry.connected


def _lost_event(manager: ManagerHost, cid: str) -> bool:
    request = manager_pb2.WatchEventsRequest(include_history=True, container=cid, history_only=True)
    stream = manager.stub.WatchEvents(request, timeout=10)
    return any(response.event.type == E.EVENT_TYPE_LOST for response in stream)


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ManagerHost]:
    host = ManagerHost(
        str(tmp_path / "state"),
        heartbeat_interval=PING,
        lost_after_heartbeats=LOST_AFTER,
        idle_heartbeat_interval=datetime.timedelta(minutes=1),
    )
    try:
        yield host
    finally:
        host.stop()


def test_a_cut_connection_is_lost_within_the_keepalive_bound_without_heartbeats(
    manager: ManagerHost,
) -> None:
    proxy = FaultProxy(manager.address)
    session = SilentSession(proxy.address, "silent-cut")
    try:
        ack = session.first().registered
        # Containers are asked for a Lifecycle heartbeat once a minute only.
        assert duration_from_proto(ack.heartbeat_interval) == datetime.timedelta(minutes=1)
        wait_until(lambda: _connected(manager, "silent-cut"), 10, "registered")
        proxy.cut()  # no error, no data, TCP still up: only unanswered pings tell
        wait_until(lambda: not _connected(manager, "silent-cut"), NOTICED_WITHIN, "the cut noticed")
        assert _lost_event(manager, "silent-cut")
        entry = manager.manager.registry.get("silent-cut")
        assert entry is not None
        assert entry.error == "lost contact with the container"
    finally:
        session.close()
        proxy.close()


def test_a_container_notices_a_cut_by_keepalive_without_heartbeat_answers(
    manager: ManagerHost,
) -> None:
    """The connector's channel pings the manager every 10 s and gives the
    connection up 5 s after an unanswered ping: a cut ends its session in
    15 s though the manager asks for (and answers) a heartbeat once a minute."""
    proxy = FaultProxy(manager.address)
    container = make_container("cut-agent")
    host = start_sync_host(container)
    connection = container.connect(proxy.address)
    try:
        wait_until(lambda: container.state == pycontainer.State.RUNNING, 15, "running")
        wait_until(lambda: _connected(manager, container.id), 15, "registered")
        proxy.cut()
        wait_until(lambda: not connection.connected.is_set(), 15 + 10, "the container saw it")
        wait_until(lambda: not _connected(manager, container.id), 10, "the manager saw it")
    finally:
        connection.close()
        host.stop()
        proxy.close()


def test_a_session_that_sends_nothing_is_lost_after_its_idle_heartbeats(
    tmp_path: Path,
) -> None:
    idle = datetime.timedelta(milliseconds=500)
    host = ManagerHost(
        str(tmp_path / "state"),
        heartbeat_interval=datetime.timedelta(seconds=2),
        lost_after_heartbeats=3,
        idle_heartbeat_interval=idle,
    )
    session = SilentSession(host.address, "silent-alive")
    try:
        ack = session.first().registered
        assert duration_from_proto(ack.heartbeat_interval) == idle
        # Its connection answers every ping (grpc-core does): the watchdog
        # takes it for lost after 3 idle heartbeats unsent. (The ack proves it
        # registered; polling for "connected" first could miss the 1.5 s it is.)
        wait_until(lambda: _lost_event(host, "silent-alive"), 15, "the silence noticed")
        assert not _connected(host, "silent-alive")
    finally:
        session.close()
        host.stop()


def test_keepalive_options_follow_the_liveness_bound() -> None:
    settings = ManagerSettings(
        heartbeat_interval=datetime.timedelta(seconds=2), lost_after_heartbeats=4
    )
    options = dict(keepalive_options(settings))
    # A ping every interval, the connection dropped when one goes unanswered
    # for the rest of the bound: 2 s + 6 s = 4 intervals.
    assert options["grpc.keepalive_time_ms"] == 2000
    assert options["grpc.keepalive_timeout_ms"] == 6000
    assert options["grpc.http2.max_pings_without_data"] == 0
    # The server's own keepalive options give way to the bound's.
    merged = with_keepalive([("grpc.keepalive_time_ms", 20_000), ("other", 1)], settings)
    assert [v for k, v in merged if k == "grpc.keepalive_time_ms"] == [2000]
    assert ("other", 1) in merged

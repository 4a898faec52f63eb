"""Manager.WatchMetrics relays containers' snapshots as bytes: each answer
is the container's own snapshot with container_id set (a container's claim
of another id overridden), streams of several containers are merged, and a
watcher that goes away ends every container's stream."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from support import ManagerHost, connected_container, wait_until

from pycontainer.manager._metricsrelay import container_tag
from pycontainer.v1 import (
    container_pb2,
    lifecycle_pb2,
    lifecycle_pb2_grpc,
    management_pb2,
    manager_pb2,
    metrics_pb2,
)

S = container_pb2
FAST = duration_pb2.Duration(nanos=100_000_000)


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ManagerHost]:
    host = ManagerHost(str(tmp_path / "state"))
    try:
        yield host
    finally:
        host.stop()


class LyingContainer:
    """A container served by hand: its Management.WatchMetrics sends a
    snapshot that claims another container's id, and it records when each
    stream ends; its Lifecycle session beats as the manager asks."""

    def __init__(self, manager: ManagerHost, cid: str) -> None:
        self.ended = threading.Event()
        snapshot = metrics_pb2.MetricsSnapshot(container_id="someone-else")
        snapshot.process.pid = 4242
        snapshot.rpc_methods.add(method="/app.v1.Orders/Create", calls_started=7)
        snapshot.metrics.add(name="orders").points.add(as_int=3)
        self.sent = management_pb2.WatchMetricsResponse(snapshot=snapshot)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.unary_stream_rpc_method_handler(
            self._watch,
            request_deserializer=management_pb2.WatchMetricsRequest.FromString,
            response_serializer=management_pb2.WatchMetricsResponse.SerializeToString,
        )
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "pycontainer.v1.Management", {"WatchMetrics": handler}
                ),
            )
        )
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        identity = S.ContainerIdentity(id=cid, name=cid)
        identity.endpoints.add(
            name="management", kind=S.ENDPOINT_KIND_MANAGEMENT, address=f"127.0.0.1:{port}"
        )
        self._requests: queue.Queue[lifecycle_pb2.ConnectRequest | None] = queue.Queue()
        self._requests.put(
            lifecycle_pb2.ConnectRequest(
                register=lifecycle_pb2.Registration(
                    identity=identity, state=S.LIFECYCLE_STATE_RUNNING, pid=4242
                )
            )
        )
        self.channel = grpc.insecure_channel(manager.address)
        self.call = lifecycle_pb2_grpc.LifecycleStub(self.channel).Connect(self._iterate())
        self._answers = threading.Thread(target=self._beat, daemon=True)
        self._answers.start()

    def _iterate(self) -> Iterator[lifecycle_pb2.ConnectRequest]:
        while (message := self._requests.get()) is not None:
            yield message

    def _beat(self) -> None:
        # A heartbeat for each answer (the manager's ack and its replies):
        # never silent for a whole interval.
        try:
            for _ in self.call:
                self._requests.put(
                    lifecycle_pb2.ConnectRequest(heartbeat=lifecycle_pb2.Heartbeat())
                )
        except grpc.RpcError:
            pass

    def _watch(self, request: management_pb2.WatchMetricsRequest, context: Any) -> Any:
        context.add_callback(self.ended.set)
        while context.is_active():
            yield self.sent
            threading.Event().wait(0.1)

    def close(self) -> None:
        self._requests.put(None)
        self.call.cancel()
        self.channel.close()
        self.server.stop(None)


def _connected(manager: ManagerHost, cid: str) -> bool:
    entry = manager.manager.registry.get(cid)
    return entry is not None and entry.connected


def test_a_snapshot_is_relayed_whole_with_the_container_id_set(manager: ManagerHost) -> None:
    liar = LyingContainer(manager, "liar")
    try:
        wait_until(lambda: _connected(manager, "liar"), 10, "registered")
        stream = manager.stub.WatchMetrics(
            manager_pb2.ManagerWatchMetricsRequest(containers=["liar"], interval=FAST), timeout=30
        )
        first = next(stream)
        expected = metrics_pb2.MetricsSnapshot()
        expected.CopyFrom(liar.sent.snapshot)
        expected.container_id = "liar"  # the manager says whose it is
        assert first.snapshot == expected
        stream.cancel()
        # The watcher gone, the container's stream ends too.
        assert liar.ended.wait(10)
    finally:
        liar.close()


def test_several_containers_are_merged_each_with_its_own_id(manager: ManagerHost) -> None:
    liar = LyingContainer(manager, "liar")
    container, host = connected_container(manager, "honest")
    try:
        wait_until(lambda: _connected(manager, "liar"), 10, "liar registered")
        wait_until(lambda: _connected(manager, container.id), 10, "honest registered")
        stream = manager.stub.WatchMetrics(
            manager_pb2.ManagerWatchMetricsRequest(
                containers=["liar", container.id], interval=FAST
            ),
            timeout=30,
        )
        seen: dict[str, metrics_pb2.MetricsSnapshot] = {}
        for response in stream:
            seen[response.snapshot.container_id] = response.snapshot
            if len(seen) == 2 and all(s.process.pid for s in seen.values()):
                break
        stream.cancel()
        assert set(seen) == {"liar", container.id}
        assert seen["liar"].process.pid == 4242
        # The real container's own figures came through, decoded by the watcher only.
        assert seen[container.id].process.rss_bytes > 0
        assert seen[container.id].HasField("interval")
        assert liar.ended.wait(10)
    finally:
        liar.close()
        container.close()
        host.stop()


def test_the_relayed_messages_have_the_same_shape() -> None:
    """The relay forwards a container's WatchMetricsResponse bytes as a
    ManagerWatchMetricsResponse: both must hold the MetricsSnapshot in field
    1 and nothing else (a field added to either breaks the relay: change it)."""
    for message in (management_pb2.WatchMetricsResponse, manager_pb2.ManagerWatchMetricsResponse):
        fields = message.DESCRIPTOR.fields
        assert [(f.number, f.message_type.full_name) for f in fields] == [
            (1, "pycontainer.v1.MetricsSnapshot")
        ]


def test_the_tag_overrides_the_container_id_and_keeps_the_rest() -> None:
    snapshot = metrics_pb2.MetricsSnapshot(container_id="claimed")
    snapshot.process.pid = 7
    raw = management_pb2.WatchMetricsResponse(snapshot=snapshot).SerializeToString()
    relayed = manager_pb2.ManagerWatchMetricsResponse.FromString(raw + container_tag("real-1"))
    assert relayed.snapshot.container_id == "real-1"
    assert relayed.snapshot.process.pid == 7

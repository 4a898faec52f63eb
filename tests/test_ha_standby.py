"""Standbys in high availability (real managers on a real 3-member etcd):
a standby forwards reads to the leader (unary and streams) and answers
writes with FAILED_PRECONDITION naming the leader (message, trailing
metadata, google.rpc.ErrorInfo); it serves grpc.health.v1 on its address and
on --health-listen; a client given every address finds the leader and
follows a refusal; the real grpcurl lists, describes and reads through a
standby, and its channelz is its own."""

from __future__ import annotations

import asyncio
import datetime
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from etcd_support import etcd_cluster
from grpc_channelz.v1 import channelz_pb2, channelz_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from ha_support import AppProcess, ManagerCluster, ManagerProcess, apps, start_each_on_a_free_port
from support import free_address, wait_until
from test_examples import _grpcurl

from pycontainer.client import PLAINTEXT, AsyncManagerClient, CallError, ManagerClient, Transport
from pycontainer.manager._leadership import LEADER_METADATA
from pycontainer.manager._settings import ManagerSettings
from pycontainer.manager._standby import ERROR_DOMAIN, NOT_LEADER_REASON, Standby
from pycontainer.manager._trust import ADMIN_DIR, Trust
from pycontainer.security import MANAGER
from pycontainer.v1 import container_pb2, manager_pb2

S = container_pb2
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _Cluster:
    def __init__(self, managers: ManagerCluster, fleet: list[AppProcess], health: dict[str, str]):
        self.managers = managers
        self.fleet = fleet
        self.health = health  # manager address -> its --health-listen
        self.leader = managers.leader()
        self.standbys = [m for m in managers.managers if m is not self.leader]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Cluster]:
    base = tmp_path_factory.mktemp("standby")
    with etcd_cluster(base / "etcd") as etcd:
        managers = ManagerCluster(base / "m", etcd.url)
        try:
            health = start_each_on_a_free_port(
                managers,
                "--health-listen",
                lambda m, address: "manager serving on" in m.log.read_text(),
            )
            with apps(base, managers.addresses, 1, prefix="standby") as fleet:
                up = _Cluster(managers, fleet, health)
                wait_until(lambda: _running(up.leader, fleet[0].name), 30, "the app running")
                yield up
        finally:
            managers.stop()


def _running(manager: ManagerProcess, name: str) -> bool:
    try:
        got = manager.stub.GetContainer(manager_pb2.GetContainerRequest(container=name), timeout=5)
    except grpc.RpcError:
        return False
    return got.container.state == S.LIFECYCLE_STATE_RUNNING and got.container.connected


def test_a_standby_forwards_reads_to_the_leader(cluster: _Cluster) -> None:
    leader, name = cluster.leader, cluster.fleet[0].name
    for standby in cluster.standbys:
        listed, call = standby.stub.ListContainers.with_call(
            manager_pb2.ListContainersRequest(), timeout=10
        )
        assert [c.identity.name for c in listed.containers] == [name]
        assert dict(call.trailing_metadata())[LEADER_METADATA] == leader.address
        # The leader's errors come back as they were, rich details included.
        with pytest.raises(grpc.RpcError) as missing:
            standby.stub.GetContainer(manager_pb2.GetContainerRequest(container="nope"), timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert rpc_status.from_call(missing.value) is not None
        assert dict(missing.value.trailing_metadata())[LEADER_METADATA] == leader.address
        # Streams: the leader's event history, then a live follow cancelled.
        events = list(
            standby.stub.WatchEvents(
                manager_pb2.WatchEventsRequest(include_history=True, history_only=True),
                timeout=10,
            )
        )
        assert any(e.event.container_name == name for e in events)
        metrics = standby.stub.WatchMetrics(
            manager_pb2.ManagerWatchMetricsRequest(containers=[name]), timeout=20
        )
        first = next(iter(metrics))
        metrics.cancel()
        assert first.snapshot.container_id == listed.containers[0].identity.id
        # Logs as the leader gives them (its messages parsed by the client).
        request = manager_pb2.ManagerStreamLogsRequest(containers=[name])
        forwarded = list(standby.stub.StreamLogs(request, timeout=20))
        direct = list(leader.stub.StreamLogs(request, timeout=20))
        assert [r.SerializeToString() for r in forwarded] == [r.SerializeToString() for r in direct]


def test_a_standby_refuses_writes_naming_the_leader(cluster: _Cluster) -> None:
    leader, name = cluster.leader, cluster.fleet[0].name
    standby = cluster.standbys[0]
    with pytest.raises(grpc.RpcError) as refused:
        standby.stub.PauseContainer(manager_pb2.PauseContainerRequest(container=name), timeout=10)
    error = refused.value
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == f"this manager is a standby; the leader is at {leader.address}"
    assert dict(error.trailing_metadata())[LEADER_METADATA] == leader.address
    status = rpc_status.from_call(error)
    assert status is not None
    from google.rpc import error_details_pb2

    [detail] = status.details
    info = error_details_pb2.ErrorInfo()
    assert detail.Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        NOT_LEADER_REASON,
        ERROR_DOMAIN,
        {"leader": leader.address},
    )
    # Nothing ran: the container was never paused.
    assert cluster.fleet[0].state()["calls"].get("pause") is None


def _health(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        status: int = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        return status


def test_standbys_serve_health_on_their_address_and_health_port(cluster: _Cluster) -> None:
    leader = cluster.leader
    for standby in cluster.standbys:
        for address in (standby.address, cluster.health[standby.address]):
            statuses = {s: _health(address, s) for s in ("", "liveness", "readiness", "leader")}
            assert statuses == {
                "": SERVING,
                "liveness": SERVING,
                "readiness": SERVING,
                "leader": NOT_SERVING,
            }, address
    for address in (leader.address, cluster.health[leader.address]):
        assert _health(address, "leader") == SERVING
        assert _health(address, "readiness") == SERVING


def test_a_client_given_every_address_reaches_the_leader(cluster: _Cluster) -> None:
    leader, name = cluster.leader, cluster.fleet[0].name
    standbys_first = ",".join([*(m.address for m in cluster.standbys), leader.address])
    with ManagerClient(standbys_first, transport=PLAINTEXT) as client:
        assert client.target == leader.address
        assert [c.identity.name for c in client.list_containers().containers] == [name]
    # A client that dialled a standby follows its refusal once: the write lands.
    with ManagerClient(cluster.standbys[0].address, transport=PLAINTEXT) as client:
        client.pause_container(manager_pb2.PauseContainerRequest(container=name))
        client.resume_container(manager_pb2.ResumeContainerRequest(container=name))
        assert client.target == leader.address
    calls = cluster.fleet[0].state()["calls"]
    assert (calls.get("pause"), calls.get("resume")) == (1, 1)

    async def asynchronously() -> None:
        async with AsyncManagerClient(standbys_first, transport=PLAINTEXT) as found:
            listed = await found.list_containers()
            assert [c.identity.name for c in listed.containers] == [name]
            assert found.target == leader.address
        async with AsyncManagerClient(cluster.standbys[1].address, transport=PLAINTEXT) as one:
            await one.pause_container(manager_pb2.PauseContainerRequest(container=name))
            await one.resume_container(manager_pb2.ResumeContainerRequest(container=name))
            assert one.target == leader.address

    asyncio.run(asynchronously())
    calls = cluster.fleet[0].state()["calls"]
    assert (calls.get("pause"), calls.get("resume")) == (2, 2)
    # No manager there: the one line names every address tried.
    with (
        ManagerClient(f"{free_address()},{free_address()}", transport=PLAINTEXT) as client,
        pytest.raises(CallError) as unreached,
    ):
        client.list_containers(timeout=datetime.timedelta(seconds=2))
    assert not unreached.value.reached


def test_a_standby_keeps_its_certificates_current(tmp_path: Path) -> None:
    """A standby may outlive its certificates (a day by default): it renews
    them as the leader does, and serves the renewed one."""
    settings = ManagerSettings(
        state_dir=str(tmp_path),
        listen="127.0.0.1:0",
        insecure=False,
        certificate_ttl=datetime.timedelta(seconds=3),
        certificate_renewal_check=datetime.timedelta(seconds=0.2),
    )

    async def main() -> None:
        trust = Trust(settings)
        trust.open()
        standby = Standby(settings, trust)
        await standby.start()
        try:
            first = trust.manager_files.leaf.read_bytes()
            expires = trust.manager_files.read()[0].certificate.not_valid_after_utc
            deadline = time.monotonic() + 10
            # Renewed, and the first one expired: only the renewed one can serve.
            while (
                trust.manager_files.leaf.read_bytes() == first
                or datetime.datetime.now(datetime.UTC) <= expires
            ):
                assert time.monotonic() < deadline, "the standby's certificate never renewed"
                await asyncio.sleep(0.05)
            admin = Transport(tmp_path / ADMIN_DIR, MANAGER)
            async with admin.aio_channel(f"127.0.0.1:{standby.port}") as channel:
                checked = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="liveness"), timeout=5
                )
            assert checked.status == SERVING
        finally:
            await standby.stop()

    asyncio.run(main())


def test_grpcurl_through_a_standby_finds_every_method(cluster: _Cluster) -> None:
    """As through a Service that lands on a standby: the real grpcurl lists
    what the leader lists, describes it, and a read it makes is forwarded."""
    grpcurl, leader, name = _grpcurl(), cluster.leader, cluster.fleet[0].name

    def run(address: str, *argv: str) -> str:
        done = subprocess.run(
            [grpcurl, "-plaintext", address, *argv], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    listed = run(leader.address, "list")
    assert "pycontainer.v1.Manager" in listed.split()
    for standby in cluster.standbys:
        assert run(standby.address, "list") == listed
        assert "rpc ListContainers" in run(standby.address, "describe", "pycontainer.v1.Manager")
        answer = json.loads(run(standby.address, "pycontainer.v1.Manager/ListContainers"))
        assert [c["identity"]["name"] for c in answer["containers"]] == [name]


def test_a_standby_serves_channelz_of_its_own(cluster: _Cluster) -> None:
    """Channelz is per process: a standby's shows its own channel to the
    leader (the one it forwards reads on), not the leader's channels."""
    leader = cluster.leader
    for standby in cluster.standbys:
        standby.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=10)
        with grpc.insecure_channel(standby.address) as channel:
            stub = channelz_pb2_grpc.ChannelzStub(channel)
            top = stub.GetTopChannels(channelz_pb2.GetTopChannelsRequest(), timeout=10).channel
            assert any(leader.address in c.data.target for c in top), [c.data.target for c in top]
            servers = stub.GetServers(channelz_pb2.GetServersRequest(), timeout=10).server
            assert any(s.data.calls_started for s in servers)

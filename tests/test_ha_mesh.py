"""The mesh through a failover: three real managers on a real 3-member etcd,
a mesh service of three backends the leader launched, and a real proxyless
grpcio client (tests/apps/mesh_client.py) calling ``xds:///echo`` with a
bootstrap naming every manager. The leader killed (kill -9): a new one leads,
the client's calls keep succeeding throughout (its xDS client keeps what it
has while its stream is down; the new leader keeps the inherited endpoints
until the backends reconnect), and its xDS stream ends up on the new leader
(through whichever manager its channel reaches: a standby forwards it)."""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import signal
import socket
from pathlib import Path

import grpc
import pytest
from etcd_support import etcd_cluster
from ha_mesh_support import (
    backend_spec,
    backends_killed_at_end,
    connected,
    envoy_caller,
    envoy_load,
    healthy,
    leading,
    mesh_load,
    mesh_status,
    pids_of,
    run_backends,
    synced,
)
from ha_support import ManagerCluster, ManagerProcess
from support import free_address, require_envoy, wait_until

from pycontainer.cli import main
from pycontainer.client import bootstrap
from pycontainer.manager._leadership import Standby
from pycontainer.manager._settings import ManagerSettings
from pycontainer.manager._trust import Trust
from pycontainer.manager._xds._forward import ADS_METHOD
from pycontainer.sidecar._envoy import bootstrap as envoy_bootstrap
from pycontainer.testing import CallCounts, ManagerHost
from pycontainer.v1 import manager_pb2

SERVICE = "echo"
REPLICAS = 3
# A lease of 2 s, a campaign, the backends' reconnects and the client's xDS
# retry (its backoff): well within this on a loaded machine.
FAILOVER_BOUND = 60.0


def test_mesh_calls_do_not_fail_through_a_leader_kill(tmp_path: Path) -> None:
    with etcd_cluster(tmp_path / "etcd") as etcd:
        managers = ManagerCluster(tmp_path / "m", etcd.url)
        try:
            managers.start_all()
            leader, epoch = leading(managers)
            with backends_killed_at_end(managers) as backends:
                ids = run_backends(leader, SERVICE, REPLICAS)
                backends += pids_of(leader)
                # A split set on the leader (one subset: the traffic as it
                # was), kept in etcd for its successor.
                leader.stub.SetMeshRoute(
                    manager_pb2.SetMeshRouteRequest(service=SERVICE, weights={SERVICE: 1}),
                    timeout=10,
                )
                node_id = "ha-load"
                # A standby first: the client's channel goes there, and the
                # standby forwards its xDS stream to the leader.
                standbys = [m.address for m in managers.managers if m is not leader]
                order = [standbys[0], leader.address, *standbys[1:]]
                with mesh_load(tmp_path / node_id, SERVICE, order, node_id) as load:
                    wait_until(lambda: synced(leader, node_id), 30, "the client on the leader")
                    counts = load.until_answered(ids)
                    managers.kill(leader)
                    successor, _ = leading(managers, after=epoch, timeout=FAILOVER_BOUND)
                    # From its first answer: the endpoints as they were (held
                    # until the backends reconnect), never an empty service.
                    assert healthy(successor, SERVICE) == ids
                    # Calls go on meanwhile; the client's stream reaches the
                    # new leader, and the backends re-register with it.
                    wait_until(
                        lambda: synced(successor, node_id),
                        FAILOVER_BOUND,
                        "the client's xDS stream on the new leader",
                    )
                    wait_until(
                        lambda: connected(successor, ids),
                        FAILOVER_BOUND,
                        "every backend back on the new leader",
                    )
                    assert healthy(successor, SERVICE) == ids
                    [route] = [s.route for s in _status(successor).services if s.name == SERVICE]
                    assert (dict(route.weights), route.source) == ({SERVICE: 1}, "route")
                    during = load.phase()
                    # Still served by every backend after the failover.
                    after = load.until_answered(ids)
                    after += load.finish()
                total: CallCounts = counts + during + after
                print(f"mesh calls through a leader kill: {total}")
                assert during.calls > 0
                assert total.failed == 0, f"{total}; {managers.logs()}"
        finally:
            managers.stop()


def test_a_new_manager_holds_inherited_endpoints_until_the_window_ends(tmp_path: Path) -> None:
    """On the SQLite store too: a manager started on an earlier one's state
    keeps the endpoints of the containers it inherits RUNNING (served at
    once, before any reconnects); the one that comes back keeps its place,
    the one that died leaves when the reconnect window ends."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        listen = f"127.0.0.1:{s.getsockname()[1]}"
    state = tmp_path / "state"
    window = datetime.timedelta(seconds=3)
    pids: dict[str, int] = {}
    host = ManagerHost(state, listen=listen, reconnect_window=window)
    try:
        ran = host.client.run_container(
            manager_pb2.RunContainerRequest(spec=backend_spec(SERVICE, 2))
        )
        ids = {c.identity.id for c in ran.containers}
        wait_until(lambda: _healthy_ids(host) == ids, 60, "both backends in the mesh")
        pids = {c.identity.id: c.pid for c in host.client.list_containers().containers}
        host.stop()
        dead, alive = sorted(ids)
        os.killpg(pids[dead], signal.SIGKILL)
        host = ManagerHost(state, listen=listen, reconnect_window=window)
        # Served from the first answer: both, as the earlier manager had them.
        assert _healthy_ids(host) == ids
        wait_until(lambda: _healthy_ids(host) == {alive}, 30, "the dead backend's endpoint gone")
        assert host.manager.mesh.held == frozenset()
        [back] = [c for c in host.client.list_containers().containers if c.identity.id == alive]
        assert back.connected
    finally:
        host.close(graceful=True)
        for pid in pids.values():  # what a failure above left running
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def _status(manager: ManagerProcess) -> manager_pb2.GetMeshStatusResponse:
    status = mesh_status(manager)
    assert status is not None, "no mesh status"
    return status


def _healthy_ids(host: ManagerHost) -> set[str]:
    return {i for s in host.client.get_mesh_status().services for i in s.healthy}


def test_a_bootstrap_names_every_manager_in_one_server_uri() -> None:
    many = bootstrap("127.0.0.1:1,127.0.0.1:2", node_id="n")["xds_servers"]
    assert [s["server_uri"] for s in many] == ["ipv4:127.0.0.1:1,127.0.0.1:2"]
    six = bootstrap(["[::1]:1", "[::1]:2"], node_id="n")["xds_servers"]
    assert [s["server_uri"] for s in six] == ["ipv6:[::1]:1,[::1]:2"]
    # Host names cannot share a URI: one server each, in order (gRFC A71).
    named = bootstrap(["m-0.managers:50050", "m-1.managers:50050"], node_id="n")["xds_servers"]
    assert [s["server_uri"] for s in named] == ["m-0.managers:50050", "m-1.managers:50050"]
    assert [s["server_uri"] for s in bootstrap("10.0.0.1:5", node_id="n")["xds_servers"]] == [
        "10.0.0.1:5"
    ]
    # Under mutual TLS the manager's certificate is checked against the
    # URI's authority: one server each.
    tls = bootstrap(["127.0.0.1:1", "127.0.0.1:2"], node_id="n", tls_dir="/tls")["xds_servers"]
    assert [s["server_uri"] for s in tls] == ["127.0.0.1:1", "127.0.0.1:2"]
    assert all(s["channel_creds"][0]["type"] == "tls" for s in tls)
    with pytest.raises(ValueError, match="manager's address"):
        bootstrap(" , ", node_id="n")
    # `pycontainer mesh bootstrap` given every manager (it dials none).
    out, err = io.StringIO(), io.StringIO()
    argv = ["--insecure", "--manager", "127.0.0.1:1,127.0.0.1:2", "mesh", "bootstrap"]
    assert main([*argv, "--node-id", "n"], stdout=out, stderr=err) == 0, err.getvalue()
    printed = json.loads(out.getvalue())["xds_servers"]
    assert [s["server_uri"] for s in printed] == ["ipv4:127.0.0.1:1,127.0.0.1:2"]


def test_an_envoys_xds_cluster_has_every_manager_as_an_endpoint() -> None:
    """A sidecar's Envoy is given $PYCONTAINER_MANAGER as it is: every manager."""

    def endpoints(manager: str) -> tuple[str, list[tuple[str, int]]]:
        config = envoy_bootstrap(container_id="c", name="c", cluster="c", manager=manager)
        [xds] = config["static_resources"]["clusters"]
        [locality] = xds["load_assignment"]["endpoints"]
        found = [
            (
                e["endpoint"]["address"]["socket_address"]["address"],
                e["endpoint"]["address"]["socket_address"]["port_value"],
            )
            for e in locality["lb_endpoints"]
        ]
        return xds["type"], found

    assert endpoints("127.0.0.1:1,127.0.0.1:2") == ("STATIC", [("127.0.0.1", 1), ("127.0.0.1", 2)])
    assert endpoints("m-0.managers:7,127.0.0.1:2") == (
        "STRICT_DNS",
        [("m-0.managers", 7), ("127.0.0.1", 2)],
    )
    assert endpoints("127.0.0.1:5") == ("STATIC", [("127.0.0.1", 5)])


async def test_a_standby_forwards_ads_one_hop_at_most(tmp_path: Path) -> None:
    """A standby with no leader known refuses the stream UNAVAILABLE (the xDS
    client retries, keeping what it has); one that takes another standby for
    the leader gets its stream refused there, not forwarded again (no loop);
    a write is still refused naming the leader."""
    settings = ManagerSettings(listen="127.0.0.1:0", state_dir=str(tmp_path), insecure=True)
    first, second = Standby(settings, Trust(settings)), Standby(settings, Trust(settings))
    first.own, second.own = f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"
    await first.start()
    await second.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
            ads = channel.stream_stream(ADS_METHOD)

            async def status() -> tuple[grpc.StatusCode, str]:
                call = ads(iter([b""]))
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    async for _ in call:
                        pass
                return ended.value.code(), ended.value.details() or ""

            code, details = await status()
            assert code == grpc.StatusCode.UNAVAILABLE
            assert "no leader is elected yet" in details
            first.leader = second.leader = f"127.0.0.1:{second.port}"
            code, details = await status()
            assert code == grpc.StatusCode.UNAVAILABLE
            assert "this manager is a standby too" in details
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await channel.unary_unary("/pycontainer.v1.Manager/StopContainer")(b"")
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert second.leader in (refused.value.details() or "")
    finally:
        await first.stop()
        await second.stop()


def test_calls_through_envoy_do_not_fail_through_a_leader_kill(tmp_path: Path) -> None:
    """A program behind Envoy (a sidecar the leader launched, given every
    manager) calls the service through Envoy's outbound listener: Envoy's
    xDS cluster has every manager, its stream ends up on the new leader, and
    no call fails meanwhile."""
    require_envoy()
    with etcd_cluster(tmp_path / "etcd") as etcd:
        managers = ManagerCluster(tmp_path / "m", etcd.url)
        try:
            managers.start_all()
            leader, epoch = leading(managers)
            with backends_killed_at_end(managers) as pids:
                ids = run_backends(leader, SERVICE, REPLICAS)
                listen = free_address()
                node_id = envoy_caller(leader, SERVICE, listen)
                pids += pids_of(leader)
                with envoy_load(tmp_path / "envoy-load", listen) as load:
                    counts = load.until_answered(ids)
                    managers.kill(leader)
                    successor, _ = leading(managers, after=epoch, timeout=FAILOVER_BOUND)
                    wait_until(
                        lambda: synced(successor, node_id),
                        FAILOVER_BOUND,
                        "Envoy's xDS stream on the new leader",
                    )
                    wait_until(
                        lambda: connected(successor, {*ids, node_id}),
                        FAILOVER_BOUND,
                        "every container back on the new leader",
                    )
                    during = load.phase()
                    after = load.until_answered(ids) + load.finish()
                total: CallCounts = counts + during + after
                print(f"calls through Envoy through a leader kill: {total}")
                assert during.calls > 0
                assert total.failed == 0, f"{total}; {managers.logs()}"
        finally:
            managers.stop()

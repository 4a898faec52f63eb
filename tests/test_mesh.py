"""The mesh's xDS control plane with real grpcio xDS clients (``xds:///NAME``)
in processes of their own, and real backends launched by a real manager."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from support import ManagerHost, wait_until

from pycontainer.manager._xds import _resources
from pycontainer.manager._xds._model import MeshEndpoint, ServiceSettings, ServiceView
from pycontainer.v1 import manager_pb2, mesh_pb2, spec_pb2

ROOT = Path(__file__).resolve().parent.parent
BACKEND = str(ROOT / "tests" / "apps" / "mesh_backend.py")
CLIENT = str(ROOT / "tests" / "apps" / "mesh_client.py")


@pytest.fixture
def host(tmp_path: Path) -> Iterator[ManagerHost]:
    manager = ManagerHost(tmp_path / "state")
    try:
        yield manager
    finally:
        manager.close()


def _bootstrap(host: ManagerHost, path: Path, node_id: str = "test-client") -> Path:
    path.write_text(
        json.dumps(
            {
                "xds_servers": [
                    {
                        "server_uri": host.address,
                        "channel_creds": [{"type": "insecure"}],
                        "server_features": ["xds_v3"],
                    }
                ],
                "node": {"id": node_id},
            }
        )
    )
    return path


def _run_service(
    host: ManagerHost, name: str, replicas: int, service: str, subset: str = ""
) -> list[str]:
    spec = spec_pb2.ContainerSpec(
        name=name,
        command=[sys.executable, BACKEND],
        replicas=replicas,
        service=mesh_pb2.MeshService(name=service, subset=subset),
    )
    response = host.stub.RunContainer(manager_pb2.RunContainerRequest(spec=spec), timeout=60)
    return [c.identity.id for c in response.containers]


def _status(host: ManagerHost, service: str = "") -> manager_pb2.GetMeshStatusResponse:
    response: manager_pb2.GetMeshStatusResponse = host.stub.GetMeshStatus(
        manager_pb2.GetMeshStatusRequest(service=service), timeout=10
    )
    return response


def _healthy(host: ManagerHost, service: str) -> set[str]:
    for status in _status(host).services:
        if status.name == service:
            return set(status.healthy)
    return set()


def _calls(bootstrap: Path, target: str, calls: int, warm: int = 0) -> dict[str, Any]:
    env = dict(os.environ, GRPC_XDS_BOOTSTRAP=str(bootstrap))
    done = subprocess.run(
        [
            sys.executable,
            CLIENT,
            target,
            "--calls",
            str(calls),
            "--ready-timeout",
            "20",
            "--warm-backends",
            str(warm),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    last = done.stdout.strip().splitlines()[-1]
    result: dict[str, Any] = json.loads(last)
    return result


def test_a_grpcio_client_round_robins_across_the_ready_replicas(
    host: ManagerHost, tmp_path: Path
) -> None:
    ids = _run_service(host, "orders", 3, "orders")
    wait_until(lambda: _healthy(host, "orders") == set(ids), 30, "3 endpoints")
    result = _calls(_bootstrap(host, tmp_path / "bootstrap.json"), "xds:///orders", 300, warm=3)
    assert result["failed"] == 0, result
    # Round robin, once every replica's connection is up: a third each (the
    # client's 4 threads may take turns out of order by a call or so).
    assert set(result["answers"]) == set(ids)
    assert all(95 <= n <= 105 for n in result["answers"].values()), json.dumps(result)


def test_a_route_splits_a_service_between_subsets_by_weight(
    host: ManagerHost, tmp_path: Path
) -> None:
    v1 = _run_service(host, "orders-v1", 1, "orders", subset="v1")
    v2 = _run_service(host, "orders-v2", 1, "orders", subset="v2")
    wait_until(lambda: _healthy(host, "orders") == set(v1 + v2), 30, "2 endpoints")
    route = host.stub.SetMeshRoute(
        manager_pb2.SetMeshRouteRequest(service="orders", weights={"v1": 0, "v2": 100}),
        timeout=10,
    ).route
    assert dict(route.weights) == {"v1": 0, "v2": 100}
    assert route.source == "route"
    result = _calls(_bootstrap(host, tmp_path / "bootstrap.json"), "xds:///orders", 100)
    assert result["failed"] == 0, result
    assert result["answers"] == {v2[0]: 100}, result


def test_bad_routes_and_unknown_services_get_statuses_that_say_what_to_fix(
    host: ManagerHost,
) -> None:
    _run_service(host, "orders", 1, "orders")
    wait_until(lambda: len(_healthy(host, "orders")) == 1, 30, "1 endpoint")
    with pytest.raises(grpc.RpcError) as unknown:
        host.stub.SetMeshRoute(
            manager_pb2.SetMeshRouteRequest(service="payments", weights={"a": 1}), timeout=10
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "services now: orders" in (unknown.value.details() or "")
    with pytest.raises(grpc.RpcError) as subset:
        host.stub.SetMeshRoute(
            manager_pb2.SetMeshRouteRequest(service="orders", weights={"v9": 1}), timeout=10
        )
    assert subset.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "its subsets are orders" in (subset.value.details() or "")
    with pytest.raises(grpc.RpcError) as zero:
        host.stub.SetMeshRoute(
            manager_pb2.SetMeshRouteRequest(service="orders", weights={"orders": 0}), timeout=10
        )
    assert zero.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as status:
        host.stub.GetMeshStatus(manager_pb2.GetMeshStatusRequest(service="nope"), timeout=10)
    assert status.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_client_of_an_unknown_service_fails_at_once_and_the_status_shows_its_acks(
    host: ManagerHost, tmp_path: Path
) -> None:
    _run_service(host, "orders", 1, "orders")
    wait_until(lambda: len(_healthy(host, "orders")) == 1, 30, "1 endpoint")
    bootstrap = _bootstrap(host, tmp_path / "bootstrap.json", node_id="watcher")
    env = dict(os.environ, GRPC_XDS_BOOTSTRAP=str(bootstrap))
    # A long-lived client: its stream shows in the status while it calls.
    until = tmp_path / "until"
    client = subprocess.Popen(
        [sys.executable, CLIENT, "xds:///orders", "--until-file", str(until)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "ready"

        def acked_everything() -> bool:
            clients = [c for c in _status(host, "orders").clients if c.node_id == "watcher"]
            return bool(clients) and all(
                r.acked_version and r.acked_version == r.sent_version and not r.nack_error
                for r in clients[0].resources
            )

        wait_until(acked_everything, 20, "the client's ACKs")
        (watcher,) = [c for c in _status(host).clients if c.node_id == "watcher"]
        assert watcher.kind == "grpc"
        assert "gRPC" in watcher.user_agent
        types = {r.type_url.rsplit(".", 1)[-1]: r for r in watcher.resources}
        assert set(types) == {"Listener", "RouteConfiguration", "Cluster", "ClusterLoadAssignment"}
        assert list(types["Listener"].names) == ["orders"]
    finally:
        until.write_text("")
        client.communicate(timeout=30)
    # A name no spec serves: the listener does not exist, and the client says so.
    unknown = subprocess.run(
        [sys.executable, CLIENT, "xds:///payments", "--calls", "1", "--ready-timeout", "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "not ready" in unknown.stdout


def _view(endpoints: tuple[MeshEndpoint, ...], **settings: Any) -> ServiceView:
    return ServiceView("orders", ServiceSettings(**settings), {"orders": endpoints})


def _endpoint(container_id: str, zone: str = "", draining: bool = False) -> MeshEndpoint:
    return MeshEndpoint(container_id, "127.0.0.1", 1000, 1, zone, draining, False)


def test_resources_have_what_grpcio_needs_or_silently_drops() -> None:
    from envoy.config.endpoint.v3 import endpoint_pb2
    from envoy.config.listener.v3 import listener_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2,
    )

    view = _view((_endpoint("a", "z1"), _endpoint("b", "z2", draining=True)))
    built = _resources.build(view).by_type
    listener = listener_pb2.Listener()
    built[_resources.LISTENER]["orders"].Unpack(listener)
    hcm = http_connection_manager_pb2.HttpConnectionManager()
    listener.api_listener.api_listener.Unpack(hcm)
    assert listener.name == "orders"  # the target's name, exactly
    assert hcm.http_filters[-1].name == "envoy.filters.http.router"
    assert hcm.rds.config_source.HasField("ads")
    assignment = endpoint_pb2.ClusterLoadAssignment()
    built[_resources.ENDPOINT]["orders"].Unpack(assignment)
    # Every locality weighs something, the all-draining zone too.
    assert [loc.load_balancing_weight.value for loc in assignment.endpoints] == [1, 1]
    statuses = [e.health_status for loc in assignment.endpoints for e in loc.lb_endpoints]
    assert statuses == [1, 3]  # HEALTHY, DRAINING (never DEGRADED)

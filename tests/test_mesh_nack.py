"""A NACK end to end: a real grpcio client (tests/apps/mesh_client.py through
``xds:///``) given a Cluster it rejects (a load-balancing policy listing
only one grpcio does not support) NACKs it, the manager logs the NACK and
GetMeshStatus shows it, and the client goes on calling on its last good
config, endpoint changes included; once the mesh serves a good Cluster
again, the client acknowledges it and the error clears.

The rejected Cluster goes in through Mesh.replace_resource, the mesh's test
seam: nothing the manager builds itself is one grpcio rejects."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import extension_pb2
from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
from google.protobuf import any_pb2
from prometheus_support import scrape, value

from pycontainer.manager._xds._resources import CLUSTER
from pycontainer.testing import MeshRig
from pycontainer.v1 import manager_pb2, mesh_pb2

SERVICE = "orders"


def _rejected_cluster(good: any_pb2.Any) -> any_pb2.Any:
    """``good`` (the mesh's Cluster) with only least_request as its policy:
    grpcio has no such policy and rejects the Cluster."""
    cluster = cluster_pb2.Cluster()
    good.Unpack(cluster)
    policy = any_pb2.Any()
    policy.Pack(least_request_pb2.LeastRequest())
    cluster.load_balancing_policy.CopyFrom(
        cluster_pb2.LoadBalancingPolicy(
            policies=[
                cluster_pb2.LoadBalancingPolicy.Policy(
                    typed_extension_config=extension_pb2.TypedExtensionConfig(
                        name="least_request", typed_config=policy
                    )
                )
            ]
        )
    )
    packed = any_pb2.Any()
    packed.Pack(cluster)
    return packed


def _cluster_status(rig: MeshRig, node_id: str) -> mesh_pb2.MeshClientResource | None:
    status = rig.host.stub.GetMeshStatus(manager_pb2.GetMeshStatusRequest(), timeout=10)
    for client in status.clients:
        if client.node_id == node_id:
            for resource in client.resources:
                if resource.type_url == CLUSTER:
                    return resource
    return None


def _wait_cluster(rig: MeshRig, node_id: str, nacked: bool, timeout: float = 15.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        state = _cluster_status(rig, node_id)
        if (
            state is not None
            and bool(state.nack_error) == nacked
            and (nacked or state.acked_version == state.sent_version)
        ):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"{node_id}'s Cluster state is not nacked={nacked}: {state}")
        time.sleep(0.05)


def test_a_rejected_cluster_leaves_the_client_on_its_last_good_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pycontainer.manager.xds")
    with MeshRig(tmp_path, settings={"http_listen": "127.0.0.1:0"}) as rig:
        ids = rig.run_service(SERVICE, replicas=3, delay=0.0)
        mesh = rig.host.manager.mesh
        with rig.load(SERVICE) as load:
            before = load.until_answered(ids)
            good = _cluster_status(rig, load.node_id)
            assert good is not None
            assert good.acked_version

            async def reject() -> None:
                mesh.replace_resource(
                    CLUSTER, SERVICE, _rejected_cluster(mesh.shared(CLUSTER)[SERVICE][1])
                )

            rig.host.call(reject)
            nacked = _wait_cluster(rig, load.node_id, nacked=True)
            assert nacked.nacks == 1
            assert "least_request" in nacked.nack_error or "policy" in nacked.nack_error
            # It keeps the version it had acknowledged.
            assert nacked.acked_version == good.acked_version
            logged = [r.getMessage() for r in caplog.records if "xDS NACK" in r.getMessage()]
            assert any(load.node_id in line and "Cluster" in line for line in logged), logged
            # And the manager's /metrics counts it, and the client keeping its old config.
            assert rig.host.manager.http is not None
            samples = scrape(rig.host.manager.http.url + "metrics")
            assert value(samples, "pycontainer_manager_xds_nacks_total", type="Cluster") == 1
            assert value(samples, "pycontainer_manager_xds_clients_rejecting", type="Cluster") == 1
            assert value(samples, "pycontainer_manager_xds_acks_total", type="Cluster") >= 1
            assert value(samples, "pycontainer_manager_xds_clients", kind="grpc") >= 1

            # Calls go on, on the last good config, and endpoint changes
            # (another resource) still reach it: a drained stop loses none.
            rig.host.stub.StopContainer(
                manager_pb2.StopContainerRequest(container=ids[0]), timeout=30
            )
            rig.wait_acknowledged(SERVICE)
            during = load.phase()
            print(f"MESH while the Cluster is NACKed: {during}", flush=True)
            assert during.failed == 0, during
            assert set(ids[1:]) <= set(during.answers), during
            # Not sent again meanwhile: still the one NACK.
            assert _cluster_status(rig, load.node_id).nacks == 1  # type: ignore[union-attr]

            async def restore() -> None:
                mesh.replace_resource(CLUSTER, SERVICE, None)

            rig.host.call(restore)
            fixed = _wait_cluster(rig, load.node_id, nacked=False)
            assert int(fixed.acked_version) > int(good.acked_version)
            after = load.finish()
            assert after.failed == 0, after
    print(f"MESH before the NACK: {before}", flush=True)

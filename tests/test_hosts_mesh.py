"""The mesh across hosts (network namespaces, tests/netns_support.py): the
manager on host A serves mutual TLS and launches two replicas of a service
there (tests/apps/mesh_backend.py --tls, advertising A's address); a plain
grpcio client on host B, with a certificate of the manager's CA, reaches
``xds:///orders`` through xDS credentials: its ADS stream and its calls go
across the switch, and both replicas answer.

The other way round (a backend on B, the client on A) is not here: the
manager launches in its own host only, and a container that joins from
another host has no spec, so no mesh service (the mesh takes it from the
spec; a Registration names none)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hosts_support import ROOT, environment, start_manager
from netns_support import Network, require_netns
from security_support import issue_files
from support import wait_until

from pycontainer.client import XDS_BOOTSTRAP_ENV, bootstrap
from pycontainer.security import CertificateAuthority, container
from pycontainer.v1 import manager_pb2, mesh_pb2, spec_pb2

BACKEND = str(ROOT / "tests/apps/mesh_backend.py")
CLIENT = str(ROOT / "tests/apps/mesh_client.py")


@pytest.fixture
def network() -> Iterator[Network]:
    require_netns()
    with Network("mesh") as network:
        yield network


def test_a_client_on_another_host_calls_a_tls_service_through_the_mesh(
    network: Network, tmp_path: Path
) -> None:
    a, b = network.add_host("a"), network.add_host("b")
    state = tmp_path / "state"
    manager = start_manager(a, state)
    with manager.client as client:
        spec = spec_pb2.ContainerSpec(
            name="orders",
            command=[sys.executable, BACKEND, "--tls", "--listen", a.address],
            replicas=2,
            service=mesh_pb2.MeshService(name="orders"),
        )
        client.run_container(manager_pb2.RunContainerRequest(spec=spec))

        def served() -> bool:
            assert manager.process.poll() is None, manager.process.communicate(timeout=10)
            status = client.get_mesh_status()
            return bool(status.services) and len(status.services[0].healthy) == 2

        wait_until(served, 60, "both TLS backends on A in the mesh")
        endpoints = [
            e
            for c in client.list_containers().containers
            for e in c.identity.endpoints
            if e.name == "grpc"
        ]
        assert len(endpoints) == 2
        assert all(e.tls and e.address.startswith(f"{a.address}:") for e in endpoints)

        # A client the manager never launched: a certificate of its CA, a bootstrap.
        ca = CertificateAuthority.open(state)
        files = issue_files(ca, container("caller-1"), tmp_path / "caller-tls")
        path = tmp_path / "bootstrap.json"
        path.write_text(
            json.dumps(bootstrap(manager.address, node_id="caller-1", tls_dir=files.leaf.parent))
        )
        result_file = tmp_path / "result.json"
        caller = b.popen(
            [
                *(sys.executable, CLIENT, "xds:///orders", "--credentials", "xds"),
                *("--calls", "60", "--warm-backends", "2", "--result-file", str(result_file)),
            ],
            env=environment(**{XDS_BOOTSTRAP_ENV: str(path)}),
        )
        out, err = caller.communicate(timeout=120)
        assert caller.returncode == 0, (out, err[-3000:])
        result = json.loads(result_file.read_text())
        assert result.get("failed") == 0, result
        assert result["calls"] == 60, result
        assert len(result["answers"]) == 2, result  # both replicas, across the switch

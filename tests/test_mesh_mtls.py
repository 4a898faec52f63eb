"""Mutual TLS between services for proxyless clients (gRFC A29), with a manager
serving mutual TLS (not --insecure): a backend serves its app port with its own
certificate and advertises it with tls; the manager's cluster then names the
bootstrap's certificate provider. A client the manager launched (its
bootstrap and certificate given) calls xds:///orders through xDS credentials;
one without the certificate, or without the credentials, does not get through,
and a client whose bootstrap lacks the certificate provider rejects the
cluster (a NACK that `pycontainer mesh status` shows with its error)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from security_support import issue_files
from support import wait_until

from pycontainer.cli import main
from pycontainer.client import XDS_BOOTSTRAP_ENV, bootstrap
from pycontainer.security import CertificateAuthority, container
from pycontainer.testing import ManagerHost, manager_host
from pycontainer.v1 import manager_pb2, mesh_pb2, spec_pb2

ROOT = Path(__file__).resolve().parent.parent
BACKEND = str(ROOT / "tests/apps/mesh_backend.py")
CLIENT = str(ROOT / "tests/apps/mesh_client.py")
METHOD = "/pycontainer.test.Echo/Who"


def _env() -> dict[str, str]:
    """A shell's environment: none of the suite's PYCONTAINER_* settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYCONTAINER_")}


@pytest.fixture
def secure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ManagerHost]:
    # The launched containers take the manager's environment: not the suite's --insecure.
    monkeypatch.delenv("PYCONTAINER_INSECURE", raising=False)
    with manager_host(tmp_path / "state", insecure=False) as host:
        spec = spec_pb2.ContainerSpec(
            name="orders",
            command=[sys.executable, BACKEND, "--tls"],
            replicas=2,
            service=mesh_pb2.MeshService(name="orders"),
        )
        host.client.run_container(manager_pb2.RunContainerRequest(spec=spec))

        def served() -> bool:
            status = host.client.get_mesh_status()
            return bool(status.services) and len(status.services[0].healthy) == 2

        wait_until(served, 60, "both TLS backends in the mesh")
        yield host


def _launch_client(host: ManagerHost, name: str, result: Path, *extra: str) -> None:
    spec = spec_pb2.ContainerSpec(
        name=name,
        command=[sys.executable, CLIENT, "xds:///orders", "--result-file", str(result), *extra],
        sidecar=True,
        restart_policy=spec_pb2.RESTART_POLICY_NEVER,
    )
    host.client.run_container(manager_pb2.RunContainerRequest(spec=spec))


def _result(path: Path) -> dict[str, Any]:
    wait_until(path.exists, 60, f"the client's result in {path}")
    result: dict[str, Any] = json.loads(path.read_text())
    return result


def test_a_launched_client_calls_a_tls_service_with_xds_credentials(
    secure: ManagerHost, tmp_path: Path
) -> None:
    endpoints = [
        e
        for c in secure.client.list_containers().containers
        for e in c.identity.endpoints
        if e.name == "grpc"
    ]
    assert len(endpoints) == 2
    assert all(e.tls for e in endpoints)
    result_file = tmp_path / "mtls.json"
    _launch_client(secure, "caller", result_file, "--calls", "40", "--credentials", "xds")
    result = _result(result_file)
    assert result.get("failed") == 0, result
    assert result["calls"] == 40, result
    assert len(result["answers"]) == 2, result  # both replicas, over mutual TLS


def test_without_xds_credentials_a_launched_client_does_not_get_through(
    secure: ManagerHost, tmp_path: Path
) -> None:
    # The same bootstrap and certificate, but a plaintext channel: the
    # cluster's TLS is not applied, and the backends speak TLS only.
    result_file = tmp_path / "plain.json"
    _launch_client(secure, "plain", result_file, "--calls", "5", "--ready-timeout", "5")
    result = _result(result_file)
    assert "answers" not in result, result
    assert "not ready" in result["error"], result


def test_a_client_without_a_certificate_is_refused_by_the_service(secure: ManagerHost) -> None:
    backend = secure.client.list_containers().containers[0]
    [endpoint] = [e for e in backend.identity.endpoints if e.name == "grpc"]
    # It trusts the CA and checks the backend's name; it has no certificate of its own.
    ca = CertificateAuthority.open(secure.settings.state_dir)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.certificate_pem)
    name = container(backend.identity.id).dns_name
    assert name is not None
    options = [("grpc.ssl_target_name_override", name)]
    with (
        grpc.secure_channel(endpoint.address, credentials, options=options) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        channel.unary_unary(METHOD)(b"", timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_bootstrap_without_the_certificate_provider_nacks_and_status_shows_it(
    secure: ManagerHost, tmp_path: Path
) -> None:
    ca = CertificateAuthority.open(secure.settings.state_dir)
    files = issue_files(ca, container("outsider-1"), tmp_path / "tls")
    config = bootstrap(secure.address, node_id="outsider-1", tls_dir=files.leaf.parent)
    del config["certificate_providers"]
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(config))
    env = {**_env(), XDS_BOOTSTRAP_ENV: str(path)}
    client = subprocess.Popen(
        [sys.executable, CLIENT, "xds:///orders", "--credentials", "xds", "--ready-timeout", "60"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:

        def nacked() -> bool:
            clients = {c.node_id: c for c in secure.client.get_mesh_status().clients}
            outsider = clients.get("outsider-1")
            return outsider is not None and any(r.nack_error for r in outsider.resources)

        wait_until(nacked, 30, "the outsider's NACK of the cluster")
        # Who it is, by the certificate it dialled the manager with.
        [outsider] = [
            c for c in secure.client.get_mesh_status().clients if c.node_id == "outsider-1"
        ]
        assert outsider.identity == str(container("outsider-1"))
        out, err = io.StringIO(), io.StringIO()
        admin = str(Path(secure.settings.state_dir) / "admin")
        code = main(
            ["--manager", secure.address, "--cert-dir", admin, "mesh", "status"],
            stdout=out,
            stderr=err,
        )
        assert code == 0, err.getvalue()
        text = out.getvalue()
        table, nacks = text.split("\nNACKS\n", 1)
        [row] = [line for line in table.splitlines() if line.startswith("outsider-1 ")]
        assert "NACK" in row.split()[2], row  # CDS
        assert nacks.startswith("outsider-1 CDS: "), nacks
        assert "pycontainer" in nacks, nacks  # the certificate provider instance it lacks
        assert client.poll() is None  # it waits on: no call got through
    finally:
        client.kill()
        client.communicate(timeout=30)

"""`pycontainer mesh status|bootstrap` and `pycontainer route` against a real
manager whose mesh service ``orders`` is served by real backend processes in
two subsets (v1, v2), and real grpcio xDS clients: one the manager launched
(its bootstrap from $GRPC_XDS_BOOTSTRAP), one with the bootstrap `mesh
bootstrap` printed. Also: the route survives a manager restart, and the
manager serves gRPC's admin services (channelz, CSDS)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from grpc_channelz.v1 import channelz_pb2, channelz_pb2_grpc
from support import wait_until

from pycontainer import limits
from pycontainer.cli import main
from pycontainer.client import XDS_BOOTSTRAP_ENV, CallError, mesh_target
from pycontainer.testing import ManagerHost, manager_host
from pycontainer.v1 import container_pb2, manager_pb2, mesh_pb2, spec_pb2

ROOT = Path(__file__).resolve().parent.parent
BACKEND = str(ROOT / "tests/apps/mesh_backend.py")
CLIENT = str(ROOT / "tests/apps/mesh_client.py")
RUNNING = container_pb2.LIFECYCLE_STATE_RUNNING


def _spec(name: str, subset: str) -> spec_pb2.ContainerSpec:
    return spec_pb2.ContainerSpec(
        name=name,
        command=[sys.executable, BACKEND],
        service=mesh_pb2.MeshService(name="orders", subset=subset),
    )


def _caller(name: str, result: Path, *extra: str) -> spec_pb2.ContainerSpec:
    """A container whose program is a plain grpcio client of xds:///orders
    (under the sidecar: it knows nothing of pycontainer), with the bootstrap
    the manager gave it."""
    return spec_pb2.ContainerSpec(
        name=name,
        command=[sys.executable, CLIENT, "xds:///orders", "--result-file", str(result), *extra],
        sidecar=True,
        restart_policy=spec_pb2.RESTART_POLICY_NEVER,
    )


def _healthy(host: ManagerHost, count: int) -> bool:
    status = host.client.get_mesh_status()
    return bool(status.services) and len(status.services[0].healthy) == count


def _cli(host: ManagerHost, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--manager", host.address, "--insecure", *argv], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def _result(path: Path) -> dict[str, Any]:
    wait_until(path.exists, 60, f"the client's result in {path}")
    result: dict[str, Any] = json.loads(path.read_text())
    return result


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagerHost]:
    state = tmp_path_factory.mktemp("mesh") / "state"
    with manager_host(state) as host:
        for name, subset in (("orders-v1", "v1"), ("orders-v2", "v2")):
            host.client.run_container(manager_pb2.RunContainerRequest(spec=_spec(name, subset)))
        wait_until(lambda: _healthy(host, 2), 60, "both backends in the mesh")
        yield host


def _subset_of_answers(result: dict[str, Any]) -> set[str]:
    return {backend.rsplit("-", 1)[0] for backend in result["answers"]}


def test_a_launched_container_dials_xds_with_the_bootstrap_the_manager_wrote(
    mesh: ManagerHost, tmp_path: Path
) -> None:
    result_file = tmp_path / "result.json"
    [caller] = mesh.client.run_container(
        manager_pb2.RunContainerRequest(spec=_caller("caller", result_file, "--calls", "40"))
    ).containers
    result = _result(result_file)
    assert result.get("failed") == 0, result
    assert result["calls"] == 40, result
    assert _subset_of_answers(result) == {"orders-v1", "orders-v2"}, result
    # Its bootstrap: in the state directory, named for it, the manager in it.
    bootstrap = Path(mesh.settings.state_dir) / "mesh" / caller.identity.id / "bootstrap.json"
    written = json.loads(bootstrap.read_text())
    assert written["node"]["id"] == caller.identity.id
    assert written["xds_servers"][0]["server_uri"] == mesh.address
    assert written["xds_servers"][0]["channel_creds"] == [{"type": "insecure"}]
    assert "certificate_providers" not in written  # an --insecure manager
    # Purged (once its sidecar has exited too), its bootstrap goes with it.
    request = manager_pb2.DeleteContainerRequest(container=caller.identity.id, purge=True)

    def purged() -> bool:
        try:
            mesh.client.delete_container(request)
        except CallError as exc:
            if exc.code != grpc.StatusCode.FAILED_PRECONDITION:  # not "still runs"
                raise
            return False
        return True

    wait_until(purged, 30, "the caller to end and be purged")
    assert not bootstrap.parent.exists()


def test_route_splits_the_traffic_and_status_shows_it(mesh: ManagerHost, tmp_path: Path) -> None:
    code, out, err = _cli(mesh, "route", "orders", "v1=0", "v2=100")
    assert (code, out, err) == (0, "orders: v1=0 v2=100 (route)\n", "")
    try:
        result_file = tmp_path / "result.json"
        mesh.client.run_container(
            manager_pb2.RunContainerRequest(spec=_caller("canary", result_file, "--calls", "40"))
        )
        result = _result(result_file)
        assert result.get("failed") == 0, result
        assert _subset_of_answers(result) == {"orders-v2"}, result
        code, out, err = _cli(mesh, "mesh", "status")
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].split() == ["SERVICE", "HEALTHY", "DRAINING", "ROUTE", "VERSION"]
        assert lines[1].split()[:5] == ["orders", "2", "0", "v1=0", "v2=100"], out
        code, out, _ = _cli(mesh, "mesh", "status", "orders", "-o", "json")
        status = json.loads(out)
        assert status["services"][0]["route"]["weights"] == {"v1": 0, "v2": 100}
    finally:
        code, out, err = _cli(mesh, "route", "orders", "--clear")
    assert (code, out) == (
        0,
        "orders: no split (every ready endpoint of the service takes traffic)\n",
    )
    assert not mesh.client.get_mesh_status().services[0].route.weights


def test_status_lists_each_client_with_what_it_acknowledged(
    mesh: ManagerHost, tmp_path: Path
) -> None:
    stop = tmp_path / "stop"
    result_file = tmp_path / "result.json"
    [caller] = mesh.client.run_container(
        manager_pb2.RunContainerRequest(
            spec=_caller("watcher", result_file, "--until-file", str(stop), "--concurrency", "1")
        )
    ).containers
    node = caller.identity.id
    try:

        def synced() -> bool:
            clients = {c.node_id: c for c in mesh.client.get_mesh_status().clients}
            client = clients.get(node)
            return (
                client is not None
                and len(client.resources) == 4
                and all(
                    r.acked_version and r.acked_version == r.sent_version for r in client.resources
                )
            )

        wait_until(synced, 30, f"{node} to acknowledge every type")
        code, out, err = _cli(mesh, "mesh", "status", "orders")
        assert code == 0, err
        _, endpoints, clients = out.split("\n\n")
        assert endpoints.splitlines()[0].split() == ["ENDPOINT", "STATE"]
        assert len([line for line in endpoints.splitlines() if "HEALTHY" in line]) == 2
        header, *rows = clients.splitlines()
        assert header.split() == ["NODE", "KIND", "CDS", "LDS", "EDS", "RDS"]
        [row] = [r for r in rows if r.startswith(node)]
        assert row.split()[1] == "grpc"
        assert row.count("SYNCED") == 4, row
        # As data, with the versions.
        code, out, _ = _cli(mesh, "mesh", "status", "-o", "yaml")
        assert code == 0
        assert f"nodeId: {node}" in out
    finally:
        stop.touch()
    assert _result(result_file).get("failed") == 0


def test_status_of_an_unknown_service_says_which_there_are(mesh: ManagerHost) -> None:
    code, out, err = _cli(mesh, "mesh", "status", "payments")
    assert code == 1
    assert out == ""
    assert err.startswith("error: NOT_FOUND: "), err
    assert "services now: orders" in err, err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["route", "orders"], "give each subset's weight, such as `pycontainer route orders v1=90"),
        (["route", "orders", "v1=abc"], "the weight 'abc' is not a whole number"),
        (["route", "orders", "v1"], "write SUBSET=WEIGHT, such as v1=90"),
        (
            ["route", "orders", "v1=-1"],
            f"the weight must be from 0 to {limits.MAX_MESH_TRAFFIC_WEIGHT}",
        ),
        (["route", "orders", "v1=1", "--clear"], "give the subsets' weights or --clear, not both"),
        (["route", "orders", "v1=1", "v1=2"], "subset v1 is given twice"),
        (
            ["route", "orders", "v3=10"],
            "weights: service orders has no subset v3",
        ),
        (["route", "orders", "v1=0", "v2=0"], "at least one subset needs a weight above 0"),
        (["route", "payments", "v1=1"], "NOT_FOUND: service: no mesh service 'payments'"),
    ],
)
def test_route_refuses_bad_input_saying_what_to_fix(
    mesh: ManagerHost, argv: list[str], says: str
) -> None:
    code, out, err = _cli(mesh, *argv)
    assert code == 1, (out, err)
    assert out == "", (out, err)
    assert says in err, err
    assert "Traceback" not in err
    assert not mesh.client.get_mesh_status().services[0].route.weights


def test_mesh_bootstrap_prints_one_a_program_of_its_own_dials_xds_with(
    mesh: ManagerHost, tmp_path: Path
) -> None:
    code, out, err = _cli(mesh, "mesh", "bootstrap", "--node-id", "my-app", "--zone", "z1")
    assert code == 0, err
    bootstrap = json.loads(out)
    assert bootstrap["xds_servers"][0]["server_uri"] == mesh.address
    assert bootstrap["node"] == {"id": "my-app", "locality": {"zone": "z1"}}
    path = tmp_path / "bootstrap.json"
    path.write_text(out)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYCONTAINER_")}
    env[XDS_BOOTSTRAP_ENV] = str(path)
    called = subprocess.run(
        [sys.executable, CLIENT, "xds:///orders", "--calls", "20"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert called.returncode == 0, called.stderr[-3000:]
    assert json.loads(called.stdout.splitlines()[-1])["failed"] == 0, called.stdout


_MESH_CHANNEL_APP = """
from pycontainer.client import mesh_channel

with mesh_channel("orders") as channel:
    who = channel.unary_unary("/pycontainer.test.Echo/Who")
    print(sorted({who(b"", timeout=10, wait_for_ready=True).decode() for _ in range(20)}))
"""


def test_mesh_channel_dials_the_service_in_plaintext_without_a_certificate(
    mesh: ManagerHost, tmp_path: Path
) -> None:
    path = tmp_path / "bootstrap.json"
    code, out, err = _cli(mesh, "mesh", "bootstrap", "--node-id", "plain-app")
    assert code == 0, err
    path.write_text(out)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYCONTAINER_")}
    env[XDS_BOOTSTRAP_ENV] = str(path)
    called = subprocess.run(
        [sys.executable, "-c", _MESH_CHANNEL_APP],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert called.returncode == 0, called.stderr[-3000:]
    answered = json.loads(called.stdout.replace("'", '"'))
    assert {a.rsplit("-", 1)[0] for a in answered} == {"orders-v1", "orders-v2"}, answered


def test_mesh_target_refuses_what_is_not_a_service_name() -> None:
    assert mesh_target("orders") == "xds:///orders"
    for bad in ("", "xds:///orders", "orders:50051"):
        with pytest.raises(ValueError, match="give the name alone"):
            mesh_target(bad)


def test_mesh_bootstrap_with_a_certificate_names_it_for_the_manager_and_the_services(
    mesh: ManagerHost, tmp_path: Path
) -> None:
    tls = tmp_path / "tls"
    tls.mkdir()
    for name in ("tls.pem", "ca.pem"):
        (tls / name).write_text("(a certificate)")
    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["--manager", "127.0.0.1:7000", "mesh", "bootstrap", "--tls-dir", str(tls)],
        stdout=out,
        stderr=err,
    )
    assert code == 0, err.getvalue()
    bootstrap = json.loads(out.getvalue())
    files = {
        "certificate_file": str(tls / "tls.pem"),
        "private_key_file": str(tls / "tls.pem"),
        "ca_certificate_file": str(tls / "ca.pem"),
        "refresh_interval": "60s",
    }
    assert bootstrap["xds_servers"][0] == {
        "server_uri": "127.0.0.1:7000",
        "channel_creds": [{"type": "tls", "config": files}],
        "server_features": ["xds_v3"],
    }
    assert bootstrap["certificate_providers"] == {
        "pycontainer": {"plugin_name": "file_watcher", "config": files}
    }
    assert bootstrap["node"]["id"] == socket.gethostname()
    # Without the certificate: what to pass.
    code = main(["mesh", "bootstrap", "--tls-dir", str(tmp_path / "none")], stdout=out, stderr=err)
    assert code == 1, err.getvalue()
    assert "no client certificate in" in err.getvalue(), err.getvalue()


def test_the_manager_serves_channelz_and_csds_and_reflection_lists_them(
    mesh: ManagerHost,
) -> None:
    channel = mesh.client.channel
    servers = channelz_pb2_grpc.ChannelzStub(channel).GetServers(
        channelz_pb2.GetServersRequest(), timeout=10
    )
    assert servers.server, servers
    config = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel).FetchClientStatus(
        csds_pb2.ClientStatusRequest(), timeout=10
    )
    assert isinstance(config, csds_pb2.ClientStatusResponse)
    listed = subprocess.run(
        [str(ROOT / ".venv/bin/grpcurl"), "-plaintext", mesh.address, "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert listed.returncode == 0, listed.stderr
    names = listed.stdout.split()
    assert "grpc.channelz.v1.Channelz" in names, names
    assert "envoy.service.status.v3.ClientStatusDiscoveryService" in names, names


def test_a_route_survives_a_manager_restart(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        listen = f"127.0.0.1:{s.getsockname()[1]}"
    state = tmp_path / "state"
    pids: list[int] = []
    host = ManagerHost(state, listen=listen)
    try:
        for name, subset in (("orders-v1", "v1"), ("orders-v2", "v2")):
            response = host.client.run_container(
                manager_pb2.RunContainerRequest(spec=_spec(name, subset))
            )
            pids += [c.pid for c in response.containers]
        wait_until(lambda: _healthy(host, 2), 60, "both backends in the mesh")
        host.client.set_mesh_route(
            manager_pb2.SetMeshRouteRequest(service="orders", weights={"v1": 90, "v2": 10})
        )
        # A new manager on the same state directory: the containers run on
        # and dial it (the same address); the split is in force again.
        host.stop()
        host = ManagerHost(state, listen=listen)
        wait_until(lambda: _healthy(host, 2), 60, "the backends back in the mesh")
        route = host.client.get_mesh_status().services[0].route
        assert dict(route.weights) == {"v1": 90, "v2": 10}
        assert route.source == "route"
        # Cleared is cleared for the next one too.
        host.client.set_mesh_route(manager_pb2.SetMeshRouteRequest(service="orders"))
        host.stop()
        host = ManagerHost(state, listen=listen)
        wait_until(lambda: _healthy(host, 2), 60, "the backends back in the mesh")
        assert not host.client.get_mesh_status().services[0].route.weights
    finally:
        host.close(graceful=True)
        for pid in pids:  # what a failure above left running
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

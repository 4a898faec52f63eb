"""The plaintext health port (ContainerSettings.health_listen, spec healthListen,
``pycontainer run --health-listen``): grpc.health.v1 alone, for probes that
speak no TLS (kubelet's gRPC probe, grpc_health_probe), beside a Management
endpoint that serves mutual TLS and answers the manager and bound roles only.

Real servers and clients throughout: the app's own sync and asyncio servers,
the sidecar and a manager-launched process; grpcio's plaintext channel and the
real grpcurl."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from security_support import issue_files
from support import free_address, start_aio_host, start_container, stop_container, wait_until
from test_examples import _grpcurl

import pycontainer
from pycontainer._tls_env import TLS_DIR_ENV
from pycontainer.agent import EXCLUSIVE_PORT, ListenError, listen_on, serve_in_background
from pycontainer.agent._settings import HEALTH_LISTEN_ENV
from pycontainer.client import CallError, ManagementClient, Transport
from pycontainer.security import MANAGER, CertificateAuthority, container
from pycontainer.testing import ManagerHost, manager_host
from pycontainer.v1 import container_pb2, management_pb2, management_pb2_grpc, manager_pb2, spec_pb2

ROOT = Path(__file__).resolve().parent.parent
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
RUNNING = container_pb2.LIFECYCLE_STATE_RUNNING


@pytest.fixture(autouse=True)
def _no_inherited_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HEALTH_LISTEN_ENV, raising=False)
    monkeypatch.delenv(TLS_DIR_ENV, raising=False)


def _check(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return int(response.status)


def _status_becomes(address: str, status: int, service: str = "") -> bool:
    try:
        return _check(address, service) == status
    except grpc.RpcError:
        return False  # not listening yet


def _only_health_is_there(address: str) -> None:
    """GetInfo (any Management call) is UNIMPLEMENTED; reflection lists health alone."""
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as other:
        management_pb2_grpc.ManagementStub(channel).GetInfo(
            management_pb2.GetInfoRequest(), timeout=5
        )
    assert other.value.code() == grpc.StatusCode.UNIMPLEMENTED
    listed = subprocess.run(
        [_grpcurl(), "-plaintext", address, "list"], capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert "grpc.health.v1.Health" in services
    assert services <= {
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }, services


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.open(tmp_path / "ca")


def test_a_sync_app_with_mutual_tls_serves_health_alone_in_plaintext(
    ca: CertificateAuthority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    issue_files(ca, container("web-1"), tmp_path / "web")
    monkeypatch.setenv(TLS_DIR_ENV, str(tmp_path / "web"))
    health_address = free_address()
    app = pycontainer.Container(
        pycontainer.ContainerSettings(name="web", id="web-1", health_listen=health_address)
    )
    ready = {"ok": True}
    app.add_check("db", lambda: (ready["ok"], "db reachable"))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[app.authorization_interceptor(), app.server_interceptor()],
        options=[EXCLUSIVE_PORT],
    )
    app.add_to_server(server)
    port = listen_on(server, "127.0.0.1:0", tls_dir=str(tmp_path / "web"))
    server.start()
    address = f"127.0.0.1:{port}"
    try:
        # Before start: served, and NOT_SERVING (as on the Management endpoint).
        assert app.health_port == int(health_address.rsplit(":", 1)[1])
        assert _check(health_address) == NOT_SERVING
        app.start()
        wait_until(lambda: _status_becomes(health_address, SERVING), 10, "overall SERVING")
        assert _check(health_address, "liveness") == SERVING
        assert _check(health_address, "readiness") == SERVING
        # The Management endpoint: mutual TLS and roles. No certificate: unreachable.
        with ManagementClient(address) as plain, pytest.raises(CallError) as unreached:
            plain.get_info()
        assert unreached.value.code == grpc.StatusCode.UNAVAILABLE
        # A certificate of another CA (any local process can make one): unreachable too.
        stranger_ca = CertificateAuthority.open(tmp_path / "other-ca")
        forged = issue_files(stranger_ca, MANAGER, tmp_path / "forged")
        with (
            ManagementClient(
                address, transport=Transport(forged.leaf.parent, container("web-1"))
            ) as forger,
            pytest.raises(CallError) as refused,
        ):
            forger.get_info()
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        # Another container of the same CA holds no read role here.
        other = issue_files(ca, container("other-1"), tmp_path / "other")
        with (
            ManagementClient(
                address, transport=Transport(other.leaf.parent, container("web-1"))
            ) as neighbour,
            pytest.raises(CallError) as denied,
        ):
            neighbour.get_info()
        assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
        # No --role to suggest here: a container binds none of its own.
        assert "read it through the manager" in denied.value.details
        assert "--role" not in denied.value.details
        # The manager holds read: GetInfo, which advertises the plaintext health port.
        reader = issue_files(ca, MANAGER, tmp_path / "manager")
        with ManagementClient(
            address, transport=Transport(reader.leaf.parent, container("web-1"))
        ) as manager:
            info = manager.get_info()
        [health_endpoint] = [e for e in info.identity.endpoints if e.name == "health"]
        assert health_endpoint.address == health_address
        assert not health_endpoint.tls
        # The health port: the probe's answer, nothing else.
        _only_health_is_there(health_address)
        checked = subprocess.run(
            [_grpcurl(), "-plaintext", health_address, "grpc.health.v1.Health/Check"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert checked.returncode == 0, checked.stderr
        assert '"status": "SERVING"' in checked.stdout
        # A failing check turns it NOT_SERVING there too.
        ready["ok"] = False
        app.health.run_checks_now()
        assert _check(health_address, "readiness") == NOT_SERVING
        assert _check(health_address) == NOT_SERVING
        assert _check(health_address, "liveness") == SERVING
    finally:
        server.stop(None)
        app.close()
    # close() ends the health port.
    with pytest.raises(grpc.RpcError):
        _check(health_address)


def test_an_asyncio_app_serves_check_watch_and_list_on_the_health_port() -> None:
    health_address = free_address()
    app = pycontainer.Container(
        pycontainer.ContainerSettings(name="aio", health_listen=health_address)
    )
    host = start_aio_host(app)
    try:
        with grpc.insecure_channel(health_address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            watch = stub.Watch(health_pb2.HealthCheckRequest(service="readiness"), timeout=30)
            assert next(watch).status == NOT_SERVING
            start_container(host)
            assert next(watch).status == SERVING
            from pycontainer._reflection import health_list_messages

            list_request, list_response = health_list_messages()
            listing = channel.unary_unary(
                "/grpc.health.v1.Health/List",
                request_serializer=list_request.SerializeToString,
                response_deserializer=list_response.FromString,
            )(list_request(), timeout=5)
            statuses = {name: s.status for name, s in listing.statuses.items()}
            assert statuses[""] == SERVING
            assert statuses["liveness"] == SERVING
            assert statuses["readiness"] == SERVING
            stop_container(host)
            assert next(watch).status == NOT_SERVING
            watch.cancel()
        _only_health_is_there(health_address)
    finally:
        host.stop()


def test_the_environment_sets_it_and_a_port_in_use_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    holder = pycontainer.Container(
        pycontainer.ContainerSettings(name="holder", health_listen="127.0.0.1:0")
    )
    background = serve_in_background(holder)
    try:
        taken = f"127.0.0.1:{holder.health_port}"
        assert _check(taken) == NOT_SERVING
        monkeypatch.setenv(HEALTH_LISTEN_ENV, taken)
        second = pycontainer.Container("second")
        assert second.settings.health_listen == taken
        with pytest.raises(ListenError) as in_use:
            serve_in_background(second)
        assert f"cannot listen on {taken}: the address is in use" in in_use.value.strerror
        second.close()
        # The first one still answers alone.
        assert _check(taken) == NOT_SERVING
    finally:
        background.stop()
        holder.close()


def test_plaintext_health_beyond_loopback_warns(caplog: pytest.LogCaptureFixture) -> None:
    app = pycontainer.Container(
        pycontainer.ContainerSettings(name="exposed", health_listen="0.0.0.0:0")
    )
    with caplog.at_level(logging.WARNING, logger="pycontainer"):
        background = serve_in_background(app)
    try:
        assert _check(f"127.0.0.1:{app.health_port}") == NOT_SERVING
        [warning] = [r.getMessage() for r in caplog.records if "without TLS" in r.getMessage()]
        assert "serving grpc.health.v1 without TLS on 0.0.0.0:0" in warning
        assert "health alone" in warning
    finally:
        background.stop()
        app.close()
    caplog.clear()
    quiet = pycontainer.Container(
        pycontainer.ContainerSettings(name="quiet", health_listen="127.0.0.1:0")
    )
    with caplog.at_level(logging.WARNING, logger="pycontainer"):
        background = serve_in_background(quiet)
    background.stop()
    quiet.close()
    assert not [r for r in caplog.records if "without TLS" in r.getMessage()]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (HEALTH_LISTEN_ENV, TLS_DIR_ENV)}
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_the_sidecar_serves_health_on_its_own_port(tmp_path: Path) -> None:
    health_address = free_address()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pycontainer.cli",
            "run",
            "--name",
            "sleeper",
            "--health-listen",
            health_address,
            "--",
            "sleep",
            "60",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=tmp_path,
    )
    try:
        wait_until(lambda: _status_becomes(health_address, SERVING), 30, "the sidecar SERVING")
        _only_health_is_there(health_address)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode is not None
    assert "Traceback" not in err
    assert f"plaintext health on port {health_address.rsplit(':', 1)[1]}" in err


def test_a_bad_health_listen_flag_says_what_to_write(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pycontainer.cli", "run", "--health-listen", "8081", "--", "true"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode != 0
    assert "'8081' has no host: write 127.0.0.1:8081 (this machine) or 0.0.0.0:8081" in (
        result.stderr
    )


@pytest.fixture
def secure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ManagerHost]:
    monkeypatch.delenv("PYCONTAINER_INSECURE", raising=False)
    with manager_host(tmp_path / "state", insecure=False) as host:
        yield host


@pytest.mark.parametrize("sidecar", [False, True], ids=["embedded", "sidecar"])
def test_a_manager_launched_container_serves_the_specs_health_port(
    secure: ManagerHost, sidecar: bool
) -> None:
    health_address = free_address()
    command = (
        ["sleep", "60"]
        if sidecar
        else [sys.executable, str(ROOT / "tests/apps/connected_app.py"), "--name", "probed"]
    )
    spec = spec_pb2.ContainerSpec(
        name="probed",
        command=command,
        runtime=spec_pb2.RUNTIME_KIND_PROCESS,
        sidecar=sidecar,
        health_listen=health_address,
        env={"PYTHONPATH": str(ROOT)},
    )
    [launched] = secure.client.run_container(manager_pb2.RunContainerRequest(spec=spec)).containers
    request = manager_pb2.GetContainerRequest(container=launched.identity.id)

    def running() -> bool:
        got = secure.client.get_container(request).container
        return got.state == RUNNING and got.connected

    wait_until(running, 30, "the launched container registers over mutual TLS and runs")
    wait_until(lambda: _status_becomes(health_address, SERVING), 10, "its health port SERVING")
    endpoints = secure.client.get_container(request).container.identity.endpoints
    [management] = [e for e in endpoints if e.kind == container_pb2.ENDPOINT_KIND_MANAGEMENT]
    [health] = [e for e in endpoints if e.name == "health"]
    assert management.tls
    assert not health.tls
    assert health.address == health_address
    # Plaintext reaches health alone: the Management endpoint stays mutual TLS.
    with ManagementClient(management.address) as plain, pytest.raises(CallError) as unreached:
        plain.get_info()
    assert unreached.value.code == grpc.StatusCode.UNAVAILABLE
    _only_health_is_there(health_address)
    # The admin's certificate (user/admin) reads it over mutual TLS.
    admin = Path(secure.settings.state_dir) / "admin"
    with ManagementClient(
        management.address, transport=Transport(admin, container(launched.identity.id))
    ) as client:
        assert client.get_info().identity.id == launched.identity.id


def test_the_api_refuses_a_health_listen_it_cannot_serve(secure: ManagerHost) -> None:
    spec = spec_pb2.ContainerSpec(name="bad", command=["sleep", "1"], health_listen="8081")
    with pytest.raises(CallError) as refused:
        secure.client.run_container(manager_pb2.RunContainerRequest(spec=spec))
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "health_listen" in refused.value.details
    assert "'8081' has no host: write 127.0.0.1:8081" in refused.value.details


def test_a_container_gets_its_specs_health_port_never_the_managers_environment(
    secure: ManagerHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The manager runs with a health port in its own environment: no spec asked for one.
    monkeypatch.setenv(HEALTH_LISTEN_ENV, free_address())
    spec = spec_pb2.ContainerSpec(
        name="plain",
        command=[sys.executable, str(ROOT / "tests/apps/connected_app.py"), "--name", "plain"],
        runtime=spec_pb2.RUNTIME_KIND_PROCESS,
    )
    [launched] = secure.client.run_container(manager_pb2.RunContainerRequest(spec=spec)).containers
    request = manager_pb2.GetContainerRequest(container=launched.identity.id)

    def running() -> bool:
        got = secure.client.get_container(request).container
        return got.state == RUNNING and got.connected

    wait_until(running, 30, "the launched container registers and runs")
    # Its endpoints are those it was hosted with: the Management one alone.
    endpoints = secure.client.get_container(request).container.identity.endpoints
    assert [e.name for e in endpoints] == ["management"]


def test_the_sidecar_with_its_health_port_in_use_says_which_in_one_line(tmp_path: Path) -> None:
    """A healthListen (or --health-listen) already taken: `pycontainer run` exits 1
    with one line naming the health port, no traceback, and the program never runs."""
    holder = pycontainer.Container(
        pycontainer.ContainerSettings(name="holder", health_listen="127.0.0.1:0")
    )
    background = serve_in_background(holder)
    marker = tmp_path / "ran"
    try:
        taken = f"127.0.0.1:{holder.health_port}"
        result = subprocess.run(
            [
                *[sys.executable, "-m", "pycontainer.cli", "run", "--name", "late"],
                *["--health-listen", taken, "--", "touch", str(marker)],
            ],
            capture_output=True,
            text=True,
            env=_env(),
            cwd=tmp_path,
            timeout=60,
        )
    finally:
        background.stop()
        holder.close()
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    [line] = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert f"the plaintext health port: cannot listen on {taken}: the address is in use" in line
    assert not marker.exists()

"""Mutual TLS on, as a manager runs by default: the admin certificate it issues
works from the CLI, a client without one is refused, containers it launches
register and are dialled back over mutual TLS, a container cannot register as
another, roles are enforced, and --insecure beyond loopback warns.

The rest of the suite runs its managers --insecure (conftest.py); here
$PYCONTAINER_INSECURE is unset."""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from security_support import issue_files
from support import free_address, wait_until
from test_examples import _grpcurl

import pycontainer
from pycontainer._tls_env import TLS_DIR_ENV
from pycontainer.agent import serve_in_background
from pycontainer.cli import main
from pycontainer.client import CallError, ManagementClient, ManagerClient, Transport
from pycontainer.security import (
    MANAGER,
    CertificateAuthority,
    CredentialFiles,
    channel_credentials,
    container,
    server_name_options,
    user,
)
from pycontainer.testing import ManagerHost, manager_host
from pycontainer.v1 import (
    container_pb2,
    lifecycle_pb2,
    lifecycle_pb2_grpc,
    manager_pb2,
    manager_pb2_grpc,
    spec_pb2,
)

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "pycontainer.cli"]
RUNNING = container_pb2.LIFECYCLE_STATE_RUNNING


@pytest.fixture(autouse=True)
def _secure_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYCONTAINER_INSECURE", raising=False)
    monkeypatch.delenv(TLS_DIR_ENV, raising=False)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYCONTAINER_INSECURE", TLS_DIR_ENV)}
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[ManagerHost]:
    with manager_host(
        tmp_path / "state", insecure=False, role_bindings={"user/viewer": "read"}
    ) as host:
        yield host


def _ca(host: ManagerHost) -> CertificateAuthority:
    return CertificateAuthority.open(host.settings.state_dir)


def _client(host: ManagerHost, files: CredentialFiles) -> ManagerClient:
    return ManagerClient(host.address, transport=Transport(files.leaf.parent, MANAGER))


def test_the_cli_with_the_admin_certificate_works_and_without_one_is_told_what_to_pass(
    secure: ManagerHost, tmp_path: Path
) -> None:
    admin = Path(secure.settings.state_dir) / "admin"
    assert (admin / "tls.pem").stat().st_mode & 0o777 == 0o600
    ok = subprocess.run(
        [*CLI, "--manager", secure.address, "--cert-dir", str(admin), "ps", "-a"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    # The environment variable finds it too.
    by_env = subprocess.run(
        [*CLI, "--manager", secure.address, "ps", "-a"],
        capture_output=True,
        text=True,
        env={**_env(), TLS_DIR_ENV: str(admin)},
        cwd=tmp_path,
        timeout=60,
    )
    assert by_env.returncode == 0, by_env.stderr
    # From tmp_path (the manager's state directory is ./state), as typed.
    typed = subprocess.run(
        [*CLI, "--manager", secure.address, "ps", "-a"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=60,
    )
    assert typed.returncode == 0, typed.stderr
    # No certificate where the CLI looks (no state/admin there): one line.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    missing = subprocess.run(
        [*CLI, "--manager", secure.address, "ps"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=elsewhere,
        timeout=60,
    )
    assert missing.returncode == 1
    [line] = missing.stderr.strip().splitlines()
    assert "no client certificate in state/admin" in line, line
    assert "--cert-dir" in line
    # Plaintext at a mutual-TLS manager: unreachable, and told what to pass.
    plain = subprocess.run(
        [*CLI, "--manager", secure.address, "--insecure", "ps"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=60,
    )
    assert plain.returncode == 2
    [line] = plain.stderr.strip().splitlines()
    assert "cannot reach the manager" in line, line
    assert "--cert-dir" in line


def test_a_client_without_a_certificate_of_the_ca_is_refused(
    secure: ManagerHost, tmp_path: Path
) -> None:
    request = manager_pb2.ListContainersRequest()
    with grpc.insecure_channel(secure.address) as channel, pytest.raises(grpc.RpcError) as plain:
        manager_pb2_grpc.ManagerStub(channel).ListContainers(request, timeout=10)
    assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
    # TLS that trusts the manager but shows no client certificate.
    trust = (Path(secure.settings.state_dir) / "ca.pem").read_bytes()
    no_cert = grpc.ssl_channel_credentials(root_certificates=trust)
    with (
        grpc.secure_channel(secure.address, no_cert, server_name_options(MANAGER)) as channel,
        pytest.raises(grpc.RpcError) as anonymous,
    ):
        manager_pb2_grpc.ManagerStub(channel).ListContainers(request, timeout=10)
    assert anonymous.value.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNAUTHENTICATED,
    )
    # A certificate naming the admin, from another CA.
    other = CertificateAuthority.open(tmp_path / "other-ca")
    forged = issue_files(other, user("admin"), tmp_path / "forged")
    with pytest.raises(CallError) as refused, _client(secure, forged) as client:
        client.list_containers(request)
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE


def test_an_expired_client_certificate_is_named_as_expired_with_what_to_do(
    secure: ManagerHost, tmp_path: Path
) -> None:
    """The manager ends the handshake of an expired certificate ("Socket closed"):
    the CLI says that the certificate expired, when, and how to get a new one."""
    viewer = issue_files(
        _ca(secure), user("viewer"), tmp_path / "viewer", ttl=datetime.timedelta(seconds=1)
    )
    end = viewer.read()[0].certificate.not_valid_after_utc
    wait_until(lambda: datetime.datetime.now(datetime.UTC) > end, 10, "the certificate to expire")
    err = io.StringIO()
    code = main(
        ["--manager", secure.address, "--cert-dir", str(viewer.leaf.parent), "ps"],
        stdout=io.StringIO(),
        stderr=err,
    )
    assert code == 2, err.getvalue()
    [line] = err.getvalue().splitlines()
    assert f"the client certificate in {viewer.leaf.parent} expired at " in line, line
    assert f"certificate create user/viewer --out {viewer.leaf.parent} --force" in line


def test_an_operator_bound_to_read_may_list_but_not_stop(
    secure: ManagerHost, tmp_path: Path
) -> None:
    viewer = issue_files(_ca(secure), user("viewer"), tmp_path / "viewer")
    with _client(secure, viewer) as client:
        client.list_containers()
        with pytest.raises(CallError) as refused:
            client.stop_container(manager_pb2.StopContainerRequest(container="anything"))
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "operate" in refused.value.details
    assert "user/viewer" in refused.value.details


def test_a_call_refused_for_its_role_is_in_the_audit_trail(
    secure: ManagerHost, tmp_path: Path
) -> None:
    viewer = issue_files(_ca(secure), user("viewer"), tmp_path / "viewer")
    with _client(secure, viewer) as client:
        with pytest.raises(CallError) as refused:
            client.stop_container(manager_pb2.StopContainerRequest(container="web"))
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        # A refused read is no audit record; only what would have changed something.
        client.list_containers()
    actor = user("viewer").uri
    events = [
        e
        for e in secure.manager.events.history()
        if e.type == manager_pb2.EVENT_TYPE_REQUESTED and e.actor == actor
    ]
    assert len(events) == 1, [e.message for e in events]
    assert events[0].message.startswith(f"StopContainer refused for {actor}: "), events[0].message
    assert "it needs the operate role" in events[0].message, events[0].message


def test_a_container_cannot_register_as_another(secure: ManagerHost, tmp_path: Path) -> None:
    files = issue_files(_ca(secure), container("honest-1"), tmp_path / "honest")
    credentials = channel_credentials(files)
    register = lifecycle_pb2.ConnectRequest(
        register=lifecycle_pb2.Registration(
            identity=container_pb2.ContainerIdentity(id="victim-1", name="victim")
        )
    )
    with grpc.secure_channel(secure.address, credentials, server_name_options(MANAGER)) as channel:
        call = lifecycle_pb2_grpc.LifecycleStub(channel).Connect(iter([register]), timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            list(call)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "container/victim-1" in (refused.value.details() or "")
    # And the manager never heard of the victim.
    with pytest.raises(CallError) as unknown:
        secure.client.get_container(manager_pb2.GetContainerRequest(container="victim-1"))
    assert unknown.value.code == grpc.StatusCode.NOT_FOUND


def test_a_launched_container_registers_and_is_dialled_back_over_mutual_tls(
    secure: ManagerHost,
) -> None:
    spec = spec_pb2.ContainerSpec(
        name="worker",
        command=[sys.executable, str(ROOT / "tests/apps/connected_app.py"), "--name", "worker"],
        runtime=spec_pb2.RUNTIME_KIND_PROCESS,
    )
    [launched] = secure.client.run_container(manager_pb2.RunContainerRequest(spec=spec)).containers
    request = manager_pb2.GetContainerRequest(container=launched.identity.id)

    def running() -> bool:
        got = secure.client.get_container(request).container
        return got.state == RUNNING and got.connected

    wait_until(running, 30, "the launched container registers over mutual TLS and runs")
    got = secure.client.get_container(request).container
    [endpoint] = [
        e for e in got.identity.endpoints if e.kind == container_pb2.ENDPOINT_KIND_MANAGEMENT
    ]
    assert endpoint.tls
    tls_dir = Path(secure.settings.state_dir) / "tls" / "containers" / launched.identity.id
    assert (tls_dir / "tls.pem").stat().st_mode & 0o777 == 0o600
    # Its Management endpoint speaks mutual TLS only...
    with ManagementClient(endpoint.address) as plain, pytest.raises(CallError) as refused:
        plain.get_info()
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    # ...and the manager reaches it with its own certificate (the metrics proxy).
    stream = secure.client.watch_metrics(
        manager_pb2.ManagerWatchMetricsRequest(containers=[launched.identity.id]),
        timeout=datetime.timedelta(seconds=20),
    )
    first = next(stream)
    stream.close()
    assert first.snapshot.container_id == launched.identity.id


def test_logs_of_a_container_are_proxied_over_mutual_tls(
    secure: ManagerHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A container the manager did not launch but whose certificate its CA issued.
    issue_files(_ca(secure), container("joined-1"), tmp_path / "joined")
    monkeypatch.setenv(TLS_DIR_ENV, str(tmp_path / "joined"))
    app = pycontainer.Container(pycontainer.ContainerSettings(name="joined", id="joined-1"))
    server = serve_in_background(app)
    try:
        app.connect(secure.address)
        request = manager_pb2.GetContainerRequest(container="joined-1")

        def connected() -> bool:
            try:
                return secure.client.get_container(request).container.connected
            except CallError:
                return False

        wait_until(connected, 20, "the joined container registers over mutual TLS")
        [endpoint] = secure.client.get_container(request).container.identity.endpoints
        assert endpoint.tls
        logging.getLogger("joined.app").warning("hello over mutual TLS")
        response = secure.client.stream_logs(
            manager_pb2.ManagerStreamLogsRequest(
                containers=["joined-1"], filter=manager_pb2.StreamLogsFilter(contains="hello")
            ),
            timeout=datetime.timedelta(seconds=20),
        )
        bodies = [entry.message for part in response for entry in part.entries]
        assert "hello over mutual TLS" in bodies
    finally:
        server.stop()
        app.close()


def test_insecure_beyond_loopback_warns(tmp_path: Path) -> None:
    port = free_address().rsplit(":", 1)[1]
    proc = subprocess.Popen(
        [*CLI, "manager", "--insecure", "--listen", f"0.0.0.0:{port}", "--state-dir", "state"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("manager serving on")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert f"serving without TLS on 0.0.0.0:{port}" in err
    assert "drop --insecure" in err
    assert not (tmp_path / "state" / "ca-key.pem").exists()


def test_up_serves_mutual_tls_and_the_readme_cli_lines_work_as_typed(tmp_path: Path) -> None:
    spec = tmp_path / "one.yaml"
    spec.write_text(
        "containers:\n"
        "  - name: worker\n"
        f"    command: [python, {ROOT / 'tests/apps/connected_app.py'}, --name, worker]\n"
    )
    address = free_address()
    up = subprocess.Popen(
        [*CLI, "up", "-f", str(spec), "--headless", "--listen", address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=tmp_path,
    )
    try:
        assert up.stdout is not None
        banner = up.stdout.readline()
        assert "--insecure" not in banner, banner
        assert "--cert-dir" not in banner
        env = {**_env(), "PYCONTAINER_MANAGER": address}

        def listed() -> bool:
            ps = subprocess.run(
                [*CLI, "ps"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60
            )
            assert ps.returncode == 0, ps.stderr
            return "RUNNING" in ps.stdout

        wait_until(listed, 40, "`pycontainer ps` from the directory of `up` lists the worker")
    finally:
        up.terminate()
        up.communicate(timeout=60)


def test_runc_mounts_the_certificate_read_only_where_the_environment_says(tmp_path: Path) -> None:
    from pycontainer.manager import Launch
    from pycontainer.manager.runc import build_config

    spec = spec_pb2.ContainerSpec(name="boxed", command=["python", "app.py"])
    tls_dir = str(tmp_path / "tls" / "containers" / "boxed-1")
    config = build_config(Launch("boxed-1", spec, "127.0.0.1:1", tls_dir=tls_dir))
    assert f"{TLS_DIR_ENV}={tls_dir}" in config["process"]["env"]
    [mount] = [m for m in config["mounts"] if m["destination"] == tls_dir]
    assert mount["source"] == tls_dir
    assert "ro" in mount["options"]
    # Without one, none (not even the manager's own environment's).
    plain = build_config(Launch("boxed-1", spec, "127.0.0.1:1"))
    assert not any(e.startswith(f"{TLS_DIR_ENV}=") for e in plain["process"]["env"])


def test_an_external_ca_issues_the_certificates(tmp_path: Path) -> None:
    external = CertificateAuthority.open(tmp_path / "external")
    with manager_host(
        tmp_path / "state",
        insecure=False,
        ca_cert=str(tmp_path / "external" / "ca.pem"),
        ca_key=str(tmp_path / "external" / "ca-key.pem"),
    ) as host:
        host.client.list_containers()  # with the admin certificate it issued
        admin = CredentialFiles.in_directory(tmp_path / "state" / "admin")
        leaf, _ = admin.read()
        assert external.issued(leaf.certificate_chain_pem)
        assert not (tmp_path / "state" / "ca-key.pem").exists()


def test_certificates_are_renewed_while_serving_and_new_connections_use_them(
    tmp_path: Path,
) -> None:
    with manager_host(
        tmp_path / "state",
        insecure=False,
        certificate_ttl=datetime.timedelta(minutes=1),
        certificate_renewal_check=datetime.timedelta(milliseconds=200),
    ) as host:
        manager_leaf = tmp_path / "state" / "tls" / "manager" / "tls.pem"
        first = manager_leaf.read_bytes()
        wait_until(lambda: manager_leaf.read_bytes() != first, 10, "the manager's leaf renewed")
        # A new connection after the rotation: the server's reloaded leaf, the
        # client's renewed admin one.
        with ManagerClient(
            host.address, transport=Transport(tmp_path / "state" / "admin", MANAGER)
        ) as client:
            client.list_containers()


def test_health_alone_is_served_in_plaintext_on_its_own_port_when_asked(tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health_address = free_address()
    with (
        manager_host(tmp_path / "state", insecure=False, health_listen=health_address),
        grpc.insecure_channel(health_address) as channel,
    ):
        # kubelet's probe: plaintext, one Check.
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        # Nothing else is there.
        with pytest.raises(grpc.RpcError) as other:
            manager_pb2_grpc.ManagerStub(channel).ListContainers(
                manager_pb2.ListContainersRequest(), timeout=5
            )
        assert other.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # grpcurl needs no proto files there: reflection lists health (and itself) alone.
        listed = subprocess.run(
            [_grpcurl(), "-plaintext", health_address, "list"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        assert set(listed.stdout.split()) == {
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        }
        checked = subprocess.run(
            [_grpcurl(), "-plaintext", health_address, "grpc.health.v1.Health/Check"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert checked.returncode == 0, checked.stderr
        assert '"status": "SERVING"' in checked.stdout


def test_the_managers_plaintext_health_beyond_loopback_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_address().rsplit(":", 1)[1]
    with (
        caplog.at_level(logging.WARNING, logger="pycontainer.manager"),
        manager_host(tmp_path / "state", insecure=False, health_listen=f"0.0.0.0:{port}"),
    ):
        warnings = [
            r.getMessage() for r in caplog.records if "grpc.health.v1 without TLS" in r.getMessage()
        ]
        assert warnings == [
            f"serving grpc.health.v1 without TLS on 0.0.0.0:{port}: anyone who can reach it "
            "learns whether the manager serves (health alone, no other method); "
            "listen on 127.0.0.1 unless a prober elsewhere (kubelet) needs it"
        ], warnings


def test_a_runc_container_reads_its_certificate_from_the_read_only_mount(tmp_path: Path) -> None:
    from support import require_tool

    from pycontainer.manager import RuncRuntime

    require_tool("runc")
    if os.geteuid() != 0:
        pytest.skip("runc needs root")
    runtime = RuncRuntime(tmp_path / "runc")
    with manager_host(
        tmp_path / "state", insecure=False, runtimes={spec_pb2.RUNTIME_KIND_RUNC: runtime}
    ) as host:
        spec = spec_pb2.ContainerSpec(
            name="oci",
            command=["python", "tests/apps/connected_app.py", "--name", "oci"],
            runtime=spec_pb2.RUNTIME_KIND_RUNC,
            working_dir=str(ROOT),
        )
        [launched] = host.client.run_container(
            manager_pb2.RunContainerRequest(spec=spec)
        ).containers
        request = manager_pb2.GetContainerRequest(container=launched.identity.id)

        def running() -> bool:
            got = host.client.get_container(request).container
            return got.state == RUNNING and got.connected

        wait_until(running, 30, "the runc container registers over mutual TLS")
        [endpoint] = host.client.get_container(request).container.identity.endpoints
        assert endpoint.tls
        run = runtime.container(launched.identity.id)
        assert run is not None
        config = json.loads((run.bundle / "config.json").read_text())
        tls_dir = str(tmp_path / "state" / "tls" / "containers" / launched.identity.id)
        assert any(m["destination"] == tls_dir and "ro" in m["options"] for m in config["mounts"])


def test_a_containers_management_api_answers_the_manager_and_bound_roles_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = CertificateAuthority.open(tmp_path / "ca")
    issue_files(ca, container("guarded-1"), tmp_path / "guarded")
    monkeypatch.setenv(TLS_DIR_ENV, str(tmp_path / "guarded"))
    app = pycontainer.Container(pycontainer.ContainerSettings(name="guarded", id="guarded-1"))
    server = serve_in_background(app)
    address = f"127.0.0.1:{server.port}"
    target = container("guarded-1")
    try:

        def management(who: str) -> ManagementClient:
            files = issue_files(ca, user(who) if who != "manager" else MANAGER, tmp_path / who)
            return ManagementClient(address, transport=Transport(files.leaf.parent, target))

        with management("manager") as manager:
            assert manager.get_info().identity.id == "guarded-1"
        with management("admin") as admin:
            admin.get_config()
        with management("stranger") as stranger, pytest.raises(CallError) as refused:
            stranger.get_info()
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert "read" in refused.value.details
        with ManagementClient(address) as plain, pytest.raises(CallError) as unreached:
            plain.get_info()
        assert unreached.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()
        app.close()


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--ca-cert", "ca.pem"], "--ca-cert and --ca-key go together"),
        (["--role", "user/alice"], "write IDENTITY=ROLE"),
        (["--role", "user/alice=superuser"], "unknown role 'superuser'"),
        (["--role", "somebody=read"], "is not one of container/<ID>, user/<NAME> or manager"),
        (["--ca-cert", "missing.pem", "--ca-key", "missing-key.pem"], "does not exist"),
    ],
)
def test_manager_tls_flags_that_cannot_work_are_one_line(
    tmp_path: Path, flags: list[str], said: str
) -> None:
    done = subprocess.run(
        [*CLI, "manager", "--listen", "127.0.0.1:0", "--state-dir", "state", *flags],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert said in line, line


def test_a_container_without_a_certificate_is_told_the_manager_serves_mutual_tls(
    secure: ManagerHost, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(TLS_DIR_ENV, raising=False)
    app = pycontainer.Container(pycontainer.ContainerSettings(name="stranger"))
    try:
        with caplog.at_level(logging.WARNING, logger="pycontainer"):
            app.connect(secure.address)
            wait_until(
                lambda: any("serves mutual TLS" in r.getMessage() for r in caplog.records),
                20,
                "the hint that the manager serves mutual TLS",
            )
        [hint] = [r.getMessage() for r in caplog.records if "serves mutual TLS" in r.getMessage()]
        assert TLS_DIR_ENV in hint
        assert "--insecure" in hint
    finally:
        app.close()


def test_every_mutating_call_is_an_audit_event_naming_its_caller(
    secure: ManagerHost, tmp_path: Path
) -> None:
    # Refused or not, a change asked for is on the record with who asked.
    with pytest.raises(CallError):
        secure.client.pause_container(manager_pb2.PauseContainerRequest(container="no-such"))
    with pytest.raises(CallError):
        secure.client.stop_container(manager_pb2.StopContainerRequest(container="no-such"))
    secure.client.list_containers()  # a read is not audited
    audited = [
        e for e in secure.manager.events.history() if e.type == manager_pb2.EVENT_TYPE_REQUESTED
    ]
    assert [e.message.split(" ", 1)[0] for e in audited] == ["PauseContainer", "StopContainer"]
    admin = str(user("admin"))
    assert {e.actor for e in audited} == {admin}
    assert all(e.container_name == "no-such" and admin in e.message for e in audited)

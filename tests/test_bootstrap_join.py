"""Bootstrap tokens: a container the manager did not launch joins with a token
(kubelet's TLS bootstrap, in small), against a real manager serving mutual TLS.

A token is single-use or bounded, expires and can be revoked; the joiner checks
the join server against the CA pin before it sends the token; the certificate
it gets names only the id it asked for (and the token allowed).

The rest of the suite runs its managers --insecure (conftest.py); here
$PYCONTAINER_INSECURE is unset."""

from __future__ import annotations

import datetime
import io
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support import wait_until

import pycontainer
from pycontainer._tls_env import BOOTSTRAP_TOKEN_ENV, CA_PIN_ENV, JOIN_ENV, TLS_DIR_ENV
from pycontainer.agent import JoinError, serve_in_background
from pycontainer.cli import main
from pycontainer.client import CallError
from pycontainer.security import (
    MANAGER,
    CredentialFiles,
    certificate_request,
    channel_credentials,
    container,
    server_name_options,
)
from pycontainer.testing import ManagerHost, manager_host
from pycontainer.units import duration_to_proto
from pycontainer.v1 import (
    bootstrap_pb2,
    bootstrap_pb2_grpc,
    container_pb2,
    lifecycle_pb2,
    lifecycle_pb2_grpc,
    manager_pb2,
    spec_pb2,
)

ROOT = Path(__file__).resolve().parent.parent
RUNNING = container_pb2.LIFECYCLE_STATE_RUNNING
_JOIN_ENVS = (BOOTSTRAP_TOKEN_ENV, JOIN_ENV, CA_PIN_ENV, TLS_DIR_ENV, "PYCONTAINER_INSECURE")


@pytest.fixture(autouse=True)
def _secure_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _JOIN_ENVS:
        # Set first, so that whatever a join sets ($PYCONTAINER_TLS_DIR) is undone after.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[ManagerHost]:
    with manager_host(tmp_path / "state", insecure=False) as host:
        yield host


def _token(
    host: ManagerHost, container_id: str = "", uses: int = 1, ttl: float = 600
) -> manager_pb2.CreateBootstrapTokenResponse:
    return host.client.create_bootstrap_token(
        manager_pb2.CreateBootstrapTokenRequest(
            container_id=container_id,
            uses=uses,
            ttl=duration_to_proto(datetime.timedelta(seconds=ttl)),
        )
    )


def _join(
    made: manager_pb2.CreateBootstrapTokenResponse,
    container_id: str,
    tls_dir: Path,
    *,
    pin: str | None = None,
    address: str | None = None,
) -> CredentialFiles:
    """Join in this process, as a container's start does (TLS directory given)."""
    os.environ[TLS_DIR_ENV] = str(tls_dir)
    settings = pycontainer.ContainerSettings(
        name="joiner",
        id=container_id,
        bootstrap_token=made.token,
        join_address=made.join_address if address is None else address,
        ca_pin=pin or made.ca_pin,
    )
    try:
        pycontainer.Container(settings).join_if_bootstrapping()
    finally:
        del os.environ[TLS_DIR_ENV]
    return CredentialFiles.in_directory(tls_dir)


def _uses_left(host: ManagerHost, token_id: str) -> int | None:
    for token in host.client.list_bootstrap_tokens().tokens:
        if token.token_id == token_id:
            return token.uses_left
    return None


def _app_env(
    made: manager_pb2.CreateBootstrapTokenResponse, tls_dir: Path, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _JOIN_ENVS}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            BOOTSTRAP_TOKEN_ENV: made.token,
            JOIN_ENV: made.join_address,
            CA_PIN_ENV: made.ca_pin,
            TLS_DIR_ENV: str(tls_dir),
            "PYCONTAINER_MANAGER": made.manager_address,
        }
    )
    env.update(extra)
    return env


def _connected_app(env: dict[str, str], name: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tests/apps/connected_app.py"), "--name", name],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_container_the_manager_did_not_launch_joins_with_a_token_and_registers(
    secure: ManagerHost, tmp_path: Path
) -> None:
    made = _token(secure, "joiner-1")
    assert made.token.startswith(f"pct_{made.token_id}.")
    assert made.join_address
    assert made.join_address != secure.address
    assert made.ca_pin.startswith("sha256:")
    assert len(made.ca_pin) == len("sha256:") + 64
    assert made.manager_address == secure.address
    tls_dir = tmp_path / "joiner-tls"
    app = _connected_app(_app_env(made, tls_dir, PYCONTAINER_CONTAINER_ID="joiner-1"), "joiner")
    request = manager_pb2.GetContainerRequest(container="joiner-1")
    try:

        def running() -> bool:
            assert app.poll() is None, app.communicate()[1]
            try:
                got = secure.client.get_container(request).container
            except CallError:
                return False
            return got.state == RUNNING and got.connected

        wait_until(running, 40, "the joined container registers over mutual TLS and runs")
        listed = [c.identity.id for c in secure.client.list_containers().containers]
        assert "joiner-1" in listed
        [endpoint] = secure.client.get_container(request).container.identity.endpoints
        assert endpoint.tls  # its Management endpoint serves with the joined certificate
        assert (tls_dir / "tls.pem").stat().st_mode & 0o777 == 0o600
        leaf, trust = CredentialFiles.in_directory(tls_dir).read()
        assert leaf.identity == container("joiner-1")
        assert trust == (Path(secure.settings.state_dir) / "ca.pem").read_bytes()
        assert _uses_left(secure, made.token_id) == 0
        # The audit trail names the token's id and the identity, never the token.
        joins = [
            e
            for e in secure.manager.events.history()
            if e.type == manager_pb2.EVENT_TYPE_REQUESTED and e.message.startswith("Join ")
        ]
        assert [e.container_id for e in joins] == ["joiner-1"]
        assert made.token_id in joins[0].message
        assert str(container("joiner-1")) in joins[0].message
        secret = made.token.partition(".")[2]
        assert not any(secret in str(e) for e in secure.manager.events.history())
        # The manager commands it like any other: a stop ends the process.
        secure.client.stop_container(manager_pb2.StopContainerRequest(container="joiner-1"))
        assert app.wait(30) == 0
    finally:
        if app.poll() is None:
            app.kill()
        app.communicate(timeout=30)


def test_a_joined_container_stopped_and_started_again_is_a_new_run_the_manager_starts(
    secure: ManagerHost, tmp_path: Path
) -> None:
    made = _token(secure, "again-1")
    tls_dir = tmp_path / "again-tls"
    env = _app_env(made, tls_dir, PYCONTAINER_CONTAINER_ID="again-1")
    request = manager_pb2.GetContainerRequest(container="again-1")

    def running(app: subprocess.Popen[str]) -> bool:
        assert app.poll() is None, app.communicate()[1]
        try:
            got = secure.client.get_container(request).container
        except CallError:
            return False
        return got.state == RUNNING and got.connected

    first = _connected_app(env, "again")
    try:
        wait_until(lambda: running(first), 40, "the joined container runs")
        # restart: the manager has no process of it to start again, and says what to do.
        with pytest.raises(CallError) as refused:
            secure.client.restart_container(
                manager_pb2.RestartContainerRequest(container="again-1")
            )
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "pycontainer stop again-1" in refused.value.details
        assert "start its program again" in refused.value.details
        secure.client.stop_container(manager_pb2.StopContainerRequest(container="again-1"))
        assert first.wait(30) == 0
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate(timeout=30)
    stopped = secure.client.get_container(request).container
    assert stopped.state == container_pb2.LIFECYCLE_STATE_STOPPED
    # Its program started again, with its saved certificate (the token is used up).
    assert _uses_left(secure, made.token_id) == 0
    second = _connected_app(env, "again")
    try:
        wait_until(lambda: running(second), 40, "the new run is started by the manager")
        again = secure.client.get_container(request).container
        assert again.restarts == 1
        news = [
            e.message
            for e in secure.manager.events.history()
            if e.container_id == "again-1" and e.type == manager_pb2.EVENT_TYPE_RESTARTED
        ]
        assert news == ["a new run: registered in CREATED after it was STOPPED (restart 1)"], news
        secure.client.stop_container(manager_pb2.StopContainerRequest(container="again-1"))
        assert second.wait(30) == 0
    finally:
        if second.poll() is None:
            second.kill()
        second.communicate(timeout=30)
    # Deleted by the operator, it comes back as a new container (no restart counted).
    secure.client.delete_container(manager_pb2.DeleteContainerRequest(container="again-1"))
    third = _connected_app(env, "again")
    try:
        wait_until(lambda: running(third), 40, "a deleted container registers as new and runs")
        assert secure.client.get_container(request).container.restarts == 0
        secure.client.stop_container(manager_pb2.StopContainerRequest(container="again-1"))
        assert third.wait(30) == 0
    finally:
        if third.poll() is None:
            third.kill()
        third.communicate(timeout=30)


def test_a_printed_join_address_stays_true_after_the_manager_restarts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    with manager_host(state, insecure=False) as host:
        made = _token(host, "later-1")
    # The same state directory: the join listener binds the port it chose first.
    with manager_host(state, insecure=False) as host:
        assert host.manager.bootstrap.join_address == made.join_address
        files = _join(made, "later-1", tmp_path / "later")
        assert files.read()[0].identity == container("later-1")
    # Its port taken meanwhile: a new one, and a warning naming both.
    port = int(made.join_address.rpartition(":")[2])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with manager_host(state, insecure=False) as host:
            moved = host.manager.bootstrap.join_address
            assert moved
            assert moved != made.join_address
            warned = [r.getMessage() for r in caplog.records if "join address" in r.getMessage()]
            assert any(made.join_address in w and moved in w for w in warned), warned
            assert _token(host).join_address == moved
    # And the new port is the one kept from then on; an explicit --join-listen wins
    # (and is not kept: the default stays what it was).
    with manager_host(state, insecure=False) as host:
        assert host.manager.bootstrap.join_address == moved
    with manager_host(state, insecure=False, join_listen="127.0.0.1:0") as host:
        assert host.manager.bootstrap.join_address not in ("", moved)
    with manager_host(state, insecure=False) as host:
        assert host.manager.bootstrap.join_address == moved


def test_a_single_use_token_joins_once_and_the_second_is_told_it_is_used_up(
    secure: ManagerHost, tmp_path: Path
) -> None:
    made = _token(secure)
    files = _join(made, "first-1", tmp_path / "first")
    assert files.read()[0].identity == container("first-1")
    with pytest.raises(JoinError) as second:
        _join(made, "second-1", tmp_path / "second")
    message = str(second.value)
    assert "UNAUTHENTICATED" in message
    assert f"bootstrap token {made.token_id} is used up" in message
    assert "pycontainer token create" in message
    assert made.token not in message
    assert not (tmp_path / "second" / "tls.pem").exists()
    # The refused join's event names the container as other events do: NAME/ID8.
    [refusal] = [
        e
        for e in secure.manager.events.history()
        if e.type == manager_pb2.EVENT_TYPE_REQUESTED and "refused" in e.message
    ]
    assert (refusal.container_id, refusal.container_name) == ("second-1", "joiner")
    out = io.StringIO()
    assert main(["events"], client=secure.client, stdout=out) == 0
    [line] = [text for text in out.getvalue().splitlines() if "refused" in text]
    assert "joiner/second-1" in line


def test_an_expired_or_revoked_token_is_refused_and_says_which(
    secure: ManagerHost, tmp_path: Path
) -> None:
    short = _token(secure, ttl=1)
    expires = short.expire_time.ToDatetime(tzinfo=datetime.UTC)
    while datetime.datetime.now(datetime.UTC) <= expires:  # the real clock passing the expiry
        time.sleep(0.05)
    with pytest.raises(JoinError) as expired:
        _join(short, "late-1", tmp_path / "late")
    assert "UNAUTHENTICATED" in str(expired.value)
    assert f"bootstrap token {short.token_id} expired at" in str(expired.value)

    revoked = _token(secure, uses=5)
    out, err = io.StringIO(), io.StringIO()
    assert main(["token", "revoke", revoked.token_id], client=secure.client, stdout=out) == 0
    assert f"bootstrap token {revoked.token_id} revoked" in out.getvalue()
    with pytest.raises(JoinError) as refused:
        _join(revoked, "late-2", tmp_path / "late2")
    assert f"bootstrap token {revoked.token_id} is unknown (or was revoked)" in str(refused.value)
    # Revoking it again: NOT_FOUND, saying where to look.
    code = main(["token", "revoke", revoked.token_id], client=secure.client, stdout=out, stderr=err)
    assert code == 1
    assert "NOT_FOUND" in err.getvalue()
    assert "token list" in err.getvalue()


def test_a_wrong_ca_pin_makes_the_container_refuse_before_sending_the_token(
    secure: ManagerHost, tmp_path: Path
) -> None:
    made = _token(secure, "pinned-1")
    wrong = "sha256:" + "0" * 64
    app = _connected_app(
        _app_env(
            made, tmp_path / "pinned", PYCONTAINER_CONTAINER_ID="pinned-1", **{CA_PIN_ENV: wrong}
        ),
        "pinned",
    )
    _, err = app.communicate(timeout=60)
    assert app.returncode == 1
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert f"refusing to join at {made.join_address}" in line
    assert wrong in line
    assert CA_PIN_ENV in line
    assert made.token not in err
    # The token was never sent: its use is still there.
    assert _uses_left(secure, made.token_id) == 1
    assert not (tmp_path / "pinned" / "tls.pem").exists()
    # A malformed pin is one line too.
    with pytest.raises(JoinError, match="is not sha256:<64 hex digits>"):
        _join(made, "pinned-1", tmp_path / "pinned", pin="abc")


def test_several_join_addresses_are_tried_in_turn_until_one_answers(
    secure: ManagerHost, tmp_path: Path
) -> None:
    """High availability's list (every manager's join address): those where
    nothing listens are passed over; a malformed one is refused before any
    is tried, and none answering names each; no use is spent until it joins."""
    made = _token(secure, "listed-1")
    with socket.socket() as bound:  # a port nobody listens on, nor can take meanwhile
        bound.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{bound.getsockname()[1]}"
        with pytest.raises(JoinError, match=r"'127\.0\.0\.1': write HOST:PORT \(several"):
            _join(made, "listed-1", tmp_path / "t", address=f"{nobody},127.0.0.1")
        with pytest.raises(JoinError) as none:
            _join(made, "listed-1", tmp_path / "t", address=f"{nobody}, {nobody}")
        assert str(none.value).count(f"cannot reach the join server at {nobody}") == 2
        assert _uses_left(secure, made.token_id) == 1
        files = _join(made, "listed-1", tmp_path / "t", address=f"{nobody},{made.join_address}")
    assert files.read()[0].identity.uri.endswith("/container/listed-1")
    assert _uses_left(secure, made.token_id) == 0


def test_a_joined_container_cannot_register_as_another_nor_join_as_one_its_token_is_not_for(
    secure: ManagerHost, tmp_path: Path
) -> None:
    made = _token(secure, uses=2)
    files = _join(made, "honest-1", tmp_path / "honest")
    register = lifecycle_pb2.ConnectRequest(
        register=lifecycle_pb2.Registration(
            identity=container_pb2.ContainerIdentity(id="victim-1", name="victim")
        )
    )
    credentials = channel_credentials(files)
    with grpc.secure_channel(secure.address, credentials, server_name_options(MANAGER)) as channel:
        call = lifecycle_pb2_grpc.LifecycleStub(channel).Connect(iter([register]), timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            list(call)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "container/victim-1" in (refused.value.details() or "")

    # A token made for one id buys no certificate for another, and spends no use.
    only = _token(secure, "only-1")
    with pytest.raises(JoinError) as other:
        _join(only, "intruder-1", tmp_path / "intruder")
    assert "PERMISSION_DENIED" in str(other.value)
    assert "is for spiffe://pycontainer.local/container/only-1" in str(other.value)
    assert _uses_left(secure, only.token_id) == 1


def test_a_joiner_naming_itself_cannot_take_a_known_id_or_one_bound_to_a_role(
    tmp_path: Path,
) -> None:
    with manager_host(
        tmp_path / "state", insecure=False, role_bindings={"container/boss": "admin"}
    ) as host:
        # A container the manager knows (here: one that ran, launched by it).
        known = (
            host.client.run_container(
                manager_pb2.RunContainerRequest(
                    spec=spec_pb2.ContainerSpec(name="web", command=["true"])
                )
            )
            .containers[0]
            .identity.id
        )
        made = _token(host, uses=5)  # lets the joiner name itself
        refusals = (
            (known, "a container this manager knows has that id"),
            ("boss", "bound to the admin role"),
        )
        for taken, why in refusals:
            with pytest.raises(JoinError) as refused:
                _join(made, taken, tmp_path / f"tls-{taken}")
            assert why in str(refused.value), refused.value
            assert f"token create --name {taken}" in str(refused.value)
        assert _uses_left(host, made.token_id) == 5  # nothing spent
        # A token made for the id is the operator saying it may.
        for_boss = _token(host, container_id="boss")
        files = _join(for_boss, "boss", tmp_path / "tls-boss-ok")
        assert files.leaf.exists()


def test_join_refuses_bad_requests_with_the_field_to_fix_and_spends_no_use(
    secure: ManagerHost, tmp_path: Path
) -> None:
    made = _token(secure)
    from pycontainer.agent._join import pinned_ca

    ca = pinned_ca(made.join_address, made.ca_pin, 10)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    good_csr = certificate_request(container("c-1")).csr_pem.decode()
    cases = [
        (
            bootstrap_pb2.JoinRequest(token=made.token, csr_pem="junk", container_id="c-1"),
            "csr_pem",
        ),
        (
            bootstrap_pb2.JoinRequest(token=made.token, csr_pem=good_csr, container_id="../x"),
            "container_id",
        ),
        (bootstrap_pb2.JoinRequest(csr_pem=good_csr, container_id="c-1"), "no bootstrap token"),
        (bootstrap_pb2.JoinRequest(token="x" * 20_000, csr_pem=good_csr, container_id="c-1"), ""),
    ]
    with grpc.secure_channel(
        made.join_address, credentials, server_name_options(MANAGER)
    ) as channel:
        stub = bootstrap_pb2_grpc.BootstrapStub(channel)
        for request, said in cases:
            with pytest.raises(grpc.RpcError) as refused:
                stub.Join(request, timeout=10)
            code = refused.value.code()
            assert code in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.RESOURCE_EXHAUSTED,  # over the join server's message limit
            ), code
            assert said in (refused.value.details() or "")
            assert made.token not in (refused.value.details() or "")
    assert _uses_left(secure, made.token_id) == 1


def test_token_create_list_and_revoke_from_the_cli(secure: ManagerHost) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["token", "create", "--ttl", "10m", "--uses", "2", "--name", "web-1"],
        client=secure.client,
        stdout=out,
        stderr=err,
    )
    assert code == 0, err.getvalue()
    exports = dict(
        shlex.split(line.removeprefix("export "))[0].split("=", 1)
        for line in out.getvalue().splitlines()
    )
    assert set(exports) == {
        BOOTSTRAP_TOKEN_ENV,
        JOIN_ENV,
        CA_PIN_ENV,
        "PYCONTAINER_MANAGER",
        "PYCONTAINER_CONTAINER_ID",
    }
    assert exports["PYCONTAINER_CONTAINER_ID"] == "web-1"
    token_id = exports[BOOTSTRAP_TOKEN_ENV].removeprefix("pct_").partition(".")[0]
    assert f"bootstrap token {token_id}: 2 uses by container web-1, for 10m" in err.getvalue()
    assert exports[BOOTSTRAP_TOKEN_ENV] not in err.getvalue()
    listing = io.StringIO()
    assert main(["token", "list"], client=secure.client, stdout=listing) == 0
    [row] = [line for line in listing.getvalue().splitlines() if token_id in line]
    assert "web-1" in row
    assert " 2 " in f" {row} "
    assert exports[BOOTSTRAP_TOKEN_ENV] not in listing.getvalue()
    # Out of bounds: the parser says so, before any call.
    bad = io.StringIO()
    assert main(["token", "create", "--ttl", "30d"], client=secure.client, stderr=bad) != 0
    assert "at most" in bad.getvalue() or "must be from" in bad.getvalue()


def test_an_insecure_manager_has_no_tokens_and_says_why(tmp_path: Path) -> None:
    # --insecure, as the suite's default.
    with manager_host(tmp_path / "state") as host, pytest.raises(CallError) as refused:
        host.client.create_bootstrap_token()
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "--insecure" in refused.value.details


def test_join_listen_under_insecure_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with manager_host(tmp_path / "state", join_listen="127.0.0.1:0") as host:
        assert host.manager.bootstrap.join_address == ""
    warned = [r for r in caplog.records if "--join-listen" in r.getMessage()]
    assert len(warned) == 1
    assert warned[0].levelname == "WARNING"
    assert "--join-listen 127.0.0.1:0 is ignored" in warned[0].getMessage()
    assert "--insecure" in warned[0].getMessage()
    # Without --join-listen, --insecure says nothing of it.
    caplog.clear()
    with manager_host(tmp_path / "state2"):
        pass
    assert not [r for r in caplog.records if "--join-listen" in r.getMessage()]


def test_a_joined_container_renews_its_certificate_through_its_session(tmp_path: Path) -> None:
    with manager_host(
        tmp_path / "state",
        insecure=False,
        certificate_ttl=datetime.timedelta(seconds=3),
        certificate_renewal_check=datetime.timedelta(milliseconds=200),
    ) as host:
        made = _token(host, "renewing-1")
        tls_dir = tmp_path / "renewing"
        os.environ[TLS_DIR_ENV] = str(tls_dir)
        settings = pycontainer.ContainerSettings(
            name="renewing",
            id="renewing-1",
            bootstrap_token=made.token,
            join_address=made.join_address,
            ca_pin=made.ca_pin,
        )
        app = pycontainer.Container(settings)
        try:
            server = serve_in_background(app)  # joins first: its server serves the leaf
            app.connect(host.address)
            request = manager_pb2.GetContainerRequest(container="renewing-1")

            def connected() -> bool:
                try:
                    return host.client.get_container(request).container.connected
                except CallError:
                    return False

            wait_until(connected, 20, "the joined container registers")
            files = CredentialFiles.in_directory(tls_dir)
            first = files.read()[0].certificate

            def renewed() -> bool:
                return files.read()[0].certificate.serial_number != first.serial_number

            wait_until(renewed, 20, "the joined certificate renewed before it expires")
            second = files.read()[0].certificate
            assert second.not_valid_after_utc > first.not_valid_after_utc
            assert files.read()[0].identity == container("renewing-1")
            assert (tls_dir / "tls.pem").stat().st_mode & 0o777 == 0o600
            # After the first certificate expired, the renewed one still works:
            # the manager reaches the container's Management endpoint anew.
            while datetime.datetime.now(datetime.UTC) <= first.not_valid_after_utc:
                time.sleep(0.05)
            stream = host.client.watch_metrics(
                manager_pb2.ManagerWatchMetricsRequest(containers=["renewing-1"]),
                timeout=datetime.timedelta(seconds=20),
            )
            assert next(stream).snapshot.container_id == "renewing-1"
            stream.close()
            renewals = [
                e
                for e in host.manager.events.history()
                if e.message.startswith("RenewCertificate ")
            ]
            assert renewals
            assert {e.actor for e in renewals} == {str(container("renewing-1"))}
            server.stop()
        finally:
            app.close()
            del os.environ[TLS_DIR_ENV]


def test_only_a_container_renews_and_only_on_the_main_port(secure: ManagerHost) -> None:
    admin = CredentialFiles.in_directory(Path(secure.settings.state_dir) / "admin")
    csr = certificate_request(container("x-1")).csr_pem.decode()
    renew = bootstrap_pb2.RenewCertificateRequest(csr_pem=csr)
    with (
        grpc.secure_channel(
            secure.address, channel_credentials(admin), server_name_options(MANAGER)
        ) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        bootstrap_pb2_grpc.BootstrapStub(channel).RenewCertificate(renew, timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "container role" in (refused.value.details() or "")
    made = _token(secure)
    from pycontainer.agent._join import pinned_ca

    roots = grpc.ssl_channel_credentials(
        root_certificates=pinned_ca(made.join_address, made.ca_pin, 10)
    )
    with (
        grpc.secure_channel(made.join_address, roots, server_name_options(MANAGER)) as channel,
        pytest.raises(grpc.RpcError) as there,
    ):
        bootstrap_pb2_grpc.BootstrapStub(channel).RenewCertificate(renew, timeout=10)
    assert there.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "main port" in (there.value.details() or "")


def test_joins_past_the_rate_are_resource_exhausted(secure: ManagerHost) -> None:
    made = _token(secure)
    from pycontainer.agent._join import pinned_ca

    roots = grpc.ssl_channel_credentials(
        root_certificates=pinned_ca(made.join_address, made.ca_pin, 10)
    )
    csr = certificate_request(container("c-1")).csr_pem.decode()
    wrong = bootstrap_pb2.JoinRequest(
        token=f"pct_{made.token_id}.{'A' * 43}", csr_pem=csr, container_id="c-1"
    )
    codes = []
    with grpc.secure_channel(made.join_address, roots, server_name_options(MANAGER)) as channel:
        stub = bootstrap_pb2_grpc.BootstrapStub(channel)
        futures = [stub.Join.future(wrong, timeout=20) for _ in range(60)]
        for future in futures:
            with pytest.raises(grpc.RpcError) as refused:
                future.result()
            codes.append(refused.value.code())
    assert set(codes) <= {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    # The good token was not spent by the wrong secrets.
    assert _uses_left(secure, made.token_id) == 1


def test_the_sidecar_joins_and_keeps_the_token_from_its_program(
    secure: ManagerHost, tmp_path: Path
) -> None:
    made = _token(secure, "side-1")
    env = _app_env(made, tmp_path / "side-tls", PYCONTAINER_CONTAINER_ID="side-1")
    seen = tmp_path / "program-env.txt"
    sidecar = subprocess.Popen(
        [
            *[sys.executable, "-m", "pycontainer.cli", "run", "--name", "side", "--"],
            *["sh", "-c", f"env > {shlex.quote(str(seen))}; exec sleep 600"],
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        request = manager_pb2.GetContainerRequest(container="side-1")

        def running() -> bool:
            assert sidecar.poll() is None, sidecar.communicate()
            try:
                got = secure.client.get_container(request).container
            except CallError:
                return False
            return got.state == RUNNING and got.connected and seen.exists()

        wait_until(running, 40, "the sidecar joins and runs its program")
        wait_until(lambda: "PATH=" in seen.read_text(), 10, "the program wrote its environment")
        program_env = seen.read_text()
        assert made.token not in program_env
        assert BOOTSTRAP_TOKEN_ENV not in program_env
        secure.client.stop_container(manager_pb2.StopContainerRequest(container="side-1"))
        sidecar.wait(30)
    finally:
        if sidecar.poll() is None:
            sidecar.kill()
        sidecar.communicate(timeout=30)


def test_the_join_listener_answers_random_bytes_with_a_status_and_keeps_serving(
    secure: ManagerHost, tmp_path: Path
) -> None:
    import random

    made = _token(secure, uses=2)
    from pycontainer.agent._join import pinned_ca

    roots = grpc.ssl_channel_credentials(
        root_certificates=pinned_ca(made.join_address, made.ca_pin, 10)
    )
    good = bootstrap_pb2.JoinRequest(
        token=made.token,
        csr_pem=certificate_request(container("fuzzed-1")).csr_pem.decode(),
        container_id="fuzzed-1",
    ).SerializeToString()
    generator = random.Random(8)
    inputs = [generator.randbytes(generator.choice((0, 1, 7, 64, 900, 5000))) for _ in range(150)]
    # Mutations of a valid request: flipped bytes, truncations.
    for _ in range(150):
        mutated = bytearray(good)
        for _ in range(generator.randint(1, 8)):
            mutated[generator.randrange(len(mutated))] = generator.randrange(256)
        inputs.append(bytes(mutated[: generator.randint(0, len(mutated))]))
    codes: dict[grpc.StatusCode, int] = {}
    details: list[str] = []
    with grpc.secure_channel(made.join_address, roots, server_name_options(MANAGER)) as channel:
        for method in ("Join", "RenewCertificate"):
            raw = channel.unary_unary(f"/pycontainer.v1.Bootstrap/{method}")
            for payload in inputs:
                try:
                    raw(payload, timeout=10)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    code = exc.code()
                    details.append(exc.details() or "")
                codes[code] = codes.get(code, 0) + 1
    assert grpc.StatusCode.UNKNOWN not in codes, codes
    assert grpc.StatusCode.DEADLINE_EXCEEDED not in codes, codes
    assert not any(made.token.partition(".")[2] in text for text in details)
    # Still serving, and the token worth what the mutations left of it.
    left = _uses_left(secure, made.token_id)
    assert left is not None
    if left:
        _join(made, "after-1", tmp_path / "after")


@pytest.mark.parametrize(
    ("request_", "field", "said"),
    [
        (
            manager_pb2.CreateBootstrapTokenRequest(ttl=duration_to_proto(datetime.timedelta(0))),
            "ttl",
            "more than 0",
        ),
        (
            manager_pb2.CreateBootstrapTokenRequest(
                ttl=duration_to_proto(datetime.timedelta(days=8))
            ),
            "ttl",
            "at most 168h",
        ),
        (manager_pb2.CreateBootstrapTokenRequest(uses=1001), "uses", "1 to 1000"),
        (manager_pb2.CreateBootstrapTokenRequest(uses=-1), "uses", "1 to 1000"),
        (
            manager_pb2.CreateBootstrapTokenRequest(container_id="a/b"),
            "container_id",
            "not a container id",
        ),
        (
            manager_pb2.CreateBootstrapTokenRequest(description="x" * 201),
            "description",
            "at most 200",
        ),
    ],
)
def test_token_create_out_of_bounds_is_invalid_argument_naming_the_field(
    secure: ManagerHost, request_: manager_pb2.CreateBootstrapTokenRequest, field: str, said: str
) -> None:
    with pytest.raises(CallError) as refused:
        secure.client.create_bootstrap_token(request_)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details.startswith(f"{field}: "), refused.value.details
    assert said in refused.value.details


def test_the_token_ttl_bound_reads_the_same_in_help_and_errors(
    secure: ManagerHost, capsys: pytest.CaptureFixture[str]
) -> None:
    from pycontainer.limits import MAX_TOKEN_TTL
    from pycontainer.units import format_duration

    bound = format_duration(MAX_TOKEN_TTL)
    assert main(["token", "create", "--help"]) == 0
    assert f"at most {bound})" in " ".join(capsys.readouterr().out.split())
    assert main(["token", "create", "--ttl", "9d"], client=secure.client) != 0
    assert f"to {bound}, got '9d'" in capsys.readouterr().err
    # The manager's own check (a request past the CLI) says it the same way.
    with pytest.raises(CallError) as refused:
        _token(secure, ttl=8 * 86400)
    assert f"at most {bound}, not " in refused.value.details


def _sidecar(env: dict[str, str], name: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pycontainer.cli", "run", "--name", name, "--", "sleep", "600"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_sidecar_that_cannot_join_says_why_in_one_line_and_exits_1(
    secure: ManagerHost, tmp_path: Path
) -> None:
    """`pycontainer run` with a wrong CA pin, then a wrong token: one line each, no traceback."""
    made = _token(secure, "side-bad")
    wrong_pin = "sha256:" + "0" * 64
    env = _app_env(made, tmp_path / "bad-tls", PYCONTAINER_CONTAINER_ID="side-bad")
    pinned = _sidecar({**env, CA_PIN_ENV: wrong_pin}, "side-bad")
    _, err = pinned.communicate(timeout=60)
    assert pinned.returncode == 1, err
    assert "Traceback" not in err, err
    [line] = [line for line in err.splitlines() if "ERROR" in line]
    assert f"refusing to join at {made.join_address}" in line
    assert wrong_pin in line
    assert made.token not in err
    assert _uses_left(secure, made.token_id) == 1  # never sent
    token_id = made.token_id
    forged = f"pct_{token_id}." + "A" * 43
    refused = _sidecar({**env, BOOTSTRAP_TOKEN_ENV: forged}, "side-bad")
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 1, err
    assert "Traceback" not in err, err
    [line] = [line for line in err.splitlines() if "ERROR" in line]
    assert "refused the join: UNAUTHENTICATED" in line
    assert token_id in line
    assert forged not in err


def test_ctrl_c_during_a_join_that_gets_no_answer_ends_the_sidecar_at_once(
    secure: ManagerHost, tmp_path: Path
) -> None:
    """A join address that accepts the connection and never answers: SIGINT ends
    `pycontainer run` in well under the join's 15 s timeout."""
    made = _token(secure, "side-mute")
    with socket.socket() as mute:  # listens (the kernel completes handshakes), never reads
        mute.bind(("127.0.0.1", 0))
        mute.listen(4)
        address = f"127.0.0.1:{mute.getsockname()[1]}"
        env = _app_env(made, tmp_path / "mute-tls", PYCONTAINER_CONTAINER_ID="side-mute")
        sidecar = _sidecar({**env, JOIN_ENV: address}, "side-mute")
        try:
            # Accepted and held open, unread: the sidecar waits for the TLS answer.
            mute.settimeout(30)
            held, _ = mute.accept()
        except BaseException:
            sidecar.kill()
            raise
        with held:
            started = time.monotonic()
            sidecar.send_signal(signal.SIGINT)
            try:
                _, err = sidecar.communicate(timeout=30)
            finally:
                if sidecar.poll() is None:
                    sidecar.kill()
            took = time.monotonic() - started
    assert took < 5, f"took {took:.1f}s after Ctrl-C"
    assert "Traceback" not in err, err
    assert sidecar.returncode == 130, err

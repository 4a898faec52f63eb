"""Manager.IssueCertificate and `pycontainer certificate create`: an admin gives
a user a client certificate, against a real manager serving mutual TLS.

The key is made by the CLI and never sent; the CA signs the CSR for the
identity the request names, a user's only; the user then holds the roles the
manager binds to it. The rest of the suite runs its managers --insecure
(conftest.py); here $PYCONTAINER_INSECURE is unset."""

from __future__ import annotations

import asyncio
import datetime
import io
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from support import wait_until

from pycontainer import limits
from pycontainer._tls_env import TLS_DIR_ENV
from pycontainer.cli import main
from pycontainer.cli._parser import build_parser
from pycontainer.client import AsyncManagerClient, CallError, ManagerClient, Transport
from pycontainer.security import (
    MANAGER,
    CertificateAuthority,
    CredentialFiles,
    certificate_request,
    read_leaf,
    user,
)
from pycontainer.testing import ManagerHost, manager_host
from pycontainer.units import duration_to_proto
from pycontainer.v1 import container_pb2, manager_pb2, spec_pb2

ROOT = Path(__file__).resolve().parent.parent
RUNNING = container_pb2.LIFECYCLE_STATE_RUNNING


@pytest.fixture(autouse=True)
def _secure_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYCONTAINER_INSECURE", raising=False)
    monkeypatch.delenv(TLS_DIR_ENV, raising=False)


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[ManagerHost]:
    with manager_host(
        tmp_path / "state", insecure=False, role_bindings={"user/alice": "operate"}
    ) as host:
        yield host


def _cli(host: ManagerHost | None, *argv: str) -> tuple[int, str, str]:
    """main(argv) in this process: with the admin's client of ``host``, or
    dialling as argv says (--manager, --cert-dir) when ``host`` is None."""
    out, err = io.StringIO(), io.StringIO()
    client = host.client if host is not None else None
    code = main(list(argv), client=client, stdout=out, stderr=err)
    assert "Traceback" not in err.getvalue()
    return code, out.getvalue(), err.getvalue()


def _issue(host: ManagerHost, **fields: object) -> manager_pb2.IssueCertificateResponse:
    request = manager_pb2.IssueCertificateRequest(
        identity="user/alice", csr_pem=certificate_request().csr_pem.decode()
    )
    for name, value in fields.items():
        if name == "ttl":
            request.ttl.CopyFrom(value)  # type: ignore[arg-type]
        else:
            setattr(request, name, value)
    return host.client.issue_certificate(request)


def _audited(host: ManagerHost) -> list[manager_pb2.Event]:
    return [
        e
        for e in host.manager.events.history()
        if e.type == manager_pb2.EVENT_TYPE_REQUESTED and e.message.startswith("IssueCertificate")
    ]


def test_admin_issues_alices_certificate_and_she_may_stop_but_not_run(
    secure: ManagerHost, tmp_path: Path
) -> None:
    alice = tmp_path / "alice"
    code, out, err = _cli(secure, "certificate", "create", "user/alice", "--out", str(alice))
    assert code == 0, err
    assert "spiffe://pycontainer.local/user/alice" in out
    assert "role operate" in out, out
    # The layout --cert-dir reads; the key the owner's alone.
    assert (alice / "tls.pem").stat().st_mode & 0o777 == 0o600
    assert alice.stat().st_mode & 0o777 == 0o700
    leaf, trust = CredentialFiles.in_directory(alice).read()
    assert leaf.identity == user("alice")
    ca = CertificateAuthority.open(secure.settings.state_dir)
    assert ca.issued(leaf.certificate_chain_pem)
    assert trust == ca.certificate_pem
    # Nothing else left beside it (the staging directory was renamed into place).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice", "state"]
    # The audit trail: who issued what to whom, no key material.
    [event] = _audited(secure)
    assert event.actor == str(user("admin"))
    assert "'user/alice'" in event.message
    key_body = leaf.private_key_pem.decode().splitlines()[1]
    for e in secure.manager.events.history():
        assert "-----BEGIN" not in e.message
        assert key_body not in e.message
    # And an operation with its outcome, by the event's request_id.
    operation = secure.client.get_operation(
        manager_pb2.GetOperationRequest(request_id=event.request_id)
    ).operation
    assert (operation.method, operation.target, operation.actor) == (
        "IssueCertificate",
        "user/alice",
        str(user("admin")),
    )
    assert operation.state == manager_pb2.OPERATION_STATE_SUCCEEDED

    # A container for alice to stop, launched by the admin.
    command = [sys.executable, str(ROOT / "tests/apps/connected_app.py"), "--name", "web"]
    secure.client.run_container(
        manager_pb2.RunContainerRequest(spec=spec_pb2.ContainerSpec(name="web", command=command))
    )
    get = manager_pb2.GetContainerRequest(container="web")
    wait_until(
        lambda: secure.client.get_container(get).container.state == RUNNING, 30, "web to run"
    )
    as_alice = ("--manager", secure.address, "--cert-dir", str(alice))
    code, out, err = _cli(None, *as_alice, "stop", "web", "--grace", "5s")
    assert code == 0, err
    assert secure.client.get_container(get).container.state != RUNNING
    # RunContainer is admin's: refused, naming the role it needs.
    spec = spec_pb2.ContainerSpec(name="mine", command=["true"])
    with (
        ManagerClient(secure.address, transport=Transport(alice, MANAGER)) as client,
        pytest.raises(CallError) as refused,
    ):
        client.run_container(manager_pb2.RunContainerRequest(spec=spec))
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "RunContainer: it needs the admin role and holds operate" in refused.value.details


def test_a_user_bound_to_no_role_is_told_so_and_refused(
    secure: ManagerHost, tmp_path: Path
) -> None:
    code, out, err = _cli(secure, "cert", "create", "user/bob", "--out", str(tmp_path / "bob"))
    assert code == 0, err
    assert "no role" in out, out
    assert "--role user/bob=" in out, out
    assert _issue(secure, identity="user/bob").roles == []
    with (
        ManagerClient(secure.address, transport=Transport(tmp_path / "bob", MANAGER)) as bob,
        pytest.raises(CallError) as refused,
    ):
        bob.list_containers()
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "holds no roles" in refused.value.details


def test_an_operator_cannot_issue_certificates(secure: ManagerHost, tmp_path: Path) -> None:
    alice = tmp_path / "alice"
    assert _cli(secure, "certificate", "create", "user/alice", "--out", str(alice))[0] == 0
    before = len(_audited(secure))
    with ManagerClient(secure.address, transport=Transport(alice, MANAGER)) as client:
        request = manager_pb2.IssueCertificateRequest(
            identity="user/admin", csr_pem=certificate_request().csr_pem.decode()
        )
        with pytest.raises(CallError) as refused:
            client.issue_certificate(request)
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "IssueCertificate: it needs the admin role and holds operate" in refused.value.details
    # Refused before the servicer: nothing signed, and the refusal is audited.
    [refusal] = _audited(secure)[before:]
    assert refusal.message.startswith("IssueCertificate refused for "), refusal.message
    # Through the CLI: the same refusal, one line, and no directory written.
    code, _, err = _cli(
        None,
        "certificate",
        "create",
        "user/mallory",
        "--out",
        str(tmp_path / "mallory"),
        "--manager",
        secure.address,
        "--cert-dir",
        str(alice),
    )
    assert code == 1
    assert "PERMISSION_DENIED" in err, err
    assert "needs the admin role" in err, err
    assert not (tmp_path / "mallory").exists()


def _tampered_csr() -> str:
    """A CSR whose body was changed after it was signed: its signature fails."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aaaaaaaa")]))
        .sign(key, hashes.SHA256())
    )
    der = csr.public_bytes(serialization.Encoding.DER).replace(b"aaaaaaaa", b"bbbbbbbb")
    tampered = x509.load_der_x509_csr(der)
    assert not tampered.is_signature_valid
    return tampered.public_bytes(serialization.Encoding.PEM).decode()


def _rsa_csr(bits: int) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _ttl(**kwargs: float) -> object:
    return duration_to_proto(datetime.timedelta(**kwargs))


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"identity": "manager"}, "identity", "never issued to a client"),
        ({"identity": "spiffe://pycontainer.local/manager"}, "identity", "never issued"),
        ({"identity": "container/web"}, "identity", "pycontainer token create --name web"),
        ({"identity": ""}, "identity", "user/NAME"),
        ({"identity": "alice"}, "identity", "is not one of"),
        ({"identity": "user/"}, "identity", "cannot be an identity"),
        ({"identity": "user/.."}, "identity", "cannot be an identity"),
        ({"identity": "user/a b"}, "identity", "cannot be an identity"),
        ({"identity": "spiffe://example.org/user/alice"}, "identity", "outside the trust domain"),
        ({"identity": "user/" + "a" * 100_000}, "identity", "characters"),
        ({"csr_pem": ""}, "csr_pem", "give a PEM certificate signing request"),
        ({"csr_pem": "not a csr"}, "csr_pem", "not a PEM CSR"),
        ({"csr_pem": _tampered_csr()}, "csr_pem", "signature does not match"),
        ({"csr_pem": "x" * (limits.MAX_CSR_BYTES + 1)}, "csr_pem", "MAX_CSR_BYTES"),
        ({"csr_pem": _rsa_csr(1024)}, "csr_pem", "at least 2048"),
        ({"ttl": _ttl(seconds=0)}, "ttl", "must be positive"),
        ({"ttl": _ttl(seconds=-5)}, "ttl", "must be positive"),
        ({"ttl": _ttl(days=31)}, "ttl", "MAX_ISSUED_CERTIFICATE_TTL"),
    ],
    ids=lambda value: str(value)[:40] if isinstance(value, str) else None,
)
def test_what_cannot_be_issued_is_invalid_argument_naming_the_field(
    secure: ManagerHost, fields: dict[str, object], field: str, says: str
) -> None:
    with pytest.raises(CallError) as refused:
        _issue(secure, **fields)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details
    assert details.startswith(f"{field}: "), details
    assert says in details, details
    assert len(details) < 1024  # bounded: never the input echoed whole


def test_a_retry_with_the_same_request_id_signs_once(secure: ManagerHost) -> None:
    request = manager_pb2.IssueCertificateRequest(
        identity="user/alice", csr_pem=certificate_request().csr_pem.decode(), request_id="r-1"
    )
    first = secure.client.issue_certificate(request)
    again = secure.client.issue_certificate(request)
    assert again.certificate_pem == first.certificate_pem
    other = manager_pb2.IssueCertificateRequest(
        identity="user/bob", csr_pem=request.csr_pem, request_id="r-1"
    )
    with pytest.raises(CallError) as refused:
        secure.client.issue_certificate(other)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details.startswith("request_id: ")


def test_a_duration_past_timedeltas_range_is_invalid_argument(secure: ManagerHost) -> None:
    request = manager_pb2.IssueCertificateRequest(
        identity="user/alice", csr_pem=certificate_request().csr_pem.decode()
    )
    request.ttl.seconds = 2**62
    with pytest.raises(CallError) as refused:
        secure.client.issue_certificate(request)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_the_ttl_is_the_managers_default_unless_given(secure: ManagerHost) -> None:
    default = _issue(secure)
    given = _issue(secure, ttl=_ttl(hours=1))
    now = datetime.datetime.now(datetime.UTC)
    assert abs(
        default.expire_time.ToDatetime(datetime.UTC) - (now + secure.settings.certificate_ttl)
    ) < datetime.timedelta(minutes=1)
    assert abs(
        given.expire_time.ToDatetime(datetime.UTC) - (now + datetime.timedelta(hours=1))
    ) < datetime.timedelta(minutes=1)
    assert given.identity == str(user("alice"))


def test_an_existing_directory_is_replaced_only_with_force(
    secure: ManagerHost, tmp_path: Path
) -> None:
    alice = tmp_path / "alice"
    assert _cli(secure, "certificate", "create", "user/alice", "--out", str(alice))[0] == 0
    first = (alice / "tls.pem").read_bytes()
    issued = len(_audited(secure))
    code, _, err = _cli(secure, "certificate", "create", "user/alice", "--out", str(alice))
    assert code == 1
    assert "--force" in err, err
    assert (alice / "tls.pem").read_bytes() == first
    assert len(_audited(secure)) == issued  # refused before any call
    code, _, err = _cli(
        secure, "cert", "create", "user/alice", "--out", str(alice), "--force", "--ttl", "1h"
    )
    assert code == 0, err
    assert (alice / "tls.pem").read_bytes() != first
    assert (alice / "tls.pem").stat().st_mode & 0o777 == 0o600
    certificate = read_leaf(alice / "tls.pem").certificate
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert lifetime <= datetime.timedelta(hours=1, minutes=5)  # the CA's clock-skew allowance
    # An empty directory (such as mktemp -d made) is written without --force.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _cli(secure, "certificate", "create", "user/carol", "--out", str(empty))[0] == 0
    assert read_leaf(empty / "tls.pem").identity == user("carol")
    # A file where the directory should be: one line, nothing issued.
    (tmp_path / "file").write_text("")
    code, _, err = _cli(secure, "certificate", "create", "user/x", "--out", str(tmp_path / "file"))
    assert code == 1
    assert "not a directory" in err, err


def test_the_cli_refuses_a_ttl_out_of_bounds_before_calling() -> None:
    err = io.StringIO()
    assert main(["certificate", "create", "user/a", "--out", "d", "--ttl", "31d"], stderr=err) == 1
    assert "must be from" in err.getvalue(), err.getvalue()
    args = build_parser().parse_args(["cert", "create", "user/a", "--out", "d", "--ttl", "2h"])
    assert args.ttl == datetime.timedelta(hours=2)
    assert args.runs == "_certificate:run"


def test_the_asyncio_client_issues_too(secure: ManagerHost) -> None:
    admin = Transport(Path(secure.settings.state_dir) / "admin", MANAGER)
    request = manager_pb2.IssueCertificateRequest(
        identity="spiffe://pycontainer.local/user/dave",
        csr_pem=certificate_request().csr_pem.decode(),
    )

    async def issue() -> manager_pb2.IssueCertificateResponse:
        async with AsyncManagerClient(secure.address, transport=admin) as client:
            return await client.issue_certificate(request)

    response = asyncio.run(issue())
    assert response.identity == str(user("dave"))
    assert response.roles == []
    assert "BEGIN CERTIFICATE" in response.trust_bundle_pem


def test_an_insecure_manager_has_no_ca_and_says_why(tmp_path: Path) -> None:
    with manager_host(tmp_path / "state") as host, pytest.raises(CallError) as refused:
        _issue(host)
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "--insecure" in refused.value.details

"""The certificate authority, its key file and the leaf files it writes, on a real disk."""

from __future__ import annotations

import datetime
import ipaddress
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from security_support import issue_files

from pycontainer.security import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    DEFAULT_LEAF_TTL,
    MANAGER,
    CertificateAuthority,
    CredentialFiles,
    Identity,
    Leaf,
    SecurityError,
    container,
    parse_identity,
    read_leaf,
    renewal_due,
    user,
    write_leaf,
)


def _sans(pem: bytes) -> tuple[list[str], list[str], list[str]]:
    certificate = x509.load_pem_x509_certificate(pem)
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        san.get_values_for_type(x509.UniformResourceIdentifier),
        san.get_values_for_type(x509.DNSName),
        [str(ip) for ip in san.get_values_for_type(x509.IPAddress)],
    )


def test_first_open_creates_the_ca_with_a_private_key_and_later_opens_reload_it(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    ca = CertificateAuthority.open(state)
    key_mode = stat.S_IMODE((state / CA_KEY_FILE).stat().st_mode)
    assert key_mode == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert (state / CA_CERT_FILE).read_bytes() == ca.certificate_pem
    # No temporary files left behind.
    assert sorted(p.name for p in state.iterdir()) == sorted([CA_CERT_FILE, CA_KEY_FILE, "ca.lock"])

    again = CertificateAuthority.open(state)
    assert again.certificate_pem == ca.certificate_pem
    leaf = again.issue(user("alice"))
    assert ca.issued(leaf.certificate_pem)


_OPEN_CA = (
    "import sys; from pycontainer.security import CertificateAuthority; "
    "sys.stdout.buffer.write(CertificateAuthority.open(sys.argv[1]).certificate_pem)"
)


def test_managers_starting_at_once_end_with_one_ca(tmp_path: Path) -> None:
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_CA, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    results = set()
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err.decode()
        results.add(out)
    assert results == {(tmp_path / CA_CERT_FILE).read_bytes()}


def test_a_ca_key_readable_by_others_is_refused_with_the_fix(tmp_path: Path) -> None:
    CertificateAuthority.open(tmp_path)
    key = tmp_path / CA_KEY_FILE
    key.chmod(0o644)
    with pytest.raises(SecurityError) as raised:
        CertificateAuthority.open(tmp_path)
    message = str(raised.value)
    assert str(key) in message
    assert f"chmod 600 {key}" in message
    assert "0644" in message
    key.chmod(0o600)
    CertificateAuthority.open(tmp_path)


def test_a_state_directory_that_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    with pytest.raises(SecurityError, match=f"cannot create the CA in {blocker}"):
        CertificateAuthority.open(blocker)


def test_a_start_that_died_after_the_key_gets_a_ca_certificate_for_that_key(
    tmp_path: Path,
) -> None:
    CertificateAuthority.open(tmp_path)
    (tmp_path / CA_CERT_FILE).unlink()
    key_before = (tmp_path / CA_KEY_FILE).read_bytes()
    ca = CertificateAuthority.open(tmp_path)
    assert (tmp_path / CA_KEY_FILE).read_bytes() == key_before
    assert ca.issued(ca.issue(MANAGER).certificate_pem)


def test_leaf_names_the_identity_and_the_manager_its_listen_hosts(tmp_path: Path) -> None:
    ca = CertificateAuthority.open(tmp_path)

    uris, dns, ips = _sans(ca.issue(MANAGER, hosts=["manager.example", "10.1.2.3"]).certificate_pem)
    assert uris == ["spiffe://pycontainer.local/manager"]
    assert dns == ["manager.pycontainer.local", "localhost", "manager.example"]
    assert ips == ["127.0.0.1", "::1", "10.1.2.3"]

    uris, dns, ips = _sans(ca.issue(container("3f9a0c")).certificate_pem)
    assert uris == ["spiffe://pycontainer.local/container/3f9a0c"]
    assert dns == ["3f9a0c.container.pycontainer.local"]
    assert ips == []

    issued = ca.issue(user("alice"))
    assert _sans(issued.certificate_pem) == (["spiffe://pycontainer.local/user/alice"], [], [])
    certificate = x509.load_pem_x509_certificate(issued.certificate_pem)
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert not constraints.ca
    assert certificate.issuer == ca.certificate.subject


def test_leaf_lifetime_defaults_to_a_day_and_follows_the_ttl(tmp_path: Path) -> None:
    ca = CertificateAuthority.open(tmp_path)
    now = datetime.datetime.now(datetime.UTC)
    default = ca.issue(user("alice"))
    assert abs(default.not_after - (now + DEFAULT_LEAF_TTL)) < datetime.timedelta(minutes=1)
    short = ca.issue(user("alice"), ttl=datetime.timedelta(minutes=10))
    assert abs(short.not_after - (now + datetime.timedelta(minutes=10))) < datetime.timedelta(
        minutes=1
    )
    with pytest.raises(SecurityError, match="lifetime must be positive"):
        ca.issue(user("alice"), ttl=datetime.timedelta(0))


def _csr(names: list[x509.GeneralName]) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")]))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM)


def test_csr_signing_puts_the_identity_it_is_told_not_the_names_requested(
    tmp_path: Path,
) -> None:
    ca = CertificateAuthority.open(tmp_path)
    key, csr = _csr(
        [
            x509.UniformResourceIdentifier("spiffe://pycontainer.local/user/admin"),
            x509.UniformResourceIdentifier("spiffe://pycontainer.local/manager"),
            x509.DNSName("manager.pycontainer.local"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
    )
    issued = ca.sign_csr(csr, container("joiner1"))
    assert issued.private_key_pem is None
    assert _sans(issued.certificate_pem) == (
        ["spiffe://pycontainer.local/container/joiner1"],
        ["joiner1.container.pycontainer.local"],
        [],
    )
    certificate = x509.load_pem_x509_certificate(issued.certificate_pem)
    assert "admin" not in certificate.subject.rfc4514_string()
    assert certificate.public_key() == key.public_key()
    assert ca.issued(issued.certificate_pem)


def test_a_bad_csr_is_refused_clearly(tmp_path: Path) -> None:
    ca = CertificateAuthority.open(tmp_path)
    with pytest.raises(SecurityError, match="not a PEM CSR"):
        ca.sign_csr(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", user("x"))


def test_an_external_ca_replaces_the_built_in_one(tmp_path: Path) -> None:
    external = CertificateAuthority.open(tmp_path / "corporate")
    loaded = CertificateAuthority.load(
        tmp_path / "corporate" / CA_CERT_FILE, tmp_path / "corporate" / CA_KEY_FILE
    )
    leaf = loaded.issue(MANAGER)
    assert external.issued(leaf.certificate_pem)
    assert not CertificateAuthority.open(tmp_path / "other").issued(leaf.certificate_pem)


def test_loading_a_ca_checks_what_it_is_given(tmp_path: Path) -> None:
    ca = CertificateAuthority.open(tmp_path / "a")
    other = CertificateAuthority.open(tmp_path / "b")
    with pytest.raises(SecurityError, match="do not belong together"):
        CertificateAuthority.load(tmp_path / "a" / CA_CERT_FILE, tmp_path / "b" / CA_KEY_FILE)
    leaf_files = issue_files(ca, user("alice"), tmp_path / "alice")
    leaf = read_leaf(leaf_files.leaf)
    (tmp_path / "leaf.pem").write_bytes(leaf.certificate_chain_pem)
    with pytest.raises(SecurityError, match="is not a CA certificate"):
        CertificateAuthority.load(tmp_path / "leaf.pem", tmp_path / "a" / CA_KEY_FILE)
    with pytest.raises(SecurityError, match="does not exist"):
        CertificateAuthority.load(tmp_path / "missing.pem", tmp_path / "a" / CA_KEY_FILE)
    assert other.certificate_pem != ca.certificate_pem


def test_leaf_files_are_written_atomically_owner_only_and_checked_on_read(
    tmp_path: Path,
) -> None:
    ca = CertificateAuthority.open(tmp_path / "state")
    files = issue_files(ca, container("c1"), tmp_path / "run")
    assert stat.S_IMODE(files.leaf.stat().st_mode) == 0o600
    leaf, trust = files.read()
    assert trust == ca.certificate_pem
    assert ca.issued(leaf.certificate_chain_pem)

    # A rotation replaces the file (a new inode): a reader holding the old one keeps it whole.
    before = files.leaf.stat().st_ino
    with files.leaf.open("rb") as old:
        files.write(ca.issue(container("c1")), ca.certificate_pem)
        assert read_leaf(files.leaf) != leaf
        assert old.read() == leaf.private_key_pem.rstrip(b"\n") + b"\n" + (
            leaf.certificate_chain_pem
        )
    assert files.leaf.stat().st_ino != before
    assert sorted(p.name for p in files.leaf.parent.iterdir()) == ["ca.pem", "tls.pem"]

    other = ca.issue(container("c2"))
    assert other.private_key_pem is not None
    write_leaf(files.leaf, Leaf(other.private_key_pem, leaf.certificate_chain_pem))
    with pytest.raises(SecurityError, match="private key is not the certificate's"):
        read_leaf(files.leaf)
    garbled = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    write_leaf(files.leaf, Leaf(garbled, leaf.certificate_chain_pem))
    with pytest.raises(SecurityError, match=r"cannot be read as a key .* does not decode"):
        read_leaf(files.leaf)
    files.leaf.chmod(0o640)
    with pytest.raises(SecurityError, match="chmod 600"):
        read_leaf(files.leaf)


def test_a_leaf_signed_from_a_csr_cannot_be_written_without_its_key(tmp_path: Path) -> None:
    ca = CertificateAuthority.open(tmp_path)
    _, csr = _csr([])
    files = CredentialFiles.in_directory(tmp_path / "joiner")
    with pytest.raises(SecurityError, match="signed from a CSR"):
        files.write(ca.sign_csr(csr, container("j")), ca.certificate_pem)


def test_renewal_is_due_two_thirds_into_a_leafs_life(tmp_path: Path) -> None:
    ca = CertificateAuthority.open(tmp_path)
    issued = ca.issue(user("alice"), ttl=datetime.timedelta(hours=3))
    certificate = x509.load_pem_x509_certificate(issued.certificate_pem)
    start = certificate.not_valid_before_utc
    life = certificate.not_valid_after_utc - start
    assert not renewal_due(issued.certificate_pem, now=start + life * 0.6)
    assert renewal_due(issued.certificate_pem, now=start + life * 0.7)


@pytest.mark.parametrize(
    ("text", "identity"),
    [
        ("spiffe://pycontainer.local/container/abc", container("abc")),
        ("container/abc", container("abc")),
        ("user/alice", user("alice")),
        ("spiffe://pycontainer.local/manager", MANAGER),
        ("manager", MANAGER),
    ],
)
def test_identities_parse_from_uris_and_short_forms(text: str, identity: Identity) -> None:
    assert parse_identity(text) == identity
    assert parse_identity(identity.uri) == identity


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("spiffe://evil.example/user/alice", "outside the trust domain"),
        ("group/admins", "is not one of"),
        ("user/", "cannot be an identity"),
        ("user/a/b", "cannot be an identity"),
        ("container/..", "cannot be an identity"),
        ("user/" + "x" * 200, "cannot be an identity"),
    ],
)
def test_bad_identities_are_refused_saying_why(text: str, problem: str) -> None:
    with pytest.raises(SecurityError, match=problem):
        parse_identity(text)


def test_only_dns_label_container_ids_get_a_dns_name() -> None:
    assert container("web-1").dns_name == "web-1.container.pycontainer.local"
    assert container("Web_1").dns_name is None
    assert user("alice").dns_name is None

"""A small certificate authority: the manager's, or an external one loaded from files.

On first use :meth:`CertificateAuthority.open` creates an EC P-256 CA in a
directory (the manager's state directory): ``ca.pem`` (the trust bundle every
peer is given) and ``ca-key.pem`` (mode 0600, created exclusively, so two
managers starting at once cannot each make their own). Later starts load them.
A key file that group or others can access is refused.

It issues short-lived leaf certificates naming one identity in a SPIFFE URI
SAN (plus the DNS names a client checks a server against). A certificate
signing request is signed for the identity the CA is told, never the names
the request asks for: the requester proves it holds the key, the caller of
:meth:`CertificateAuthority.sign_csr` decides who it is.
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pycontainer.security._errors import SecurityError
from pycontainer.security._files import create_exclusive, read_private, read_public, write_atomic
from pycontainer.security._identity import Identity

# Leaves live a day by default: short enough that a leaked one expires soon,
# long enough that a manager outage of hours does not take containers down.
DEFAULT_LEAF_TTL = datetime.timedelta(hours=24)
# The built-in CA's own lifetime; replacing it means reissuing every leaf.
CA_TTL = datetime.timedelta(days=3650)
# Tolerated clock difference between the CA and a peer checking a new leaf.
CLOCK_SKEW = datetime.timedelta(minutes=5)
# The names a manager's certificate always carries, for clients on the same machine.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
_LOCK_FILE = "ca.lock"
_CA_NAME = "pycontainer CA"


@dataclass(frozen=True)
class IssuedCertificate:
    """A leaf the CA issued: its certificate and, when the CA made the key, the key."""

    identity: Identity
    certificate_pem: bytes
    # None when signed from a CSR: only the requester holds that key.
    private_key_pem: bytes | None
    not_after: datetime.datetime


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: what every TLS stack grpc builds on (BoringSSL, OpenSSL) accepts.
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _signing_hash(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    # Ed25519/Ed448 sign without a separate digest.
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def _san_entries(identity: Identity, hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
    dns: list[str] = [identity.dns_name] if identity.dns_name else []
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for host in hosts:
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            if host and host not in dns:
                dns.append(host)
            continue
        if ip not in ips:
            ips.append(ip)
    names.extend(x509.DNSName(name) for name in dns)
    names.extend(x509.IPAddress(ip) for ip in ips)
    return names


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with (directory / _LOCK_FILE).open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


class CertificateAuthority:
    """Issues leaf certificates signed by one CA certificate and key."""

    def __init__(
        self, certificate: x509.Certificate, key: CertificateIssuerPrivateKeyTypes
    ) -> None:
        if certificate.public_key() != key.public_key():
            raise SecurityError("the CA certificate and the CA key do not belong together")
        self._certificate = certificate
        self._key = key

    # -- making and loading ------------------------------------------------

    @classmethod
    def open(cls, directory: Path | str) -> CertificateAuthority:
        """The CA kept in ``directory``: loaded if it is there, created on first use."""
        directory = Path(directory)
        cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
        if cert_path.exists() and key_path.exists():
            # Loading needs no lock (and works in a read-only state directory).
            return cls.load(cert_path, key_path)
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            with _locked(directory):
                cls._create_missing(cert_path, key_path)
        except OSError as error:
            raise SecurityError(
                f"cannot create the CA in {directory}: {error.strerror or error}; make the "
                "directory writable by this user, or give an external CA's certificate and key"
            ) from None
        return cls.load(cert_path, key_path)

    @classmethod
    def _create_missing(cls, cert_path: Path, key_path: Path) -> None:
        """Under the directory's lock: the key and certificate that are not there yet."""
        if not key_path.exists():
            key = _new_key()
            # Exclusive: never replaces a key that something may have signed with.
            create_exclusive(key_path, _key_pem(key))
            certificate = _self_signed(key)
        elif not cert_path.exists():
            # A start that died between the two files: the key signed nothing
            # yet, so a CA certificate for it can be made now.
            certificate = _self_signed(cls._read_key(key_path))
        else:
            return  # another process made both while this one waited for the lock
        write_atomic(cert_path, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)

    @classmethod
    def load(cls, cert_path: Path | str, key_path: Path | str) -> CertificateAuthority:
        """An existing CA (the built-in one, or an external one) from its PEM files."""
        cert_path, key_path = Path(cert_path), Path(key_path)
        pem = read_public(cert_path, "CA certificate")
        try:
            certificate = x509.load_pem_x509_certificate(pem)
        except ValueError as error:
            raise SecurityError(
                f"CA certificate {cert_path} is not a PEM certificate: {error}"
            ) from None
        try:
            is_ca = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise SecurityError(f"{cert_path} is not a CA certificate (basicConstraints CA:FALSE)")
        try:
            return cls(certificate, cls._read_key(key_path))
        except SecurityError as error:
            raise SecurityError(f"{error} ({cert_path} and {key_path})") from None

    @staticmethod
    def _read_key(key_path: Path) -> CertificateIssuerPrivateKeyTypes:
        pem = read_private(key_path, "CA key")
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as error:
            raise SecurityError(
                f"CA key {key_path} is not an unencrypted PEM private key: {error}"
            ) from None
        if not isinstance(
            key,
            ec.EllipticCurvePrivateKey
            | rsa.RSAPrivateKey
            | ed25519.Ed25519PrivateKey
            | ed448.Ed448PrivateKey,
        ):
            raise SecurityError(f"CA key {key_path} is not an EC, RSA or EdDSA key")
        return key

    # -- what peers are given ----------------------------------------------

    @property
    def certificate(self) -> x509.Certificate:
        return self._certificate

    @property
    def certificate_pem(self) -> bytes:
        """The trust bundle: what a peer verifies the others' certificates against."""
        return self._certificate.public_bytes(serialization.Encoding.PEM)

    # -- issuing -----------------------------------------------------------

    def issue(
        self,
        identity: Identity,
        *,
        ttl: datetime.timedelta = DEFAULT_LEAF_TTL,
        hosts: Iterable[str] = (),
    ) -> IssuedCertificate:
        """A new key and a leaf certificate for ``identity``, valid for ``ttl``.

        ``hosts`` are the DNS names and IP addresses a server is reached at; the
        manager's certificate always names the loopback ones too.
        """
        key = _new_key()
        certificate = self._sign(identity, key.public_key(), ttl, hosts)
        return IssuedCertificate(
            identity,
            certificate.public_bytes(serialization.Encoding.PEM),
            _key_pem(key),
            certificate.not_valid_after_utc,
        )

    def sign_csr(
        self,
        csr_pem: bytes,
        identity: Identity,
        *,
        ttl: datetime.timedelta = DEFAULT_LEAF_TTL,
        hosts: Iterable[str] = (),
    ) -> IssuedCertificate:
        """A leaf for ``identity`` on the CSR's public key; the CSR's own names are ignored."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as error:
            raise SecurityError(
                f"the certificate signing request is not a PEM CSR: {error}"
            ) from None
        if not csr.is_signature_valid:
            raise SecurityError(
                "the certificate signing request's signature does not match its key"
            )
        certificate = self._sign(identity, csr.public_key(), ttl, hosts)
        return IssuedCertificate(
            identity,
            certificate.public_bytes(serialization.Encoding.PEM),
            None,
            certificate.not_valid_after_utc,
        )

    def _sign(
        self,
        identity: Identity,
        public_key: CertificatePublicKeyTypes,
        ttl: datetime.timedelta,
        hosts: Iterable[str],
    ) -> x509.Certificate:
        if ttl <= datetime.timedelta(0):
            raise SecurityError(f"a certificate's lifetime must be positive, not {ttl}")
        if identity.kind == "manager":
            hosts = (*LOOPBACK_HOSTS, *hosts)
        now = _now()
        not_after = min(now + ttl, self._certificate.not_valid_after_utc)
        try:
            ski = self._certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            authority_key_id = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ski.value
            )
        except x509.ExtensionNotFound:
            # An external CA certificate without one: derive it from the CA's key.
            authority_key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()
            )
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.uri[-64:])]))
            .issuer_name(self._certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                # Every identity both serves (a Management endpoint) and dials.
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName(_san_entries(identity, hosts)), critical=False
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(public_key),
                critical=False,
            )
            .add_extension(authority_key_id, critical=False)
        )
        try:
            return builder.sign(self._key, _signing_hash(self._key))
        except (TypeError, ValueError) as error:
            raise SecurityError(f"cannot sign a certificate for this key: {error}") from None

    def issued(self, certificate_pem: bytes) -> bool:
        """Whether this CA signed the certificate (its signature only; not its validity period)."""
        try:
            certificate = x509.load_pem_x509_certificate(certificate_pem)
            certificate.verify_directly_issued_by(self._certificate)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True


def _self_signed(key: CertificateIssuerPrivateKeyTypes) -> x509.Certificate:
    now = _now()
    # A random suffix: two CAs made on different machines are told apart by name.
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pycontainer"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{_CA_NAME} {secrets.token_hex(4)}"),
        ]
    )
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_TTL)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, _signing_hash(key))
    )

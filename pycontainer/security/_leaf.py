"""A peer's TLS material on disk: its key and certificate in one file, the CA in another.

The key and certificate share one file (``tls.pem``) so that a rotation,
which replaces the file atomically, can never be read as a new certificate
with the old key. The trust bundle (``ca.pem``) is the CA certificate(s) the
peer verifies others against. A runtime writes both where the container reads
them; servers built by :mod:`pycontainer.security._credentials` reread them on
change, without a restart.
"""

from __future__ import annotations

import datetime
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pycontainer.security._errors import SecurityError
from pycontainer.security._files import read_private, read_public, write_atomic
from pycontainer.security._identity import Identity, parse_identity

if TYPE_CHECKING:
    from cryptography import x509

    from pycontainer.security._ca import IssuedCertificate

LEAF_FILE = "tls.pem"
TRUST_FILE = "ca.pem"

# How far into its lifetime a leaf is renewed: at two thirds, a day's
# certificate has 8 hours left for the renewal to succeed.
RENEW_AT_FRACTION = 2 / 3

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL)


@dataclass(frozen=True)
class Leaf:
    """A private key and the certificate chain for it, PEM-encoded."""

    private_key_pem: bytes
    certificate_chain_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        """The leaf certificate itself (the first of the chain)."""
        from cryptography import x509

        return x509.load_pem_x509_certificate(self.certificate_chain_pem)

    @property
    def identity(self) -> Identity | None:
        """The identity the leaf certificate names."""
        return certificate_identity(self.certificate)


def certificate_identity(certificate: x509.Certificate) -> Identity | None:
    """The one pycontainer identity a certificate's URI SANs name, or None."""
    from cryptography import x509

    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    found: set[Identity] = set()
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        try:
            found.add(parse_identity(uri))
        except SecurityError:
            continue
    return found.pop() if len(found) == 1 else None


@dataclass(frozen=True)
class CredentialFiles:
    """Where one peer's TLS material is: its leaf file and its trust bundle."""

    leaf: Path
    trust: Path

    @classmethod
    def in_directory(cls, directory: Path | str) -> CredentialFiles:
        """The conventional names (``tls.pem``, ``ca.pem``) in ``directory``."""
        directory = Path(directory)
        return cls(directory / LEAF_FILE, directory / TRUST_FILE)

    def write(self, issued: IssuedCertificate, trust_pem: bytes) -> None:
        """Store a leaf the CA issued (with its key) and the trust bundle, each atomically."""
        if issued.private_key_pem is None:
            raise SecurityError(
                "this certificate was signed from a CSR; its key is the requester's, so "
                "write it with write_leaf(path, Leaf(key, certificate)) where the key is"
            )
        self.leaf.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.trust, trust_pem, mode=0o644)
        write_leaf(self.leaf, Leaf(issued.private_key_pem, issued.certificate_pem))

    def store(self, leaf: Leaf, trust_pem: bytes) -> None:
        """Store a leaf whose key the peer made itself (a CSR's) and the trust bundle."""
        self.leaf.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.trust, trust_pem, mode=0o644)
        write_leaf(self.leaf, leaf)

    def read(self) -> tuple[Leaf, bytes]:
        """The leaf and the trust bundle, as they are now."""
        return read_leaf(self.leaf), read_public(self.trust, "trust bundle")


def write_leaf(path: Path, leaf: Leaf) -> None:
    """Replace the leaf file at ``path`` (mode 0600) so readers see the old one or the new one."""
    write_atomic(path, leaf.private_key_pem.rstrip(b"\n") + b"\n" + leaf.certificate_chain_pem)


def read_leaf(path: Path) -> Leaf:
    """The key and certificate chain from a leaf file, checked to belong together."""
    for _ in range(_READS):
        data = read_private(path, "TLS key and certificate file")
        leaf = _split(path, data)
        _check_pair(path)
        # A rotation may have replaced the file between the two reads: what
        # was checked must be what is returned.
        if read_private(path, "TLS key and certificate file") == data:
            return leaf
    raise SecurityError(f"{path} kept changing while it was read ({_READS} times)")


# Reads of a leaf file that a rotation may replace meanwhile.
_READS = 3
# How OpenSSL ends its messages: where in Python's _ssl.c it failed.
_SSL_SOURCE = re.compile(r" \(_ssl\.c:\d+\)$")


def _split(path: Path, data: bytes) -> Leaf:
    keys: list[bytes] = []
    certificates: list[bytes] = []
    for block in _PEM_BLOCK.finditer(data):
        label = block.group(1)
        if label.endswith(b"PRIVATE KEY"):
            keys.append(block.group(0))
        elif label == b"CERTIFICATE":
            certificates.append(block.group(0))
    if len(keys) != 1 or not certificates:
        raise SecurityError(
            f"{path} must hold one PEM private key and its certificate chain "
            f"(found {len(keys)} key(s) and {len(certificates)} certificate(s))"
        )
    return Leaf(keys[0], b"".join(certificates))


def _check_pair(path: Path) -> None:
    """That the file's key and certificates parse and the key is the leaf
    certificate's, as a TLS library loads them: OpenSSL, which grpc's
    import has loaded already (cryptography would cost a client more to
    import than its call)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        # A password callback: an encrypted key fails here, never prompts.
        context.load_cert_chain(path, password=lambda: b"")
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            raise SecurityError(f"{path}: the private key is not the certificate's") from None
        why = _SSL_SOURCE.sub("", str(error))
        if error.reason is None:  # OpenSSL's "PEM lib": a block's contents do not decode
            why = f"a key or certificate in it does not decode ({why})"
        raise SecurityError(f"{path} cannot be read as a key and a certificate: {why}") from None
    except OSError as error:  # replaced or removed since it was read
        raise SecurityError(f"cannot read {path}: {error.strerror or error}") from None


def renewal_due(
    certificate_pem: bytes,
    *,
    now: datetime.datetime | None = None,
    fraction: float = RENEW_AT_FRACTION,
) -> bool:
    """Whether a leaf has lived ``fraction`` of its lifetime and should be replaced."""
    from cryptography import x509

    certificate = x509.load_pem_x509_certificate(certificate_pem)
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    when = now or datetime.datetime.now(datetime.UTC)
    return when >= start + (end - start) * fraction

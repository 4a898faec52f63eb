"""The requester's side of a certificate: a new key and a CSR, for the bootstrap flow.

A container the manager did not launch makes a :func:`certificate_request`,
sends the CSR with its bootstrap token, and joins the answer with its key
(:meth:`CertificateRequest.leaf`) to write its leaf file. The key never leaves
the container.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from pycontainer.security._errors import SecurityError
from pycontainer.security._identity import Identity
from pycontainer.security._leaf import Leaf

# Shorter RSA keys are factorable with public means (NIST SP 800-131A: 2048 since 2014).
MIN_RSA_KEY_BITS = 2048


@dataclass(frozen=True)
class CertificateRequest:
    """A private key (kept) and the CSR for it (sent to the CA)."""

    private_key_pem: bytes
    csr_pem: bytes

    def leaf(self, certificate_chain_pem: bytes) -> Leaf:
        """The leaf made of this key and the certificate the CA returned for it."""
        try:
            certificate = x509.load_pem_x509_certificate(certificate_chain_pem)
        except ValueError as error:
            raise SecurityError(f"the CA's answer is not a PEM certificate: {error}") from None
        key = serialization.load_pem_private_key(self.private_key_pem, password=None)
        if certificate.public_key() != key.public_key():
            raise SecurityError("the CA's certificate is not for this request's key")
        return Leaf(self.private_key_pem, certificate_chain_pem)


def check_csr(csr_pem: bytes) -> None:
    """SecurityError unless ``csr_pem`` is one PEM CSR signed by its own key."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as error:
        raise SecurityError(f"the certificate signing request is not a PEM CSR: {error}") from None
    if not csr.is_signature_valid:
        raise SecurityError("the certificate signing request's signature does not match its key")
    key = csr.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_KEY_BITS:
        raise SecurityError(
            f"the certificate signing request's RSA key has {key.key_size} bits: use at least "
            f"{MIN_RSA_KEY_BITS} (or an EC P-256 key)"
        )


def certificate_request(identity: Identity | None = None) -> CertificateRequest:
    """A new EC P-256 key and a CSR, naming ``identity`` as a hint (the CA decides)."""
    key = ec.generate_private_key(ec.SECP256R1())
    common_name = identity.uri[-64:] if identity else "pycontainer bootstrap"
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    if identity is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]),
            critical=False,
        )
    csr = builder.sign(key, hashes.SHA256())
    return CertificateRequest(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        csr.public_bytes(serialization.Encoding.PEM),
    )

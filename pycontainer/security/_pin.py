"""A CA pin: the SHA-256 of the CA certificate's DER, written ``sha256:HEX``.

A joining container has no trust bundle yet; the operator gives it the pin
(``pycontainer token create`` prints it) and it accepts a join server only
if the chain that server presents holds the CA with that digest (kubeadm's
``--discovery-token-ca-cert-hash``).
"""

from __future__ import annotations

import hashlib
import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pycontainer.security._errors import SecurityError

PIN_PREFIX = "sha256:"
_HEX = re.compile(r"[0-9a-f]{64}")


def certificate_pin(certificate_pem: bytes) -> str:
    """The pin of the (first) PEM certificate given: ``sha256:`` and 64 hex digits."""
    certificate = x509.load_pem_x509_certificate(certificate_pem)
    return der_pin(certificate.public_bytes(serialization.Encoding.DER))


def der_pin(certificate_der: bytes) -> str:
    """The pin of a DER certificate."""
    return PIN_PREFIX + hashlib.sha256(certificate_der).hexdigest()


def parse_pin(text: str) -> str:
    """A pin in its normal form (lower-case hex, with the prefix); SecurityError if malformed."""
    value = text.strip().lower()
    digest = value.removeprefix(PIN_PREFIX)
    if not _HEX.fullmatch(digest):
        raise SecurityError(
            f"CA pin {text[:80]!r} is not sha256:<64 hex digits> as `pycontainer token create` "
            "prints it"
        )
    return PIN_PREFIX + digest

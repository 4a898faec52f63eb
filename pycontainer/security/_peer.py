"""The identity of the peer of a call, from its verified TLS client certificate.

gRPC puts what the handshake verified into the call's auth context: with
mutual TLS (:func:`pycontainer.security.server_credentials`), a client
certificate is only there if the trust bundle's CA signed it. Its SPIFFE ID
(``peer_spiffe_id``, set by gRPC when the certificate has exactly one URI SAN;
else the URI SANs in ``peer_uri``, else the certificate in ``x509_pem_cert``)
is the identity. A plaintext call, or a
certificate naming nothing in ``pycontainer.local``, has no identity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from cryptography import x509

from pycontainer.security._errors import SecurityError
from pycontainer.security._identity import Identity, parse_identity
from pycontainer.security._leaf import certificate_identity


class HasAuthContext(Protocol):
    """What both ``grpc.ServicerContext`` and ``grpc.aio.ServicerContext`` offer."""

    # grpc-stubs types the sync one as Mapping[str, bytes]; both hold lists of bytes.
    def auth_context(self) -> Mapping[str, Any]: ...


def identity_from_auth_context(auth: Mapping[str, Iterable[bytes]]) -> Identity | None:
    """The identity the verified peer certificate names, or None."""
    if [bytes(v) for v in auth.get("transport_security_type", ())] != [b"ssl"]:
        return None
    for key in ("peer_spiffe_id", "peer_uri"):
        for value in auth.get(key, ()):
            uri = bytes(value).decode("utf-8", "replace")
            if not uri.startswith("spiffe://"):
                continue
            try:
                return parse_identity(uri)
            except SecurityError:
                continue
    # gRPC versions or certificates without those properties: read the certificate itself.
    for pem in auth.get("x509_pem_cert", ()):
        try:
            return certificate_identity(x509.load_pem_x509_certificate(bytes(pem)))
        except ValueError:
            return None
    return None


def peer_identity(context: HasAuthContext) -> Identity | None:
    """The identity of the peer of this call (sync or asyncio servicer context), or None."""
    return identity_from_auth_context(context.auth_context())

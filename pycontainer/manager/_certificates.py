"""Manager.IssueCertificate: a user's certificate, signed by the manager's CA from a CSR.

The admin's way to give an operator a client certificate (``pycontainer
certificate create user/NAME``): the operator's key is made where the CLI runs
and only its CSR comes here; the CA signs it for the identity the request names
(never the names the CSR asks for), as Bootstrap.Join does for a container.

Only ``user/NAME`` identities are issued. A container gets its certificate from
the manager that launches it, or joins with a bootstrap token (which a
container id can be bound to); the manager's own identity is never given to a
client, since containers trust whoever holds it to command them. What the
identity may do is the manager's role bindings' affair: the response names the
roles it holds now (none unless bound with ``--role``).
"""

from __future__ import annotations

import datetime
import logging

from .. import limits
from .._errors import failed_precondition, invalid_argument
from ..security import Identity, SecurityError, check_csr, parse_identity
from ..units import duration_field, format_duration, timestamp_to_proto
from ..v1 import manager_pb2
from ._settings import ManagerSettings
from ._trust import Trust
from ._validation import check_message

_log = logging.getLogger("pycontainer.manager")

# A SPIFFE ID of a user is under 180 characters; anything longer is not one.
_MAX_IDENTITY_CHARS = 256


def _identity(text: str) -> Identity:
    """The user identity ``text`` names; INVALID_ARGUMENT (field ``identity``) otherwise."""
    if not text:
        raise invalid_argument("identity", "give the identity to name: user/NAME")
    if len(text) > _MAX_IDENTITY_CHARS:
        raise invalid_argument(
            "identity", f"{len(text)} characters: an identity is user/NAME, NAME at most 128"
        )
    try:
        identity = parse_identity(text)
    except SecurityError as exc:
        raise invalid_argument("identity", str(exc)) from None
    if identity.kind == "manager":
        raise invalid_argument(
            "identity",
            "the manager's identity is never issued to a client (containers obey whoever "
            "holds it): name a user, user/NAME",
        )
    if identity.kind == "container":
        raise invalid_argument(
            "identity",
            f"{identity} is a container's: the manager issues the containers it launches "
            "their certificates, and others join with a bootstrap token "
            f"(`pycontainer token create --name {identity.name}`); name a user, user/NAME",
        )
    return identity


def _ttl(
    request: manager_pb2.IssueCertificateRequest, default: datetime.timedelta
) -> datetime.timedelta:
    ttl = duration_field(request, "ttl")
    if ttl is None:
        return default
    bound = format_duration(limits.MAX_ISSUED_CERTIFICATE_TTL)
    if ttl <= datetime.timedelta(0):
        raise invalid_argument(
            "ttl", f"must be positive (at most {bound}), got {format_duration(ttl)}"
        )
    if ttl > limits.MAX_ISSUED_CERTIFICATE_TTL:
        raise invalid_argument(
            "ttl",
            f"must be at most {bound} (pycontainer.limits.MAX_ISSUED_CERTIFICATE_TTL), got "
            f"{format_duration(ttl)}",
        )
    return ttl


def _csr(text: str) -> bytes:
    csr = text.encode()
    if not csr:
        raise invalid_argument(
            "csr_pem", "give a PEM certificate signing request for the key you keep"
        )
    if len(csr) > limits.MAX_CSR_BYTES:
        raise invalid_argument(
            "csr_pem",
            f"{len(csr)} bytes, more than {limits.MAX_CSR_BYTES} "
            "(pycontainer.limits.MAX_CSR_BYTES): one CSR of an EC or RSA key is a few hundred",
        )
    try:
        check_csr(csr)
    except SecurityError as exc:
        raise invalid_argument("csr_pem", str(exc)) from None
    return csr


async def issue_certificate(
    request: manager_pb2.IssueCertificateRequest,
    trust: Trust,
    settings: ManagerSettings,
) -> manager_pb2.IssueCertificateResponse:
    """Check the request, sign its CSR for its identity, and say what roles that holds."""
    check_message(request, "")  # a Duration past timedelta's range, too
    identity = _identity(request.identity)
    csr = _csr(request.csr_pem)
    ttl = _ttl(request, settings.certificate_ttl)
    ca = trust.ca
    if ca is None:
        raise failed_precondition(
            "the manager serves without TLS (--insecure): it has no CA and checks no "
            "certificates; restart it without --insecure"
        )
    issued = await trust.sign(ca, csr, identity, ttl)
    roles = trust.authorizer.bindings.named_roles(identity)
    _log.info(
        "issued a certificate for %s, until %s (roles: %s)",
        identity,
        issued.not_after.isoformat(timespec="seconds"),
        ", ".join(roles) or "none",
    )
    return manager_pb2.IssueCertificateResponse(
        certificate_pem=issued.certificate_pem.decode(),
        trust_bundle_pem=ca.certificate_pem.decode(),
        identity=identity.uri,
        expire_time=timestamp_to_proto(issued.not_after),
        roles=roles,
    )


__all__ = ["issue_certificate"]

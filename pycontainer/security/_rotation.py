"""Keeping a peer's leaf file current: issued when missing, reissued before it expires.

The manager calls :func:`ensure_leaf` for its own certificate, the admin
identity's and each container it launches, at start and then periodically
(well within a leaf's lifetime, e.g. every few minutes): a file that is
missing, unreadable, for another identity or CA, short of a host, or past
:data:`~pycontainer.security._leaf.RENEW_AT_FRACTION` of its life is replaced
atomically, and servers built on it pick the new one up at the next handshake.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
from collections.abc import Iterable

from cryptography import x509

from pycontainer.security._ca import DEFAULT_LEAF_TTL, LOOPBACK_HOSTS, CertificateAuthority
from pycontainer.security._errors import SecurityError
from pycontainer.security._identity import Identity
from pycontainer.security._leaf import CredentialFiles, certificate_identity, renewal_due

_log = logging.getLogger(__name__)


def _names(certificate: x509.Certificate) -> set[str]:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(san.get_values_for_type(x509.DNSName)) | {
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    }


def _normal(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return host


def _stale_because(
    ca: CertificateAuthority,
    files: CredentialFiles,
    identity: Identity,
    hosts: Iterable[str],
    now: datetime.datetime | None,
) -> str | None:
    try:
        leaf, trust = files.read()
    except SecurityError as error:
        return str(error)
    if trust != ca.certificate_pem:
        return "the trust bundle is not this CA's"
    if not ca.issued(leaf.certificate_chain_pem):
        return "the certificate was not issued by this CA"
    certificate = leaf.certificate
    if certificate_identity(certificate) != identity:
        return f"the certificate is not {identity}'s"
    wanted = {_normal(host) for host in hosts}
    if identity.kind == "manager":
        wanted |= {_normal(host) for host in LOOPBACK_HOSTS}
    if not wanted <= _names(certificate):
        return f"the certificate does not name {', '.join(sorted(wanted - _names(certificate)))}"
    if renewal_due(leaf.certificate_chain_pem, now=now):
        return f"it is due for renewal (expires {certificate.not_valid_after_utc.isoformat()})"
    return None


def ensure_leaf(
    ca: CertificateAuthority,
    files: CredentialFiles,
    identity: Identity,
    *,
    ttl: datetime.timedelta = DEFAULT_LEAF_TTL,
    hosts: Iterable[str] = (),
    now: datetime.datetime | None = None,
) -> bool:
    """Make ``files`` hold a current leaf for ``identity`` from ``ca``; whether it wrote one."""
    hosts = list(hosts)
    reason = _stale_because(ca, files, identity, hosts, now)
    if reason is None:
        return False
    _log.info("issuing a certificate for %s into %s: %s", identity, files.leaf, reason)
    files.write(ca.issue(identity, ttl=ttl, hosts=hosts), ca.certificate_pem)
    return True

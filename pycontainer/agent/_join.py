"""Joining a manager that did not launch this container: a bootstrap token buys a certificate.

With a token (``ContainerSettings.bootstrap_token`` or
$PYCONTAINER_BOOTSTRAP_TOKEN) and no current certificate for this container
in its TLS directory, :func:`join` makes a key and a CSR and calls
Bootstrap.Join at the join address. The join server presents the manager's
CA in its TLS chain: it is fetched first without verification (the ssl
module), accepted only if its SHA-256 is the CA pin the operator gave, and
then used as the only root for the gRPC call that carries the token. The
answer is written atomically into the TLS directory (key 0600), which
$PYCONTAINER_TLS_DIR then names for this process, so that the Management
server and the manager session use mutual TLS as any launched container does.

The certificate lives as long as the manager's ``certificate_ttl`` (a day by
default). While the container holds a manager session, :func:`keep_renewed`
replaces it two-thirds into its life through Bootstrap.RenewCertificate on
the manager's main port, authenticated by the current certificate (the manager
signs only for that identity); servers reload it, new connections use it. At
a start past that point the container joins again if its token has uses left,
and keeps the current one otherwise (its session then renews it).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from .._tls_env import BOOTSTRAP_TOKEN_ENV, CA_PIN_ENV, JOIN_ENV, TLS_DIR_ENV
from ._settings import ContainerSettings

if TYPE_CHECKING:
    from cryptography import x509

    from ..security import CredentialFiles

_log = logging.getLogger("pycontainer")

#: How long the join (TLS handshake, then the call) may take.
JOIN_TIMEOUT = datetime.timedelta(seconds=15)
# A failed renewal is retried after this, doubling up to _LAST_RETRY (seconds).
_FIRST_RETRY = 1.0
_LAST_RETRY = 60.0


class JoinError(Exception):
    """The container cannot join: the message says why and what to change."""


def default_tls_dir(container_id: str) -> Path:
    """Where a joining container keeps its certificate when $PYCONTAINER_TLS_DIR is unset."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "pycontainer" / "tls" / container_id


def join_if_bootstrapping(settings: ContainerSettings) -> str | None:
    """With a bootstrap token: the TLS directory holding a current certificate for
    this container (joining first when it holds none), also set as
    $PYCONTAINER_TLS_DIR; None without a token. JoinError when it cannot."""
    token = settings.bootstrap_token or os.environ.get(BOOTSTRAP_TOKEN_ENV, "")
    if not token:
        return None
    address = settings.join_address or os.environ.get(JOIN_ENV, "")
    pin_text = settings.ca_pin or os.environ.get(CA_PIN_ENV, "")
    if not address or not pin_text:
        raise JoinError(
            f"a bootstrap token needs the join address (${JOIN_ENV}) and the CA pin "
            f"(${CA_PIN_ENV}) too: `pycontainer token create` prints all three"
        )
    from ..security import CredentialFiles, SecurityError, parse_pin

    try:
        pin = parse_pin(pin_text)
    except SecurityError as exc:
        raise JoinError(f"${CA_PIN_ENV}: {exc}") from None
    directory = Path(os.environ.get(TLS_DIR_ENV) or default_tls_dir(settings.id))
    files = CredentialFiles.in_directory(directory)
    state = _current(files, settings.id, pin)
    if state == "current":
        _log.info("using the certificate in %s (joined before)", directory)
    else:
        try:
            _join_any(files, settings.id, token, address, pin, name=settings.name)
        except JoinError as exc:
            if state != "due":
                raise
            _log.warning("keeping the current certificate in %s: %s", directory, exc)
    os.environ[TLS_DIR_ENV] = str(directory)
    return str(directory)


def _current(files: CredentialFiles, container_id: str, pin: str) -> str:
    """ "current", "due" (valid but past renewal time) or "missing" (absent, for
    another container or CA, or expired)."""
    from ..security import SecurityError, certificate_pin, container, renewal_due

    try:
        leaf, trust = files.read()
        if leaf.identity != container(container_id) or certificate_pin(trust) != pin:
            return "missing"
        certificate = leaf.certificate
    except (SecurityError, ValueError):
        return "missing"
    if datetime.datetime.now(datetime.UTC) >= certificate.not_valid_after_utc:
        return "missing"
    return "due" if renewal_due(leaf.certificate_chain_pem) else "current"


def _split(address: str) -> tuple[str, int]:
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or not host:
        raise JoinError(
            f"${JOIN_ENV} {address[:80]!r}: write HOST:PORT (several: HOST:PORT,HOST:PORT)"
        )
    return host.strip("[]"), int(port)


def pinned_ca(address: str, pin: str, timeout: float) -> bytes:
    """The CA certificate (PEM) the join server at ``address`` presents, if it is the
    one with ``pin``; JoinError otherwise (before anything secret is sent)."""
    from ..security import der_pin

    host, port = _split(address)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Unverified on purpose: the pin, not a trust store, decides (checked below).
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            chain = _unverified_chain(tls)
    except (OSError, ssl.SSLError) as exc:
        raise _Unreachable(f"cannot reach the join server at {address}: {exc}") from None
    for der in chain:
        if der_pin(der) == pin:
            return ssl.DER_cert_to_PEM_cert(der).encode()
    presented = ", ".join(der_pin(der)[:23] + "…" for der in chain) or "nothing"
    raise JoinError(
        f"refusing to join at {address}: its server does not present the CA with pin {pin} "
        f"(it presents {presented}); check ${CA_PIN_ENV} against what `pycontainer token "
        "create` printed, and that the address is your manager's join address"
    )


def _unverified_chain(tls: ssl.SSLSocket) -> list[bytes]:
    """The DER certificates the server sent (public in Python 3.13, private before)."""
    public = getattr(tls, "get_unverified_chain", None)
    if public is not None:
        return [bytes(c) for c in public()]
    chain = tls._sslobj.get_unverified_chain() or []  # type: ignore[attr-defined]
    return [c.public_bytes(ssl._ssl.ENCODING_DER) for c in chain]  # type: ignore[attr-defined]


class _Unreachable(JoinError):
    """Nothing answered at a join address (another may)."""


def _join_any(
    files: CredentialFiles, container_id: str, token: str, addresses: str, pin: str, *, name: str
) -> None:
    """Join at the first of the comma-separated ``addresses`` that answers:
    in high availability each manager's join address, of which only the
    leader's serves (standbys have none). A server that answers and refuses,
    or presents another CA, ends it there: the token is never sent on."""
    listed = [a.strip() for a in addresses.split(",")]
    for address in listed:
        _split(address)  # every one well formed before any is tried
    unreachable: list[str] = []
    for address in listed:
        try:
            _join(files, container_id, token, address, pin, name=name)
            return
        except _Unreachable as exc:
            unreachable.append(str(exc))
            _log.info("%s; trying the next join address", exc)
    raise JoinError("; ".join(unreachable))


def _join(
    files: CredentialFiles, container_id: str, token: str, address: str, pin: str, *, name: str
) -> None:
    from ..security import (
        MANAGER,
        SecurityError,
        certificate_pin,
        certificate_request,
        container,
        server_name_options,
    )
    from ..v1 import bootstrap_pb2, bootstrap_pb2_grpc

    timeout = JOIN_TIMEOUT.total_seconds()
    ca_pem = pinned_ca(address, pin, timeout)
    identity = container(container_id)
    request = certificate_request(identity)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    with grpc.secure_channel(address, credentials, server_name_options(MANAGER)) as channel:
        try:
            response = bootstrap_pb2_grpc.BootstrapStub(channel).Join(
                bootstrap_pb2.JoinRequest(
                    token=token,
                    csr_pem=request.csr_pem.decode(),
                    container_id=container_id,
                    container_name=name,
                ),
                timeout=timeout,
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:  # it went away meanwhile
                raise _Unreachable(
                    f"the join server at {address} is unavailable: {exc.details()}"
                ) from None
            raise JoinError(
                f"the manager at {address} refused the join: {exc.code().name}: {exc.details()}"
            ) from None
    trust = response.trust_bundle_pem.encode()
    try:
        if certificate_pin(trust) != pin:
            raise JoinError(f"the trust bundle from {address} is not the CA with pin {pin}")
        leaf = request.leaf(response.certificate_pem.encode())
        if leaf.identity != identity:
            raise JoinError(f"the certificate from {address} is not {identity}'s")
        files.store(leaf, trust)
    except (SecurityError, ValueError) as exc:
        raise JoinError(f"the answer of the join server at {address} is unusable: {exc}") from None
    except OSError as exc:
        raise JoinError(
            f"cannot write the certificate into {files.leaf.parent}: {exc.strerror or exc}; "
            f"set ${TLS_DIR_ENV} to a directory this user may write"
        ) from None
    _log.info("joined as %s: certificate in %s", identity, files.leaf.parent)


def renewal_time(certificate: x509.Certificate) -> datetime.datetime:
    """When a leaf is renewed: two thirds into its life, counted from its issue
    (the CA back-dates not-before by its clock skew allowance)."""
    from ..security import RENEW_AT_FRACTION
    from ..security._ca import CLOCK_SKEW

    end = certificate.not_valid_after_utc
    issued = min(certificate.not_valid_before_utc + CLOCK_SKEW, end)
    return issued + (end - issued) * RENEW_AT_FRACTION


async def keep_renewed(tls_dir: str, target: str) -> None:
    """Renew the joined certificate in ``tls_dir`` through the manager at ``target``
    (Bootstrap.RenewCertificate, mutual TLS with the current one) whenever it is
    due, for as long as the task runs (the manager session's)."""
    from ..security import CredentialFiles, SecurityError

    files = CredentialFiles.in_directory(tls_dir)
    retry = _FIRST_RETRY
    while True:
        try:
            leaf, _ = files.read()
            wait = (renewal_time(leaf.certificate) - _now()).total_seconds()
        except (SecurityError, ValueError):
            wait = 0.0
        if wait > 0:
            await asyncio.sleep(wait)
            continue  # look again: the file may have been replaced meanwhile
        try:
            await _renew(files, target)
            retry = _FIRST_RETRY
        except Exception as exc:  # any failure: retried, never the end of renewals
            _log.warning(
                "cannot renew the certificate in %s (retrying in %gs): %s", tls_dir, retry, exc
            )
            await asyncio.sleep(retry)
            retry = min(retry * 2, _LAST_RETRY)


async def _renew(files: CredentialFiles, target: str) -> None:
    from ..security import (
        MANAGER,
        SecurityError,
        certificate_request,
        channel_credentials,
        server_name_options,
    )
    from ..v1 import bootstrap_pb2, bootstrap_pb2_grpc

    try:
        current, _ = files.read()
        identity = current.identity
        credentials = channel_credentials(files)
    except SecurityError as exc:
        raise JoinError(str(exc)) from None
    if identity is None:
        raise JoinError(f"{files.leaf} names no pycontainer identity")
    request = certificate_request(identity)
    async with grpc.aio.secure_channel(
        target, credentials, options=server_name_options(MANAGER)
    ) as channel:
        try:
            response = await bootstrap_pb2_grpc.BootstrapStub(channel).RenewCertificate(
                bootstrap_pb2.RenewCertificateRequest(csr_pem=request.csr_pem.decode()),
                timeout=JOIN_TIMEOUT.total_seconds(),
            )
        except grpc.aio.AioRpcError as exc:
            raise JoinError(
                f"the manager at {target} refused the renewal: {exc.code().name}: {exc.details()}"
            ) from None
    try:
        leaf = request.leaf(response.certificate_pem.encode())
        if leaf.identity != identity:
            raise JoinError(f"the renewed certificate from {target} is not {identity}'s")
        files.store(leaf, response.trust_bundle_pem.encode())
    except (SecurityError, ValueError) as exc:
        raise JoinError(f"the renewal's answer from {target} is unusable: {exc}") from None
    except OSError as exc:
        raise JoinError(f"cannot write {files.leaf}: {exc.strerror or exc}") from None
    _log.info("renewed the certificate of %s in %s", identity, files.leaf.parent)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


__all__ = [
    "JOIN_TIMEOUT",
    "JoinError",
    "default_tls_dir",
    "join_if_bootstrapping",
    "keep_renewed",
    "pinned_ca",
    "renewal_time",
]

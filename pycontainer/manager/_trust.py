"""The manager's side of mutual TLS: its CA, the certificates it issues, who may call what.

On start (unless ``insecure``) the manager opens its CA (created in the state
directory on first start, or an external one from ``ca_cert``/``ca_key``) and
keeps these leaves current, renewing them before they expire:

- its own server (and client) certificate, in ``STATE/tls/manager``;
- the admin identity's, in ``STATE/admin`` (what the CLI finds by default);
- each container it launches, in ``STATE/tls/containers/<ID>``, passed to the program
  as ``$PYCONTAINER_TLS_DIR``.

Calls are authorized by role (pycontainer.security's bindings plus the
configured ones); a container registers only as the identity its certificate
names, and the manager dials a container that registered over mutual TLS with
its own certificate, checking the container's. ``insecure`` serves plaintext
and lets every call through.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from .._errors import RequestError, invalid_argument
from ..security import (
    DEFAULT_BINDINGS,
    MANAGER,
    AioAuthorizationInterceptor,
    Authorizer,
    Bindings,
    CertificateAuthority,
    CredentialFiles,
    Identity,
    IssuedCertificate,
    OnDenied,
    SecurityError,
    channel_credentials,
    check_registration,
    container,
    ensure_leaf,
    peer_identity,
    plaintext_warning,
    server_credentials,
    server_name_options,
    user,
)
from ..v1 import container_pb2, lifecycle_pb2
from ._exclusive import StartRefused, bind
from ._registry import Entry
from ._settings import ManagerSettings

_log = logging.getLogger("pycontainer.manager")

#: Where the admin identity's certificate goes, in the state directory.
ADMIN_DIR = "admin"
#: The admin identity: bound to the admin role by default.
ADMIN = user("admin")
_TLS_DIR = "tls"
# Under _TLS_DIR, beside the manager's own "manager" (whatever a container's id).
_CONTAINERS_DIR = "containers"
_WILDCARD_HOSTS = ("", "0.0.0.0", "[::]", "::")


def _listen_host(listen: str) -> str:
    host = listen.rpartition(":")[0]
    return host.strip("[]") if host.startswith("[") else host


class Trust:
    """The CA, the leaves and the authorizer of one manager."""

    def __init__(self, settings: ManagerSettings) -> None:
        self._settings = settings
        self.insecure = settings.insecure
        state = Path(settings.state_dir)
        self._state = state
        self.manager_files = CredentialFiles.in_directory(state / _TLS_DIR / "manager")
        self.admin_dir = state / ADMIN_DIR
        # Containers that registered over mutual TLS: dialled back with it.
        self._over_tls: set[str] = set()
        # Containers whose leaves this manager keeps current.
        self._issued: set[str] = set()
        self._ca: CertificateAuthority | None = None
        self.authorizer = Authorizer(
            DEFAULT_BINDINGS.merged(Bindings.from_mapping(settings.role_bindings))
        )

    @property
    def ca(self) -> CertificateAuthority | None:
        """The CA, once open() made or loaded it (None when insecure)."""
        return self._ca

    async def sign(
        self, ca: CertificateAuthority, csr_pem: bytes, identity: Identity, ttl: datetime.timedelta
    ) -> IssuedCertificate:
        """``csr_pem`` signed by ``ca`` for ``identity`` (a join, a renewal, a
        user's certificate), off the loop; INVALID_ARGUMENT on csr_pem when it
        cannot be."""
        try:
            return await asyncio.to_thread(ca.sign_csr, csr_pem, identity, ttl=ttl)
        except SecurityError as exc:
            raise invalid_argument("csr_pem", str(exc)) from None

    # -- start ------------------------------------------------------------------------
    def open(self) -> None:
        """Open the CA and issue what is missing or due; StartRefused saying why not."""
        if self.insecure:
            return
        settings = self._settings
        try:
            if settings.ca_cert or settings.ca_key:
                if not (settings.ca_cert and settings.ca_key):
                    raise SecurityError(
                        "an external CA needs both its certificate and its key "
                        "(--ca-cert and --ca-key)"
                    )
                self._ca = CertificateAuthority.load(settings.ca_cert, settings.ca_key)
            else:
                self._ca = CertificateAuthority.open(self._state)
            # What an earlier manager issued: the containers it launched keep
            # running and reconnect with these, so they are renewed too.
            issued = self._state / _TLS_DIR / _CONTAINERS_DIR
            if issued.is_dir():
                self._issued.update(d.name for d in issued.iterdir() if d.is_dir())
            self.renew()
        except (SecurityError, OSError) as exc:
            raise StartRefused(f"cannot set up mutual TLS: {exc}") from None

    def interceptors(
        self, on_denied: OnDenied | None = None
    ) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
        """The server's first interceptors: authorization (none when insecure),
        telling ``on_denied`` of each refused call."""
        if self.insecure:
            return []
        return [AioAuthorizationInterceptor(self.authorizer, on_denied=on_denied)]

    def bind(self, server: grpc.aio.Server, listen: str) -> int:
        """Add ``listen`` to ``server``: mutual TLS, or plaintext with a warning when exposed."""
        if self.insecure:
            port = bind(server, listen)
            warning = plaintext_warning(listen)
            if warning:  # once it listens: an address it cannot serve is one line
                _log.warning("%s", warning)
            return port
        return bind(server, listen, server_credentials(self.manager_files))

    # -- the leaves -------------------------------------------------------------------
    def _hosts(self) -> list[str]:
        host = _listen_host(self._settings.listen)
        return [] if host in _WILDCARD_HOSTS else [host]

    def renew(self) -> None:
        """Reissue every leaf this manager keeps that is missing or due (blocking file I/O)."""
        ca = self._ca
        if ca is None:
            return
        ttl = self._settings.certificate_ttl
        ensure_leaf(ca, self.manager_files, MANAGER, ttl=ttl, hosts=self._hosts())
        ensure_leaf(ca, CredentialFiles.in_directory(self.admin_dir), ADMIN, ttl=ttl)
        for container_id in list(self._issued):
            directory = self._container_dir(container_id)
            try:
                if directory.exists():
                    files = CredentialFiles.in_directory(directory)
                    ensure_leaf(ca, files, container(container_id), ttl=ttl)
            except SecurityError as exc:  # not an id a certificate can name: not ours
                _log.warning("not renewing %s: %s", directory, exc)
                self._issued.discard(container_id)

    async def renewals(self) -> None:
        """Renew the leaves periodically, for as long as the manager runs."""
        if self._ca is None:
            return
        interval = self._settings.certificate_renewal_check.total_seconds()
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.renew)
            except (SecurityError, OSError) as exc:
                _log.error("cannot renew the TLS certificates (retrying): %s", exc)

    def _container_dir(self, container_id: str) -> Path:
        return (self._state / _TLS_DIR / _CONTAINERS_DIR / container_id).resolve()

    def issue_container(self, container_id: str) -> str:
        """The directory with a current leaf for a container about to launch ("" when insecure)."""
        if self._ca is None:
            return ""
        directory = self._container_dir(container_id)
        try:
            ensure_leaf(
                self._ca,
                CredentialFiles.in_directory(directory),
                container(container_id),
                ttl=self._settings.certificate_ttl,
            )
        except SecurityError as exc:
            raise ValueError(f"cannot issue its certificate: {exc}") from None
        self._issued.add(container_id)
        return str(directory)

    def forget(self, container_id: str) -> None:
        """A purged container's certificate goes with it."""
        self._issued.discard(container_id)
        self._over_tls.discard(container_id)
        try:
            container(container_id)  # a name that is one path segment, never "..": ours
        except SecurityError:
            return
        shutil.rmtree(self._container_dir(container_id), ignore_errors=True)

    # -- sessions and dialling back -------------------------------------------------
    async def checked_session(
        self,
        requests: AsyncIterator[lifecycle_pb2.ConnectRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[lifecycle_pb2.ConnectRequest]:
        """The session's messages, its registration checked against the peer's certificate."""
        first = await anext(aiter(requests), None)
        if first is None:
            return
        if not self.insecure and first.WhichOneof("message") == "register":
            container_id = first.register.identity.id
            denial = check_registration(peer_identity(context), container_id)
            if denial is not None:
                raise RequestError(denial.code, denial.message)
            self._over_tls.add(container_id)
        yield first
        async for request in requests:
            yield request

    def container_channel(self, entry: Entry) -> grpc.aio.Channel:
        """A channel to the container's Management endpoint: mutual TLS, checking
        the container's certificate, when it registered with one."""
        address = entry.management_address()
        # Its claim of TLS is trusted only from a session its certificate proved.
        served_tls = any(
            e.tls
            for e in entry.identity.endpoints
            if e.kind == container_pb2.ENDPOINT_KIND_MANAGEMENT
        )
        if entry.id not in self._over_tls or self._ca is None or not served_tls:
            return grpc.aio.insecure_channel(address)
        try:
            options = server_name_options(container(entry.id))
            credentials = channel_credentials(self.manager_files)
        except SecurityError as exc:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION, f"cannot dial {entry.id}: {exc}"
            ) from None
        return grpc.aio.secure_channel(address, credentials, options=options)


__all__ = ["ADMIN", "ADMIN_DIR", "Trust"]

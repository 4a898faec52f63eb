"""gRPC credentials from a peer's TLS files: mTLS servers that reload, clients, plaintext.

:func:`server_credentials` requires a client certificate from the trust
bundle's CA (mutual TLS) and rereads the files whenever they change: gRPC asks
the fetcher before every new connection's handshake, so a rotated leaf is used
from the next connection on, with no restart. Established connections keep the
certificate they were made with.

Clients (:func:`channel_credentials`) read the files when a channel is made;
after a rotation, a new channel uses the new leaf. :func:`server_name_options`
makes a client check a server's certificate against the identity it means to
reach, whatever address it dials. :func:`plaintext_warning` says what to warn
about when a server is asked to listen without TLS.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import cast

import grpc

from pycontainer.security._errors import SecurityError
from pycontainer.security._identity import Identity
from pycontainer.security._leaf import CredentialFiles

_log = logging.getLogger(__name__)

_Signature = tuple[tuple[int, int, int, int], ...]


class _ReloadingConfiguration:
    """The server's certificate configuration, reread when the files change."""

    def __init__(self, files: CredentialFiles, *, send_trust_bundle: bool = False) -> None:
        self._files = files
        self._send_trust_bundle = send_trust_bundle
        self._lock = threading.Lock()
        self._signature = self._stat()
        self.initial = self._load()

    def _stat(self) -> _Signature:
        stats = (os.stat(self._files.leaf), os.stat(self._files.trust))
        return tuple((s.st_ino, s.st_mtime_ns, s.st_size, s.st_ctime_ns) for s in stats)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        leaf, trust = self._files.read()
        chain = leaf.certificate_chain_pem
        if self._send_trust_bundle:  # a client without the CA yet checks it against a pin
            chain = chain.rstrip(b"\n") + b"\n" + trust
        return grpc.ssl_server_certificate_configuration(
            [(leaf.private_key_pem, chain)], root_certificates=trust
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's fetcher: a new configuration when the files changed, else None."""
        # Called from gRPC's threads before each handshake: it must never raise,
        # and a bad file must not take the server's current certificate away.
        try:
            with self._lock:
                signature = self._stat()
                if signature == self._signature:
                    return None
                self._signature = signature
                configuration = self._load()
        except (OSError, SecurityError) as error:
            _log.warning("keeping the current TLS certificate: %s", error)
            return None
        _log.info("TLS certificate reloaded from %s", self._files.leaf)
        return configuration


def server_credentials(
    files: CredentialFiles,
    *,
    require_client_certificate: bool = True,
    send_trust_bundle: bool = False,
) -> grpc.ServerCredentials:
    """TLS server credentials from ``files``, reloaded on change.

    With ``require_client_certificate`` (the default) the handshake fails for a
    client without a certificate signed by the trust bundle's CA: mutual TLS.
    ``send_trust_bundle`` appends the CA certificate(s) to the chain the server
    presents (the join server: a joiner checks them against its CA pin).
    Raises :class:`SecurityError` if the files cannot be used now.
    """
    try:
        configuration = _ReloadingConfiguration(files, send_trust_bundle=send_trust_bundle)
    except OSError as error:
        raise SecurityError(f"cannot read the TLS files: {error}") from None
    # grpc-stubs says the fetcher returns a configuration; grpcio documents None as "no change".
    fetch = cast("Callable[[], grpc.ServerCertificateConfiguration]", configuration.fetch)
    return grpc.dynamic_ssl_server_credentials(
        configuration.initial,
        fetch,
        require_client_authentication=require_client_certificate,
    )


def channel_credentials(files: CredentialFiles) -> grpc.ChannelCredentials:
    """TLS client credentials: the peer's own leaf (for mTLS) and the CA it trusts."""
    leaf, trust = files.read()
    return grpc.ssl_channel_credentials(
        root_certificates=trust,
        private_key=leaf.private_key_pem,
        certificate_chain=leaf.certificate_chain_pem,
    )


def server_name_options(identity: Identity) -> list[tuple[str, str]]:
    """Channel options that check the server's certificate names ``identity``.

    The TLS handshake then fails unless the server holds a certificate the CA
    issued to that identity, whatever address was dialled (a container's
    registered endpoint is only a claim).
    """
    name = identity.dns_name
    if name is None:
        raise SecurityError(
            f"{identity} has no DNS name a server certificate could be checked against"
        )
    return [("grpc.ssl_target_name_override", name)]


def _host(address: str) -> str:
    if address.startswith("[") and "]" in address:
        return address[1 : address.index("]")]
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit():
        return address
    return host


def is_loopback(address: str) -> bool:
    """Whether a listen address (``host:port``, ``[v6]:port``, ``unix:path``) is local only."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = _host(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plaintext_warning(addresses: str | Sequence[str]) -> str | None:
    """The warning to log for plaintext listeners that can be reached from other machines.

    ``None`` when every address is loopback (or a unix socket): only local
    processes can reach them. Otherwise a message naming the addresses and the
    fix. An empty host or ``0.0.0.0``/``[::]`` listens on every interface.
    """
    listed = [addresses] if isinstance(addresses, str) else list(addresses)
    exposed = [address for address in listed if not is_loopback(address)]
    if not exposed:
        return None
    return (
        f"serving without TLS on {', '.join(exposed)}: anyone who can reach "
        f"{'it' if len(exposed) == 1 else 'them'} can call every method unauthenticated; "
        "drop --insecure to use mutual TLS, or listen on 127.0.0.1 only"
    )


def health_port_warning(listen: str, subject: str) -> str | None:
    """What to warn of when a plaintext grpc.health.v1 port (a container's or
    the manager's) is reachable from other machines; None on loopback (or a
    unix socket). Not plaintext_warning's: that port serves health alone."""
    if is_loopback(listen):
        return None
    return (
        f"serving grpc.health.v1 without TLS on {listen}: anyone who can reach it "
        f"learns whether {subject} serves (health alone, no other method); "
        "listen on 127.0.0.1 unless a prober elsewhere (kubelet) needs it"
    )

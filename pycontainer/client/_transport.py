"""How a client reaches a server: mutual TLS with a certificate from the manager's CA
(the default for the manager), or plaintext when asked for.

The manager's client certificate is found in this order: the directory given
(``--cert-dir``), ``$PYCONTAINER_TLS_DIR``, then ``state/admin`` (the admin
identity the manager issues at its first start in its default state
directory, ``state``). ``--insecure`` or ``$PYCONTAINER_INSECURE=1`` dials
plaintext, for a manager started with ``--insecure``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._tls_env import INSECURE_ENV, TLS_DIR_ENV, truthy

if TYPE_CHECKING:
    from collections.abc import Sequence

    import grpc

    from ..security import Identity

__all__ = [
    "DEFAULT_CERT_DIR",
    "PLAINTEXT",
    "Transport",
    "TransportError",
    "manager_transport",
]

#: Where the admin certificate is when the manager runs in the default state directory.
DEFAULT_CERT_DIR = os.path.join("state", "admin")

_WHAT_TO_PASS = (
    "pass --cert-dir DIR with the manager's STATE_DIR/admin (or set $PYCONTAINER_TLS_DIR), "
    "or --insecure for a manager started with --insecure"
)


class TransportError(ValueError):
    """No usable client certificate; the message says what to pass."""


@dataclass(frozen=True)
class Transport:
    """Plaintext (no ``cert_dir``), or mutual TLS with the leaf and trust bundle in
    ``cert_dir``, checking that the server's certificate names ``server``."""

    cert_dir: Path | None = None
    server: Identity | None = None

    @property
    def secure(self) -> bool:
        return self.cert_dir is not None

    def _credentials(self) -> tuple[grpc.ChannelCredentials, list[tuple[str, Any]]]:
        from ..security import (
            CredentialFiles,
            SecurityError,
            channel_credentials,
            server_name_options,
        )

        assert self.cert_dir is not None
        try:
            # Read now: a new channel uses a rotated certificate.
            credentials = channel_credentials(CredentialFiles.in_directory(self.cert_dir))
        except SecurityError as exc:
            raise TransportError(f"no usable client certificate: {exc}; {_WHAT_TO_PASS}") from None
        try:
            options = server_name_options(self.server) if self.server is not None else []
        except SecurityError as exc:
            raise TransportError(f"cannot check the server's certificate: {exc}") from None
        return credentials, list(options)

    def channel(self, target: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A blocking channel to ``target``."""
        import grpc

        if not self.secure:
            return grpc.insecure_channel(target, options=list(options))
        credentials, names = self._credentials()
        return grpc.secure_channel(target, credentials, options=[*options, *names])

    def aio_channel(self, target: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        """An asyncio channel to ``target``."""
        import grpc

        if not self.secure:
            return grpc.aio.insecure_channel(target, options=list(options))
        credentials, names = self._credentials()
        return grpc.aio.secure_channel(target, credentials, options=[*options, *names])

    def hint(self, details: str) -> str:
        """What to try when a call failed with ``details`` before reaching the server
        ("" when nothing points at the transport: a server that is down)."""
        if "Connection refused" in details or "DNS resolution failed" in details:
            return ""
        if self.secure:
            expired = self._expired()
            if expired:
                # The server ends the handshake of an expired certificate: say so.
                when, who = expired
                return (
                    f"the client certificate in {self.cert_dir} expired at {when}: have an "
                    f"admin issue a new one (pycontainer certificate create {who} --out "
                    f"{self.cert_dir} --force)"
                )
            return (
                f"with the client certificate in {self.cert_dir}: pass --cert-dir with this "
                "manager's STATE_DIR/admin, or --insecure for a manager started with --insecure"
            )
        return (
            "dialled without TLS; if the manager serves mutual TLS (its default), pass "
            "--cert-dir STATE_DIR/admin (or set $PYCONTAINER_TLS_DIR)"
        )

    def _expired(self) -> tuple[str, str] | None:
        """When the certificate in ``cert_dir`` expired (UTC) and whom it names
        (user/NAME), or None if it has not (or cannot be read: the other hint
        applies then)."""
        import datetime

        from ..security import CredentialFiles, SecurityError

        assert self.cert_dir is not None
        try:
            leaf, _ = CredentialFiles.in_directory(self.cert_dir).read()
            end = leaf.certificate.not_valid_after_utc
        except (SecurityError, ValueError, OSError):
            return None
        if end > datetime.datetime.now(datetime.UTC):
            return None
        who = leaf.identity
        named = f"{who.kind}/{who.name}" if who is not None and who.name else "user/NAME"
        return end.strftime("%Y-%m-%d %H:%M:%S UTC"), named


#: Plaintext, for servers started with --insecure (and containers without TLS).
PLAINTEXT = Transport()


def manager_transport(
    cert_dir: str | os.PathLike[str] | None = None, *, insecure: bool = False
) -> Transport:
    """How to dial the manager: plaintext with ``insecure`` (or $PYCONTAINER_INSECURE),
    else mutual TLS with the certificate in ``cert_dir``, $PYCONTAINER_TLS_DIR or
    ``state/admin``; TransportError saying what to pass when there is none."""
    from ..security import LEAF_FILE, MANAGER, TRUST_FILE

    if insecure or (cert_dir is None and truthy(os.environ.get(INSECURE_ENV))):
        return PLAINTEXT
    if cert_dir is not None:
        directory, source = Path(cert_dir), "--cert-dir"
    elif os.environ.get(TLS_DIR_ENV):
        directory, source = Path(os.environ[TLS_DIR_ENV]), f"${TLS_DIR_ENV}"
    else:
        directory, source = Path(DEFAULT_CERT_DIR), "the default"
    missing = [name for name in (LEAF_FILE, TRUST_FILE) if not (directory / name).is_file()]
    if missing:
        raise TransportError(
            f"no client certificate in {directory} ({source}; {' and '.join(missing)} "
            f"missing): {_WHAT_TO_PASS}"
        )
    return Transport(directory, MANAGER)

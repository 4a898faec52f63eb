"""Binding a server to an address: exclusively (no port shared by accident),
with mutual TLS or in plaintext, and a clear error when it cannot listen."""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

import grpc

__all__ = [
    "EXCLUSIVE_PORT",
    "SERVER_OPTIONS",
    "ListenError",
    "advertised_address",
    "listen_on",
    "listen_socket",
]

#: grpc-core sets SO_REUSEPORT by default, so a second server on a port in use
#: starts "fine" and the kernel splits the connections between the two. Every
#: server pycontainer runs binds exclusively; give this to the app's own too.
EXCLUSIVE_PORT: tuple[str, int] = ("grpc.so_reuseport", 0)

# Options of every server pycontainer builds. Exclusive binding (see above);
# keepalive lets a dead watcher's stream be noticed.
SERVER_OPTIONS: Sequence[tuple[str, int]] = (
    EXCLUSIVE_PORT,
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
)


class ListenError(OSError):
    """A server could not listen where it was told (the message says why)."""


def listen_on(
    server: grpc.Server | grpc.aio.Server,
    listen: str,
    *,
    tls_dir: str | None = None,
    credentials: grpc.ServerCredentials | None = None,
) -> int:
    """Bind ``server`` (built with :data:`EXCLUSIVE_PORT`) to ``listen``
    (HOST:PORT, port 0 for any free one); returns the port. With ``tls_dir``
    (a directory with ``tls.pem`` and ``ca.pem``, as $PYCONTAINER_TLS_DIR
    names) it serves mutual TLS, rereading the files when they are renewed;
    ``credentials`` gives server credentials of the caller's own instead.

    Raises :class:`ListenError` naming the address when the port is out of
    range, the host does not resolve or is not this machine's, the port is
    already in use (rather than grpc-core's generic failure and its lines of
    C++ logging), or ``tls_dir``'s files cannot be served. Every server
    pycontainer runs binds through here.
    """
    host, port_number = _host_port(listen)
    _refuse_if_unservable(host, port_number, listen)
    if tls_dir and credentials is None:
        from ..security import CredentialFiles, SecurityError, server_credentials

        try:
            credentials = server_credentials(CredentialFiles.in_directory(tls_dir))
        except SecurityError as exc:  # files missing, unreadable, too open, not PEM
            raise ListenError(
                errno.EINVAL,
                f"cannot serve mutual TLS on {listen}: {exc} (the TLS directory {tls_dir}, "
                "$PYCONTAINER_TLS_DIR, must hold tls.pem and ca.pem as a manager writes them)",
            ) from None
    try:
        if credentials is not None:
            port = server.add_secure_port(listen, credentials)
        else:
            port = server.add_insecure_port(listen)
    except RuntimeError:
        port = 0
    if port == 0:
        raise ListenError(
            errno.EADDRINUSE,
            f"cannot listen on {listen}: the address is in use or not available here",
        )
    return port


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port_text = listen.rpartition(":")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ListenError(
            errno.EINVAL,
            f"cannot listen on {listen!r}: write HOST:PORT with a port from 0 to 65535",
        )
    return host, int(port_text)


def listen_socket(listen: str) -> socket.socket:
    """A listening TCP socket on ``listen`` (HOST:PORT, port 0 for a free
    one) for a server that is no gRPC server (the HTTP face), bound as
    :func:`listen_on` binds: exclusively (SO_REUSEADDR, never SO_REUSEPORT),
    with the same :class:`ListenError` messages when it cannot."""
    host, port = _host_port(listen)
    _refuse_if_unservable(host, port, listen)
    name = host.strip("[]")
    family, kind, proto, _, address = socket.getaddrinfo(
        name or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        # Taken between the check above and this bind.
        raise ListenError(
            exc.errno or errno.EINVAL, f"cannot listen on {listen}: {exc.strerror}"
        ) from None
    sock.setblocking(False)
    return sock


def _refuse_if_unservable(host: str, port: int, listen: str) -> None:
    """Fail with a clear message when ``host`` does not resolve or is not this
    machine's, or something already listens on host:port."""
    name = host.strip("[]")
    try:
        infos = socket.getaddrinfo(
            name or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (OSError, UnicodeError) as exc:
        raise ListenError(
            errno.EINVAL, f"cannot listen on {listen}: cannot resolve {host!r} ({exc})"
        ) from None
    if port == 0:
        return
    for family, kind, proto, _, address in infos:
        # Bound as grpc-core binds (SO_REUSEADDR: TIME_WAIT is no owner).
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ListenError(
                        errno.EADDRINUSE,
                        f"cannot listen on {listen}: the address is in use "
                        "(is another server already running there?)",
                    ) from None
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise ListenError(
                        errno.EADDRNOTAVAIL,
                        f"cannot listen on {listen}: {host!r} is not an address of this machine",
                    ) from None
                raise ListenError(
                    exc.errno or errno.EINVAL, f"cannot listen on {listen}: {exc.strerror}"
                ) from None


def advertised_address(listen: str, port: int) -> str:
    """The address to advertise for a server bound to ``listen`` on ``port``:
    a wildcard host (every interface) is advertised as loopback."""
    host = listen.rsplit(":", 1)[0] or "127.0.0.1"
    if host in ("[::]", "0.0.0.0", ""):
        host = "127.0.0.1"
    return f"{host}:{port}"

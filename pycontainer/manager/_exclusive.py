"""One manager per address and per state directory.

grpc-core sets SO_REUSEPORT on its listening sockets by default, so a second
server on a port in use binds too and the kernel shares the connections
between them; every server the manager runs is built with SERVER_OPTIONS'
``grpc.so_reuseport`` 0 and so binds alone. Two managers on one state
directory would share its SQLite state and its containers' logs: the first
holds an exclusive lock on ``manager.lock`` there for its life (the kernel
lets go of it when the process ends, however it ends).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from pathlib import Path

import grpc

LOCK_FILE = "manager.lock"


class StartRefused(OSError):
    """The manager cannot start; the message says why in one line."""


class StateLock:
    """The exclusive lock on a state directory, held until release()."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        directory = Path(state_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / LOCK_FILE
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            by = f" (pid {holder})" if holder.isdigit() else ""
            raise StartRefused(
                f"state directory {str(directory.resolve())!r} is in use by another "
                f"manager{by}: stop that one, or give this one another --state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the lock
            self._fd = None


def _check_address(listen: str) -> None:
    """StartRefused unless ``listen`` is a HOST:PORT that can be served now:
    said before grpc-core tries, which would log lines of its own about it
    (and take a port past 65535 modulo 65536)."""
    name, colon, port = listen.rpartition(":")
    if not colon or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise StartRefused(
            f"cannot listen on {listen!r}: give HOST:PORT with a port from 0 to 65535 "
            "(0 picks a free one), such as 127.0.0.1:50050"
        )
    host = name.strip("[]") or None
    try:
        addresses = socket.getaddrinfo(
            host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (OSError, UnicodeError) as exc:
        raise StartRefused(f"cannot listen on {listen}: cannot resolve {name!r} ({exc})") from None
    if int(port) == 0:
        return
    for family, kind, proto, _, address in addresses:
        # Bound as grpc-core binds (SO_REUSEADDR, without SO_REUSEPORT).
        with contextlib.closing(socket.socket(family, kind, proto)) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise StartRefused(
                        f"cannot listen on {listen}: the address is already in use "
                        "(another manager?): stop that one, or give this one another --listen"
                    ) from None
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise StartRefused(
                        f"cannot listen on {listen}: {name!r} is not an address of this machine"
                    ) from None


def bind(
    server: grpc.aio.Server, listen: str, credentials: grpc.ServerCredentials | None = None
) -> int:
    """Add ``listen`` to ``server`` (with TLS ``credentials``, else plaintext);
    its port. StartRefused, in one line, when the address is in use or cannot
    be served."""
    _check_address(listen)
    try:
        if credentials is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        raise StartRefused(f"cannot listen on {listen}: give a free HOST:PORT to --listen")
    return port


__all__ = ["LOCK_FILE", "StartRefused", "StateLock", "bind"]

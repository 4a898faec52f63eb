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

import errno
import fcntl
import os
from pathlib import Path

import grpc

from ..agent._serve import ListenError, listen_on

LOCK_FILE = "manager.lock"


class StartRefused(OSError):
    """The manager cannot start; the message says why in one line."""


def unusable_state_dir(state_dir: str | os.PathLike[str], exc: OSError) -> StartRefused:
    """The one line a state directory that cannot be made or written gives:
    what, where, what to do."""
    where = str(Path(state_dir).absolute())
    return StartRefused(
        f"cannot use the state directory {where!r}: {exc.strerror or exc}: "
        "make it writable, or give another --state-dir"
    )


class StateLock:
    """The exclusive lock on a state directory, held until release()."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        directory = Path(state_dir)
        self.path = directory / LOCK_FILE
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise unusable_state_dir(directory, exc) from None
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


def bind(
    server: grpc.aio.Server,
    listen: str,
    credentials: grpc.ServerCredentials | None = None,
    *,
    flag: str = "--listen",
) -> int:
    """Add ``listen`` to ``server`` (with TLS ``credentials``, else plaintext);
    its port. StartRefused, in one line, when the address is in use or cannot
    be served (the checks are every server's: pycontainer.agent's listen_on),
    naming ``flag``, the option that gave the address."""
    try:
        return listen_on(server, listen, credentials=credentials)
    except ListenError as exc:
        raise refusal(exc, flag) from None


def refusal(exc: ListenError, flag: str) -> StartRefused:
    """The one line a manager refuses its start with when it cannot listen
    where ``flag`` said: every server's message, and the manager's own advice
    when the address is in use."""
    if exc.errno == errno.EADDRINUSE:
        return StartRefused(
            f"{exc.strerror}; it is already in use (another manager?): stop that one, "
            f"or give this one another {flag}"
        )
    return StartRefused(exc.strerror)


__all__ = ["LOCK_FILE", "StartRefused", "StateLock", "bind", "refusal", "unusable_state_dir"]

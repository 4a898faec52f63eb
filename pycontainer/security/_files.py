"""Writing and reading secret files: atomically, owner-only, refused when exposed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pycontainer.security._errors import SecurityError

PRIVATE_MODE = 0o600


def write_atomic(path: Path, data: bytes, mode: int = PRIVATE_MODE) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new file, never half.

    The temporary file is created with ``mode`` from the start (never briefly
    readable by others) in the same directory, flushed to disk, then renamed.
    """
    import tempfile  # (a client that only reads its certificate needs none of it)

    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def create_exclusive(path: Path, data: bytes, mode: int = PRIVATE_MODE) -> None:
    """Create ``path`` with ``data``; fail with FileExistsError if it already exists.

    Written to a temporary file first and published with ``link`` (which, like
    ``O_EXCL``, never replaces an existing file), so the file is never seen half written.
    """
    import tempfile

    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.link(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)


def read_private(path: Path, what: str) -> bytes:
    """The bytes of a private-key file, refused when group or others may read or write it."""
    try:
        with path.open("rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            if mode & 0o077:
                raise SecurityError(
                    f"{what} {path} is accessible by group or others "
                    f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
                )
            return file.read()
    except FileNotFoundError:
        raise SecurityError(f"{what} {path} does not exist") from None
    except PermissionError:
        raise SecurityError(f"{what} {path} cannot be read by this user") from None


def read_public(path: Path, what: str) -> bytes:
    """The bytes of a certificate file, with a clear error when it is missing."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SecurityError(f"{what} {path} does not exist") from None
    except PermissionError:
        raise SecurityError(f"{what} {path} cannot be read by this user") from None

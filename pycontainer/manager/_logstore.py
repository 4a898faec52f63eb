"""What the containers the manager launched wrote, kept in its state directory.

``<state>/logs/<container id>/`` holds the current run (``current.log``, and
``current.log.1`` once rotated) and the run before the last restart
(``previous.log`` and ``previous.log.1``), in the relay's format (_logrelay:
one JSON object per line with seq, time_ns, stream and text). So a container
keeps at most four files of _logrelay.MAX_FILE_BYTES: bounded, and there after
its process, and the manager, have gone.

A line becomes an entry when it is read (the relay imports nothing of
pycontainer), by :func:`pycontainer.logtext.read_line`: one in a format of
Python's logging gets the level, logger, message and time the app's own
logging gave it, so the filters pick what they would from a live container's
Management API; any other keeps its text, with the level of the sidecar's
rules (INFO on stdout, WARN on stderr by default) and no logger. Either keeps
its stream in the ``log.iostream`` attribute.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from ..agent._logs import BufferedEntry
from ..logtext import STDERR_DEFAULT, STDOUT_DEFAULT, PrintedStream
from . import _logrelay
from ._logrelay import CURRENT, ENDED, PREVIOUS, rotated

_RELAY = Path(_logrelay.__file__)
# The level of a line that says none, by stream (as the sidecar's).
_DEFAULT_LEVEL = {"stdout": STDOUT_DEFAULT, "stderr": STDERR_DEFAULT}


class _Streams(dict[str, PrintedStream]):
    """A run's streams, each read in order (a traceback goes with its record)."""

    def __missing__(self, stream: str) -> PrintedStream:
        reader = self[stream] = PrintedStream(_DEFAULT_LEVEL.get(stream, STDOUT_DEFAULT))
        return reader


def _entry(line: bytes, streams: _Streams) -> BufferedEntry | None:
    """One relay record; None for a line that is not one (cut by a crash)."""
    try:
        record = json.loads(line)
        stream = str(record["stream"])
        printed = streams[stream].read(str(record["text"]), int(record["time_ns"]))
        return BufferedEntry(
            sequence=int(record["seq"]),
            time_ns=printed.time_ns,
            severity=printed.level.number,
            severity_text=printed.level.text,
            logger=printed.logger,
            message=printed.message,
            attributes=MappingProxyType({"log.iostream": stream}),
        )
    except (ValueError, KeyError, TypeError):
        return None


def _read_lines(path: Path, offset: int, streams: _Streams) -> tuple[list[BufferedEntry], int]:
    """The records of ``path`` from ``offset`` to its last complete line, and
    the offset after it (a line still being written is left for later)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    read = (_entry(line, streams) for line in data[:end].splitlines())
    entries = [e for e in read if e is not None]
    return entries, offset + end


@dataclass
class Tail:
    """A cursor at the end of a run's log: what was appended since, across a
    rotation."""

    path: Path
    inode: int | None
    offset: int
    streams: _Streams

    def read(self) -> list[BufferedEntry]:
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            return []
        entries: list[BufferedEntry] = []
        if inode != self.inode:
            if self.inode is not None:
                # Rotated: the rest of the file followed so far, then the new one.
                old = Path(rotated(str(self.path)))
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(old).st_ino == self.inode:
                        entries += _read_lines(old, self.offset, self.streams)[0]
            self.inode, self.offset = inode, 0
        more, self.offset = _read_lines(self.path, self.offset, self.streams)
        return entries + more


class LogStore:
    """The retained output of every launched container, under ``root``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def directory(self, container_id: str) -> Path:
        if not container_id or "/" in container_id or container_id in (".", ".."):
            raise ValueError(f"{container_id!r} is not a container id")
        return self.root / container_id

    # -- writing ---------------------------------------------------------------------
    def new_run(self, container_id: str) -> Path:
        """Make room for a new run: the current one becomes the previous one
        (the one before it is dropped). Returns the container's directory."""
        directory = self.directory(container_id)
        directory.mkdir(parents=True, exist_ok=True)
        for name in (PREVIOUS, rotated(PREVIOUS), ENDED):
            with contextlib.suppress(FileNotFoundError):
                (directory / name).unlink()
        for old, new in ((CURRENT, PREVIOUS), (rotated(CURRENT), rotated(PREVIOUS))):
            with contextlib.suppress(FileNotFoundError):
                (directory / old).rename(directory / new)
        (directory / CURRENT).touch()  # the run is there from its launch on
        return directory

    async def open_run(self, container_id: str) -> tuple[int, int]:
        """Start a new run's relay; the write ends of its stdout and stderr
        pipes, for the program (the caller closes them once it has started)."""
        return await asyncio.to_thread(self._open_run, container_id)

    def _open_run(self, container_id: str) -> tuple[int, int]:
        directory = self.new_run(container_id)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        command = [sys.executable, "-I", "-S", str(_RELAY), str(directory), str(out_r), str(err_r)]
        try:
            with open(directory / "relay.err", "ab") as errors:
                relay = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=errors,
                    pass_fds=(out_r, err_r),
                    close_fds=True,
                )
            # It forks and exits at once; the relay itself is not our child.
            relay.wait(30)
        except BaseException:
            os.close(out_w)
            os.close(err_w)
            raise
        finally:
            os.close(out_r)
            os.close(err_r)
        return out_w, err_w

    def purge(self, container_id: str) -> None:
        """Delete everything retained of a container (``rm --purge``)."""
        shutil.rmtree(self.directory(container_id), ignore_errors=True)

    # -- reading ---------------------------------------------------------------------
    def has_run(self, container_id: str, previous: bool = False) -> bool:
        directory = self.directory(container_id)
        name = PREVIOUS if previous else CURRENT
        return (directory / name).exists() or (directory / rotated(name)).exists()

    def ended(self, container_id: str) -> bool:
        """Whether the current run's relay has written everything (its
        program and what it left running have closed their output)."""
        return (self.directory(container_id) / ENDED).exists()

    async def wait_ended(self, container_id: str, seconds: float) -> bool:
        """Wait, at most ``seconds``, for ended()."""
        deadline = time.monotonic() + seconds
        while not self.ended(container_id):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def read(self, container_id: str, previous: bool = False) -> tuple[list[BufferedEntry], Tail]:
        """A run's entries, oldest first, and a cursor at their end."""
        directory = self.directory(container_id)
        name = PREVIOUS if previous else CURRENT
        path = directory / name
        streams = _Streams()
        entries = _read_lines(directory / rotated(name), 0, streams)[0]
        try:
            inode: int | None = os.stat(path).st_ino
        except FileNotFoundError:
            inode = None
        more, offset = _read_lines(path, 0, streams)
        return entries + more, Tail(path, inode, offset, streams)


__all__ = ["LogStore", "Tail"]

"""The log relay: writes what a launched program prints into its log directory.

The manager starts one relay per launch, beside the program (not its parent):
the program's stdout and stderr are pipes whose read ends only the relay
holds (their fd numbers are its arguments). The relay stamps each line with
the time it arrived and appends it to ``current.log`` as one JSON object per
line::

    {"seq": 1, "time_ns": 1764576000000000000, "stream": "stdout", "text": "hello"}

A file that reaches MAX_FILE_BYTES is rotated to ``current.log.1`` (the one
rotated before it is dropped), so a run keeps at most two files. The relay,
like the program, outlives the manager (a program writing to a pipe nobody
reads would get EPIPE); it ends when both pipes are closed, that is when the
program and whatever it left running have exited, and then makes
``current.ended`` so that a reader knows it has the run's last words.

The manager runs this file with ``python -I -S`` (argv: the log directory,
the stdout fd, the stderr fd), so it uses the standard library only and
imports nothing of pycontainer. It forks at once and its first process exits:
the relay is nobody's child to wait for, in a session of its own (signals to
the program's group do not reach it). _logstore reads what it writes.
"""

from __future__ import annotations

import json
import json.encoder
import os
import selectors
import signal
import sys
import time

CURRENT = "current.log"
PREVIOUS = "previous.log"
# Made by the relay when the current run's output is all written.
ENDED = "current.ended"
# A run's file is rotated once this big; a run keeps this and one rotated file.
MAX_FILE_BYTES = 4 << 20
# A line longer than this is cut into several entries.
MAX_LINE_BYTES = 16 << 10


# A JSON string as json.dumps(..., ensure_ascii=False) writes it (C, when built).
_encode = json.encoder.encode_basestring


def rotated(name: str) -> str:
    """The file a run's log ``name`` rotates to."""
    return name + ".1"


class RunLog:
    """The current run's file, appended to and rotated at MAX_FILE_BYTES."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, CURRENT)
        self.seq = 0
        self._file = open(self.path, "ab")  # noqa: SIM115 - held for the run
        self._size = self._file.tell()

    def write(self, stream: str, raw: bytes) -> None:
        self.write_lines(stream, [raw])

    def write_lines(self, stream: str, raws: list[bytes]) -> None:
        """Append one record per line, all stamped now (they arrived together),
        in one write (and one per rotation), flushed: readers tail the file."""
        now = time.time_ns()
        head = f', "time_ns": {now}, "stream": {_encode(stream)}, "text": '
        batch: list[bytes] = []
        size = self._size
        for raw in raws:
            self.seq += 1
            # json.dumps(record, ensure_ascii=False) spelt out: the same bytes.
            text = _encode(raw.decode("utf-8", errors="replace").rstrip("\r"))
            line = f'{{"seq": {self.seq}{head}{text}}}\n'.encode()
            if size and size + len(line) > MAX_FILE_BYTES:
                self._file.write(b"".join(batch))
                batch.clear()
                self._file.close()
                os.replace(self.path, rotated(self.path))
                self._file = open(self.path, "ab")  # noqa: SIM115
                size = 0
            batch.append(line)
            size += len(line)
        self._file.write(b"".join(batch))
        self._file.flush()
        self._size = size

    def close(self) -> None:
        self._file.close()

    def mark_ended(self) -> None:
        """Say the run is all written (unless a new run has taken its place)."""
        directory = os.path.dirname(self.path)
        try:
            if os.stat(self.path).st_ino == os.fstat(self._file.fileno()).st_ino:
                open(os.path.join(directory, ENDED), "w").close()
        except (OSError, ValueError):
            pass


def relay(directory: str, streams: dict[int, str]) -> None:
    """Copy lines from each fd in ``streams`` (fd -> stream name) until all close."""
    log = RunLog(directory)
    pending = {fd: b"" for fd in streams}
    selector = selectors.DefaultSelector()
    for fd in streams:
        selector.register(fd, selectors.EVENT_READ)
    try:
        while pending:
            for key, _ in selector.select():
                fd = int(key.fd)
                chunk = os.read(fd, 65536)
                if not chunk:
                    if pending[fd]:
                        log.write(streams[fd], pending[fd])
                    selector.unregister(fd)
                    os.close(fd)
                    del pending[fd]
                    continue
                data = pending[fd] + chunk
                *lines, rest = data.split(b"\n")
                while len(rest) > MAX_LINE_BYTES:
                    lines.append(rest[:MAX_LINE_BYTES])
                    rest = rest[MAX_LINE_BYTES:]
                if lines:
                    log.write_lines(streams[fd], lines)
                pending[fd] = rest
        log.mark_ended()
    finally:
        log.close()


def main(argv: list[str]) -> int:
    directory, out_fd, err_fd = argv[0], int(argv[1]), int(argv[2])
    if os.fork() != 0:
        os._exit(0)  # the manager reaps this one at once; the relay goes on
    os.setsid()
    # The program's group gets the operator's signals; the relay drains its
    # pipes until the program is gone, whatever it was sent.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    relay(directory, {out_fd: "stdout", err_fd: "stderr"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

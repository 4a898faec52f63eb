"""The runc shim: a child subreaper that runs ``runc run --detach``, then
waits for the container's init (its child once runc has returned).

It prints "pid N" once the container runs (or "error ..."), and "exit CODE"
when it has ended (CODE as ProcessRuntime reports it: -N for signal N), after
writing CODE to ``exit_status`` and running ``runc delete``. It, like the
container, outlives the manager.

The runtime runs this file with ``python -I -S`` (argv: runc, root, runc id,
bundle, run dir, and optionally the fds that the container's stdout and
stderr go to; else stdout.log and stderr.log in the run dir), so it uses the
standard library only and imports nothing of pycontainer.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from types import FrameType

_PR_SET_CHILD_SUBREAPER = 36
_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND


def _say(line: str) -> None:
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        pass  # the manager went away: the container carries on


class _Forwarder:
    """Signals to the shim go to the container's init, once there is one."""

    def __init__(self) -> None:
        self.init = 0
        self.pending: list[int] = []

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.init:
            with contextlib.suppress(OSError):
                os.kill(self.init, signum)
        else:
            self.pending.append(signum)

    def started(self, init: int) -> None:
        self.init = init
        for signum in self.pending:
            self(signum, None)


def main(argv: list[str]) -> int:
    runc, root, rid, bundle, run_dir = argv[:5]
    log = os.open(os.path.join(run_dir, "shim.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 2)
    os.close(log)

    forward = _Forwarder()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        _say(f"error cannot become a child subreaper (errno {ctypes.get_errno()})")
        return 1
    pid_file = os.path.join(run_dir, "init.pid")
    if len(argv) >= 7:
        # The write ends of the manager's log relay pipes (see _logrelay).
        out, err = int(argv[5]), int(argv[6])
    else:
        out = os.open(os.path.join(run_dir, "stdout.log"), _APPEND, 0o644)
        err = os.open(os.path.join(run_dir, "stderr.log"), _APPEND, 0o644)
    try:
        # runc and then the container (detached, no terminal) write to these.
        rc = subprocess.call(
            [
                *(runc, "--root", root, "run", "--detach"),
                *("--pid-file", pid_file, "--bundle", bundle, rid),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    finally:
        # The container has its copies: a relay sees the end when they close.
        os.close(out)
        os.close(err)
    if rc != 0:
        _say(f"error runc run exited with status {rc}")
        return 1
    with open(pid_file) as f:
        init = int(f.read().strip())
    _say(f"pid {init}")
    forward.started(init)
    code: int | None = None
    while code is None:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:  # not adopted (cannot happen to a subreaper)
            break
        if pid == init:
            code = os.waitstatus_to_exitcode(status)
    if code is not None:
        with open(os.path.join(run_dir, "exit_status"), "w") as f:
            f.write(f"{code}\n")
    subprocess.call(
        [runc, "--root", root, "delete", "--force", rid],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _say(f"exit {'unknown' if code is None else code}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

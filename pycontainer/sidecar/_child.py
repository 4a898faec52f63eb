"""The supervised program: one process in a process group of its own, its
output read in chunks and split into lines (the container's log entries, and
echoed), signals sent to its whole group, its exit noticed and its status kept."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import IO, BinaryIO

import psutil

from ..agent._export import LineExport
from ..agent._logs import LogBuffer
from ..agent._logs._buffer import Level as BufferLevel
from ._severity import STDERR_DEFAULT, STDOUT_DEFAULT, Level, Severities

__all__ = ["ChildProcess", "describe_status", "exit_status"]

# Longest line of one entry; a longer one becomes several entries.
_MAX_LINE = 64 * 1024
# Most read from the program's pipe at once (a Linux pipe holds 64 KiB).
_READ_BYTES = 256 * 1024
# How long the output readers may take to drain after the program exited
# (a descendant that kept the pipes open is killed with the group first).
_DRAIN_SECONDS = 2.0

ExitListener = Callable[[int], None]
# Process states that count as stopped (or past caring) once paused.
_STOPPED = frozenset(
    (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP, psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
)


def exit_status(returncode: int) -> int:
    """A shell's exit status for a returncode: 128+N for a death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def describe_status(returncode: int) -> str:
    """``exited with status 3`` or ``was killed by SIGKILL (status 137)``."""
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"was killed by {name} (status {exit_status(returncode)})"


# Becomes the program (exec, same pid) after asking the kernel to SIGKILL it
# when the thread that started it ends, that is when the sidecar dies: nothing
# may outlive the sidecar. A separate interpreter rather than a preexec_fn,
# because a fork() in this process (gRPC's threads running) is not safe.
_EXEC_HELPER = """\
import ctypes, os, sys
try:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    os._exit(137)  # the sidecar died before prctl took
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as exc:
    sys.stderr.write("pycontainer sidecar: cannot run %r: %s\\n" % (sys.argv[2], exc.strerror))
    os._exit(126 if isinstance(exc, PermissionError) else 127)
"""


def _wrapped(command: Sequence[str]) -> list[str]:
    """``command`` behind the exec helper where the kernel has PR_SET_PDEATHSIG."""
    if not sys.platform.startswith("linux") or not sys.executable:
        return list(command)
    return [sys.executable, "-I", "-S", "-c", _EXEC_HELPER, str(os.getpid()), *command]


def resolve(command: Sequence[str], env: Mapping[str, str] | None, cwd: str | None) -> str:
    """The program's path; OSError (FileNotFoundError, PermissionError) as
    exec would raise it, so that a command that cannot run fails at start."""
    program = command[0]
    if os.sep in program:
        path = program if os.path.isabs(program) else os.path.join(cwd or os.getcwd(), program)
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), program)
        return path
    search = (env if env is not None else os.environ).get("PATH", os.defpath)
    found = shutil.which(program, path=search)
    if found is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    return found


class ChildProcess:
    """Runs ``command`` with stdin from /dev/null and stdout/stderr into ``logs``.

    A dedicated thread starts the program and waits for it (the kernel's
    parent-death signal is tied to the thread that forked), so the program
    lives exactly as long as that thread waits. Lines are entries of logger
    ``stdout``/``stderr`` with the severity ``severities`` gives them, and are
    echoed to this process's own stdout/stderr when ``echo`` is set.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        logs: LogBuffer,
        severities: Severities | None = None,
        echo: bool = True,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        on_exit: ExitListener | None = None,
        loggers: tuple[str, str] = ("stdout", "stderr"),
        export: LineExport | None = None,
    ) -> None:
        if not command:
            raise ValueError("no command to run")
        self.command = list(command)
        self._logs = logs
        self._severities = severities if severities is not None else Severities()
        self._echo = echo
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        self._on_exit = on_exit
        # The log entries' logger names for its stdout and stderr.
        self._loggers = loggers
        # Lines also go there (the container's OTel log export), if any.
        self._export = export
        self._thread: threading.Thread | None = None
        self._spawned = threading.Event()
        self._exited = threading.Event()
        self._spawn_error: OSError | None = None
        self._popen: subprocess.Popen[bytes] | None = None
        self._pumps: list[threading.Thread] = []
        # Held while signalling and while reaping: a signal never reaches a
        # reused pid (until reaped, the exited program's zombie holds it).
        self._reap_lock = threading.Lock()
        self._reaped = False
        self.pid: int | None = None
        self.process: psutil.Process | None = None
        self.returncode: int | None = None
        self.start_time = 0.0

    # -- start ---------------------------------------------------------------------------
    def start(self) -> int:
        """Start the program; its pid. Raises OSError if it cannot be executed."""
        if self._thread is not None:
            raise RuntimeError("the program was started already")
        self._thread = threading.Thread(
            target=self._main, name="pycontainer-sidecar-child", daemon=True
        )
        self._thread.start()
        self._spawned.wait()
        if self._spawn_error is not None:
            raise self._spawn_error
        assert self.pid is not None
        return self.pid

    def _main(self) -> None:
        try:
            resolve(self.command, self._env, self._cwd)
            popen = subprocess.Popen(
                _wrapped(self.command),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env,
                cwd=self._cwd,
                start_new_session=True,  # its own group: signals reach what it starts
            )
        except OSError as exc:
            self._spawn_error = exc
            self._exited.set()
            self._spawned.set()
            return
        self._popen = popen
        self.pid = popen.pid
        self.start_time = time.monotonic()
        with contextlib.suppress(psutil.Error):
            self.process = psutil.Process(popen.pid)
        attrs = {"process.pid": str(popen.pid)}
        assert popen.stdout is not None
        assert popen.stderr is not None
        for stream, logger, level, echo in (
            (popen.stdout, self._loggers[0], STDOUT_DEFAULT, _binary(sys.stdout)),
            (popen.stderr, self._loggers[1], STDERR_DEFAULT, _binary(sys.stderr)),
        ):
            pump = threading.Thread(
                target=self._pump,
                args=(
                    stream,
                    logger,
                    level,
                    echo if self._echo else None,
                    MappingProxyType({**attrs, "log.iostream": logger.rsplit(".", 1)[-1]}),
                ),
                name=f"pycontainer-sidecar-{logger.replace('.', '-')}",
                daemon=True,
            )
            pump.start()
            self._pumps.append(pump)
        self._spawned.set()
        self._wait_and_reap(popen)

    def _wait_and_reap(self, popen: subprocess.Popen[bytes]) -> None:
        # Wait without reaping, so that the pid (and the group id) stay ours
        # while what the program left running in its group is killed.
        with contextlib.suppress(ChildProcessError, OSError):
            while True:
                try:
                    os.waitid(os.P_PID, popen.pid, os.WEXITED | os.WNOWAIT)
                    break
                except InterruptedError:
                    continue
        with self._reap_lock:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, signal.SIGKILL)
            returncode = popen.wait()
            self._reaped = True
        deadline = time.monotonic() + _DRAIN_SECONDS
        for pump in self._pumps:
            pump.join(max(0.0, deadline - time.monotonic()))
        self.returncode = returncode
        self._exited.set()
        if self._on_exit is not None:
            self._on_exit(returncode)

    def _pump(
        self,
        stream: IO[bytes],
        logger: str,
        default: Level,
        echo: BinaryIO | None,
        attributes: Mapping[str, str],
    ) -> None:
        # What the pipe holds, read at once (a line at a time caps a chatty
        # program at a few thousand lines a second): echoed in one write,
        # decoded, split and classified in bulk, and taken by the buffer
        # together (one lock, one time: they arrived together).
        classify_all = self._severities.classify_all
        extend: LineExport = self._logs.extend
        export = self._export
        if export is not None:  # the lines go to the container's OTel log export too
            to_buffer = extend

            def extend(
                name: str,
                messages: Sequence[str],
                levels: Sequence[BufferLevel],
                attrs: Mapping[str, str],
            ) -> None:
                to_buffer(name, messages, levels, attrs)
                export(name, messages, levels, attrs)

        fd = stream.fileno()
        pending = b""  # the start of a line whose end has not come yet
        with stream:
            while chunk := os.read(fd, _READ_BYTES):
                if echo is not None:
                    try:
                        echo.write(chunk)
                        echo.flush()
                    except (OSError, ValueError):
                        echo = None  # our own stdout went away; keep logging
                data = pending + chunk if pending else chunk
                end = data.rfind(b"\n")
                lines = _lines(data[:end]) if end >= 0 else []
                pending = data[end + 1 :]
                while len(pending) > _MAX_LINE:
                    lines.append(_text(pending[:_MAX_LINE]))
                    pending = pending[_MAX_LINE:]
                if lines:
                    extend(logger, lines, classify_all(lines, default), attributes)
            if pending:
                lines = [_text(pending)]
                extend(logger, lines, classify_all(lines, default), attributes)

    # -- state ---------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self.pid is not None

    @property
    def running(self) -> bool:
        """Started and not yet exited."""
        return self.pid is not None and not self._exited.is_set()

    @property
    def exited(self) -> bool:
        return self._exited.is_set()

    def wait(self, timeout: float | None = None) -> int | None:
        """The returncode once the program has exited (and its output is
        read), or None if it is still running after ``timeout`` seconds."""
        if not self._exited.wait(timeout):
            return None
        return self.returncode

    def join(self, timeout: float | None = None) -> None:
        """Wait for the waiting thread (after the exit listener ran); at once
        when called from that thread (the exit listener's own work)."""
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # -- signals -------------------------------------------------------------------------
    def signal(self, sig: int) -> bool:
        """Send ``sig`` to the program's process group; False if it is gone."""
        if self.pid is None:
            return False
        with self._reap_lock:
            if self._reaped:
                return False
            try:
                os.killpg(self.pid, sig)
            except (ProcessLookupError, PermissionError):
                return False
        return True

    def wait_stopped(self, timeout: float) -> bool:
        """Wait until the program and its descendants show as stopped (after
        SIGSTOP: each stops once it is next scheduled)."""
        deadline = time.monotonic() + timeout
        while self.running:
            pending = False
            for proc in self.tree():
                try:
                    status = proc.status()
                except psutil.Error:
                    continue
                if status not in _STOPPED:
                    pending = True
                    break
            if not pending:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return False

    # -- figures -------------------------------------------------------------------------
    def tree(self) -> list[psutil.Process]:
        """The program and its live descendants."""
        root = self.process
        if root is None or not self.running:
            return []
        try:
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return [root]


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").rstrip("\r\n")


def _lines(block: bytes) -> list[str]:
    """The lines of ``block`` (newline-separated, no newline at its end) as
    entries' texts: decoded at once (a newline is never inside a UTF-8
    character), a carriage return before the newline dropped, a line longer
    than _MAX_LINE bytes cut into several."""
    if len(block) > _MAX_LINE and any(len(line) > _MAX_LINE for line in block.split(b"\n")):
        return [
            _text(line[i : i + _MAX_LINE])
            for line in block.split(b"\n")
            for i in range(0, max(1, len(line)), _MAX_LINE)
        ]
    lines = block.decode("utf-8", "replace").split("\n")
    if b"\r" in block:
        lines = [line.rstrip("\r") for line in lines]
    return lines


def _binary(stream: object) -> BinaryIO | None:
    """The byte stream under a text stream (None if it has none)."""
    buffer: BinaryIO | None = getattr(stream, "buffer", None)
    return buffer

"""OCI containers through runc (RUNTIME_KIND_RUNC).

Each launch gets a run directory under the runtime's state directory, holding
the bundle (config.json, and an empty root for host mode), the container's
stdout.log and stderr.log (unless a log store keeps what it prints), and its
exit_status. The container has its own
pid, mount, UTS and IPC namespaces; it shares the host's network namespace,
so that it dials the manager on loopback ($PYCONTAINER_MANAGER).

Its root is the spec's ``oci.rootfs`` (read-only, with a tmpfs /tmp), or when
that is empty ("host mode") an empty directory onto which the host's system
directories (/usr, /lib, /etc, ...), this Python (its prefixes, site-packages,
the pycontainer package) and the spec's working directory are bind mounted
read-only; a spec command that starts with ``python`` runs this interpreter.
``oci.bundle`` runs an existing bundle as it is (no PYCONTAINER_* variables
are added: its config.json decides everything).

``runc run --detach`` starts the container from a small shim process (this
interpreter running shim.py, stdlib only) that is a child subreaper: once runc returns, the
container's init becomes the shim's child, so the shim has its exact wait
status (-N for signal N, like ProcessRuntime) when it ends, writes it to
exit_status, runs ``runc delete`` and reports it to the runtime, which calls
``on_exit(container_id, code)``. The shim, like the container, outlives the
manager.

CPU and memory limits (spec.resources) are applied when the machine lets runc
set them: cgroup v2 with the cpu and memory controllers available and the
parent cgroup writable, or cgroup v1 with writable cpu and memory
hierarchies. Otherwise the container runs without them and a note is logged.

runc runs with ``--root <state_dir>/root``, so this runtime's containers are
listed apart from anyone else's: ``runc --root <state_dir>/root list``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...security._files import PRIVATE_MODE, write_atomic
from .._logstore import LogStore
from .._runtime import ExitListener, ExitListeners, Launch
from ._config import (
    build_config,
    cgroup_limits_support,
    make_host_root,
    python_host_paths,
    runc_id_for,
    runc_id_for_prefix,
)

_log = logging.getLogger("pycontainer.manager.runc")

_EXIT_UNKNOWN = 255
# How long a failed start waits for its log relay to write runc's last words
# (its error) before the error is given without them.
_RELAY_SETTLE_SECONDS = 2.0
# Run as a file by this interpreter (see its docstring).
_SHIM = Path(__file__).with_name("shim.py")


# -- the runtime -------------------------------------------------------------------------------
class _LimitsRefused(OSError):
    """runc could not set up the cgroup limits of a bundle."""


@dataclass
class RuncContainer:
    """One launch: its runc id, run directory and shim."""

    container_id: str
    runc_id: str
    run_dir: Path
    bundle: Path
    shim: asyncio.subprocess.Process
    pid: int = 0
    exit_code: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def stdout_path(self) -> Path:
        return self.run_dir / "stdout.log"

    @property
    def stderr_path(self) -> Path:
        return self.run_dir / "stderr.log"


class RuncRuntime(ExitListeners):
    """Containers as OCI containers run by runc; see the module's docstring."""

    # Each container has its pid namespace: it registers as pid 1.
    own_pid_namespace = True

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        on_exit: ExitListener | None = None,
        runc: str = "runc",
        cgroup_limits: bool | None = None,
        host_paths: Sequence[str] = (),
        start_timeout: float = 30.0,
        logs: LogStore | None = None,
    ) -> None:
        """``state_dir`` holds run directories and runc's state (--root);
        ``cgroup_limits`` None detects whether limits can be set;
        ``host_paths`` are more host directories for host-mode containers;
        ``logs`` keeps what containers print (else their run directory's
        stdout.log and stderr.log)."""
        super().__init__()
        self._logs = logs
        if on_exit is not None:
            self.add_exit_listener(on_exit)
        self.state_dir = Path(state_dir).resolve()
        self.root = self.state_dir / "root"
        self.runs_dir = self.state_dir / "runs"
        self._runc = runc
        self._cgroup_limits = cgroup_limits
        self.cgroup_note = "" if cgroup_limits is None else "set by the caller"
        self.host_paths = list(host_paths)
        self.start_timeout = start_timeout
        self._containers: dict[str, RuncContainer] = {}  # the latest launch of each id
        self._watchers: set[asyncio.Task[None]] = set()

    # -- introspection -------------------------------------------------------------------------
    @property
    def cgroup_limits(self) -> bool:
        """Whether CPU and memory limits are applied (detected once)."""
        if self._cgroup_limits is None:
            self._cgroup_limits, self.cgroup_note = cgroup_limits_support()
            if not self._cgroup_limits:
                _log.info("runc: CPU and memory limits will not be set: %s", self.cgroup_note)
        return self._cgroup_limits

    def runc_path(self) -> str:
        path = shutil.which(self._runc)
        if path is None:
            raise OSError(
                f"runc not found ({self._runc!r} is not on PATH): install it "
                "(apt-get install runc) to run RUNTIME_KIND_RUNC containers"
            )
        return path

    def container(self, container_id: str) -> RuncContainer | None:
        """The latest launch of a container (also once it has exited)."""
        return self._containers.get(container_id)

    def pid(self, container_id: str) -> int | None:
        """The host pid of a running container's init."""
        run = self._containers.get(container_id)
        return run.pid if run is not None and not run.done.is_set() else None

    def running(self, container_id: str) -> bool:
        return self.pid(container_id) is not None

    def config_for(self, launch: Launch) -> dict[str, Any]:
        """The config.json this runtime generates for a launch (no bundle given)."""
        spec = launch.spec
        root = "rootfs"
        if spec.oci.rootfs:
            rootfs = Path(spec.oci.rootfs)
            if not rootfs.is_absolute():
                raise ValueError(f"spec.oci.rootfs {spec.oci.rootfs!r} must be an absolute path")
            if not rootfs.is_dir():
                raise ValueError(f"spec.oci.rootfs {spec.oci.rootfs!r} is not a directory")
            root = str(rootfs)
        wants_limits = spec.resources.cpu_millis > 0 or spec.resources.memory_bytes > 0
        limits = self.cgroup_limits if wants_limits else False
        if wants_limits and not limits:
            _log.info(
                "runc: %s runs without its CPU/memory limits (%s)",
                launch.container_id,
                self.cgroup_note,
            )
        return build_config(
            launch,
            root=root,
            cgroup_limits=limits,
            host_paths=[*python_host_paths(), *self.host_paths],
        )

    async def run_command(self, *args: str, check: bool = True) -> tuple[int, str, str]:
        """``runc --root ROOT ARGS...``: (status, stdout, stderr)."""
        process = await asyncio.create_subprocess_exec(
            self.runc_path(),
            "--root",
            str(self.root),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        code = process.returncode if process.returncode is not None else -1
        if check and code != 0:
            raise OSError(f"runc {' '.join(args)} failed ({code}): {err.decode().strip()}")
        return code, out.decode(), err.decode()

    async def state(self, container_id: str) -> dict[str, Any] | None:
        """``runc state`` of a container's latest launch; None when runc no
        longer knows it (it has ended and been deleted)."""
        run = self._containers.get(container_id)
        if run is None:
            return None
        code, out, _ = await self.run_command("state", run.runc_id, check=False)
        if code != 0:
            return None
        state: dict[str, Any] = json.loads(out)
        return state

    # -- Runtime -------------------------------------------------------------------------------
    async def launch(self, launch: Launch) -> int:
        runc = self.runc_path()
        if os.geteuid() != 0:
            raise OSError("the runc runtime needs root (rootless runc is not supported)")
        previous = self._containers.get(launch.container_id)
        if previous is not None and not previous.done.is_set():
            # A restart: end what is left of the old launch without reporting
            # its exit (which would now be taken for the new one's).
            del self._containers[launch.container_id]
            await self._end(previous)
        try:
            run = await self._start(runc, launch)
        except _LimitsRefused as refused:
            # Detection said yes, runc said no: run it (and what follows) without.
            self._cgroup_limits = False
            self.cgroup_note = f"runc could not set them: {refused}"
            _log.warning("runc: CPU and memory limits disabled: %s", self.cgroup_note)
            run = await self._start(runc, launch)
        self._containers[launch.container_id] = run
        watcher = asyncio.ensure_future(self._watch(run))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        _log.info(
            "runc: %s runs as %s (pid %d, bundle %s)",
            launch.container_id,
            run.runc_id,
            run.pid,
            run.bundle,
        )
        return run.pid

    async def send_signal(self, container_id: str, signum: int | str = "TERM") -> bool:
        """``runc kill ID SIGNAL`` to a running container's init; whether runc
        delivered it."""
        run = self._containers.get(container_id)
        if run is None or run.done.is_set():
            return False
        name = (
            signal.Signals(signum).name.removeprefix("SIG") if isinstance(signum, int) else signum
        )
        code, _, err = await self.run_command("kill", run.runc_id, name, check=False)
        if code != 0 and not run.done.is_set():
            _log.info("runc kill %s %s: %s", run.runc_id, name, err.strip())
        return code == 0

    async def signal(self, container_id: str, signum: int) -> bool:
        return await self.send_signal(container_id, signum)

    async def kill(self, container_id: str) -> None:
        await self.send_signal(container_id, "KILL")

    def forget(self, container_id: str) -> None:
        """Delete the run directories of every ended launch of this id (their
        stdout.log, stderr.log, exit_status and generated bundle)."""
        if self.running(container_id):
            return
        self._containers.pop(container_id, None)
        launch = re.compile(re.escape(runc_id_for_prefix(container_id)) + r"-[0-9a-f]{6}")
        with contextlib.suppress(FileNotFoundError):
            for run_dir in self.runs_dir.iterdir():
                if launch.fullmatch(run_dir.name):
                    shutil.rmtree(run_dir, ignore_errors=True)

    async def close(self) -> None:
        """Kill every container still running, wait for their ends, and delete
        whatever runc still lists in this runtime's root."""
        running = [run for run in self._containers.values() if not run.done.is_set()]
        await asyncio.gather(*(self._end(run) for run in running), return_exceptions=True)
        if self._watchers:
            await asyncio.wait(self._watchers, timeout=5)
        if self.root.is_dir() and shutil.which(self._runc) is not None:
            code, out, _ = await self.run_command("list", "--format", "json", check=False)
            for item in (json.loads(out) or []) if code == 0 and out.strip() else []:
                await self.run_command("delete", "--force", str(item["id"]), check=False)

    # -- internals -----------------------------------------------------------------------------
    async def _start(self, runc: str, launch: Launch) -> RuncContainer:
        """A new run directory and bundle, and the shim that runs it."""
        runc_id = runc_id_for(launch.container_id)
        run_dir, bundle, limited = await asyncio.to_thread(self._prepare, launch, runc_id)
        stdio: tuple[int, ...] = ()
        if self._logs is not None:
            stdio = await self._logs.open_run(launch.container_id)
        try:
            shim = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-S",
                str(_SHIM),
                runc,
                str(self.root),
                runc_id,
                str(bundle),
                str(run_dir),
                *map(str, stdio),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,  # the shim writes shim.log
                start_new_session=True,  # the manager's signals are not the container's
                pass_fds=stdio,
            )
        finally:
            for fd in stdio:  # the shim has them (and hands them to the container)
                os.close(fd)
        run = RuncContainer(launch.container_id, runc_id, run_dir, bundle, shim)
        first = await self._first_line(run)
        if not first.startswith("pid "):
            await self._reap_failed(run)
            why = self._why(run, first, await self._logged(launch.container_id))
            if limited and "cgroup" in why:
                raise _LimitsRefused(why)
            raise OSError(f"runc could not start {launch.container_id}: {why}")
        run.pid = int(first.split()[1])
        return run

    def _prepare(self, launch: Launch, runc_id: str) -> tuple[Path, Path, bool]:
        """The run directory, with the generated bundle unless one is given;
        whether that bundle has CPU or memory limits."""
        spec = launch.spec
        run_dir = self.runs_dir / runc_id
        if spec.oci.bundle:
            bundle = Path(spec.oci.bundle).resolve()
            self._check_bundle(bundle)
            run_dir.mkdir(parents=True)
            limited = False
        else:
            config = self.config_for(launch)  # ValueErrors before anything is made
            bundle = run_dir
            run_dir.mkdir(parents=True)
            if not spec.oci.rootfs:
                make_host_root(run_dir / "rootfs")
            # Owner-only: it holds the spec's env, secrets included.
            text = json.dumps(config, indent=2) + "\n"
            write_atomic(run_dir / "config.json", text.encode(), mode=PRIVATE_MODE)
            resources = config["linux"]["resources"]
            limited = "cpu" in resources or "memory" in resources
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        return run_dir, bundle, limited

    @staticmethod
    def _check_bundle(bundle: Path) -> None:
        config_path = bundle / "config.json"
        try:
            config = json.loads(config_path.read_text())
        except FileNotFoundError:
            raise ValueError(f"spec.oci.bundle {str(bundle)!r} has no config.json") from None
        except (OSError, ValueError) as exc:
            raise ValueError(f"spec.oci.bundle: cannot read {config_path}: {exc}") from None
        if config.get("process", {}).get("terminal"):
            raise ValueError(
                f"{config_path}: process.terminal is true; a detached container needs false"
            )

    async def _first_line(self, run: RuncContainer) -> str:
        assert run.shim.stdout is not None
        try:
            raw = await asyncio.wait_for(run.shim.stdout.readline(), self.start_timeout)
        except TimeoutError:
            return f"no answer from runc within {self.start_timeout:g}s"
        return raw.decode(errors="replace").strip()

    async def _reap_failed(self, run: RuncContainer) -> None:
        if run.shim.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                run.shim.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.shim.wait(), 5)
        await self.run_command("delete", "--force", run.runc_id, check=False)

    async def _logged(self, container_id: str) -> str:
        """What the current run printed (runc's errors), as the log store has
        it once its relay has written the last of it (bounded: the shim is
        gone, so the pipes close at once unless something holds them)."""
        if self._logs is None:
            return ""
        await self._logs.wait_ended(container_id, _RELAY_SETTLE_SECONDS)
        entries = self._logs.read(container_id)[0]
        return "\n".join(e.message for e in entries)

    @staticmethod
    def _why(run: RuncContainer, first: str, logged: str = "") -> str:
        """The shim's complaint with the tail of runc's error output."""
        details = [logged[-1500:]] if logged.strip() else []
        for path in (run.stderr_path, run.run_dir / "shim.log"):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").strip()
                if text:
                    details.append(text[-1500:])
        why = first.removeprefix("error ").strip() or "the shim ended without a word"
        return why + (": " + " | ".join(details) if details else "")

    async def _watch(self, run: RuncContainer) -> None:
        """Wait for the shim's "exit CODE"; then tell on_exit (when this is
        still the container's latest launch)."""
        assert run.shim.stdout is not None
        code: int | None = None
        async for raw in run.shim.stdout:
            words = raw.decode(errors="replace").split()
            if len(words) == 2 and words[0] == "exit" and words[1].lstrip("-").isdigit():
                code = int(words[1])
        await run.shim.wait()
        if code is None:
            code = await self._lost_shim(run)
        run.exit_code = code
        run.done.set()
        _log.info("runc: %s (%s) exited with status %d", run.container_id, run.runc_id, code)
        if self._containers.get(run.container_id) is run:
            await self._exited(run.container_id, code)

    async def _lost_shim(self, run: RuncContainer) -> int:
        """The shim ended without an exit status (killed?): wait for the
        container by polling runc, then take exit_status if it was written."""
        _log.warning("runc: the shim of %s ended early; polling runc state", run.runc_id)
        while True:
            code, out, _ = await self.run_command("state", run.runc_id, check=False)
            if code != 0 or json.loads(out).get("status") not in ("running", "created", "paused"):
                break
            await asyncio.sleep(0.5)
        await self.run_command("delete", "--force", run.runc_id, check=False)
        with contextlib.suppress(OSError, ValueError):
            return int((run.run_dir / "exit_status").read_text().strip())
        return _EXIT_UNKNOWN

    async def _end(self, run: RuncContainer, patience: float = 10.0) -> None:
        """SIGKILL one launch and wait for its shim to see it end."""
        deadline = time.monotonic() + patience
        while not run.done.is_set() and time.monotonic() < deadline:
            await self.run_command("kill", run.runc_id, "KILL", check=False)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.done.wait(), 1.0)
        if not run.done.is_set():
            _log.warning("runc: %s did not end after SIGKILL", run.runc_id)


__all__ = ["RuncContainer", "RuncRuntime", "build_config", "cgroup_limits_support"]

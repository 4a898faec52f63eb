"""OCI containers through runc (RUNTIME_KIND_RUNC).

Each launch gets a run directory under the runtime's state directory, holding
the bundle (config.json, and an empty root for host mode), the container's
stdout.log and stderr.log, and its exit_status. The container has its own
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
interpreter, stdlib only) that is a child subreaper: once runc returns, the
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
import resource
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._runtime import ExitListener, ExitListeners, Launch

_log = logging.getLogger("pycontainer.manager.runc")

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The host's directories a host-mode container sees (read-only), when present.
HOST_SYSTEM_DIRS = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/etc")
# Docker's default capability set (for a root process in the container).
CAPABILITIES = [
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
]
NAMESPACES = ("pid", "mount", "uts", "ipc")  # no "network": the host's is shared
CPU_PERIOD_US = 100_000
_BIND_RO = ["rbind", "ro", "nosuid", "nodev"]
_EXIT_UNKNOWN = 255

# The shim: a child subreaper that runs `runc run --detach`, then waits for the
# container's init (its child once runc has returned). It prints "pid N" once
# the container runs (or "error ..."), and "exit CODE" when it has ended.
# argv: runc, root, runc id, bundle, run dir. Only the standard library.
_SHIM = r"""
import ctypes, os, signal, subprocess, sys
runc, root, rid, bundle, run_dir = sys.argv[1:6]

log = os.open(os.path.join(run_dir, "shim.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
os.dup2(log, 2)
os.close(log)

def say(line):
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        pass  # the manager went away: the container carries on

init = 0
pending = []

def forward(signum, frame):
    if init:
        try:
            os.kill(init, signum)
        except OSError:
            pass
    else:
        pending.append(signum)

for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, forward)
signal.signal(signal.SIGPIPE, signal.SIG_IGN)
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    say("error cannot become a child subreaper (errno %d)" % ctypes.get_errno())
    sys.exit(1)
pid_file = os.path.join(run_dir, "init.pid")
with open(os.path.join(run_dir, "stdout.log"), "ab") as out, \
        open(os.path.join(run_dir, "stderr.log"), "ab") as err:
    rc = subprocess.call(
        [runc, "--root", root, "run", "--detach", "--pid-file", pid_file,
         "--bundle", bundle, rid],
        stdin=subprocess.DEVNULL, stdout=out, stderr=err,
    )
if rc != 0:
    say("error runc run exited with status %d" % rc)
    sys.exit(1)
with open(pid_file) as f:
    init = int(f.read().strip())
say("pid %d" % init)
for s in pending:
    forward(s, None)
code = None
while code is None:
    try:
        pid, status = os.waitpid(-1, 0)
    except ChildProcessError:  # not adopted (cannot happen to a subreaper)
        break
    if pid == init:
        code = os.waitstatus_to_exitcode(status)
if code is not None:
    with open(os.path.join(run_dir, "exit_status"), "w") as f:
        f.write("%d\n" % code)
subprocess.call([runc, "--root", root, "delete", "--force", rid],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
say("exit %s" % ("unknown" if code is None else code))
"""


# -- cgroups -----------------------------------------------------------------------------------
def _own_cgroups(text: str) -> dict[str, str]:
    """/proc/self/cgroup as {controller: path}; "" is the cgroup v2 entry."""
    own: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                own[controller.removeprefix("name=")] = parts[2]
    return own


def _v1_mounts(mountinfo: str) -> dict[str, tuple[str, str]]:
    """cgroup v1 hierarchies: {controller: (mount root, mount point)}."""
    found: dict[str, tuple[str, str]] = {}
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if len(fields) < 5 or len(rest) < 3 or rest[0] != "cgroup":
            continue
        for option in rest[2].split(","):
            found.setdefault(option, (fields[3], fields[4]))
    return found


def cgroup_limits_support(
    cgroup_root: str = "/sys/fs/cgroup",
    self_cgroup: str = "/proc/self/cgroup",
    mountinfo: str = "/proc/self/mountinfo",
) -> tuple[bool, str]:
    """Whether runc can set CPU and memory limits here, and why (or why not)."""
    try:
        own = _own_cgroups(Path(self_cgroup).read_text())
    except OSError as exc:
        return False, f"cannot read {self_cgroup}: {exc}"
    root = Path(cgroup_root)
    if (root / "cgroup.controllers").exists():
        # cgroup v2: runc puts a container's cgroup in the parent of its own.
        parent = root / os.path.dirname(own.get("", "/")).lstrip("/")
        try:
            available = set((parent / "cgroup.controllers").read_text().split())
        except OSError as exc:
            return False, f"cgroup v2: cannot read {parent}/cgroup.controllers: {exc}"
        missing = sorted({"cpu", "memory"} - available)
        if missing:
            return False, f"cgroup v2: controllers {', '.join(missing)} not available in {parent}"
        if not (
            os.access(parent, os.W_OK) and os.access(parent / "cgroup.subtree_control", os.W_OK)
        ):
            return False, f"cgroup v2: {parent} is not writable"
        return True, f"cgroup v2 under {parent}"
    try:
        mounts = _v1_mounts(Path(mountinfo).read_text())
    except OSError as exc:
        return False, f"cannot read {mountinfo}: {exc}"
    where = []
    for controller, knob in (("cpu", "cpu.cfs_quota_us"), ("memory", "memory.limit_in_bytes")):
        if controller not in mounts:
            return False, f"no cgroup v1 {controller} hierarchy mounted (and no cgroup v2)"
        mount_root, mount_point = mounts[controller]
        path = own.get(controller, "/")
        if mount_root != "/" and path.startswith(mount_root):
            path = path[len(mount_root) :]
        directory = Path(mount_point) / path.lstrip("/")
        if not (directory / knob).exists() or not os.access(directory, os.W_OK):
            return False, f"cgroup v1: {directory} is not writable"
        where.append(str(directory))
    return True, f"cgroup v1 under {' and '.join(where)}"


# -- bundles -----------------------------------------------------------------------------------
def _runc_id(container_id: str) -> str:
    """A runc container id (^[\\w+.-]+$), unique per launch."""
    safe = re.sub(r"[^\w+.-]", "-", container_id)[:48].strip(".") or "container"
    return f"{safe}-{uuid.uuid4().hex[:6]}"


def _hostname(name: str) -> str:
    host = re.sub(r"[^A-Za-z0-9-]", "-", name).strip("-")[:63]
    return host or "container"


def python_host_paths() -> list[str]:
    """What this Python needs to run pycontainer apps: its prefixes, the
    directories on sys.path and the pycontainer packages (an editable install
    imports them from the source tree)."""
    import pycontainer
    import pycontainer.v1

    paths = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]
    paths.append(os.path.dirname(os.path.realpath(sys.executable)))
    for entry in sys.path:
        if entry and os.path.isabs(entry):
            paths.append(entry if os.path.isdir(entry) else os.path.dirname(entry))
    for package in (pycontainer, pycontainer.v1):
        if package.__file__:
            paths.append(os.path.dirname(package.__file__))
    return paths


def _covered(path: str, by: Sequence[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in by)


def _bind_paths(paths: Sequence[str]) -> list[tuple[str, str]]:
    """(source, destination) read-only binds for host paths: each at its own
    path and, through symlinks, at its real path too; none under another or
    under the system directories, parents first."""
    system = [d for d in HOST_SYSTEM_DIRS if os.path.exists(d)]
    system += [os.path.realpath(d) for d in system]
    wanted: set[str] = set()
    for path in paths:
        if not path or not os.path.isabs(path) or not os.path.exists(path):
            continue
        for candidate in {os.path.normpath(path), os.path.realpath(path)}:
            if candidate != "/" and not _covered(candidate, system):
                wanted.add(candidate)
    chosen: list[str] = []
    for path in sorted(wanted, key=lambda p: (p.count("/"), p)):
        if not _covered(path, chosen):
            chosen.append(path)
    return [(os.path.realpath(p), p) for p in chosen]


def _system_mounts(host_tmp: bool = True) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
        },
    ]
    if host_tmp:
        mounts.append(
            {
                "destination": "/tmp",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777"],
            }
        )
    return mounts


def _process_env(launch: Launch, host_mode: bool) -> list[str]:
    spec = launch.spec
    env = {"PATH": DEFAULT_PATH, "HOME": "/root" if os.getuid() == 0 else "/"}
    if host_mode:
        env["PATH"] = os.environ.get("PATH", DEFAULT_PATH)
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # its directories are read-only
        for name in ("LANG", "LC_ALL", "TZ"):
            if name in os.environ:
                env[name] = os.environ[name]
    env.update(spec.env)
    env["PYCONTAINER_MANAGER"] = launch.manager_address
    env["PYCONTAINER_CONTAINER_ID"] = launch.container_id
    env["PYCONTAINER_NAME"] = spec.name
    return [f"{k}={v}" for k, v in env.items()]


def build_config(
    launch: Launch,
    *,
    root: str = "rootfs",
    cgroup_limits: bool = False,
    host_paths: Sequence[str] = (),
) -> dict[str, Any]:
    """The OCI runtime config (config.json) of a launch. ``root`` is the root
    directory (relative to the bundle or absolute); empty ``spec.oci.rootfs``
    means host mode, where ``host_paths`` (and the working directory) are
    bind mounted read-only beside the system directories."""
    spec = launch.spec
    if not spec.command:
        raise ValueError("spec.command is empty: give the program and its arguments")
    host_mode = not spec.oci.rootfs
    args = list(spec.command)
    if host_mode and args[0] == "python":  # this interpreter, mounted read-only
        args[0] = sys.executable
    # Host mode: like a process, it runs in the manager's working directory
    # unless told otherwise (mounted read-only below).
    cwd = spec.working_dir or (os.getcwd() if host_mode else "/")
    if host_mode:
        cwd = os.path.abspath(cwd)
    elif not os.path.isabs(cwd):
        raise ValueError(f"spec.working_dir {cwd!r} must be an absolute path in spec.oci.rootfs")
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    config: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": os.getuid(), "gid": os.getgid()},
            "args": args,
            "env": _process_env(launch, host_mode),
            "cwd": cwd,
            "capabilities": {
                "bounding": CAPABILITIES,
                "effective": CAPABILITIES,
                "permitted": CAPABILITIES,
            },
            "rlimits": [
                {
                    "type": "RLIMIT_NOFILE",
                    "soft": nofile[0] if nofile[0] >= 0 else 1 << 20,
                    "hard": nofile[1] if nofile[1] >= 0 else 1 << 20,
                }
            ],
            "noNewPrivileges": True,
        },
        "root": {"path": root, "readonly": True},
        "hostname": spec.oci.hostname or _hostname(spec.name),
        "mounts": _system_mounts(),
        "linux": {
            "namespaces": [{"type": t} for t in NAMESPACES],
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "maskedPaths": [
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/sys/firmware",
            ],
            "readonlyPaths": [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ],
        },
    }
    if host_mode:
        mounts = config["mounts"]
        for directory in HOST_SYSTEM_DIRS:
            if os.path.isdir(directory) and not os.path.islink(directory):
                mounts.append(
                    {
                        "destination": directory,
                        "type": "bind",
                        "source": directory,
                        "options": _BIND_RO,
                    }
                )
        extra = [*host_paths]
        if cwd != "/":
            extra.append(cwd)
        for source, destination in _bind_paths(extra):
            mounts.append(
                {"destination": destination, "type": "bind", "source": source, "options": _BIND_RO}
            )
    resources = spec.resources
    if cgroup_limits:
        limits = config["linux"]["resources"]
        if resources.cpu_millis > 0:
            quota = max(1000, resources.cpu_millis * CPU_PERIOD_US // 1000)
            limits["cpu"] = {"quota": quota, "period": CPU_PERIOD_US}
        if resources.memory_bytes > 0:
            limits["memory"] = {"limit": resources.memory_bytes}
    return config


def make_host_root(rootfs: Path) -> None:
    """The empty root of a host-mode container, with the host's top-level
    symlinks (/bin -> usr/bin on merged-/usr systems) mirrored."""
    rootfs.mkdir(parents=True, exist_ok=True)
    for directory in HOST_SYSTEM_DIRS:
        if os.path.islink(directory):
            link = rootfs / directory.lstrip("/")
            if not link.is_symlink():
                link.symlink_to(os.readlink(directory))


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

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        on_exit: ExitListener | None = None,
        runc: str = "runc",
        cgroup_limits: bool | None = None,
        host_paths: Sequence[str] = (),
        start_timeout: float = 30.0,
    ) -> None:
        """``state_dir`` holds run directories and runc's state (--root);
        ``cgroup_limits`` None detects whether limits can be set;
        ``host_paths`` are more host directories for host-mode containers."""
        super().__init__()
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

    async def send_signal(self, container_id: str, signum: int | str = "TERM") -> None:
        """``runc kill ID SIGNAL`` to a running container's init."""
        run = self._containers.get(container_id)
        if run is None or run.done.is_set():
            return
        name = (
            signal.Signals(signum).name.removeprefix("SIG") if isinstance(signum, int) else signum
        )
        code, _, err = await self.run_command("kill", run.runc_id, name, check=False)
        if code != 0 and not run.done.is_set():
            _log.info("runc kill %s %s: %s", run.runc_id, name, err.strip())

    async def kill(self, container_id: str) -> None:
        await self.send_signal(container_id, "KILL")

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
        runc_id = _runc_id(launch.container_id)
        run_dir, bundle, limited = await asyncio.to_thread(self._prepare, launch, runc_id)
        shim = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-S",
            "-c",
            _SHIM,
            runc,
            str(self.root),
            runc_id,
            str(bundle),
            str(run_dir),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,  # the shim writes shim.log
            start_new_session=True,  # the manager's signals are not the container's
        )
        run = RuncContainer(launch.container_id, runc_id, run_dir, bundle, shim)
        first = await self._first_line(run)
        if not first.startswith("pid "):
            await self._reap_failed(run)
            why = self._why(run, first)
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
            (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
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

    @staticmethod
    def _why(run: RuncContainer, first: str) -> str:
        """The shim's complaint with the tail of runc's error output."""
        details = []
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

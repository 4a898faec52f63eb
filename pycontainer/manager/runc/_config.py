"""The OCI bundle of a runc container: config.json from a ContainerSpec, the
host-mode root filesystem, and which cgroup limits this machine lets runc set."""

from __future__ import annotations

import os
import re
import resource
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..._tls_env import TLS_DIR_ENV
from ...agent._settings import HEALTH_LISTEN_ENV, HTTP_LISTEN_ENV
from ...client._mesh import XDS_BOOTSTRAP_ENV
from .._runtime import Launch

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
def runc_id_for(container_id: str) -> str:
    """A runc container id (^[\\w+.-]+$), unique per launch."""
    return f"{runc_id_for_prefix(container_id)}-{uuid.uuid4().hex[:6]}"


def runc_id_for_prefix(container_id: str) -> str:
    """What every runc id of this container's launches starts with."""
    return re.sub(r"[^\w+.-]", "-", container_id)[:48].strip(".") or "container"


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
    if pycontainer.__file__:
        paths.append(os.path.dirname(pycontainer.__file__))
    if pycontainer.v1.__file__:
        # The generated packages' parent (pycontainer.v1 and pycontainer.pprof
        # beside it: generated/pycontainer in an editable install, the
        # package itself in a regular one).
        paths.append(os.path.dirname(os.path.dirname(pycontainer.v1.__file__)))
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
    env.pop(TLS_DIR_ENV, None)
    if launch.tls_dir:  # bind-mounted read-only at the same path (build_config)
        env[TLS_DIR_ENV] = launch.tls_dir
    env.pop(XDS_BOOTSTRAP_ENV, None)
    if launch.mesh_bootstrap:  # its directory bind-mounted likewise
        env[XDS_BOOTSTRAP_ENV] = launch.mesh_bootstrap
    env.pop(HEALTH_LISTEN_ENV, None)
    if spec.health_listen:
        env[HEALTH_LISTEN_ENV] = spec.health_listen
    env.pop(HTTP_LISTEN_ENV, None)
    if spec.http_listen:
        env[HTTP_LISTEN_ENV] = spec.http_listen
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
    if launch.tls_dir:
        # Its certificate, where $PYCONTAINER_TLS_DIR says; read-only, and
        # renewed in place by the manager (the files are replaced atomically).
        config["mounts"].append(
            {
                "destination": launch.tls_dir,
                "type": "bind",
                "source": launch.tls_dir,
                "options": _BIND_RO,
            }
        )
    if launch.mesh_bootstrap:
        # Its xDS bootstrap, where $GRPC_XDS_BOOTSTRAP says (a directory of
        # its own, read-only).
        directory = os.path.dirname(launch.mesh_bootstrap)
        config["mounts"].append(
            {"destination": directory, "type": "bind", "source": directory, "options": _BIND_RO}
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

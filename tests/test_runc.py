"""The runc runtime: OCI containers started, listed, stopped and killed by the
manager (RunContainer with RUNTIME_KIND_RUNC), and through the runtime API
directly; the config.json it generates. Real runc: skipped locally without it
(or without root), a failure in CI."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from support import IN_CI, ManagerHost, require_tool, stop_and_wait_exit, wait_until
from support import running_and_connected as _running_and_connected
from support import wait_container as _wait_container

from pycontainer.manager import Launch
from pycontainer.manager.runc import (
    NAMESPACES,
    RuncRuntime,
    build_config,
    cgroup_limits_support,
    make_host_root,
)
from pycontainer.testing import manager_host
from pycontainer.v1 import container_pb2, manager_pb2, spec_pb2

S = container_pb2
E = manager_pb2
REPO = Path(__file__).resolve().parent.parent
APP = "tests/apps/connected_app.py"


# -- helpers -------------------------------------------------------------------------------
def _require_runc() -> str:
    path = require_tool("runc")
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("the runc tests need root in CI")
        pytest.skip("runc needs root")
    return path


def _seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


def _runc(runtime: RuncRuntime, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runc", "--root", str(runtime.root), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def _runc_state(runtime: RuncRuntime, runc_id: str) -> dict[str, Any] | None:
    done = _runc(runtime, "state", runc_id)
    return dict(json.loads(done.stdout)) if done.returncode == 0 else None


def _app_spec(name: str, *args: str, replicas: int = 1) -> spec_pb2.ContainerSpec:
    """connected_app.py in a host-mode runc container (this interpreter and
    the repository mounted read-only)."""
    return spec_pb2.ContainerSpec(
        name=name,
        runtime=spec_pb2.RUNTIME_KIND_RUNC,
        command=["python", APP, "--name", name, *args],
        working_dir=str(REPO),
        replicas=replicas,
        oci=spec_pb2.OciSpec(hostname=f"{name}-host"),
    )


def _ns(pid: int, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def _logs(runtime: RuncRuntime, container_id: str) -> str:
    run = runtime.container(container_id)
    if run is None:
        return "(no such launch)"
    return "\n".join(
        f"--- {path.name}\n{path.read_text(errors='replace')}"
        for path in (run.stdout_path, run.stderr_path, run.run_dir / "shim.log")
        if path.exists()
    )


@pytest.fixture
def runc_manager(tmp_path: Path) -> Iterator[tuple[ManagerHost, RuncRuntime]]:
    _require_runc()
    runtime = RuncRuntime(tmp_path / "runc")
    with manager_host(tmp_path / "state", runtimes={spec_pb2.RUNTIME_KIND_RUNC: runtime}) as host:
        yield host, runtime


# -- through the manager -------------------------------------------------------------------
def test_runc_containers_run_listed_and_stop_within_grace(
    runc_manager: tuple[ManagerHost, RuncRuntime],
) -> None:
    manager, runtime = runc_manager
    response = manager.stub.RunContainer(
        manager_pb2.RunContainerRequest(spec=_app_spec("oci", "--stop-seconds", "0.2", replicas=2)),
        timeout=30,
    )
    launched = {c.identity.id: c.pid for c in response.containers}
    assert len(launched) == 2
    for cid in launched:
        try:
            _wait_container(manager.stub, cid, _running_and_connected, "running")
        except AssertionError:
            raise AssertionError(_logs(runtime, cid)) from None

    listed = manager.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=5)
    assert {c.identity.id: c.state for c in listed.containers} == {
        cid: S.LIFECYCLE_STATE_RUNNING for cid in launched
    }
    runc_list = json.loads(_runc(runtime, "list", "--format", "json").stdout)
    by_id = {item["id"]: item for item in runc_list}
    for c in listed.containers:
        cid = c.identity.id
        run = runtime.container(cid)
        assert run is not None
        # It registered as the init of its own pid namespace; the manager
        # shows its host pid.
        host_pid = launched[cid]
        assert c.pid == host_pid == run.pid == runtime.pid(cid)
        assert host_pid > 1
        assert by_id[run.runc_id]["status"] == "running"
        assert by_id[run.runc_id]["pid"] == host_pid
        state = _runc_state(runtime, run.runc_id)
        assert state is not None
        assert state["status"] == "running"
        assert _ns(host_pid, "pid") != _ns(os.getpid(), "pid")
        assert _ns(host_pid, "mnt") != _ns(os.getpid(), "mnt")
        assert _ns(host_pid, "net") == _ns(os.getpid(), "net")  # dials the manager on loopback
        assert Path(f"/proc/{host_pid}/root/etc/os-release").exists()  # the host's /etc, ro

    first, second = sorted(launched)
    exited = stop_and_wait_exit(manager.stub, first)
    assert exited.exit_code == 0
    assert exited.state == S.LIFECYCLE_STATE_STOPPED
    run = runtime.container(first)
    assert run is not None
    assert b"on_stop done" in run.stdout_path.read_bytes()
    # The shim deleted it from runc; the other one runs on.
    wait_until(lambda: _runc_state(runtime, run.runc_id) is None, what="runc delete")
    other = runtime.container(second)
    assert other is not None
    assert _runc_state(runtime, other.runc_id) is not None


def test_runc_container_overrunning_its_grace_is_killed(
    runc_manager: tuple[ManagerHost, RuncRuntime],
) -> None:
    manager, runtime = runc_manager
    [launched] = manager.stub.RunContainer(
        manager_pb2.RunContainerRequest(spec=_app_spec("slow-oci", "--stop-seconds", "30")),
        timeout=30,
    ).containers
    cid = launched.identity.id
    _wait_container(manager.stub, cid, _running_and_connected, "running")
    began = time.monotonic()
    # Killed at the deadline: a stop that worked (as docker stop reports it).
    response = manager.stub.StopContainer(
        manager_pb2.StopContainerRequest(container=cid, grace_period=_seconds(0.5)),
        timeout=30,
    )
    assert response.killed
    exited = _wait_container(
        manager.stub, cid, lambda c: c.HasField("exit_code"), "exit status", timeout=15
    )
    # Its own hard exit (137) or the runtime's SIGKILL at the deadline (-9).
    assert exited.exit_code in (137, -9), exited.exit_code
    assert exited.state == S.LIFECYCLE_STATE_STOPPED
    assert exited.reason == "killed after its 500ms grace period"
    assert time.monotonic() - began < 10  # grace 0.5 s + the manager's kill margin
    run = runtime.container(cid)
    assert run is not None
    assert run.exit_code == exited.exit_code
    assert (run.run_dir / "exit_status").read_text().strip() == str(exited.exit_code)
    wait_until(lambda: _runc_state(runtime, run.runc_id) is None, what="runc delete")


def test_frozen_runc_container_is_sigkilled_by_the_runtime_at_the_deadline(
    runc_manager: tuple[ManagerHost, RuncRuntime],
) -> None:
    """Paused by runc (frozen), it cannot answer the stop: the manager has the
    runtime SIGKILL it once the grace period and the kill margin are over."""
    manager, runtime = runc_manager
    [launched] = manager.stub.RunContainer(
        manager_pb2.RunContainerRequest(spec=_app_spec("frozen")), timeout=30
    ).containers
    cid = launched.identity.id
    _wait_container(manager.stub, cid, _running_and_connected, "running")
    run = runtime.container(cid)
    assert run is not None
    assert _runc(runtime, "pause", run.runc_id).returncode == 0
    assert (_runc_state(runtime, run.runc_id) or {}).get("status") == "paused"
    began = time.monotonic()
    response = manager.stub.StopContainer(
        manager_pb2.StopContainerRequest(container=cid, grace_period=_seconds(0.5)),
        timeout=30,
    )
    assert response.killed
    took = time.monotonic() - began
    assert 0.5 <= took < 10, took
    exited = _wait_container(
        manager.stub, cid, lambda c: c.HasField("exit_code"), "exit status", timeout=15
    )
    assert exited.exit_code == -9
    assert exited.state == S.LIFECYCLE_STATE_STOPPED
    assert exited.reason == "killed after its 500ms grace period"
    wait_until(lambda: _runc_state(runtime, run.runc_id) is None, what="runc delete")


def test_runc_container_restarted_on_failure_gets_a_new_runc_container(
    runc_manager: tuple[ManagerHost, RuncRuntime],
) -> None:
    manager, runtime = runc_manager
    spec = _app_spec("phoenix")
    spec.restart_policy = spec_pb2.RESTART_POLICY_ON_FAILURE
    spec.restart_backoff.CopyFrom(_seconds(0.2))
    [launched] = manager.stub.RunContainer(
        manager_pb2.RunContainerRequest(spec=spec), timeout=30
    ).containers
    cid = launched.identity.id
    _wait_container(manager.stub, cid, _running_and_connected, "running")
    first = runtime.container(cid)
    assert first is not None
    manager.call(lambda: runtime.kill(cid))
    again = _wait_container(
        manager.stub,
        cid,
        lambda c: c.restarts == 1 and _running_and_connected(c),
        "restarted and running",
    )
    # Its host pid (it registers as pid 1 of its own namespace).
    assert again.pid == runtime.pid(cid)
    assert again.pid not in (1, first.pid)
    second = runtime.container(cid)
    assert second is not None
    assert second.runc_id != first.runc_id
    assert first.exit_code == -9
    assert _runc_state(runtime, first.runc_id) is None
    assert (_runc_state(runtime, second.runc_id) or {}).get("status") == "running"


def test_an_unregistered_runc_program_is_reported_stopped_and_killed_through_runc(
    runc_manager: tuple[ManagerHost, RuncRuntime],
) -> None:
    """Not a pycontainer app and no sidecar: reported after its start
    timeout, and stopped by runc kill (SIGTERM, then SIGKILL at the end of
    its grace period: sh as pid 1 of its namespace ignores SIGTERM)."""
    manager, runtime = runc_manager
    spec = spec_pb2.ContainerSpec(
        name="mute", runtime=spec_pb2.RUNTIME_KIND_RUNC, command=["sleep", "1000"]
    )
    spec.start_timeout.CopyFrom(_seconds(1))
    [launched] = manager.stub.RunContainer(
        manager_pb2.RunContainerRequest(spec=spec), timeout=30
    ).containers
    cid = launched.identity.id
    assert launched.launched
    assert launched.pid == runtime.pid(cid)
    reported = _wait_container(
        manager.stub, cid, lambda c: c.reason.startswith("not registered"), "reported", 10
    )
    assert reported.state == S.LIFECYCLE_STATE_CREATED
    response = manager.stub.StopContainer(
        manager_pb2.StopContainerRequest(container=cid, grace_period=_seconds(0.5)),
        timeout=30,
    )
    # The init of a pid namespace gets no default action for SIGTERM.
    assert response.killed
    assert response.container.state == S.LIFECYCLE_STATE_STOPPED
    assert response.container.reason == "killed after its 500ms grace period"
    assert runtime.pid(cid) is None
    run = runtime.container(cid)
    assert run is not None
    assert run.run_dir.is_dir()
    # Deleted with purge: its run directory (its output) goes too.
    manager.stub.DeleteContainer(
        manager_pb2.DeleteContainerRequest(container=cid, purge=True), timeout=10
    )
    assert not run.run_dir.exists()


def test_runc_launch_errors_are_failed_precondition(tmp_path: Path) -> None:
    missing = RuncRuntime(tmp_path / "runc", runc="no-such-runc-binary")
    host = ManagerHost(str(tmp_path / "state"), runtimes={spec_pb2.RUNTIME_KIND_RUNC: missing})
    try:
        with pytest.raises(grpc.RpcError) as info:
            host.stub.RunContainer(
                manager_pb2.RunContainerRequest(spec=_app_spec("nowhere")), timeout=10
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "runc not found" in (info.value.details() or "")
    finally:
        host.stop()


# -- through the runtime API ---------------------------------------------------------------
def _launch(name: str, *command: str, **spec: Any) -> Launch:
    return Launch(
        f"{name}-0001",
        spec_pb2.ContainerSpec(
            name=name, runtime=spec_pb2.RUNTIME_KIND_RUNC, command=list(command), **spec
        ),
        "127.0.0.1:1",
    )


@pytest.fixture
async def runtime(tmp_path: Path) -> Any:
    _require_runc()
    exits: asyncio.Queue[tuple[str, int]] = asyncio.Queue()

    async def on_exit(container_id: str, code: int) -> None:
        await exits.put((container_id, code))

    rt = RuncRuntime(tmp_path / "runc", on_exit=on_exit)
    rt.exits = exits  # type: ignore[attr-defined]
    try:
        yield rt
    finally:
        await rt.close()


async def _exit_of(rt: RuncRuntime, container_id: str, within: float = 10) -> int:
    exits: asyncio.Queue[tuple[str, int]] = rt.exits  # type: ignore[attr-defined]
    cid, code = await asyncio.wait_for(exits.get(), within)
    assert cid == container_id
    return code


async def test_plain_command_run_and_killed(runtime: RuncRuntime) -> None:
    launch = _launch("sleeper", "sleep", "60")
    pid = await runtime.launch(launch)
    run = runtime.container(launch.container_id)
    assert run is not None
    state = await runtime.state(launch.container_id)
    assert state is not None
    assert (state["status"], state["pid"]) == ("running", pid)
    assert _ns(pid, "pid") != _ns(os.getpid(), "pid")
    assert _cmdline(pid) == b"sleep\x0060\x00"
    config = json.loads((run.bundle / "config.json").read_text())
    assert config["process"]["args"] == ["sleep", "60"]
    # It holds the spec's env, secrets included: its owner's alone.
    assert stat.S_IMODE((run.bundle / "config.json").stat().st_mode) == 0o600
    env = dict(item.split("=", 1) for item in config["process"]["env"])
    assert env["PYCONTAINER_CONTAINER_ID"] == launch.container_id
    assert env["PYCONTAINER_MANAGER"] == "127.0.0.1:1"

    await runtime.kill(launch.container_id)
    assert await _exit_of(runtime, launch.container_id) == -9
    assert runtime.pid(launch.container_id) is None
    assert await runtime.state(launch.container_id) is None  # deleted by its shim
    await runtime.kill(launch.container_id)  # already gone: nothing happens


async def test_a_relaunch_replaces_the_old_launch_without_reporting_its_end(
    runtime: RuncRuntime,
) -> None:
    launch = _launch("twice", "sleep", "60")
    old_pid = await runtime.launch(launch)
    old = runtime.container(launch.container_id)
    new_pid = await runtime.launch(launch)  # as a restart does
    assert old is not None
    assert old.exit_code == -9  # ended, but not reported: it is no longer this container
    assert new_pid != old_pid
    assert runtime.pid(launch.container_id) == new_pid
    await runtime.kill(launch.container_id)
    assert await _exit_of(runtime, launch.container_id) == -9
    exits: asyncio.Queue[tuple[str, int]] = runtime.exits  # type: ignore[attr-defined]
    assert exits.empty()


async def test_term_reaches_the_container_and_its_exit_status_is_reported(
    runtime: RuncRuntime,
) -> None:
    script = "trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.05; done"
    launch = _launch("trapper", "sh", "-c", script)
    await runtime.launch(launch)
    run = runtime.container(launch.container_id)
    assert run is not None
    await asyncio.to_thread(
        wait_until, lambda: b"ready" in run.stdout_path.read_bytes(), 10, "ready"
    )
    await runtime.send_signal(launch.container_id, "TERM")
    assert await _exit_of(runtime, launch.container_id) == 7
    assert run.stdout_path.read_text().splitlines() == ["ready", "got TERM"]


async def test_limits_and_host_mode_inside_the_container(runtime: RuncRuntime) -> None:
    """What the container sees: its hostname, pid 1, read-only host
    directories, a writable tmpfs /tmp, and its limits when the machine
    allows them."""
    script = (
        "import os, socket\n"
        "print('hostname', socket.gethostname())\n"
        "print('pid', os.getpid())\n"
        "for path in ('/usr/ro-probe', os.getcwd() + '/ro-probe', '/tmp/probe'):\n"
        "    try:\n"
        "        open(path, 'w').close()\n"
        "        print('writable', path)\n"
        "    except OSError:\n"
        "        print('read-only', path)\n"
        # cgroup v2 (no cgroup namespace: the whole tree, ours at its path in
        # /proc/self/cgroup) or v1 (runc binds our own cgroups).
        "own = [line.split(':', 2)[2] for line in open('/proc/self/cgroup').read().split()\n"
        "       if line.startswith('0::')]\n"
        "v2 = '/sys/fs/cgroup/' + own[0].strip('/') + '/' if own else '/nonexistent/'\n"
        "for path in (v2 + 'memory.max', '/sys/fs/cgroup/memory/memory.limit_in_bytes'):\n"
        "    if os.path.exists(path):\n"
        "        print('memory', open(path).read().strip())\n"
        "        break\n"
        "for path in (v2 + 'cpu.max', '/sys/fs/cgroup/cpu/cpu.cfs_quota_us'):\n"
        "    if os.path.exists(path):\n"
        "        print('cpu', open(path).read().split()[0])\n"
        "        break\n"
    )
    launch = _launch(
        "probe",
        "python",
        "-c",
        script,
        working_dir=str(REPO),
        oci=spec_pb2.OciSpec(hostname="probe-host"),
        resources=container_pb2.ResourceRequirements(cpu_millis=250, memory_bytes=96 << 20),
    )
    await runtime.launch(launch)
    code = await _exit_of(runtime, launch.container_id, within=20)
    out = _logs(runtime, launch.container_id)
    assert code == 0, out
    run = runtime.container(launch.container_id)
    assert run is not None
    lines = run.stdout_path.read_text().splitlines()
    assert "hostname probe-host" in lines
    assert "pid 1" in lines
    assert "read-only /usr/ro-probe" in lines
    assert f"read-only {REPO}/ro-probe" in lines
    assert "writable /tmp/probe" in lines
    config = json.loads((run.bundle / "config.json").read_text())
    if runtime.cgroup_limits:
        assert config["linux"]["resources"]["memory"] == {"limit": 96 << 20}
        assert config["linux"]["resources"]["cpu"] == {"quota": 25_000, "period": 100_000}
        assert f"memory {96 << 20}" in lines, out
        assert "cpu 25000" in lines, out
    else:
        assert "memory" not in config["linux"]["resources"]
        assert "cpu" not in config["linux"]["resources"]


async def test_a_given_bundle_runs_as_it_is(runtime: RuncRuntime, tmp_path: Path) -> None:
    bundle = tmp_path / "my-bundle"
    make_host_root(bundle / "rootfs")
    config = build_config(_launch("bundled", "sh", "-c", "echo from-bundle; exit 5"))
    (bundle / "config.json").write_text(json.dumps(config))
    launch = _launch("bundled", "ignored", oci=spec_pb2.OciSpec(bundle=str(bundle)))
    await runtime.launch(launch)
    assert await _exit_of(runtime, launch.container_id) == 5
    run = runtime.container(launch.container_id)
    assert run is not None
    assert run.bundle == bundle
    assert run.stdout_path.read_text() == "from-bundle\n"
    assert not (run.run_dir / "config.json").exists()  # nothing generated


def _tiny_rootfs(rootfs: Path) -> Path:
    """A root file system with only sh and the libraries it links."""
    sh = shutil.which("sh")
    assert sh is not None
    libs = subprocess.run(["ldd", sh], capture_output=True, text=True, check=True).stdout
    files = [os.path.realpath(sh)]
    files += [word for word in libs.split() if word.startswith("/")]
    for path in files:
        target = rootfs / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    (rootfs / "bin").mkdir(exist_ok=True)
    if not (rootfs / "bin" / "sh").exists():
        (rootfs / "bin" / "sh").symlink_to(os.path.realpath(sh))
    for directory in ("proc", "dev", "sys", "tmp"):
        (rootfs / directory).mkdir(exist_ok=True)
    return rootfs


async def test_a_rootfs_of_our_own(runtime: RuncRuntime, tmp_path: Path) -> None:
    """spec.oci.rootfs: a root with only sh and its libraries in it."""
    rootfs = _tiny_rootfs(tmp_path / "rootfs")
    script = "read h < /proc/sys/kernel/hostname; echo $h; echo $$; exit 3"
    launch = _launch(
        "own-root",
        "/bin/sh",
        "-c",
        script,
        oci=spec_pb2.OciSpec(rootfs=str(rootfs), hostname="tiny"),
    )
    await runtime.launch(launch)
    assert await _exit_of(runtime, launch.container_id) == 3
    run = runtime.container(launch.container_id)
    assert run is not None
    assert run.stdout_path.read_text().split() == ["tiny", "1"]
    config = json.loads((run.bundle / "config.json").read_text())
    assert config["root"] == {"path": str(rootfs), "readonly": True}
    assert not [m for m in config["mounts"] if m["type"] == "bind"]


async def test_launch_errors(runtime: RuncRuntime, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        await runtime.launch(_launch("x", "true", oci=spec_pb2.OciSpec(rootfs="/no/such/root")))
    with pytest.raises(ValueError, match=r"no config\.json"):
        await runtime.launch(_launch("x", "true", oci=spec_pb2.OciSpec(bundle=str(tmp_path))))
    with pytest.raises(ValueError, match="command is empty"):
        await runtime.launch(_launch("x"))
    # runc itself refuses (no such program in the container): its words come back.
    with pytest.raises(OSError, match="no-such-program"):
        await runtime.launch(_launch("x", "/no-such-program"))


async def test_close_kills_and_deletes_what_is_left(tmp_path: Path) -> None:
    _require_runc()
    rt = RuncRuntime(tmp_path / "runc")
    pids = [await rt.launch(_launch(f"left{i}", "sleep", "60")) for i in range(2)]
    listed = json.loads(_runc(rt, "list", "--format", "json").stdout)
    assert sorted(item["pid"] for item in listed) == sorted(pids)
    await rt.close()
    assert json.loads(_runc(rt, "list", "--format", "json").stdout or "null") in (None, [])
    for i in range(2):
        run = rt.container(f"left{i}-0001")
        assert run is not None
        assert run.exit_code == -9


# -- the generated config.json -------------------------------------------------------------
def test_generated_config_namespaces_mounts_and_limits() -> None:
    launch = _launch(
        "cfg",
        "python",
        "app.py",
        working_dir=str(REPO),
        env={"COLOUR": "blue"},
        resources=container_pb2.ResourceRequirements(cpu_millis=1500, memory_bytes=256 << 20),
    )
    config = build_config(launch, cgroup_limits=True, host_paths=[sys.prefix])
    assert config["process"]["args"] == [sys.executable, "app.py"]
    assert config["process"]["cwd"] == str(REPO)
    assert config["process"]["terminal"] is False
    assert config["process"]["noNewPrivileges"] is True
    env = dict(item.split("=", 1) for item in config["process"]["env"])
    assert env["COLOUR"] == "blue"
    assert env["PYCONTAINER_NAME"] == "cfg"
    assert config["hostname"] == "cfg"
    assert config["root"] == {"path": "rootfs", "readonly": True}
    namespaces = {ns["type"] for ns in config["linux"]["namespaces"]}
    assert namespaces == set(NAMESPACES) == {"pid", "mount", "uts", "ipc"}  # network: the host's
    mounts = {m["destination"]: m for m in config["mounts"]}
    for destination in ("/proc", "/dev", "/sys", "/tmp"):
        assert destination in mounts
    assert mounts["/tmp"]["type"] == "tmpfs"
    binds = [m for m in config["mounts"] if m["type"] == "bind"]
    assert binds
    assert all("ro" in m["options"] for m in binds)
    destinations = [m["destination"] for m in binds]
    assert "/usr" in destinations
    assert "/etc" in destinations
    assert any(
        str(REPO) == d or str(REPO).startswith(d + "/") for d in destinations
    )  # the working directory
    assert any(sys.prefix == d or sys.prefix.startswith(d + "/") for d in destinations)
    assert len(destinations) == len(set(destinations))
    resources = config["linux"]["resources"]
    assert resources["cpu"] == {"quota": 150_000, "period": 100_000}
    assert resources["memory"] == {"limit": 256 << 20}

    without = build_config(launch, cgroup_limits=False)
    assert "cpu" not in without["linux"]["resources"]
    assert "memory" not in without["linux"]["resources"]


def test_generated_config_for_a_rootfs_and_bad_specs(tmp_path: Path) -> None:
    rt = RuncRuntime(tmp_path / "runc", cgroup_limits=False)
    launch = _launch("r", "python", "x.py", oci=spec_pb2.OciSpec(rootfs=str(tmp_path)))
    config = rt.config_for(launch)
    assert config["root"]["path"] == str(tmp_path)
    assert config["process"]["args"] == ["python", "x.py"]  # the rootfs's python
    assert not [m for m in config["mounts"] if m["type"] == "bind"]
    with pytest.raises(ValueError, match="absolute"):
        rt.config_for(_launch("r", "true", oci=spec_pb2.OciSpec(rootfs="relative/root")))
    with pytest.raises(ValueError, match="not a directory"):
        rt.config_for(_launch("r", "true", oci=spec_pb2.OciSpec(rootfs=str(tmp_path / "nope"))))
    with pytest.raises(ValueError, match="absolute"):
        rt.config_for(
            _launch("r", "true", working_dir="rel", oci=spec_pb2.OciSpec(rootfs=str(tmp_path)))
        )


def test_cgroup_detection_reads_v1_and_v2_layouts(tmp_path: Path) -> None:
    # cgroup v2: the parent of our own cgroup must offer cpu and memory.
    v2 = tmp_path / "v2"
    (v2 / "parent" / "self").mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("cpu memory pids\n")
    (v2 / "parent" / "cgroup.controllers").write_text("cpu memory\n")
    (v2 / "parent" / "cgroup.subtree_control").write_text("")
    own = tmp_path / "self-cgroup"
    own.write_text("0::/parent/self\n")
    ok, why = cgroup_limits_support(str(v2), str(own), "/nonexistent")
    assert ok, why
    (v2 / "parent" / "cgroup.controllers").write_text("pids\n")
    ok, why = cgroup_limits_support(str(v2), str(own), "/nonexistent")
    assert not ok
    assert "cpu, memory" in why

    # cgroup v1: writable cpu and memory hierarchies.
    v1 = tmp_path / "v1"
    for controller, knob in (("cpu", "cpu.cfs_quota_us"), ("memory", "memory.limit_in_bytes")):
        (v1 / controller / "box").mkdir(parents=True)
        (v1 / controller / "box" / knob).write_text("-1\n")
    own.write_text("4:memory:/box\n1:cpu:/box\n0::/\n")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        f"32 31 0:29 / {v1}/cpu rw,relatime - cgroup cgroup rw,cpu\n"
        f"35 31 0:32 / {v1}/memory rw,relatime - cgroup cgroup rw,memory\n"
    )
    ok, why = cgroup_limits_support(str(v1), str(own), str(mountinfo))
    assert ok, why
    mountinfo.write_text(f"32 31 0:29 / {v1}/cpu rw,relatime - cgroup cgroup rw,cpu\n")
    ok, why = cgroup_limits_support(str(v1), str(own), str(mountinfo))
    assert not ok
    assert "memory" in why


_PICKY_RUNC = """#!{python}
import json, os, sys
args = sys.argv[1:]
if "run" in args:
    config = json.load(open(os.path.join(args[args.index("--bundle") + 1], "config.json")))
    if "memory" in config["linux"]["resources"]:
        sys.exit("runc run failed: cannot set memory limit: cgroup not writable")
os.execv({runc!r}, [{runc!r}, *args])
"""


async def test_limits_runc_refuses_are_dropped_with_a_note(tmp_path: Path) -> None:
    """Detection said limits work but runc cannot set them: the container
    runs without them, and so do the next ones."""
    real = _require_runc()
    picky = tmp_path / "picky-runc"
    picky.write_text(_PICKY_RUNC.format(python=sys.executable, runc=real))
    picky.chmod(0o755)
    rt = RuncRuntime(tmp_path / "runc", runc=str(picky), cgroup_limits=True)
    try:
        limited = container_pb2.ResourceRequirements(memory_bytes=64 << 20)
        pid = await rt.launch(_launch("limited", "sleep", "60", resources=limited))
        assert pid > 0
        assert rt.cgroup_limits is False
        assert "cgroup not writable" in rt.cgroup_note
        run = rt.container("limited-0001")
        assert run is not None
        assert (
            "memory"
            not in json.loads((run.bundle / "config.json").read_text())["linux"]["resources"]
        )
    finally:
        await rt.close()


async def test_the_xds_bootstrap_is_visible_read_only_inside(
    runtime: RuncRuntime, tmp_path: Path
) -> None:
    """The manager's bootstrap file for a runc container (Launch.mesh_bootstrap):
    $GRPC_XDS_BOOTSTRAP names it, and it is there inside, read-only."""
    from pycontainer.client import write_bootstrap

    bootstrap = write_bootstrap(
        tmp_path / "mesh" / "boot-0001" / "bootstrap.json", "127.0.0.1:1", node_id="boot-0001"
    )
    check = (
        'grep -q \'"id": "boot-0001"\' "$GRPC_XDS_BOOTSTRAP" || exit 3; '
        'echo x >> "$GRPC_XDS_BOOTSTRAP" 2>/dev/null && exit 4; exit 0'
    )
    plain = _launch("boot", "sh", "-c", check)
    launch = Launch(
        plain.container_id, plain.spec, plain.manager_address, mesh_bootstrap=str(bootstrap)
    )
    await runtime.launch(launch)
    assert await _exit_of(runtime, launch.container_id) == 0

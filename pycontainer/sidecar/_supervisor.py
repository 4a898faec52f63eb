"""The sidecar: a pycontainer Container whose hooks drive an arbitrary
program (any language) through processes and signals.

- on_start starts the program (a process group of its own) and its probes;
- on_pause / on_resume send SIGSTOP / SIGCONT to the group;
- on_stop runs the pre-stop command, sends the stop signal, waits until the
  deadline and then SIGKILLs the group;
- on_checkpoint runs the checkpoint command (its stdout is the state),
  on_restore runs the restore command with the state on its stdin.

The program exiting by itself stops the container (status 0) or FAILs it
(any other status); the sidecar then exits with the program's status.

With spec.proxy envoy (SidecarSettings.envoy), Envoy runs beside the program
(_envoy): started first, the program once Envoy has its listeners from the
manager; a readiness check "envoy" until then; stopped after the program;
its death by itself FAILs the container.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from .. import __version__
from .._errors import RequestError
from .._secrets import mask_url_passwords
from .._tls_env import BOOTSTRAP_TOKEN_ENV, CA_PIN_ENV, JOIN_ENV
from ..agent._container import Container, ContainerSettings, Hooks
from ..agent._health import CheckKind
from ..agent._serve import serve
from ..agent._settings import HEALTH_LISTEN_ENV, HTTP_LISTEN_ENV
from ..agent._state import State
from ..agent._tls import tls_dir
from ..spec import SPEC_ENV
from ..units import format_duration
from ..v1 import mesh_pb2, spec_pb2
from ._child import ChildProcess, describe_status, exit_status
from ._envoy import (
    MESH_ENDPOINT,
    EnvoyPlan,
    EnvoyProxy,
    bootstrap,
    envoy_binary,
    host_port,
    manager_tls,
    plan_envoy,
)
from ._probes import Prober, check_probe, describe_probe, with_timing
from ._severity import STDERR_DEFAULT, STDOUT_DEFAULT, Severities, SeverityRule

__all__ = [
    "EnvoyFailed",
    "HookCommandError",
    "ProgramExited",
    "ProgramKilled",
    "ProgramNotStarted",
    "Sidecar",
    "SidecarSettings",
]

_log = logging.getLogger("pycontainer.sidecar")

LIVENESS = "liveness"
READINESS = "readiness"
#: How long Envoy may take, once started, to have its listeners from the
#: manager (admin /ready says LIVE) before the program starts.
ENVOY_START_TIMEOUT = datetime.timedelta(seconds=30)
#: How often a program behind Envoy without a readiness probe of its own is
#: probed (a TCP connect to its address).
PROGRAM_PROBE_PERIOD = datetime.timedelta(milliseconds=500)
# The readiness check of the Envoy beside the program: ready once Envoy has
# its listeners and clusters from the manager (admin /ready says LIVE).
ENVOY = "envoy"
# Environment a pycontainer-embedding program would take as its own identity
# (or launch description): the program is not that container, the sidecar is;
# and the sidecar's bootstrap token, a secret the program has no use for.
_NOT_FOR_THE_PROGRAM = (
    "PYCONTAINER_MANAGER",
    "PYCONTAINER_CONTAINER_ID",
    SPEC_ENV,
    HEALTH_LISTEN_ENV,
    HTTP_LISTEN_ENV,
    BOOTSTRAP_TOKEN_ENV,
    JOIN_ENV,
    CA_PIN_ENV,
)
#: Most time a checkpoint or restore command may take, unless the settings say.
DEFAULT_HOOK_TIMEOUT = datetime.timedelta(seconds=60)
# Exit statuses when the program could not be run, as a shell's.
_NOT_FOUND = 127
_NOT_EXECUTABLE = 126


class HookCommandError(RuntimeError):
    """A hook command failed or timed out."""


class ProgramExited(RuntimeError):
    """The program exited by itself with a non-zero status."""


class ProgramNotStarted(RuntimeError):
    """The program could not be executed."""


class ProgramKilled(RuntimeError):
    """The program outlived its grace period and was SIGKILLed."""


class EnvoyFailed(RuntimeError):
    """The Envoy beside the program could not start, or ended by itself."""


@dataclass
class SidecarSettings:
    """What to run and how to present it: ``container`` is who the container
    is (name, labels, priority, resources, grace period), the rest is the
    program and how the sidecar drives it."""

    container: ContainerSettings
    command: Sequence[str]
    listen: str = "127.0.0.1:0"
    # HOST:PORT of a manager; None means $PYCONTAINER_MANAGER, else none.
    manager: str | None = None
    liveness: spec_pb2.Probe | None = None
    readiness: spec_pb2.Probe | None = None
    pre_stop: Sequence[str] = ()
    checkpoint: Sequence[str] = ()
    restore: Sequence[str] = ()
    # Most time a checkpoint or restore command may take.
    hook_timeout: datetime.timedelta = DEFAULT_HOOK_TIMEOUT
    stop_signal: int = signal.SIGTERM
    severity_rules: Sequence[SeverityRule] = ()
    default_severity_rules: bool = True
    # Echo the program's output on the sidecar's own stdout/stderr.
    echo: bool = True
    # Working directory of the program and its hook commands; None: the sidecar's.
    cwd: str | None = None
    # Added to the program's environment (the sidecar's own, less its identity).
    env: Mapping[str, str] = field(default_factory=dict)
    # The Envoy beside the program (spec.proxy envoy); None: none.
    envoy: mesh_pb2.EnvoySettings | None = None
    # The mesh service the container serves (Envoy's node.cluster), and the
    # name of the endpoint that serves it (spec.service.endpoint).
    service: str = ""
    service_endpoint: str = ""

    def __post_init__(self) -> None:
        if not self.command:
            raise ValueError("no program to run: give its command after --")
        for which, probe in (("liveness", self.liveness), ("readiness", self.readiness)):
            if probe is not None:
                check_probe(probe, f"{which} probe")
        if self.hook_timeout <= datetime.timedelta(0):
            raise ValueError("the hook timeout must be more than 0s")

    @property
    def name(self) -> str:
        return self.container.name

    @property
    def grace_period(self) -> datetime.timedelta:
        """The container's grace period."""
        return self.container.grace_period


def _program_text(command: Sequence[str]) -> str:
    """The program as logs name it: its argv[0] and how many arguments follow,
    never the arguments themselves (they may hold secrets)."""
    count = len(command) - 1
    return f"{command[0]} ({count} argument{'' if count == 1 else 's'})"


# -- metrics of the program ------------------------------------------------------------------

_CHILDREN: weakref.WeakSet[ChildProcess] = weakref.WeakSet()
_INSTRUMENTS_LOCK = threading.Lock()
_instruments_made = False
# One reading of every program's process tree serves the callbacks of one
# collection (they run one after the other).
_CACHE_SECONDS = 0.05


@dataclass(frozen=True)
class _Figures:
    attributes: Mapping[str, str]
    cpu_seconds: float
    rss_bytes: int
    threads: int
    processes: int


_cache: tuple[float, list[_Figures]] = (0.0, [])


def _read_trees() -> list[_Figures]:
    """The figures of each running program (with its descendants)."""
    global _cache
    now = time.monotonic()
    if now - _cache[0] < _CACHE_SECONDS:
        return _cache[1]
    out = []
    for child in list(_CHILDREN):
        cpu, rss, threads, count = 0.0, 0, 0, 0
        for proc in child.tree():
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    memory = proc.memory_info()
                    nthreads = proc.num_threads()
            except psutil.Error:  # gone, or a zombie: nothing left to count
                continue
            # children_*: descendants that ended and were waited for.
            cpu += times.user + times.system + times.children_user + times.children_system
            rss += memory.rss
            threads += nthreads
            count += 1
        if count:
            out.append(_Figures({"process.pid": str(child.pid)}, cpu, rss, threads, count))
    _cache = (now, out)
    return out


def _gauge(
    value: Callable[[_Figures], float],
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value(f), f.attributes) for f in _read_trees()]

    return callback


def _ensure_instruments() -> None:
    """The program's figures as OpenTelemetry observable gauges (once per process)."""
    global _instruments_made
    with _INSTRUMENTS_LOCK:
        if _instruments_made:
            return
        _instruments_made = True
    meter = metrics.get_meter("pycontainer.sidecar", __version__)
    meter.create_observable_gauge(
        "process.child.cpu.seconds",
        callbacks=[_gauge(lambda f: f.cpu_seconds)],
        unit="s",
        description="CPU time (user + system) of the supervised program and its descendants",
    )
    meter.create_observable_gauge(
        "process.child.memory.rss",
        callbacks=[_gauge(lambda f: f.rss_bytes)],
        unit="By",
        description="Resident memory of the supervised program and its descendants",
    )
    meter.create_observable_gauge(
        "process.child.threads",
        callbacks=[_gauge(lambda f: f.threads)],
        unit="{thread}",
        description="Threads of the supervised program and its descendants",
    )
    meter.create_observable_gauge(
        "process.child.processes",
        callbacks=[_gauge(lambda f: f.processes)],
        unit="{process}",
        description="Processes: the supervised program and its live descendants",
    )


# -- the sidecar -----------------------------------------------------------------------------


class Sidecar:
    """A Container hosting the Management API for a program it supervises."""

    def __init__(self, settings: SidecarSettings) -> None:
        self.settings = settings
        s = settings
        self.container = Container(
            s.container,
            hooks=Hooks(
                on_start=self._on_start,
                on_pause=self._on_pause,
                on_resume=self._on_resume,
                on_stop=self._on_stop,
                on_checkpoint=self._on_checkpoint if s.checkpoint else None,
                on_restore=self._on_restore if s.restore else None,
            ),
        )
        self._severities = Severities(s.severity_rules, defaults=s.default_severity_rules)
        self.child: ChildProcess | None = None
        self.spawn_error: OSError | None = None
        self._stopping = threading.Event()
        self._paused = False
        self._exited_by_itself = False
        self._stopper: threading.Thread | None = None
        self._stopped: concurrent.futures.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._probers: list[Prober] = []
        self.envoy: EnvoyProxy | None = None
        self._envoy_plan: EnvoyPlan | None = None
        self._envoy_binary = ""
        # Why Envoy failed (it ended by itself): the stop it causes FAILs.
        self._envoy_error = ""
        # The program waits for Envoy's listeners; Envoy is being stopped.
        self._envoy_holding = False
        self._envoy_stopped = False
        readiness = s.readiness
        if s.envoy is not None:
            self._plan_envoy(s.envoy)
            if readiness is None:
                readiness = self._program_probe()
        for name, kind, probe in (
            (LIVENESS, CheckKind.LIVENESS, s.liveness),
            (READINESS, CheckKind.READINESS, readiness),
        ):
            self.container.add_check(name, kind=kind)
            # Before the first probe, as the kubelet: alive, not ready.
            initial = kind == CheckKind.LIVENESS
            if probe is None:
                self.container.set_check(name, initial, "no probe: healthy while the program runs")
                continue
            self._probers.append(
                Prober(
                    name,
                    probe,
                    self._reporter(name),
                    initial=initial,
                    skip=lambda: self._paused,
                )
            )
            self.container.set_check(name, initial, f"{describe_probe(probe)}: not probed yet")
        _ensure_instruments()

    def _plan_envoy(self, envoy: mesh_pb2.EnvoySettings) -> None:
        """Advertise where Envoy will listen (the manager builds its inbound
        listener from the "mesh" endpoint) and where the program serves."""
        s = self.settings
        self._envoy_binary = str(envoy_binary())
        self._envoy_plan = plan = plan_envoy(envoy, s.service)
        if plan.program:
            self.container.add_endpoint(s.service_endpoint or "grpc", plan.program, kind="grpc")
            # Mutual TLS from the mesh when the container has a certificate
            # (a manager serving mutual TLS launched it), as Envoy is told.
            self.container.add_endpoint(
                MESH_ENDPOINT, plan.inbound, kind="grpc", tls=tls_dir() is not None
            )
        elif envoy.inbound_listen or s.service:
            _log.warning(
                "Envoy gets no inbound listener: envoy.program_address (where the program "
                "serves%s) is not given",
                f" {s.service}" if s.service else "",
            )
        self.container.add_check(ENVOY, kind=CheckKind.READINESS)
        self.container.set_check(ENVOY, False, "Envoy not started yet")

    def _program_probe(self) -> spec_pb2.Probe | None:
        """Without a readiness probe of its own, a program behind Envoy is
        ready once its address takes connections: Envoy forwards the mesh's
        calls there, and a program still starting would fail them."""
        plan = self._envoy_plan
        if plan is None or not plan.program:
            return None
        host, port = host_port(plan.program, "envoy.program_address")
        return with_timing(
            spec_pb2.Probe(tcp=spec_pb2.TcpProbe(host=host, port=port)),
            period=PROGRAM_PROBE_PERIOD,
        )

    def _start_envoy(self) -> None:
        plan = self._envoy_plan
        assert plan is not None
        manager = self.settings.manager or os.environ.get("PYCONTAINER_MANAGER")
        if not manager:
            raise EnvoyFailed(
                "proxy: envoy takes its listeners and clusters from the manager's xDS "
                "server: run the sidecar with --manager (or $PYCONTAINER_MANAGER)"
            )
        proxy = EnvoyProxy(
            binary=self._envoy_binary,
            bootstrap=bootstrap(
                container_id=self.container.id,
                name=self.settings.name,
                cluster=plan.service or self.settings.name,
                manager=manager,
                tls=self._manager_tls(),
                tls_dir=self._tls_dir(),
            ),
            logs=self.container.logs,
            severities=self._severities,
            echo=self.settings.echo,
            on_ready=self._envoy_ready,
            on_exit=self._envoy_exited,
        )
        try:
            pid = proxy.start()
        except OSError as exc:
            proxy.remove_run_dir()
            raise EnvoyFailed(f"cannot run Envoy ({self._envoy_binary}): {exc}") from exc
        self.envoy = proxy
        self.container.set_check(
            ENVOY, False, f"Envoy started (pid {pid}), waiting for its listeners from the manager"
        )
        assert self.settings.envoy is not None
        upstreams = ", ".join(f"{u.service} on {u.listen}" for u in self.settings.envoy.upstreams)
        _log.info(
            "started Envoy (pid %d, bootstrap %s): xDS from the manager at %s; inbound %s; "
            "upstreams: %s",
            pid,
            proxy.bootstrap_path,
            mask_url_passwords(manager),
            f"{plan.inbound} to the program at {plan.program}" if plan.inbound else "none",
            upstreams or "none",
        )

    def _tls_dir(self) -> str | None:
        """The container's certificate's directory (None: no mutual TLS)."""
        return self.container.join_if_bootstrapping() or tls_dir()

    def _manager_tls(self) -> dict[str, Any] | None:
        """Envoy's TLS to the manager: the container's own certificate, as
        the sidecar's connection uses (None: the manager serves plaintext)."""
        directory = self._tls_dir()
        if directory is None:
            return None
        from ..security import MANAGER

        assert MANAGER.dns_name is not None
        return manager_tls(directory, MANAGER.dns_name)

    def _hold_until_envoy_is_live(self) -> None:
        """The program starts once Envoy has its listeners: its first calls
        to an upstream's local listener would fail before (as Istio's
        holdApplicationUntilProxyStarts)."""
        proxy = self.envoy
        assert proxy is not None
        self._envoy_holding = True
        try:
            live = proxy.wait_live(ENVOY_START_TIMEOUT.total_seconds())
        finally:
            self._envoy_holding = False
        if live:
            return
        if proxy.running:
            self._stop_envoy()
            raise EnvoyFailed(
                f"Envoy did not get its listeners from the manager within "
                f"{format_duration(ENVOY_START_TIMEOUT)}: see its log lines (logger envoy)"
            )
        raise EnvoyFailed(self._envoy_error or "Envoy ended before it had its listeners")

    def _envoy_ready(self, admin: str) -> None:
        proxy = self.envoy
        took = proxy.ready_seconds if proxy is not None and proxy.ready_seconds else 0.0
        self.container.add_endpoint("envoy-admin", admin, kind="http")
        _log.info("Envoy is LIVE after %.2fs: its admin on http://%s (this host only)", took, admin)
        self.container.set_check(ENVOY, True, f"Envoy LIVE, admin on {admin}")

    def _envoy_exited(self, returncode: int) -> None:
        """On Envoy's waiting thread, once it exited."""
        proxy = self.envoy
        line = f"Envoy (pid {proxy.pid if proxy else None}) {describe_status(returncode)}"
        with contextlib.suppress(KeyError):
            self.container.set_check(ENVOY, False, line)
        if self._stopping.is_set() or self._envoy_stopped:
            _log.info("%s", line)
            return
        self._envoy_error = f"{line} by itself"
        if self._envoy_holding:
            return  # the start fails with it
        _log.error("%s by itself: the container fails (its mesh traffic went through it)", line)
        self._stop_container(self._envoy_error)

    def _stop_envoy(self) -> None:
        proxy = self.envoy
        self._envoy_stopped = True
        if proxy is not None and proxy.running:
            _log.info("stopping Envoy (pid %s): the program has stopped", proxy.pid)
            proxy.stop()

    def _reporter(self, name: str) -> Callable[[bool, str], None]:
        last: list[bool | None] = [None]

        def report(serving: bool, message: str) -> None:
            if last[0] is not None and serving != last[0]:
                _log.log(
                    logging.INFO if serving else logging.WARNING,
                    "%s check %s: %s",
                    name,
                    "SERVING" if serving else "NOT_SERVING",
                    message,
                )
            last[0] = serving
            self.container.set_check(name, serving, message)

        return report

    # -- environment of the program and its hook commands ------------------------------------
    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _NOT_FOR_THE_PROGRAM}
        env.update(self.settings.env)
        env["PYCONTAINER_NAME"] = self.settings.name
        return env

    def _hook_environment(self) -> dict[str, str]:
        env = self._environment()
        env["PYCONTAINER_CONTAINER_ID"] = self.container.id
        if self.child is not None and self.child.running:
            env["PYCONTAINER_CHILD_PID"] = str(self.child.pid)
        return env

    # -- hooks -------------------------------------------------------------------------------
    def _on_start(self) -> None:
        if self._envoy_plan is not None and self.envoy is None:
            self._start_envoy()
            self._hold_until_envoy_is_live()
        child = ChildProcess(
            self.settings.command,
            logs=self.container.logs,
            severities=self._severities,
            echo=self.settings.echo,
            env=self._environment(),
            cwd=self.settings.cwd,
            on_exit=self._on_exit,
            export=self.container.log_line_export(),
        )
        self.child = child
        try:
            pid = child.start()
        except OSError as exc:
            self.spawn_error = exc
            raise ProgramNotStarted(
                f"cannot run {_program_text(self.settings.command)}: {exc.strerror or exc}"
            ) from exc
        _CHILDREN.add(child)
        _log.info("started %s (pid %d)", _program_text(self.settings.command), pid)
        probed = {prober.name for prober in self._probers}
        for name in (LIVENESS, READINESS):
            if name not in probed:
                self.container.set_check(name, True, f"no probe: the program runs (pid {pid})")
        for prober in self._probers:
            prober.with_env({"PYCONTAINER_CHILD_PID": str(pid)})
            prober.start()

    def _on_pause(self) -> None:
        child = self.child
        if child is None or not child.running:
            return
        self._paused = True
        child.signal(signal.SIGSTOP)
        if not child.wait_stopped(2.0):
            _log.warning("the program (pid %s) is not all stopped yet after SIGSTOP", child.pid)
        _log.info("paused the program (pid %s): SIGSTOP", child.pid)

    def _on_resume(self) -> None:
        child = self.child
        self._paused = False
        if child is None or not child.running:
            return
        child.signal(signal.SIGCONT)
        _log.info("resumed the program (pid %s): SIGCONT", child.pid)

    def _on_stop(self, reason: str, deadline: float) -> None:
        try:
            self._stop_program(reason, deadline)
        finally:
            # After the program: Envoy carried its last calls until it ended.
            self._stop_envoy()
        if self._envoy_error:
            raise EnvoyFailed(self._envoy_error)

    def _stop_program(self, reason: str, deadline: float) -> None:
        self._stopping.set()
        for prober in self._probers:
            prober.stop()
        child = self.child
        if child is None or not child.started:
            return  # never started: nothing to stop
        grace = max(0.0, deadline - time.monotonic())
        killed = False
        if child.running and self.settings.pre_stop:
            try:
                self._run_hook(
                    "pre-stop",
                    self.settings.pre_stop,
                    timeout=max(0.01, self._deadline(deadline) - time.monotonic()),
                )
            except HookCommandError as exc:  # the stop goes on, as the kubelet's
                _log.warning("%s; sending the stop signal anyway", exc)
        if child.running:
            sig = signal.Signals(self.settings.stop_signal)
            _log.info(
                "stopping the program (pid %s): %s, grace %.1fs (%s)",
                child.pid,
                sig.name,
                grace,
                reason,
            )
            child.signal(sig)
            if self._paused:  # a stopped process handles its signals once continued
                child.signal(signal.SIGCONT)
            if self._wait_until_deadline(child, deadline) is None:
                _log.warning(
                    "the program (pid %s) did not exit within its grace period of %.1fs: SIGKILL",
                    child.pid,
                    grace,
                )
                child.signal(signal.SIGKILL)
                killed = True
        # Killed at the deadline, it is gone a moment later (the lifecycle
        # may give up on this hook meanwhile: its own kill is then harmless).
        returncode = child.wait(max(0.05, self._deadline(deadline) - time.monotonic()))
        self._paused = False
        if killed:
            raise ProgramKilled(
                f"the program did not exit within its grace period of {grace:.1f}s "
                f"and was killed (SIGKILL)"
            )
        if self._exited_by_itself and returncode:
            raise ProgramExited(f"the program {describe_status(returncode)}")

    def _deadline(self, given: float) -> float:
        """The stop's deadline now: the one given to on_stop, moved by any
        grace extension granted since."""
        return max(given, self.container.lifecycle.deadline() or given)

    def _wait_until_deadline(self, child: ChildProcess, given: float) -> int | None:
        """The program's status once it exits, or None at the deadline, never
        before it: the kill comes at the deadline, not a margin early (the
        monotonic clock; a wait that returns early waits the rest)."""
        while True:
            remaining = self._deadline(given) - time.monotonic()
            if remaining <= 0:
                return child.wait(0)
            returncode = child.wait(remaining)
            if returncode is not None:
                return returncode

    def _on_checkpoint(self) -> bytes:
        return self._run_hook(
            "checkpoint",
            self.settings.checkpoint,
            timeout=self.settings.hook_timeout.total_seconds(),
        )

    def _on_restore(self, state: bytes) -> None:
        self._run_hook(
            "restore",
            self.settings.restore,
            stdin=state,
            timeout=self.settings.hook_timeout.total_seconds(),
        )

    # -- the program ended -------------------------------------------------------------------
    def _on_exit(self, returncode: int) -> None:
        """On the program's waiting thread, once it exited and was reaped."""
        child = self.child
        pid = child.pid if child is not None else None
        line = f"the program (pid {pid}) {describe_status(returncode)}"
        _log.log(logging.INFO if returncode == 0 else logging.WARNING, "%s", line)
        for prober in self._probers:
            prober.stop()
        for name in (LIVENESS, READINESS):
            with contextlib.suppress(KeyError):
                self.container.set_check(name, returncode == 0 and name == LIVENESS, line)
        if self._stopping.is_set():
            return  # a stop is waiting for this
        self._exited_by_itself = True
        self._stop_container(line)

    def _stop_container(self, line: str) -> None:
        # Stop the container through its lifecycle (reported to a manager).
        # On the serving loop when there is one: the transitions' listeners
        # then run there, so the connector has queued the final report before
        # serve() (woken by the same transition) closes the session.
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._stopped = asyncio.run_coroutine_threadsafe(self._astop_after_exit(line), loop)
                return
        self._stopper = threading.Thread(
            target=self._stop_after_exit,
            args=(line,),
            name="pycontainer-sidecar-exit",
            daemon=True,
        )
        self._stopper.start()

    def _stop_after_exit(self, reason: str) -> None:
        with contextlib.suppress(RequestError):  # FAILED (non-zero) or a stop won the race
            self.container.stop(reason=reason)

    async def _astop_after_exit(self, reason: str) -> None:
        with contextlib.suppress(RequestError):  # FAILED (non-zero) or a stop won the race
            await self.container.astop(reason=reason)

    # -- hook commands -----------------------------------------------------------------------
    def _run_hook(
        self,
        which: str,
        command: Sequence[str],
        *,
        timeout: float,
        stdin: bytes | None = None,
    ) -> bytes:
        """Run a hook command; its stdout. Its output lines are logged (logger
        ``hook.WHICH``), except a checkpoint's stdout, which is the state."""
        logger = f"hook.{which}"
        try:
            proc = subprocess.Popen(
                list(command),
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._hook_environment(),
                cwd=self.settings.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise HookCommandError(
                f"{which} command {shlex.join(command)} cannot run: {exc.strerror or exc}"
            ) from None
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            self._log_output(logger, err, out if which != "checkpoint" else b"")
            raise HookCommandError(
                f"{which} command {shlex.join(command)} timed out after {timeout:.1f}s"
            ) from None
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # what it left running
        self._log_output(logger, err, out if which != "checkpoint" else b"")
        if proc.returncode != 0:
            last = err.decode("utf-8", "replace").strip().splitlines()[-1:]
            raise HookCommandError(
                f"{which} command {shlex.join(command)} {describe_status(proc.returncode)}"
                + (f": {last[0]}" if last else "")
            )
        _log.info("%s command %s succeeded (%d bytes out)", which, command[0], len(out))
        return out

    def _log_output(self, logger: str, err: bytes, out: bytes) -> None:
        for data, default in ((out, STDOUT_DEFAULT), (err, STDERR_DEFAULT)):
            for line in data.decode("utf-8", "replace").splitlines():
                level = self._severities.classify(line, default)
                self.container.logs.append(level.number, level.text, logger, line)

    # -- running -----------------------------------------------------------------------------
    def install_kill(self) -> None:
        """When on_stop overruns its deadline (the lifecycle gave up on it):
        SIGKILL the program, let the manager know, exit 137."""

        def kill(message: str) -> None:
            child = self.child
            if child is not None:
                child.signal(signal.SIGKILL)
                # Until its exit is logged too ("was killed by SIGKILL"), not
                # only reaped: that line is how the operator learns of it.
                child.join(1.0)
            self.container.flush_reports(0.5)
            _log.error("%s: exiting now", message)
            logging.shutdown()
            os._exit(137)

        self.container.lifecycle.kill = kill

    async def serve(
        self,
        *,
        on_ready: Callable[[int], None] | None = None,
        stop: asyncio.Event | None = None,
        handle_signals: bool = True,
    ) -> int:
        """Host the Management API on ``settings.listen`` until the program
        ends (or SIGTERM/SIGINT/``stop`` stops it); the exit status to use."""
        self.install_kill()
        loop = self._loop = asyncio.get_running_loop()
        forwarded = []
        if handle_signals:
            for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, self._forward, sig)
                    forwarded.append(sig)
        try:
            await serve(
                self.container,
                self.settings.listen,
                on_ready=on_ready,
                stop=stop,
                handle_signals=handle_signals,
                manager=self.settings.manager,
                exit_hard_on_overrun=False,
            )
        except RequestError:
            # on_start failed (the program cannot run): FAILED, error logged.
            if self.container.state != State.FAILED:
                raise
            _log.error("%s", self.container.lifecycle.error)
        finally:
            for sig in forwarded:
                loop.remove_signal_handler(sig)
            await asyncio.to_thread(self.shutdown)
            self._loop = None
        return self.exit_status()

    def _forward(self, sig: int) -> None:
        child = self.child
        if child is not None and child.running:
            _log.info("forwarding %s to the program (pid %s)", signal.Signals(sig).name, child.pid)
            child.signal(sig)

    def shutdown(self) -> None:
        """Make sure nothing outlives the sidecar: a program still running (the
        container FAILED, or serving ended otherwise) gets the stop signal,
        then SIGKILL after the grace period."""
        for prober in self._probers:
            prober.stop()
        child = self.child
        if child is not None and child.running:
            self._stopping.set()
            grace = self.settings.grace_period.total_seconds()
            _log.info("the container ended with the program running: stopping it")
            child.signal(self.settings.stop_signal)
            child.signal(signal.SIGCONT)
            if child.wait(grace) is None:
                child.signal(signal.SIGKILL)
            child.wait(5.0)
        if child is not None:
            child.join(5.0)
        self._stop_envoy()
        if self.envoy is not None:
            self.envoy.remove_run_dir()
        if self._stopper is not None:
            self._stopper.join(5.0)
        if self._stopped is not None:
            with contextlib.suppress(Exception):
                self._stopped.result(5.0)

    def exit_status(self) -> int:
        """The program's status (128+N after signal N); 127/126 when it could
        not be run; 1 when the container FAILED otherwise; else 0."""
        if self.spawn_error is not None:
            return _NOT_EXECUTABLE if isinstance(self.spawn_error, PermissionError) else _NOT_FOUND
        child = self.child
        status = 0
        if child is not None and child.returncode is not None:
            status = exit_status(child.returncode)
        if status == 0 and self.container.state == State.FAILED:
            return 1
        return status

    @property
    def error(self) -> str:
        return self.container.lifecycle.error

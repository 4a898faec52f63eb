"""Supervision: launching specs through their runtime, scaling, the exits
the runtimes report, restarts with exponential backoff as the spec's
restart policy says, and the operator's restart and kill. A launched program
that does not register within its start timeout is reported, not left
silent."""

from __future__ import annotations

import asyncio
import datetime
import signal
import uuid
from collections.abc import Awaitable, Callable, Mapping

from .. import limits
from .._errors import RequestError, failed_precondition, invalid_argument, resource_exhausted
from ..spec import MAX_GRACE_PERIOD, MAX_START_TIMEOUT, MIN_START_TIMEOUT
from ..units import duration_field, duration_from_proto, format_duration
from ..v1 import container_pb2, lifecycle_pb2, manager_pb2, spec_pb2
from ._admission import Admission, Spawn
from ._checkpoints import Checkpoints
from ._registry import Entry, Registry, state_word
from ._runtime import Launch, Runtime
from ._sessions import Sessions
from ._settings import DEFAULT_START_TIMEOUT
from ._stopping import Stopper, killed_reason
from ._validation import check_replicas

E = manager_pb2
S = container_pb2

# The longest wait before a restart, however many came before.
_MAX_BACKOFF = 300.0
# What the reason of a launched program that never dialled in starts with.
_NOT_REGISTERED = "not registered"


# Signal names an operator gives (the real-time ones are numbers).
_SIGNAL_NAMES = frozenset(
    s.name.removeprefix("SIG") for s in signal.Signals if not s.name.startswith("SIGRT")
)


def parse_signal(text: str) -> signal.Signals:
    """A signal by name ("KILL", "SIGTERM", "int") or number; empty is KILL.
    RequestError INVALID_ARGUMENT listing the valid names otherwise."""
    word = text.strip().upper()
    if not word:
        return signal.SIGKILL
    try:
        if word.isdigit():
            return signal.Signals(int(word))
        return signal.Signals["SIG" + word.removeprefix("SIG")]
    except (KeyError, ValueError):
        names = ", ".join(sorted(_SIGNAL_NAMES))
        raise invalid_argument(
            "signal", f"{text!r} is not a signal: give a name ({names}) or a number"
        ) from None


def start_timeout(spec: spec_pb2.ContainerSpec) -> datetime.timedelta:
    return duration_field(spec, "start_timeout") or DEFAULT_START_TIMEOUT


def _check_durations(spec: spec_pb2.ContainerSpec) -> None:
    """The spec's grace period and start timeout within their bounds (a spec
    file is checked when read; one sent to the API is checked here)."""
    for name, low, high in (
        ("grace_period", datetime.timedelta(0), MAX_GRACE_PERIOD),
        ("start_timeout", MIN_START_TIMEOUT, MAX_START_TIMEOUT),
    ):
        value = duration_field(spec, name)
        if value is not None and not low <= value <= high:
            raise invalid_argument(
                f"spec.{name}",
                f"must be from {format_duration(low)} to {format_duration(high)}, "
                f"got {format_duration(value)}",
            )


class Supervisor:
    """Starts what the operator asks for and keeps it running."""

    def __init__(
        self,
        registry: Registry,
        sessions: Sessions,
        checkpoints: Checkpoints,
        admission: Admission,
        stopper: Stopper,
        runtimes: Mapping[int, Runtime],
        *,
        manager_address: Callable[[], str],
        spawn: Spawn,
        issue_credentials: Callable[[str], Awaitable[str]] | None = None,
        mesh_bootstrap: Callable[[str, spec_pb2.ContainerSpec, str], Awaitable[str]] | None = None,
    ) -> None:
        self._registry = registry
        self._sessions = sessions
        self._checkpoints = checkpoints
        self._admission = admission
        self._stopper = stopper
        self._runtimes = runtimes
        self._manager_address = manager_address
        self._spawn = spawn
        # The TLS directory of a container about to launch ("" for none).
        self._issue_credentials = issue_credentials
        # The xDS bootstrap file of a container about to launch, given its
        # TLS directory ("" for none).
        self._mesh_bootstrap = mesh_bootstrap
        self._restarting: set[str] = set()
        registry.pinned = self.restarting
        # Each runtime once (one may serve several kinds).
        for runtime in {id(r): r for r in runtimes.values()}.values():
            runtime.add_exit_listener(self.on_exit)

    # -- launching -----------------------------------------------------------------------
    async def run(self, spec: spec_pb2.ContainerSpec, count: int | None = None) -> list[Entry]:
        """Launch a spec's replicas through its runtime (admission first);
        ``count`` of them instead of the spec's number (apply's steps)."""
        if not spec.name:
            raise invalid_argument("spec.name", "a container needs a name")
        check_replicas(spec.replicas, "spec.replicas")
        _check_durations(spec)
        runtime = self._runtimes.get(spec.runtime)
        if runtime is None:
            raise failed_precondition(
                f"runtime {spec_pb2.RuntimeKind.Name(spec.runtime)} is not available here"
            )
        restore = None
        if spec.checkpoint_policy == spec_pb2.CHECKPOINT_POLICY_ON_STOP:
            restore = await self._checkpoints.latest(spec.name)
        count = (spec.replicas or 1) if count is None else count
        return await self._launch_all([self._new_entry(spec, restore) for _ in range(count)], "run")

    @staticmethod
    def _new_entry(spec: spec_pb2.ContainerSpec, restore: bytes | None) -> Entry:
        """The record of a replica about to launch (not registered yet)."""
        container_id = f"{spec.name}-{uuid.uuid4().hex[:8]}"
        identity = container_pb2.ContainerIdentity(
            id=container_id,
            name=spec.name,
            labels=spec.labels,
            priority=spec.priority,
            resources=spec.resources,
        )
        if spec.HasField("grace_period"):  # unset stays unset: the default applies
            identity.grace_period.CopyFrom(spec.grace_period)
        entry = Entry(id=container_id, name=spec.name, identity=identity, spec=spec)
        entry.restore_state = restore
        return entry

    async def _launch_all(self, entries: list[Entry], verb: str) -> list[Entry]:
        """Launch new replicas, all or none: admission is planned for all of
        them (and they are recorded, holding their room) before any starts."""
        self._admission.refuse_unless_all_fit(entries, verb)
        for entry in entries:
            self._registry.make_room_for(entry.id)
        if len(self._registry.entries) + len(entries) > limits.MAX_CONTAINERS:
            raise resource_exhausted(
                f"cannot {verb} {len(entries)} more containers: the manager keeps "
                f"{len(self._registry.entries)}, its limit is "
                f"pycontainer.limits.MAX_CONTAINERS = {limits.MAX_CONTAINERS}"
            )
        for entry in entries:
            self._registry.add(entry)
        for index, entry in enumerate(entries):
            try:
                await self._launch(entry)
            except BaseException:
                for unlaunched in entries[index + 1 :]:
                    self._registry.delete(unlaunched)
                raise
        return entries

    async def _launch(self, entry: Entry) -> None:
        assert entry.spec is not None
        spec = entry.spec
        runtime = self._runtimes[spec.runtime]
        try:
            await self._start_process(entry, runtime)
        except (OSError, ValueError) as exc:
            entry.state = S.LIFECYCLE_STATE_FAILED
            entry.error = f"launch failed: {exc}"
            entry.reason = "launch failed"
            self._registry.persist(entry)
            raise failed_precondition(f"cannot launch {spec.name!r}: {exc}") from exc
        self._registry.event(E.EVENT_TYPE_LAUNCHED, entry, f"launched (pid {entry.pid})")

    async def _start_process(self, entry: Entry, runtime: Runtime) -> None:
        """Launch the entry's spec and watch that it registers in time."""
        assert entry.spec is not None
        tls_dir = await self._issue_credentials(entry.id) if self._issue_credentials else ""
        bootstrap = ""
        if self._mesh_bootstrap is not None:
            bootstrap = await self._mesh_bootstrap(entry.id, entry.spec, tls_dir)
        entry.pid = await runtime.launch(
            Launch(
                entry.id,
                entry.spec,
                self._manager_address(),
                tls_dir=tls_dir,
                mesh_bootstrap=bootstrap,
            )
        )
        entry.launched = True
        self._spawn(self._expect_registration(entry, runtime, entry.sessions, entry.restarts))

    async def _expect_registration(
        self, entry: Entry, runtime: Runtime, sessions: int, run: int
    ) -> None:
        """Report a launched program that has not dialled in within its start
        timeout (its state stays CREATED; its reason says why)."""
        assert entry.spec is not None
        timeout = start_timeout(entry.spec)
        if await self._sessions.wait_for(
            entry,
            lambda e: e.sessions > sessions or e.restarts != run or not runtime.running(e.id),
            timeout.total_seconds(),
        ):
            return
        if entry.spec.sidecar:
            hint = "the sidecar did not dial the manager: see its output"
        else:
            hint = "is it a pycontainer app? set sidecar: true to run any program"
        entry.reason = f"{_NOT_REGISTERED} {format_duration(timeout)} after launch: {hint}"
        self._registry.event(E.EVENT_TYPE_STATE_CHANGED, entry, entry.reason)
        self._registry.persist(entry)
        entry.changed.set()

    def registered(self, entry: Entry) -> None:
        """A container opened a session: a launched one registered after all,
        and one in a pid namespace of its own is shown with its host pid."""
        if entry.reason.startswith(_NOT_REGISTERED):
            entry.reason = ""
        runtime = self._stopper.process_of(entry)
        if runtime is not None and runtime.own_pid_namespace:
            entry.pid = runtime.pid(entry.id) or entry.pid
            self._registry.persist(entry)

    async def scale(self, name_or_id: str, replicas: int) -> list[Entry]:
        check_replicas(replicas, "replicas")
        try:
            entry = self._registry.resolve(name_or_id)
        except RequestError:
            # A name shared by replicas names the group: scale from its oldest.
            named = self._registry.live_group(name_or_id)
            if not named:
                raise
            entry = named[0]
        group = self._registry.live_group(entry.name)
        if replicas > len(group):
            if entry.spec is None:
                raise failed_precondition(
                    f"{entry.name!r} was not launched by this manager: it has no spec to scale"
                )
            count = replicas - len(group)
            new = [self._new_entry(entry.spec, None) for _ in range(count)]
            # Refused before the replicate command: a scale too big changes nothing.
            self._admission.refuse_unless_all_fit(new, "scale")
            result = await self._sessions.command(
                entry, "replicate", lifecycle_pb2.ReplicateCommand(count=count)
            )
            for replica in new:
                replica.restore_state = result.seed_state or None
            await self._launch_all(new, "scale")
        else:
            for extra in reversed(group[replicas:]):  # the youngest go first
                await self._stopper.stop(extra, None, "scaled down", S.STOP_REASON_SCALED_DOWN)
        return [e for e in self._registry if e.name == entry.name and not e.terminal]

    # -- exits and restarts ----------------------------------------------------------------
    async def on_exit(self, container_id: str, code: int) -> None:
        """A runtime saw a launched container's process end."""
        entry = self._registry.get(container_id)
        if entry is None:
            return
        entry.exit_code = code
        self._sessions.lost(entry)
        self._settle_exit(entry, code)
        entry.admitted = False
        self._registry.event(E.EVENT_TYPE_EXITED, entry, f"process exited with status {code}")
        self._sessions.end_pending(entry, f"its process exited with status {code}")
        self._registry.persist(entry)
        entry.changed.set()
        await self._admission.admit_waiting()
        self.maybe_restart(entry)

    @staticmethod
    def _settle_exit(entry: Entry, code: int) -> None:
        """The state and reason an exit leaves: STOPPED when a stop or the
        operator's kill ended it (killed at the end of its grace period, by
        the runtime's SIGKILL or by itself: 137), FAILED when it ended on its
        own before reaching a final state with a non-zero status (STOPPED
        with 0, as a program that ran to its end)."""
        stop = entry.stop
        if stop is not None:
            # SIGKILL's status (or the 137 of an app ending itself at its
            # deadline); one that ended of SIGTERM just as the SIGKILL went
            # out was not killed.
            stop.killed = code in (-signal.SIGKILL, 128 + signal.SIGKILL)
        if stop is not None and stop.killed:
            entry.state = S.LIFECYCLE_STATE_STOPPED
            entry.reason = killed_reason(stop.grace)
        elif stop is not None and not entry.terminal:
            entry.state = S.LIFECYCLE_STATE_STOPPED
            entry.reason = f"stopped (exit status {code})"
        elif entry.kill_signal and code in (-entry.kill_signal, 128 + entry.kill_signal):
            entry.state = S.LIFECYCLE_STATE_STOPPED
            entry.reason = f"killed by {signal.Signals(entry.kill_signal).name}"
            entry.desired = False  # the operator ended it: not restarted
        elif not entry.terminal and code == 0:  # a program that ran to its end
            entry.state = S.LIFECYCLE_STATE_STOPPED
            entry.reason = "exited with status 0"
        elif not entry.terminal:
            entry.state = S.LIFECYCLE_STATE_FAILED
            entry.error = f"process exited with status {code}"
            entry.reason = f"exited with status {code}"
        entry.kill_signal = 0

    def restarting(self, entry: Entry) -> bool:
        """Whether a restart of this ended container is on its way (its
        restart policy's; apply counts it as present)."""
        return entry.id in self._restarting

    def ended(self, entry: Entry) -> None:
        """A container reached a terminal state. One whose runtime reports
        exits restarts when its process has exited (on_exit); others now."""
        runtime = self._stopper.runtime_of(entry)
        if runtime is None or not runtime.reports_exits:
            self.maybe_restart(entry)

    def maybe_restart(self, entry: Entry) -> None:
        """Replace a container that ended, as its spec's restart policy says
        (Entry.restart_policy_brings_back)."""
        spec = entry.spec
        if spec is None or entry.id in self._restarting or not entry.restart_policy_brings_back():
            return
        base = duration_from_proto(spec.restart_backoff).total_seconds() or 1.0
        delay = min(_MAX_BACKOFF, base * 2 ** min(entry.restarts, 16))
        self._restarting.add(entry.id)
        self._spawn(self._restart_later(entry, delay, entry.restarts))

    async def _restart_later(self, entry: Entry, delay: float, run: int) -> None:
        try:
            await asyncio.sleep(delay)
            runtime = self._stopper.runtime_of(entry)
            # Not when it was removed, stopped or restarted by hand meanwhile.
            if (
                runtime is None
                or entry.spec is None
                or not entry.desired
                or entry.restarts != run
                or self._registry.get(entry.id) is not entry
            ):
                return
            await runtime.kill(entry.id)  # what is left of the old one
            await self._relaunch(entry, runtime, f"restart {run + 1} after {delay:g}s")
        except (OSError, ValueError) as exc:
            entry.error = f"restart failed: {exc}"
            entry.reason = "restart failed"
            self._registry.persist(entry)
        finally:
            self._restarting.discard(entry.id)

    async def _relaunch(self, entry: Entry, runtime: Runtime, why: str) -> None:
        """A new run of the same record: same id, restart count up."""
        assert entry.spec is not None
        entry.restarts += 1
        entry.state = S.LIFECYCLE_STATE_CREATED
        entry.admitted = entry.evicted = False
        entry.desired = True
        entry.exit_code = None
        entry.reason = ""
        entry.restore_state = None
        if entry.spec.checkpoint_policy == spec_pb2.CHECKPOINT_POLICY_ON_STOP:
            entry.restore_state = await self._checkpoints.latest(entry.name)
        await self._start_process(entry, runtime)
        self._registry.event(
            E.EVENT_TYPE_RESTARTED,
            entry,
            f"{why} (pid {entry.pid})"
            + (", restoring its last checkpoint" if entry.restore_state else ""),
        )
        self._registry.persist(entry)

    # -- the operator's restart and kill -----------------------------------------------------
    async def restart(self, entry: Entry, grace: datetime.timedelta | None) -> Entry:
        """Stop gracefully (when it still runs), then start it again; returns
        once it runs again, or its start timeout is over."""
        runtime = self._stopper.runtime_of(entry)
        if entry.spec is None or runtime is None:
            raise failed_precondition(_not_launched_restart(entry))
        if not entry.terminal or self._stopper.process_of(entry) is not None:
            await self._stopper.stop(entry, grace, "restart", S.STOP_REASON_REQUESTED)
        # The old process is gone (its exit seen) before the new one starts.
        if not await self._sessions.wait_for(entry, lambda e: not runtime.running(e.id), 15):
            await runtime.kill(entry.id)
        try:
            await self._relaunch(entry, runtime, "restarted by the operator")
        except (OSError, ValueError) as exc:
            entry.state = S.LIFECYCLE_STATE_FAILED
            entry.error = f"restart failed: {exc}"
            entry.reason = "restart failed"
            self._registry.persist(entry)
            raise failed_precondition(f"cannot restart {entry.id}: {exc}") from exc
        await self._sessions.wait_for(
            entry,
            lambda e: (
                e.state not in (S.LIFECYCLE_STATE_CREATED, S.LIFECYCLE_STATE_STARTING)
                or bool(e.reason)
            ),
            start_timeout(entry.spec).total_seconds(),
        )
        return entry

    async def kill(self, entry: Entry, signal_text: str) -> Entry:
        """Send a signal to its process now, no grace (default SIGKILL)."""
        signum = parse_signal(signal_text)
        runtime = self._stopper.process_of(entry)
        if runtime is None:
            why = (
                "it was not launched by this manager"
                if not entry.launched
                else f"its process has ended ({state_word(entry.state)})"
            )
            raise failed_precondition(f"cannot signal container {entry.id}: {why}")
        entry.kill_signal = signum
        if not await runtime.signal(entry.id, signum):
            entry.kill_signal = 0
            raise failed_precondition(f"cannot signal container {entry.id}: it has just ended")
        self._registry.event(E.EVENT_TYPE_COMMAND_SENT, entry, f"kill: {signum.name}")
        return entry


def _not_launched_restart(entry: Entry) -> str:
    """What to do to restart a container the manager did not launch: it has
    no process here to start again, and STOPPED is final for the one it has
    (the lifecycle has no Start after Stop). Its program started again with
    the same id registers as a new run, which the manager starts."""
    where = f"container {entry.id} was not launched by this manager, so it cannot start its process"
    again = (
        "start its program again where it runs, with the same container id: it registers "
        "as a new run and the manager starts it"
    )
    if entry.terminal:
        return f"{where} ({state_word(entry.state)}): {again}"
    return f"{where}: stop it (pycontainer stop {entry.id}), then {again}"

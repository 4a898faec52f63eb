"""Supervision: launching specs through their runtime, scaling, the exits
the runtimes report, and restarts with exponential backoff as the spec's
restart policy says."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping

from .._errors import RequestError, failed_precondition, invalid_argument
from ..units import duration_from_proto
from ..v1 import container_pb2, lifecycle_pb2, manager_pb2, spec_pb2
from ._admission import Admission, Spawn
from ._checkpoints import Checkpoints
from ._registry import Entry, Registry
from ._runtime import Launch, Runtime
from ._sessions import Sessions
from ._stopping import Stopper

E = manager_pb2
S = container_pb2

# The longest wait before a restart, however many came before.
_MAX_BACKOFF = 300.0


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
    ) -> None:
        self._registry = registry
        self._sessions = sessions
        self._checkpoints = checkpoints
        self._admission = admission
        self._stopper = stopper
        self._runtimes = runtimes
        self._manager_address = manager_address
        self._spawn = spawn
        self._restarting: set[str] = set()
        # Each runtime once (one may serve several kinds).
        for runtime in {id(r): r for r in runtimes.values()}.values():
            runtime.add_exit_listener(self.on_exit)

    # -- launching -----------------------------------------------------------------------
    async def run(self, spec: spec_pb2.ContainerSpec, count: int | None = None) -> list[Entry]:
        """Launch a spec's replicas through its runtime (admission first);
        ``count`` of them instead of the spec's number (apply's steps)."""
        if not spec.name:
            raise invalid_argument("spec.name", "a container needs a name")
        if spec.replicas < 0:
            raise invalid_argument("spec.replicas", f"must be 0 or more, got {spec.replicas}")
        runtime = self._runtimes.get(spec.runtime)
        if runtime is None:
            raise failed_precondition(
                f"runtime {spec_pb2.RuntimeKind.Name(spec.runtime)} is not available here"
            )
        restore = None
        if spec.checkpoint_policy == spec_pb2.CHECKPOINT_POLICY_ON_STOP:
            restore = self._checkpoints.latest(spec.name)
        count = (spec.replicas or 1) if count is None else count
        return [await self._launch(spec, runtime, restore) for _ in range(count)]

    async def _launch(
        self, spec: spec_pb2.ContainerSpec, runtime: Runtime, restore: bytes | None
    ) -> Entry:
        container_id = f"{spec.name}-{uuid.uuid4().hex[:8]}"
        identity = container_pb2.ContainerIdentity(
            id=container_id,
            name=spec.name,
            labels=spec.labels,
            priority=spec.priority,
            resources=spec.resources,
            grace_period=spec.grace_period,
        )
        entry = Entry(id=container_id, name=spec.name, identity=identity, spec=spec)
        entry.restore_state = restore
        self._admission.refuse_unless_fits(entry, "run")
        self._registry.add(entry)
        try:
            entry.pid = await runtime.launch(Launch(container_id, spec, self._manager_address()))
        except (OSError, ValueError) as exc:
            entry.state = S.LIFECYCLE_STATE_FAILED
            entry.error = f"launch failed: {exc}"
            self._registry.persist(entry)
            raise failed_precondition(f"cannot launch {spec.name!r}: {exc}") from exc
        self._registry.event(E.EVENT_TYPE_LAUNCHED, entry, f"launched (pid {entry.pid})")
        return entry

    async def scale(self, name_or_id: str, replicas: int) -> list[Entry]:
        if replicas < 0:
            raise invalid_argument("replicas", f"must be 0 or more, got {replicas}")
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
            result = await self._sessions.command(
                entry, "replicate", lifecycle_pb2.ReplicateCommand(count=count)
            )
            runtime = self._runtimes[entry.spec.runtime]
            seed = result.seed_state or None
            for _ in range(count):
                await self._launch(entry.spec, runtime, seed)
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
        if not entry.terminal:
            entry.state = S.LIFECYCLE_STATE_FAILED
            entry.error = f"process exited with status {code}"
        entry.admitted = False
        self._registry.event(E.EVENT_TYPE_EXITED, entry, f"process exited with status {code}")
        self._sessions.end_pending(entry, f"its process exited with status {code}")
        self._registry.persist(entry)
        entry.changed.set()
        await self._admission.admit_waiting()
        self.maybe_restart(entry)

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
        """Replace a container that ended, as its spec's restart policy says:
        Always, or OnFailure after a failure or an eviction (not the
        container's choice). An operator's stop or scale-down never restarts."""
        spec = entry.spec
        if spec is None or not entry.desired or entry.id in self._restarting:
            return
        policy = spec.restart_policy
        failed = entry.state == S.LIFECYCLE_STATE_FAILED or (entry.exit_code or 0) != 0
        if not (
            policy == spec_pb2.RESTART_POLICY_ALWAYS
            or (policy == spec_pb2.RESTART_POLICY_ON_FAILURE and (failed or entry.evicted))
        ):
            return
        base = duration_from_proto(spec.restart_backoff).total_seconds() or 1.0
        delay = min(_MAX_BACKOFF, base * 2 ** min(entry.restarts, 16))
        self._restarting.add(entry.id)
        self._spawn(self._restart_later(entry, delay))

    async def _restart_later(self, entry: Entry, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
            runtime = self._stopper.runtime_of(entry)
            if runtime is None or entry.spec is None or not entry.desired:
                return
            await runtime.kill(entry.id)  # what is left of the old one
            entry.restarts += 1
            entry.state = S.LIFECYCLE_STATE_CREATED
            entry.admitted = entry.evicted = False
            entry.exit_code = None
            entry.restore_state = None
            if entry.spec.checkpoint_policy == spec_pb2.CHECKPOINT_POLICY_ON_STOP:
                entry.restore_state = self._checkpoints.latest(entry.name)
            entry.pid = await runtime.launch(Launch(entry.id, entry.spec, self._manager_address()))
            self._registry.event(
                E.EVENT_TYPE_RESTARTED,
                entry,
                f"restart {entry.restarts} after {delay:g}s (pid {entry.pid})"
                + (", restoring its last checkpoint" if entry.restore_state else ""),
            )
            self._registry.persist(entry)
        except (OSError, ValueError) as exc:
            entry.error = f"restart failed: {exc}"
            self._registry.persist(entry)
        finally:
            self._restarting.discard(entry.id)

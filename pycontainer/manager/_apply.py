"""Declarative apply: make the running set match a list of specs, as
``kubectl apply`` does for Deployments.

For each spec: a name with no container is created; a name whose containers
run the same spec (replicas aside) is scaled to the spec's replicas; a name
whose containers run another spec is replaced one replica at a time (start a
new one, wait until it is ready, stop an old one with its grace period; the
new one restored from the old one's checkpoint when the spec's checkpoint
policy is OnStop). With prune, containers carrying the owner's label whose
name is no longer listed are stopped.

Every applied spec is kept in the state store, so a restarted manager
reconciles to the same desired state: once the previous manager's containers
have had time to dial back in, the replicas that did not are taken for gone
and replaced. Between applies, replicas that end are left to their restart
policy (apply is not a loop that fights it).

Containers carry two labels apply sets: ``pycontainer.dev/owner`` (who applied
the spec; what prune looks at) and ``pycontainer.dev/spec-hash`` (the hash of
the spec without replicas and owner: what "changed" means, in _specdiff). A
spec applied again under another owner (the file copied elsewhere) changes no
container: the new owner adopts them (relabels them) and the change says so.
An applied spec is kept only while its apply goes on and once it succeeded: a
refused one leaves the store as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import grpc

from .._errors import RequestError, failed_precondition, invalid_argument
from .._secrets import keep_stored_secrets
from ..units import duration_field, format_duration
from ..v1 import (
    container_pb2,
    health_pb2,
    management_pb2,
    management_pb2_grpc,
    manager_pb2,
    spec_pb2,
)
from ._admission import Spawn
from ._checkpoints import Checkpoints
from ._registry import Entry, Registry, state_word
from ._runtime import Runtime
from ._sealing import SealError
from ._sessions import Sessions
from ._specdiff import (
    OWNER_LABEL,
    SPEC_HASH_LABEL,
    spec_differences,
    spec_hash,
    traffic_weight_change,
)
from ._stopping import Stopper
from ._store import AppliedSpec
from ._storewriter import StoreWriter
from ._supervision import Supervisor

__all__ = ["DEFAULT_OWNER", "OWNER_LABEL", "Reconciler"]

_log = logging.getLogger("pycontainer.manager")

E = manager_pb2
S = container_pb2

DEFAULT_OWNER = "default"
# How long a new replica has to become ready when its spec sets no start timeout.
DEFAULT_READY_TIMEOUT = timedelta(seconds=60)
# A label value, as Kubernetes allows it (it goes into selectors: -l owner=VALUE).
_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
_ACTION_WORDS = {
    E.APPLY_ACTION_UNCHANGED: "unchanged",
    E.APPLY_ACTION_CREATED: "created",
    E.APPLY_ACTION_SCALED: "scaled",
    E.APPLY_ACTION_REPLACED: "replaced",
    E.APPLY_ACTION_PRUNED: "pruned",
}


def _replicas(n: int) -> str:
    return f"{n} replica{'' if n == 1 else 's'}"


# -- the plan ----------------------------------------------------------------------------------
@dataclass
class _Plan:
    """What apply does for one name."""

    name: str
    action: manager_pb2.ApplyAction.ValueType
    detail: str
    # The spec to run (owner and hash labels set); None for a prune.
    desired: spec_pb2.ContainerSpec | None
    replicas: int
    # Replicas already running the desired spec, oldest first...
    current: list[Entry] = field(default_factory=list)
    # ...and the ones to replace (or, for a prune, to stop).
    outdated: list[Entry] = field(default_factory=list)
    # A prune of a name this owner applied: its applied spec goes too.
    forget: bool = False
    # Replicas running the desired spec under another owner: relabelled.
    adopt: list[Entry] = field(default_factory=list)
    # Replicas running the desired spec but another traffic weight of its
    # service: given the new one in place (the mesh's split changes; nothing
    # restarts).
    reweigh: list[Entry] = field(default_factory=list)

    def change(self) -> manager_pb2.ApplyChange:
        return manager_pb2.ApplyChange(name=self.name, action=self.action, detail=self.detail)


class Reconciler:
    """Applies specs and keeps the applied ones as the desired state."""

    def __init__(
        self,
        registry: Registry,
        writer: StoreWriter,
        sessions: Sessions,
        checkpoints: Checkpoints,
        stopper: Stopper,
        supervisor: Supervisor,
        runtimes: Mapping[int, Runtime],
        *,
        reconnect_window: timedelta,
        spawn: Spawn,
        dial: Callable[[Entry], grpc.aio.Channel] | None = None,
    ) -> None:
        self._registry = registry
        self._writer = writer
        self._store = writer.store
        self._sessions = sessions
        self._checkpoints = checkpoints
        self._stopper = stopper
        self._supervisor = supervisor
        self._runtimes = runtimes
        self._reconnect_window = reconnect_window
        self._spawn = spawn
        # A channel to a container's Management endpoint (mutual TLS when it has it).
        self._dial = dial or (lambda entry: grpc.aio.insecure_channel(entry.management_address()))
        # One apply at a time: two would each plan against the other's half.
        self._lock = asyncio.Lock()
        # The containers an earlier manager left in the state store: until
        # they dial back in, nobody knows whether they are still there.
        self._inherited = {entry.id for entry in registry}

    # -- the operator's apply ----------------------------------------------------------------
    async def apply(self, request: manager_pb2.ApplySpecsRequest) -> manager_pb2.ApplySpecsResponse:
        owner = request.owner or DEFAULT_OWNER
        if not _LABEL_VALUE.fullmatch(owner):
            raise invalid_argument(
                "owner",
                f"{owner!r} is not a label value (up to 63 letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit)",
            )
        desired = [self._desired(i, spec, owner) for i, spec in enumerate(request.specs)]
        names = [spec.name for spec in desired]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise invalid_argument(f"specs[{i}].name", f"{name!r} is listed twice")
        if request.dry_run:  # no lock: a diff need not wait for a rollout
            applied = await self._applied()
            return self._response(self._plans(desired, owner, request.prune, applied))
        # The work goes on when the caller goes away (Ctrl-C on a long
        # rollout): it is the manager's, like a Deployment's controller.
        result: asyncio.Future[manager_pb2.ApplySpecsResponse] = (
            asyncio.get_running_loop().create_future()
        )
        result.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved

        async def work() -> None:
            try:
                result.set_result(await self._apply_now(desired, owner, request.prune))
            except asyncio.CancelledError:
                result.cancel()
                raise
            except Exception as exc:
                result.set_exception(exc)

        self._spawn(work())
        return await asyncio.shield(result)

    async def _applied(self) -> list[AppliedSpec]:
        """Every applied spec, read off the loop."""
        return await self._writer.call(
            "applied specs not read", self._store.list_applied_specs, write=False
        )

    def _plans(
        self,
        desired: list[spec_pb2.ContainerSpec],
        owner: str,
        prune: bool,
        applied: list[AppliedSpec],
    ) -> list[_Plan]:
        plans = [self._plan(spec) for spec in desired]
        if prune:
            plans.extend(self._prunes(owner, {spec.name for spec in desired}, applied))
        return plans

    @staticmethod
    def _response(plans: list[_Plan]) -> manager_pb2.ApplySpecsResponse:
        return manager_pb2.ApplySpecsResponse(changes=[p.change() for p in plans])

    async def _apply_now(
        self, desired: list[spec_pb2.ContainerSpec], owner: str, prune: bool
    ) -> manager_pb2.ApplySpecsResponse:
        async with self._lock:
            applied = await self._applied()
            plans = self._plans(desired, owner, prune, applied)
            now = time.time()
            before = {a.name: a for a in applied}
            for spec in desired:
                # Kept before acting: a manager that dies half-way through
                # carries on from here when it starts again.
                await self._writer.call(
                    f"spec of {spec.name} not applied",
                    self._store.put_applied_spec,
                    AppliedSpec(
                        name=spec.name,
                        owner=owner,
                        spec=self._registry.sealer.seal_spec(spec),
                        spec_hash=spec.labels[SPEC_HASH_LABEL],
                        applied_time=now,
                    ),
                )
            for index, plan in enumerate(plans):
                _log.info("apply %s: %s %s", plan.name, _ACTION_WORDS[plan.action], plan.detail)
                try:
                    await self._execute(plan)
                except BaseException:
                    # Refused or failed: what was not applied is not the
                    # desired state (a restarted manager must not retry it).
                    await self._restore_applied(plans[index:], before)
                    raise
            return self._response(plans)

    async def _restore_applied(self, plans: list[_Plan], before: Mapping[str, AppliedSpec]) -> None:
        """The applied specs of ``plans``' names as they were before this apply."""
        for plan in plans:
            if plan.desired is None:
                continue  # a prune not done: its applied spec was left alone
            previous = before.get(plan.name)
            what = f"applied spec of {plan.name} not restored"
            if previous is None:
                await self._writer.call(what, self._store.delete_applied_spec, plan.name)
            else:
                await self._writer.call(what, self._store.put_applied_spec, previous)

    def _desired(
        self, index: int, spec: spec_pb2.ContainerSpec, owner: str
    ) -> spec_pb2.ContainerSpec:
        """The spec to run: checked, with the owner and spec-hash labels."""
        where = f"specs[{index}]"
        if not spec.name:
            raise invalid_argument(f"{where}.name", "a container needs a name")
        if spec.replicas < 0:
            raise invalid_argument(f"{where}.replicas", f"must be 0 or more, got {spec.replicas}")
        if spec.runtime not in self._runtimes:
            known = spec_pb2.RuntimeKind.DESCRIPTOR.values_by_number.get(spec.runtime)
            raise failed_precondition(
                f"{spec.name}: runtime {known.name if known else spec.runtime} is not "
                "available on this manager"
            )
        # A spec read back from the manager (ps -o yaml) keeps its stored secrets.
        out = spec_pb2.ContainerSpec()
        out.CopyFrom(keep_stored_secrets(spec, self.stored_specs(spec.name), where))
        out.labels[OWNER_LABEL] = owner
        out.labels[SPEC_HASH_LABEL] = spec_hash(out, self._registry.sealer.mac)
        return out

    def stored_specs(self, name: str) -> list[spec_pb2.ContainerSpec]:
        """The specs the manager keeps for ``name``, with their real values:
        its containers' (newest first), then its applied spec. What a
        "<redacted>" sent back for that name stands for."""
        members = sorted(
            (e for e in self._registry if e.name == name and e.spec is not None),
            key=lambda e: e.create_time,
            reverse=True,
        )
        specs = [e.spec for e in members if e.spec is not None]
        for applied in self._store.list_applied_specs():
            if applied.name == name:
                # One that does not open: its containers' specs still count.
                with contextlib.suppress(SealError):
                    specs.append(self._registry.sealer.open_spec(applied.spec))
        return specs

    # -- planning ----------------------------------------------------------------------------
    def _members(self, name: str) -> list[Entry]:
        """The replicas of a name, oldest first: the live ones, and the ended
        ones that their restart policy is bringing back."""
        return sorted(
            (
                e
                for e in self._registry
                if e.name == name and (not e.terminal or self._supervisor.restarting(e))
            ),
            key=lambda e: e.create_time,
        )

    def _plan(self, desired: spec_pb2.ContainerSpec) -> _Plan:
        name, wanted = desired.name, desired.replicas or 1
        members = self._members(name)
        digest = desired.labels[SPEC_HASH_LABEL]
        mac = self._registry.sealer.mac
        current = [e for e in members if e.spec is not None and spec_hash(e.spec, mac) == digest]
        outdated = [e for e in members if e not in current]
        plan = _Plan(name, E.APPLY_ACTION_UNCHANGED, _replicas(wanted), desired, wanted)
        plan.current, plan.outdated = current, outdated
        if not members:
            plan.action = E.APPLY_ACTION_CREATED
        elif outdated:
            old = outdated[0]
            differences = (
                spec_differences(old.spec, desired)
                if old.spec is not None
                else [f"{old.id} was not launched from a spec"]
            )
            if len(members) != wanted:
                differences.append(f"replicas {len(members)} -> {wanted}")
            plan.action = E.APPLY_ACTION_REPLACED
            plan.detail = "\n".join(differences)
        elif len(current) != wanted:
            plan.action = E.APPLY_ACTION_SCALED
            plan.detail = f"replicas {len(current)} -> {wanted}"
        owner = desired.labels[OWNER_LABEL]
        plan.adopt = [e for e in current if e.identity.labels.get(OWNER_LABEL) != owner]
        if plan.adopt:
            before = sorted({e.identity.labels.get(OWNER_LABEL) or "(none)" for e in plan.adopt})
            plan.detail += (
                f"; adopted {_replicas(len(plan.adopt))} from owner {', '.join(before)} "
                f"-> {owner} (relabelled, not restarted)"
            )
        plan.reweigh = [
            e for e in current if e.spec is not None and traffic_weight_change(e.spec, desired)
        ]
        if plan.reweigh and plan.reweigh[0].spec is not None:
            change = traffic_weight_change(plan.reweigh[0].spec, desired)
            plan.detail += (
                f"; {change} for {_replicas(len(plan.reweigh))} (in place, not restarted)"
            )
        return plan

    def _prunes(self, owner: str, listed: set[str], specs: list[AppliedSpec]) -> list[_Plan]:
        """A plan per name the owner had and no longer lists."""
        applied = {a.name for a in specs if a.owner == owner}
        owned = {e.name for e in self._registry if e.identity.labels.get(OWNER_LABEL) == owner}
        plans = []
        for name in sorted((applied | owned) - listed):
            doomed = [e for e in self._members(name) if e.identity.labels.get(OWNER_LABEL) == owner]
            if not doomed and name not in applied:
                continue  # only ended containers of that name are left
            plan = _Plan(name, E.APPLY_ACTION_PRUNED, _replicas(len(doomed)), None, 0)
            plan.outdated = doomed
            plan.forget = name in applied
            plans.append(plan)
        return plans

    # -- acting ------------------------------------------------------------------------------
    async def _execute(self, plan: _Plan) -> None:
        if plan.desired is None:  # a prune
            for entry in reversed(plan.outdated):
                await self._retire(entry, "pruned by apply", S.STOP_REASON_REQUESTED)
            if plan.forget:
                await self._writer.call(
                    f"applied spec of {plan.name} not deleted",
                    self._store.delete_applied_spec,
                    plan.name,
                )
            return
        if plan.action == E.APPLY_ACTION_CREATED:
            await self._supervisor.run(plan.desired)
            return
        for entry in plan.adopt:
            self._relabel(entry, plan.desired.labels[OWNER_LABEL])
        for entry in plan.reweigh:
            self._reweigh(entry, plan.desired.service.traffic_weight)
        current = list(plan.current)
        for old in plan.outdated:
            if len(current) < plan.replicas:
                current.append(await self._surge(plan.desired, old))
            await self._retire(old, "replaced by apply", S.STOP_REASON_REQUESTED)
        if len(current) < plan.replicas:
            await self._supervisor.run(plan.desired, plan.replicas - len(current))
        for extra in reversed(current[plan.replicas :]):  # the youngest go first
            await self._retire(extra, "scaled down by apply", S.STOP_REASON_SCALED_DOWN)

    def _relabel(self, entry: Entry, owner: str) -> None:
        """A replica of the same spec under a new owner: its books say so."""
        entry.identity.labels[OWNER_LABEL] = owner
        if entry.spec is not None:
            entry.spec.labels[OWNER_LABEL] = owner
        self._registry.persist(entry)

    def _reweigh(self, entry: Entry, traffic_weight: int) -> None:
        """A replica of the same spec but its service's traffic weight: its
        spec takes the new weight, and the mesh takes its split afresh."""
        if entry.spec is None:
            return
        entry.spec.service.traffic_weight = traffic_weight
        self._registry.persist(entry)
        self._registry.serving_changed(entry)

    async def _surge(self, desired: spec_pb2.ContainerSpec, old: Entry) -> Entry:
        """One new replica of ``desired``, ready, in place of ``old`` (which
        keeps running meanwhile)."""
        if desired.checkpoint_policy == spec_pb2.CHECKPOINT_POLICY_ON_STOP and old.connected:
            # The newest checkpoint of the name is what the new replica restores.
            try:
                await self._checkpoints.take(old)
            except RequestError as exc:
                raise RequestError(
                    exc.code,
                    f"{desired.name}: cannot checkpoint {old.id} before replacing it "
                    f"({exc.message}); it keeps running",
                ) from None
        [new] = await self._supervisor.run(desired, 1)
        await self._ready(new)
        return new

    async def _ready(self, entry: Entry) -> None:
        """Wait until a new replica is RUNNING, connected and ready (its
        readiness, when it serves a Management API); FAILED_PRECONDITION when
        it ends or the spec's start timeout (60s unset) runs out."""
        assert entry.spec is not None
        limit = duration_field(entry.spec, "start_timeout") or DEFAULT_READY_TIMEOUT
        deadline = time.monotonic() + limit.total_seconds()

        def not_ready(why: str) -> RequestError:
            return failed_precondition(
                f"{entry.name}: the new replica {entry.id} {why}; the replicas it was to "
                "replace keep running (apply again once it is fixed)"
            )

        await self._sessions.wait_for(
            entry,
            lambda e: e.terminal or (e.state == S.LIFECYCLE_STATE_RUNNING and e.connected),
            limit.total_seconds(),
        )
        if entry.terminal:
            error = f": {entry.error}" if entry.error else ""
            raise not_ready(f"ended {state_word(entry.state)}{error}")
        if entry.state != S.LIFECYCLE_STATE_RUNNING:
            raise not_ready(f"is not RUNNING after {format_duration(limit)}")
        if entry.management_address() and not await _becomes_ready(self._dial(entry), deadline):
            raise not_ready(f"is not ready after {format_duration(limit)}")

    async def _retire(self, entry: Entry, message: str, reason: int) -> None:
        """Stop a replica for good (with its grace period)."""
        entry.desired = False
        if entry.terminal:  # ended and waiting for a restart: there will be none
            self._registry.persist(entry)
            return
        try:
            await self._stopper.stop(entry, None, message, reason)
        except RequestError as exc:
            if exc.code != grpc.StatusCode.UNAVAILABLE:
                raise
            # Not connected: what its runtime can still reach, it ends.
            runtime = self._stopper.runtime_of(entry)
            if runtime is not None:
                await runtime.kill(entry.id)
            entry.state = S.LIFECYCLE_STATE_STOPPED
            entry.error = f"{message} while not connected"
            self._registry.persist(entry)
            self._registry.event(E.EVENT_TYPE_STATE_CHANGED, entry, entry.error)
            entry.changed.set()

    # -- a manager's start -------------------------------------------------------------------
    async def resume(self) -> None:
        """Reconcile to the applied specs once the previous manager's
        containers have had their chance to reconnect."""
        applied = await self._applied()
        if not applied:
            return
        await asyncio.sleep(self._reconnect_window.total_seconds())
        async with self._lock:
            for item in applied:
                try:
                    desired = self._registry.sealer.open_spec(item.spec)
                except SealError as exc:
                    _log.warning("cannot reconcile %s to its applied spec: %s", item.name, exc)
                    continue
                for entry in self._members(item.name):
                    if entry.id in self._inherited and entry.sessions <= 1 and not entry.connected:
                        self._gone(entry)
                plan = self._plan(desired)
                if plan.action == E.APPLY_ACTION_UNCHANGED:
                    continue
                _log.info(
                    "reconciling %s to its applied spec: %s %s",
                    item.name,
                    _ACTION_WORDS[plan.action],
                    plan.detail,
                )
                try:
                    await self._execute(plan)
                except RequestError as exc:
                    _log.warning("cannot reconcile %s: %s", item.name, exc.message)

    def _gone(self, entry: Entry) -> None:
        """An inherited replica that never dialled back in: its process is gone."""
        window = format_duration(self._reconnect_window)
        entry.state = S.LIFECYCLE_STATE_FAILED
        entry.error = f"did not reconnect within {window} of the manager's start"
        entry.desired = entry.admitted = False
        self._registry.persist(entry)
        self._registry.event(E.EVENT_TYPE_LOST, entry, entry.error)
        entry.changed.set()


async def _becomes_ready(channel: grpc.aio.Channel, deadline: float) -> bool:
    """Poll a container's readiness through its Management API until it
    serves or the deadline passes."""
    async with channel:
        stub: management_pb2_grpc.ManagementAsyncStub = management_pb2_grpc.ManagementStub(channel)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                health = await stub.GetHealth(
                    management_pb2.GetHealthRequest(), timeout=min(remaining, 5.0)
                )
                if health.readiness == health_pb2.HEALTH_STATUS_SERVING:
                    return True
            except grpc.aio.AioRpcError:
                pass  # not serving yet: ask again
            await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

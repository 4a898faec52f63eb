"""Admission: whether a container may run on the capacity left, from the
pure plan of pycontainer.manager._scheduler, and the evictions that make
room for a higher priority.

The plan and the bookkeeping that follows it (the newcomer's room reserved,
the victims' room promised to it) run with no await in between, so no
other admission can interleave with them; the evictions, which wait out
grace periods over the network, run after, and hold nothing that another
admission needs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import timedelta
from typing import Any

from .._errors import RequestError, resource_exhausted
from ..units import duration_to_proto
from ..v1 import container_pb2, lifecycle_pb2, manager_pb2, spec_pb2
from ._checkpoints import Checkpoints
from ._registry import Entry, Registry
from ._scheduler import Claim, Resources, plan_admission
from ._sessions import Sessions
from ._stopping import Stopper

_log = logging.getLogger("pycontainer.manager")

E = manager_pb2
S = container_pb2

# The least time between two passes of admit_waiting: a storm of releases
# shares one, and what waits is admitted this long after a release at most.
PASS_SPACING = timedelta(milliseconds=50)

# Runs a background task the manager owns (cancelled when it stops).
Spawn = Callable[[Coroutine[Any, Any, None]], object]


class Admission:
    """Admits containers against a capacity, evicting lower priorities."""

    def __init__(
        self,
        registry: Registry,
        sessions: Sessions,
        checkpoints: Checkpoints,
        stopper: Stopper,
        capacity: Resources,
        *,
        auto_start: bool,
        spawn: Spawn,
    ) -> None:
        self._registry = registry
        self._sessions = sessions
        self._checkpoints = checkpoints
        self._stopper = stopper
        self.capacity = capacity
        self._auto_start = auto_start
        self._spawn = spawn
        # A pass of admit_waiting is spawned and has not scanned yet.
        self._pass_due = False
        self._last_pass = 0.0  # time.monotonic() of the last pass's scan

    def _claims(self, exclude: Entry) -> list[Claim]:
        return [
            e.claim() for e in self._registry if e.admitted and not e.terminal and e is not exclude
        ]

    def _held(self) -> list[Claim]:
        """What holds or awaits room: the admitted, and the replicas this
        manager launched (or is about to) that are not admitted yet: they want
        their room once they register. A record an earlier manager left in
        CREATED (sessions > 0, not launched here) holds none."""
        return [
            e.claim()
            for e in self._registry
            if not e.terminal
            and (
                e.admitted
                or (
                    e.spec is not None
                    and e.desired
                    and e.state == S.LIFECYCLE_STATE_CREATED
                    and (e.launched or e.sessions == 0)
                )
            )
        ]

    def refuse_unless_all_fit(self, entries: Sequence[Entry], verb: str) -> None:
        """RESOURCE_EXHAUSTED, before any of them starts, unless every one of
        ``entries`` (new replicas) would be admitted, each beside the others
        and the evictions planned for those before it: all or nothing, so a
        request too big launches none and evicts no one."""
        held = self._held()
        for index, entry in enumerate(entries):
            plan = plan_admission(self.capacity, held, entry.claim())
            if not plan.admitted:
                which = f" (replica {index + 1} of {len(entries)})" if len(entries) > 1 else ""
                self._registry.event(E.EVENT_TYPE_REFUSED, entry, plan.reason)
                raise resource_exhausted(
                    f"cannot {verb} {entry.name!r}{which}: {plan.reason}"
                    + ("; none was launched" if len(entries) > 1 else "")
                )
            victims = {victim.id for victim in plan.victims}
            held = [claim for claim in held if claim.id not in victims] + [entry.claim()]

    async def admit(self, entry: Entry) -> bool:
        """Make room for ``entry`` (evicting lower priorities) or refuse. False
        when a concurrent admission (say, admit_waiting's while this one was
        evicting) got it in first: that one starts it."""
        if entry.admitted:
            return False
        plan = plan_admission(self.capacity, self._claims(entry), entry.claim())
        if not plan.admitted:
            self._registry.event(E.EVENT_TYPE_REFUSED, entry, plan.reason)
            raise resource_exhausted(f"cannot admit {entry.name!r}: {plan.reason}")
        victims = [self._registry.entries[victim.id] for victim in plan.victims]
        # From here on its room is reserved and the victims' room is promised
        # to it: admissions planned while the evictions below wait see that.
        entry.admitted = True
        for victim in victims:
            victim.admitted = False
        evicted: list[Entry] = []
        try:
            for victim in victims:
                await self.evict(
                    victim,
                    None,
                    f"evicted to admit {entry.name!r} (priority {entry.priority} > "
                    f"{victim.priority})",
                )
                evicted.append(victim)
        except BaseException:
            entry.admitted = False
            for victim in victims:
                if victim not in evicted and not victim.terminal:
                    victim.admitted = True  # it still runs and holds its room
            raise
        return True

    async def evict(self, entry: Entry, grace: timedelta | None, message: str) -> Entry:
        """Stop with reason EVICTED, checkpointing first when the spec asks."""
        period = self._stopper.grace(entry, grace)
        checkpoint_first = bool(
            entry.spec is not None
            and entry.spec.checkpoint_policy == spec_pb2.CHECKPOINT_POLICY_ON_STOP
        )
        self._registry.event(E.EVENT_TYPE_EVICTED, entry, message)
        evict = lifecycle_pb2.EvictCommand(
            grace_period=duration_to_proto(period),
            message=message,
            checkpoint_first=checkpoint_first,
        )
        result = (await self._stopper.stopping(entry, "evict", evict, period)).result
        if result.checkpoint:
            try:
                await self._checkpoints.keep(entry, result.checkpoint)
            except RequestError as exc:  # a full state disk: the eviction stands
                _log.error("eviction of %s: %s", entry.id, exc.message)
        entry.admitted = False
        entry.evicted = True
        if entry.terminal:
            # Kubernetes' controllers replace an evicted pod too: say it, so
            # that RUNNING again a moment later is no surprise.
            policy = entry.restart_policy_brings_back()
            how = f" ({entry.reason})" if entry.reason.startswith("killed") else ""
            then = f"; restarting (restartPolicy {policy})" if policy else ""
            entry.reason = f"evicted{how}{then}"
            self._registry.persist(entry)
        return entry

    def start_if_waiting(self, entry: Entry) -> None:
        """A container registered in CREATED: admit and start it (auto_start)."""
        if (
            self._auto_start
            and entry.desired
            and entry.state == S.LIFECYCLE_STATE_CREATED
            and not entry.admitted
        ):
            self._spawn(self.admit_and_start(entry))

    async def admit_and_start(self, entry: Entry) -> None:
        try:
            if not await self.admit(entry):
                return
            if entry.restore_state is not None:
                await self._sessions.command(
                    entry, "restore", lifecycle_pb2.RestoreCommand(state=entry.restore_state)
                )
                entry.restore_state = None
            await self._sessions.command(entry, "start", lifecycle_pb2.StartCommand())
        except RequestError as exc:
            _log.info("container %s not started: %s", entry.id, exc.message)

    def admit_waiting_soon(self) -> None:
        """Capacity was released: a pass of admit_waiting, shared by every
        release told before it scans, and at most one pass per PASS_SPACING
        (10,000 containers ending at once cost a scan of the registry every
        few tens of milliseconds, not one each)."""
        if self._pass_due:
            return
        self._pass_due = True
        self._spawn(self._admit_pass())

    async def _admit_pass(self) -> None:
        wait = self._last_pass + PASS_SPACING.total_seconds() - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self._pass_due = False  # a release from now on needs a pass after this one
        self._last_pass = time.monotonic()
        await self.admit_waiting()

    async def admit_waiting(self) -> None:
        """Capacity was released: start what waits, highest priority first."""
        # The connected ones in CREATED (Sessions keeps them apart: a scan
        # of every container per release was quadratic in a stop storm).
        waiting = sorted(
            (e for e in self._sessions.in_created() if e.desired and not e.admitted),
            key=lambda e: (-e.priority, e.create_time),
        )
        for entry in waiting:
            await self.admit_and_start(entry)

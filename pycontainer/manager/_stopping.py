"""Stops and evictions with a deadline, of everything the manager launched.

A connected container is sent the command; a launched process still alive
past its grace period (plus the extensions granted) is SIGKILLed by its
runtime, at that deadline. A launched process that is not connected (a
program that never registered, a lost session) gets SIGTERM from its
runtime, then SIGKILL at the deadline. Either way a stop that ends in the
kill is a stop that worked, as ``docker stop`` reports it: the container is
STOPPED, its reason says it was killed, and the caller is told so (killed).
Its exit status is the runtime's, as Container.exit_code documents it: -9
when the runtime's SIGKILL ended it, 137 when a pycontainer app ended itself
at its deadline (as SIGKILL would; docker shows 137 for both). FAILED stays
for a hook that raised.

A stop runs as a task the manager owns: a caller that gives up waiting
(Ctrl-C on ``pycontainer stop``) does not call off the kill at the deadline.
Concurrent stops of one container share it."""

from __future__ import annotations

import asyncio
import datetime
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from .._errors import RequestError
from ..units import DEFAULT_GRACE_PERIOD, duration_from_proto, duration_to_proto, format_duration
from ..v1 import container_pb2, lifecycle_pb2, manager_pb2
from ._registry import Entry, Registry, StopInProgress, state_word
from ._runtime import Runtime
from ._sessions import Sessions
from ._settings import ManagerSettings

_log = logging.getLogger("pycontainer.manager")

E = manager_pb2
S = container_pb2
# How long a SIGKILLed process may take to be reported gone.
_KILL_PATIENCE = 10.0

# Runs a background task the manager owns; returns it.
SpawnTask = Callable[[Coroutine[Any, Any, Any]], "asyncio.Future[Any]"]


@dataclass(frozen=True)
class Stopped:
    """How a stop or eviction ended."""

    entry: Entry
    # The container's answer (its checkpoint, for an eviction that asked).
    result: lifecycle_pb2.CommandResult
    # The program did not end within its grace period and was killed (by the
    # runtime, or by itself at its deadline).
    killed: bool


def killed_reason(grace: datetime.timedelta) -> str:
    return f"killed after its {format_duration(grace)} grace period"


class Stopper:
    """Ends containers within their grace period, by command, then by kill."""

    def __init__(
        self,
        registry: Registry,
        sessions: Sessions,
        runtimes: Mapping[int, Runtime],
        settings: ManagerSettings,
        *,
        spawn: SpawnTask,
    ) -> None:
        self._registry = registry
        # The mesh's drain before a stop is sent (Mesh.drain: the time it
        # took, taken off the grace period; it calls the announcement when it
        # drains at all), and its end (Mesh.drained).
        self.drain: (
            Callable[[Entry, datetime.timedelta, Callable[[], None]], Awaitable[datetime.timedelta]]
            | None
        ) = None
        self.drained: Callable[[Entry], None] = lambda entry: None
        self._sessions = sessions
        self._runtimes = runtimes
        self._settings = settings
        self._spawn = spawn
        # The stop under way of each container, shared by concurrent callers.
        self._under_way: dict[str, asyncio.Future[Any]] = {}

    def runtime_of(self, entry: Entry) -> Runtime | None:
        """The runtime that launched it (None for a container that dialled in)."""
        return self._runtimes.get(entry.spec.runtime) if entry.spec is not None else None

    def process_of(self, entry: Entry) -> Runtime | None:
        """The runtime of this manager running its process now, if any."""
        runtime = self.runtime_of(entry)
        if entry.launched and runtime is not None and runtime.running(entry.id):
            return runtime
        return None

    @staticmethod
    def grace(entry: Entry, grace: datetime.timedelta | None) -> datetime.timedelta:
        if grace is not None:
            return grace
        if entry.identity.HasField("grace_period"):
            return duration_from_proto(entry.identity.grace_period)
        return DEFAULT_GRACE_PERIOD

    async def stop(
        self, entry: Entry, grace: datetime.timedelta | None, message: str, reason: int
    ) -> Stopped:
        stopped: Stopped = await asyncio.shield(self._stop_task(entry, grace, message, reason))
        return stopped

    def _stop_task(
        self, entry: Entry, grace: datetime.timedelta | None, message: str, reason: int
    ) -> asyncio.Future[Any]:
        period = self.grace(entry, grace)
        entry.desired = False
        stop = lifecycle_pb2.StopCommand(
            grace_period=duration_to_proto(period),
            reason=S.StopReason.ValueType(reason),
            message=message,
        )
        return self._task(entry, "stop", stop, period)

    async def stopping(
        self, entry: Entry, name: str, action: Message, grace: datetime.timedelta
    ) -> Stopped:
        """A stop or evict (``name`` and ``action`` as for Sessions.command),
        run by the manager; the caller waits for it (a second caller waits for
        the one under way)."""
        stopped: Stopped = await asyncio.shield(self._task(entry, name, action, grace))
        return stopped

    def _task(
        self, entry: Entry, name: str, action: Message, grace: datetime.timedelta
    ) -> asyncio.Future[Any]:
        """The task of the stop under way of ``entry`` (this one, if none is)."""
        task = self._under_way.get(entry.id)
        if task is None or task.done():
            task = self._spawn(self._run(entry, name, action, grace))
            self._under_way[entry.id] = task
            task.add_done_callback(lambda _: self._forget(entry.id, task))
        return task

    async def stop_many(
        self,
        entries: list[Entry],
        grace: datetime.timedelta | None,
        message: str,
        reason: int = S.STOP_REASON_REQUESTED,
    ) -> list[Stopped | RequestError]:
        """Stop every one of ``entries`` at once (their grace periods overlap):
        each one's outcome, in their order; a stop that fails is that
        container's RequestError, not the others' failure."""
        # The stops' own tasks, gathered (no task more per stop to wait for
        # each); shielded: a caller that gives up does not call them off.
        tasks = [self._stop_task(entry, grace, message, reason) for entry in entries]
        outcomes = await asyncio.shield(asyncio.gather(*tasks, return_exceptions=True))
        out: list[Stopped | RequestError] = []
        for entry, outcome in zip(entries, outcomes, strict=True):
            if isinstance(outcome, Stopped | RequestError):
                out.append(outcome)
            elif isinstance(outcome, Exception):
                _log.error("stop of %s failed: %s: %s", entry.id, type(outcome).__name__, outcome)
                out.append(
                    RequestError(grpc.StatusCode.INTERNAL, f"stop of {entry.id} failed: {outcome}")
                )
            else:  # CancelledError and the like: the call itself ends
                raise outcome
        return out

    def _forget(self, container_id: str, task: asyncio.Future[Any]) -> None:
        if self._under_way.get(container_id) is task:
            del self._under_way[container_id]

    async def _run(
        self, entry: Entry, name: str, action: Message, grace: datetime.timedelta
    ) -> Stopped:
        runtime = self.process_of(entry)
        if entry.terminal and runtime is None:  # already ended: nothing to do
            return Stopped(entry, lifecycle_pb2.CommandResult(state=entry.state), False)
        if not entry.connected and runtime is None:
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE,
                f"container {entry.id} is not connected to the manager (state "
                f"{state_word(entry.state)}) and has no process this manager "
                "launched; retry when it reconnects",
            )
        if self.drain is not None and entry.connected and not entry.terminal:
            # Out of the mesh first: its clients stop sending it new calls
            # before it is told to stop; the grace period runs from the
            # request, so the drain's time comes off it.
            try:
                spent = await self.drain(entry, grace, lambda: self._announce_drain(entry, grace))
            except BaseException:
                self.drained(entry)
                raise
            if spent:
                grace = max(grace - spent, datetime.timedelta(0))
                assert isinstance(action, lifecycle_pb2.StopCommand | lifecycle_pb2.EvictCommand)
                action.grace_period.CopyFrom(duration_to_proto(grace))
        stop = entry.stop = StopInProgress(grace)
        try:
            # One that ended but whose process lingers is seen to its end.
            if entry.connected and not entry.terminal:
                result = await self._by_command(entry, name, action, grace)
            else:
                assert runtime is not None
                result = await self._by_signal(entry, runtime, grace)
        finally:
            entry.stop = None
            self.drained(entry)
        return Stopped(entry, result, stop.killed)

    def _announce_drain(self, entry: Entry, grace: datetime.timedelta) -> None:
        """Tell the container its stop begins (DrainCommand), so that it is
        not ready while it drains (probes see the stop from its start). Sent,
        not awaited: the drain waits for no container (an older agent answers
        UNIMPLEMENTED, which changes nothing); held down for the grace period
        and a margin at most, should the Stop never come."""
        timeout = grace + _DRAIN_NOTICE_MARGIN
        notice = lifecycle_pb2.DrainCommand(timeout=duration_to_proto(timeout))
        sent = asyncio.ensure_future(
            self._sessions.command(entry, "drain", notice, limit=timeout.total_seconds())
        )
        sent.add_done_callback(_retrieved)

    async def _by_command(
        self, entry: Entry, name: str, action: Message, grace: datetime.timedelta
    ) -> lifecycle_pb2.CommandResult:
        command_id = self._sessions.new_command_id()
        grace_s = grace.total_seconds()
        limit = grace_s + self._settings.max_grace_extension.total_seconds() + 10
        if not entry.launched:
            # No process of this manager's to kill at the deadline (a container
            # that dialled in): its answer is the outcome, awaited as it is
            # (no task and deadline loop around it: 10,000 stops at once).
            try:
                return await self._sessions.command(
                    entry, name, action, limit=limit, command_id=command_id
                )
            except Exception:
                if entry.state == S.LIFECYCLE_STATE_STOPPED:
                    # It failed the command on its way out, but it ended stopped.
                    return lifecycle_pb2.CommandResult(state=entry.state)
                raise
            finally:
                self._sessions.forget_grant(command_id)
        work = asyncio.ensure_future(
            self._sessions.command(entry, name, action, limit=limit, command_id=command_id)
        )
        work.add_done_callback(_retrieved)
        # The deadline runs from the stop's start, read afresh on each wake: a
        # grace extension granted meanwhile moves it. The kill comes from a
        # timer at the deadline, never before it (monotonic; a wait that
        # returns early waits the rest). No margin for the container's own
        # hook: an app that ends itself at its deadline, or a sidecar that
        # kills its program then, ends at the same moment, and this kill
        # of what is left is harmless (its exit status is whichever came first).
        started = time.monotonic()
        try:
            while True:
                runtime = self.process_of(entry)
                if work.done() and (runtime is None or not _waits_for_exit(work)):
                    break
                killed = entry.stop is not None and entry.stop.killed
                deadline = started + grace_s + self._sessions.granted(command_id)
                if runtime is not None and not killed and time.monotonic() >= deadline:
                    await self._kill(entry, runtime, grace)
                    continue
                wake = None if runtime is None or killed else deadline - time.monotonic()
                if not work.done():
                    await asyncio.wait({work}, timeout=wake)
                    continue
                # Cut short or overran, its process on its way out: wait for
                # its exit, until the deadline (or, killed, a bounded time).
                assert runtime is not None
                gone = await self._sessions.wait_for(
                    entry,
                    _exited(runtime),
                    _KILL_PATIENCE if wake is None else wake,
                )
                if not gone and killed:
                    raise RequestError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"container {entry.id} still runs {_KILL_PATIENCE:g}s after SIGKILL",
                    )
        finally:
            self._sessions.forget_grant(command_id)
        if work.exception() is None:
            return work.result()
        if entry.state == S.LIFECYCLE_STATE_STOPPED:
            # It failed the command on its way out, but its process ended
            # stopped (killed at its deadline): the stop worked.
            return lifecycle_pb2.CommandResult(state=entry.state)
        failure = work.exception()
        assert failure is not None
        raise failure

    async def _by_signal(
        self, entry: Entry, runtime: Runtime, grace: datetime.timedelta
    ) -> lifecycle_pb2.CommandResult:
        """A launched process with no session: SIGTERM, SIGKILL at the deadline."""
        self._registry.event(
            E.EVENT_TYPE_COMMAND_SENT,
            entry,
            f"not connected: SIGTERM, SIGKILL after {format_duration(grace)}",
        )
        await runtime.signal(entry.id, signal.SIGTERM)
        # wait_for ends at the deadline by the monotonic clock, never before.
        await self._sessions.wait_for(entry, _exited(runtime), grace.total_seconds())
        if runtime.running(entry.id):
            await self._kill(entry, runtime, grace)
        await self._sessions.wait_for(entry, _exited(runtime), _KILL_PATIENCE)
        if runtime.running(entry.id):
            raise RequestError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"container {entry.id} still runs {_KILL_PATIENCE:g}s after SIGKILL",
            )
        return lifecycle_pb2.CommandResult(state=entry.state)

    async def _kill(self, entry: Entry, runtime: Runtime, grace: datetime.timedelta) -> None:
        assert entry.stop is not None
        _log.warning("container %s overran its grace period: killing it", entry.id)
        self._registry.event(
            E.EVENT_TYPE_STATE_CHANGED,
            entry,
            f"grace period of {format_duration(grace)} over: SIGKILL",
        )
        entry.stop.killed = True
        await runtime.kill(entry.id)


def _exited(runtime: Runtime) -> Callable[[Entry], bool]:
    """Whether the entry's process (of ``runtime``) is gone."""
    return lambda entry: not runtime.running(entry.id)


def _waits_for_exit(work: asyncio.Future[lifecycle_pb2.CommandResult]) -> bool:
    """Whether a stop command that ended so should be followed by waiting for
    the process: it was cut short (ABORTED: the container failed or went
    away) or overran (DEADLINE_EXCEEDED); not when a hook raised (INTERNAL)
    or the stop was refused."""
    exc = work.exception()
    return isinstance(exc, RequestError) and exc.code in (
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )


# How much longer than its grace period a container drained before a stop
# stays not ready without the Stop (the stop was called off).
_DRAIN_NOTICE_MARGIN = datetime.timedelta(seconds=10)


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Read a command's outcome so that one nobody awaits any more (the stop
    was cancelled with the manager) is not reported as never retrieved."""
    if not future.cancelled():
        future.exception()

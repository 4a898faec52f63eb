"""Stops and evictions as commands with a deadline: a process still alive
past its grace period (plus the extensions granted, plus a margin) is
SIGKILLed by its runtime."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping

from google.protobuf.message import Message

from ..units import DEFAULT_GRACE_PERIOD, duration_from_proto
from ..v1 import container_pb2, lifecycle_pb2, manager_pb2
from ._registry import Entry, Registry
from ._runtime import Runtime
from ._sessions import Sessions, duration
from ._settings import ManagerSettings

_log = logging.getLogger("pycontainer.manager")

E = manager_pb2
S = container_pb2
# A launched process still alive this long past its grace period is killed.
_KILL_MARGIN = 2.0


class Stopper:
    """Ends containers within their grace period, by command, then by kill."""

    def __init__(
        self,
        registry: Registry,
        sessions: Sessions,
        runtimes: Mapping[int, Runtime],
        settings: ManagerSettings,
    ) -> None:
        self._registry = registry
        self._sessions = sessions
        self._runtimes = runtimes
        self._settings = settings

    def runtime_of(self, entry: Entry) -> Runtime | None:
        """The runtime that launched it (None for a container that dialled in)."""
        return self._runtimes.get(entry.spec.runtime) if entry.spec is not None else None

    @staticmethod
    def grace(entry: Entry, grace: float | None) -> float:
        if grace is not None:
            return grace
        if entry.identity.HasField("grace_period"):
            return duration_from_proto(entry.identity.grace_period).total_seconds()
        return DEFAULT_GRACE_PERIOD.total_seconds()

    async def stop(self, entry: Entry, grace: float | None, message: str, reason: int) -> Entry:
        seconds = self.grace(entry, grace)
        entry.desired = False
        stop = lifecycle_pb2.StopCommand(
            grace_period=duration(seconds),
            reason=S.StopReason.ValueType(reason),
            message=message,
        )
        await self.stopping(entry, "stop", stop, seconds)
        return entry

    async def stopping(
        self, entry: Entry, name: str, action: Message, seconds: float
    ) -> lifecycle_pb2.CommandResult:
        """A stop or evict (``name`` and ``action`` as for Sessions.command)."""
        command_id = uuid.uuid4().hex
        limit = seconds + self._settings.max_grace_extension + 10
        work = asyncio.ensure_future(
            self._sessions.command(entry, name, action, limit=limit, command_id=command_id)
        )
        runtime = self.runtime_of(entry)
        started = time.monotonic()
        while not work.done():
            allowed = seconds + self._sessions.granted(command_id) + _KILL_MARGIN
            remaining = allowed - (time.monotonic() - started)
            if remaining <= 0 and runtime is not None and entry.spec is not None:
                _log.warning("container %s overran its grace period: killing it", entry.id)
                self._registry.event(
                    E.EVENT_TYPE_STATE_CHANGED, entry, "grace period over: SIGKILL"
                )
                await runtime.kill(entry.id)
                remaining = limit  # the exit resolves the command
            await asyncio.wait({work}, timeout=max(0.05, min(remaining, 0.5)))
        self._sessions.forget_grant(command_id)
        return work.result()

"""Lifecycle sessions: each container's Connect stream, the commands routed
down it (with the operator's trace context) and their results, heartbeats,
readiness reports, grace extensions and the watchdog that declares silent
containers lost."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from opentelemetry import propagate

from .. import limits
from .._errors import (
    RequestError,
    code_number,
    invalid_argument,
    resource_exhausted,
    status_code,
)
from ..units import (
    duration_from_proto,
    duration_to_proto,
    format_duration,
    timestamp_field,
    timestamp_to_proto,
)
from ..v1 import container_pb2, lifecycle_pb2, manager_pb2, spec_pb2
from ._commandstats import CommandStats
from ._registry import Entry, PendingCommand, Registry, Session, state_word
from ._scheduler import Resources, total
from ._settings import ManagerSettings
from ._validation import check_registration

_log = logging.getLogger("pycontainer.manager")

E = manager_pb2  # event type names, short
S = container_pb2

# Told of a container that registered, and of one that reached a terminal state.
EntryHook = Callable[[Entry], None]


def duration(seconds: float) -> duration_pb2.Duration:
    """A Duration of ``seconds`` (the manager's settings are float seconds)."""
    return duration_to_proto(datetime.timedelta(seconds=seconds))


class Sessions:
    """The Lifecycle side of the manager."""

    def __init__(
        self,
        registry: Registry,
        settings: ManagerSettings,
        *,
        on_registered: EntryHook,
        on_ended: EntryHook,
    ) -> None:
        self._registry = registry
        self._settings = settings
        self._on_registered = on_registered
        self._on_ended = on_ended
        # Grace extensions granted so far, by command id (of stops in flight
        # only: the stopper forgets each when its stop ends).
        self._granted: dict[str, float] = {}
        # What admitted containers share: a registration's claim to be
        # running is checked against it (the manager sets it).
        self.capacity: Resources | None = None
        # Told when containers' hold on capacity was released (no session
        # for the heartbeat timeout): what waits may now be admitted.
        self.on_released: Callable[[], None] = lambda: None
        # Containers last seen entering CREATED (registered in it, or told of
        # it): what may wait for admission, so that a release looks at these,
        # not at every container. A superset, pruned as it is read (in_created).
        self._created: dict[str, Entry] = {}
        # Command ids: this manager's random prefix and a count (a uuid4
        # each, os.urandom's syscall, was a tenth of a 10,000-stop storm).
        self._command_prefix = uuid.uuid4().hex[:20]
        #: The leader's term on every command (Command.epoch; _leadership):
        #: a container refuses one lower than the highest it has seen.
        self.epoch = 0
        self._commands_sent = itertools.count(1)
        #: How long commands took to come back, by kind and outcome (/metrics).
        self.command_stats = CommandStats()

    # -- streams -------------------------------------------------------------------------
    async def connect(
        self, requests: AsyncIterator[lifecycle_pb2.ConnectRequest]
    ) -> AsyncIterator[lifecycle_pb2.ConnectResponse]:
        first = await anext(aiter(requests), None)
        if first is None or first.WhichOneof("message") != "register":
            raise invalid_argument("register", "the first message of a session must be register")
        check_registration(first.register)
        entry = self._register(first.register)
        session = Session(entry.id)
        if entry.session is not None:
            entry.session.close()  # a newer session replaces a stale one
        entry.session = session
        session.task = asyncio.current_task()
        session.send(
            lifecycle_pb2.ConnectResponse(
                registered=lifecycle_pb2.RegistrationAck(
                    session_id=session.id,
                    heartbeat_interval=duration_to_proto(self._settings.idle_heartbeat_interval),
                    max_grace_extension=duration_to_proto(self._settings.max_grace_extension),
                )
            )
        )
        for pending in entry.pending.values():  # unanswered before the reconnect
            session.send(lifecycle_pb2.ConnectResponse(command=pending.command))
        reader = asyncio.ensure_future(self._read(entry, session, requests))
        self._on_registered(entry)
        self._registry.serving_changed(entry)
        try:
            while True:
                message = await session.outbox.get()
                if message is None:
                    break
                yield message
        finally:
            reader.cancel()
            if entry.session is session:
                entry.session = None
                entry.disconnected_at = time.monotonic()
                kind = E.EVENT_TYPE_LOST if not entry.terminal else E.EVENT_TYPE_STATE_CHANGED
                self._registry.event(
                    kind, entry, "session closed" if entry.terminal else "session lost"
                )
                if not entry.terminal:
                    entry.error = session.closed_reason or "lost contact with the container"
                else:
                    # Ended, it answers nothing more: a stop sent as it was
                    # stopping by itself (SIGTERM) has its answer now, not at
                    # its time limit (grace + extension + 10 s: make run's
                    # Ctrl-C waited 80 s on a joined container).
                    self.end_pending(entry, "it ended and closed its session")
                self._registry.persist(entry)
                entry.changed.set()

    def _register(self, reg: lifecycle_pb2.Registration) -> Entry:
        identity = reg.identity
        entry = self._registry.get(identity.id)
        reconnect = entry is not None and entry.sessions > 0
        state = reg.state or S.LIFECYCLE_STATE_CREATED
        if entry is None:
            self._registry.make_room_for(identity.id)
            entry = Entry(id=identity.id, name=identity.name, identity=identity)
            if _claims_running(state):
                self._admit_claim(entry, state)
            self._registry.entries[entry.id] = entry
        else:
            claimed = _with_spec(identity, entry.spec)
            if _claims_running(state) and not entry.admitted:
                self._admit_claim(entry, state, claimed)
            entry.identity = claimed
        ended_as = entry.state if entry.terminal and state == S.LIFECYCLE_STATE_CREATED else None
        if ended_as is not None:
            self._new_run(entry, ended_as)
        entry.sessions += 1
        entry.state = state
        if state == S.LIFECYCLE_STATE_CREATED:
            self._created[entry.id] = entry
        entry.pid = reg.pid
        entry.error = reg.error
        # Said afresh by every registration: a container without the field
        # is one that does not report it (None: ready while RUNNING).
        if reg.HasField("readiness"):
            _set_readiness(entry, reg.readiness)
        else:
            entry.ready = entry.ready_time = None
        if _claims_running(entry.state):
            entry.admitted = True
            if entry.start_time is None:
                entry.start_time = time.time()
        # Commands the container already ran: its result comes again when we
        # resend them, so they run at most once.
        self._registry.persist(entry)
        self._registry.event(
            E.EVENT_TYPE_REGISTERED,
            entry,
            f"{'reconnected' if reconnect else 'registered'} in state "
            f"{S.LifecycleState.Name(entry.state)} (pid {entry.pid})",
        )
        entry.changed.set()
        return entry

    def _new_run(self, entry: Entry, ended_as: int) -> None:
        """A container that ended comes back in CREATED: its process was
        started again (docker start, a pod's restart), so this is a new run of
        the same record, wanted again: the operator's stop was of the run that
        ended (a deleted container has no record: it registers as new)."""
        entry.restarts += 1
        entry.desired = True
        entry.admitted = entry.evicted = False
        entry.exit_code = None
        entry.reason = ""
        entry.kill_signal = 0
        entry.restore_state = None
        self._registry.event(
            E.EVENT_TYPE_RESTARTED,
            entry,
            f"a new run: registered in CREATED after it was {state_word(ended_as)} "
            f"(restart {entry.restarts})",
        )

    # -- capacity held by registrations ---------------------------------------------------
    def _admit_claim(
        self,
        entry: Entry,
        state: int,
        identity: container_pb2.ContainerIdentity | None = None,
    ) -> None:
        """A registration that says it is RUNNING (or PAUSED) claims capacity
        like a start does: RESOURCE_EXHAUSTED when its resources do not fit in
        what admitted containers leave. It evicts nobody (a claim is not an
        admission the manager planned: a priority it states of itself must
        not push a real container out)."""
        if self.capacity is None:
            return
        wanted = identity.resources if identity is not None else entry.identity.resources
        claim = Resources(cpu_millis=wanted.cpu_millis, memory_bytes=wanted.memory_bytes)
        if claim.fits_in(Resources(0, 0)):
            # Asking for nothing fits anywhere (Resources.fits_in): no sum of
            # what every other container holds, which made a registration
            # cost O(containers) (20,000 registering: quadratic).
            return
        held = total(
            e.resources()
            for e in self._registry
            if e.admitted and not e.terminal and e is not entry
        )
        free = self.capacity - held
        if not claim.fits_in(free):
            short = claim.shortfall(free)
            raise resource_exhausted(
                f"container {entry.id} registered as {state_word(state)}"
                f" but its resources do not fit: short by {short.cpu_millis}m cpu and "
                f"{short.memory_bytes} bytes of memory (capacity is ManagerSettings.capacity)"
            )

    def release_unclaimed(self, now: float) -> None:
        """The rule for capacity without a session: a container the manager
        did not launch here (one that dialled in itself, or a record from an
        earlier manager) holds its room until the heartbeat timeout passes
        without a session, then releases it; one launched here keeps it while
        its process runs (the runtime's exit releases it). A release is not a
        stop: one that comes back RUNNING claims its room again (_admit_claim)."""
        timeout = self._settings.heartbeat_interval * self._settings.lost_after_heartbeats
        silent_for = timeout.total_seconds()
        released = False
        for entry in self._registry:
            if entry.connected or entry.launched or not entry.admitted or entry.terminal:
                continue
            if entry.disconnected_at is None or now - entry.disconnected_at < silent_for:
                continue
            entry.admitted = False
            released = True
            self._registry.event(
                E.EVENT_TYPE_STATE_CHANGED,
                entry,
                f"capacity released: no session for {format_duration(timeout)} "
                "(the heartbeat timeout)",
            )
            entry.changed.set()
        if released:
            self.on_released()

    def in_created(self) -> list[Entry]:
        """The connected containers in CREATED, in the order they got there;
        those that moved on (another state, no session, deleted) are dropped
        (entering CREATED again, by a registration or a report, adds them back)."""
        out = []
        for container_id, entry in list(self._created.items()):
            if (
                entry.state != S.LIFECYCLE_STATE_CREATED
                or not entry.connected
                or self._registry.get(container_id) is not entry
            ):
                del self._created[container_id]
            else:
                out.append(entry)
        return out

    async def _read(
        self,
        entry: Entry,
        session: Session,
        requests: AsyncIterator[lifecycle_pb2.ConnectRequest],
    ) -> None:
        try:
            async for request in requests:
                session.last_seen = time.monotonic()
                kind = request.WhichOneof("message")
                if kind == "state_change":
                    if _known_states(request.state_change):
                        self._on_state(entry, request.state_change)
                elif kind == "command_result":
                    pending = entry.pending.pop(request.command_result.command_id, None)
                    if pending is not None and not pending.result.done():
                        pending.result.set_result(request.command_result)
                elif kind == "heartbeat":
                    now = timestamp_to_proto(time.time())
                    session.send_heartbeat(
                        lifecycle_pb2.ConnectResponse(heartbeat=lifecycle_pb2.Heartbeat(time=now))
                    )
                elif kind == "readiness":
                    self._on_readiness(entry, request.readiness)
                elif kind == "grace_extension":
                    answer = self._grant(entry, request.grace_extension)
                    if answer is not None:
                        session.send(answer)
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        finally:
            session.close()

    def _on_state(self, entry: Entry, change: lifecycle_pb2.StateChange) -> None:
        # What the container says of itself is shown and kept: bounded.
        change.message = _cut(change.message, limits.MAX_ERROR_LENGTH)
        entry.state = change.to_state
        if change.to_state == S.LIFECYCLE_STATE_CREATED:
            self._created[entry.id] = entry
        if change.to_state == S.LIFECYCLE_STATE_RUNNING and change.from_state in (
            S.LIFECYCLE_STATE_STARTING,
        ):
            entry.start_time = time.time()
        if change.to_state == S.LIFECYCLE_STATE_FAILED:
            entry.error = change.message
        self._registry.event(
            E.EVENT_TYPE_STATE_CHANGED,
            entry,
            f"{S.LifecycleState.Name(change.from_state)} -> "
            f"{S.LifecycleState.Name(change.to_state)}"
            + (f": {change.message}" if change.message else ""),
            change.command_id,
        )
        if entry.terminal:
            entry.admitted = False
            if change.to_state == S.LIFECYCLE_STATE_FAILED:
                # A FAILED container answers no more commands (an on_stop that
                # overran exits hard before it can): do not leave callers waiting.
                self.end_pending(entry, change.message or "it FAILED")
            self._on_ended(entry)
        self._registry.persist(entry)
        entry.changed.set()

    def _on_readiness(self, entry: Entry, readiness: lifecycle_pb2.Readiness) -> None:
        """A change of the container's readiness: the mesh is told (its
        endpoints follow) and waiters woken. No event: readiness flaps with
        its checks, and the mesh's own status shows the endpoints."""
        if entry.ready == readiness.ready:
            return  # said again (around a reconnect): nothing changed
        _set_readiness(entry, readiness)
        self._registry.serving_changed(entry)
        entry.changed.set()

    # -- grace extensions ----------------------------------------------------------------
    def _grant(
        self, entry: Entry, ask: lifecycle_pb2.GraceExtensionRequest
    ) -> lifecycle_pb2.ConnectResponse | None:
        """The answer to a grace extension request: what the cap leaves, for
        a stop in flight; nothing granted (nor kept, nor an event) for any
        other id, and no answer at all for an id no command could have."""
        pending = entry.pending.get(ask.command_id)
        if pending is None or pending.command.WhichOneof("action") not in ("stop", "evict"):
            if len(ask.command_id) > limits.MAX_NAME_LENGTH:
                return None
            return lifecycle_pb2.ConnectResponse(
                grace_extension=lifecycle_pb2.GraceExtensionResponse(
                    command_id=ask.command_id, granted=duration(0)
                )
            )
        used = self._granted.get(ask.command_id, 0.0)
        try:
            wanted = duration_from_proto(ask.extension).total_seconds()
        except OverflowError:
            wanted = float("inf")
        cap = self._settings.max_grace_extension.total_seconds()
        granted = max(0.0, min(wanted, cap - used))
        # Kept until the stop ends (the stopper forgets it).
        self._granted[ask.command_id] = used + granted
        self._registry.event(
            E.EVENT_TYPE_COMMAND_FINISHED,
            entry,
            f"grace extension of {wanted:g}s asked "
            f"({_cut(ask.reason or 'no reason', limits.MAX_ECHOED_CHARS)}): "
            f"granted {granted:g}s",
            ask.command_id,
        )
        return lifecycle_pb2.ConnectResponse(
            grace_extension=lifecycle_pb2.GraceExtensionResponse(
                command_id=ask.command_id, granted=duration(granted)
            )
        )

    def granted(self, command_id: str) -> float:
        """Seconds of grace extension granted to a command so far."""
        return self._granted.get(command_id, 0.0)

    def forget_grant(self, command_id: str) -> None:
        self._granted.pop(command_id, None)

    # -- liveness ------------------------------------------------------------------------
    async def watchdog(self) -> None:
        """Close sessions that sent nothing for lost_after_heartbeats idle
        heartbeats: the backstop for a container whose connection still
        answers pings. A dead, frozen or cut-off one is dropped sooner, with
        its connection, by gRPC keepalive (manager._liveness)."""
        interval = self._settings.heartbeat_interval.total_seconds()
        idle = self._settings.idle_heartbeat_interval.total_seconds()
        limit = idle * self._settings.lost_after_heartbeats
        while True:
            await asyncio.sleep(interval / 2)
            now = time.monotonic()
            self.release_unclaimed(now)
            for entry in self._registry:
                session = entry.session
                if session is not None and now - session.last_seen > limit:
                    _log.warning("container %s silent for %.1fs: lost", entry.id, limit)
                    session.close()

    def close_all(self) -> None:
        for entry in self._registry:
            if entry.session is not None:
                entry.session.close()

    def lost(self, entry: Entry) -> None:
        """The container's process is gone: its session died with it. Report
        it LOST now, as connect() would have when its stream's end is seen
        (once the container is FAILED it would call it a plain close)."""
        session = entry.session
        if session is not None and not entry.terminal:
            entry.session = None
            session.close()
            self._registry.event(E.EVENT_TYPE_LOST, entry, "session lost")

    # -- commands ------------------------------------------------------------------------
    def new_command_id(self) -> str:
        """A command id no other command of any manager has: 32 hex digits,
        as a uuid4's (the prefix is random per manager, so a successor's
        commands never take the ids of a predecessor's a container remembers)."""
        return f"{self._command_prefix}{next(self._commands_sent):012x}"

    async def command(
        self,
        entry: Entry,
        name: str,
        action: Message,
        *,
        limit: float | None = None,
        command_id: str = "",
    ) -> lifecycle_pb2.CommandResult:
        """Send one command (``name`` is its oneof field, ``action`` the message)
        down the container's stream and wait at most ``limit`` s for its result."""
        if entry.session is None:
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE,
                f"container {entry.id} is not connected to the manager (state "
                f"{state_word(entry.state)}); retry when it reconnects",
            )
        timeout = limit or self._settings.command_timeout.total_seconds()
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # the operator's trace continues in the hooks
        deadline = timestamp_to_proto(time.time() + timeout)
        command = lifecycle_pb2.Command(
            id=command_id or self.new_command_id(),
            deadline=deadline,
            trace_context=carrier,
            epoch=self.epoch,
        )
        field = getattr(command, name)  # the oneof member ``name`` names
        field.SetInParent()  # an empty action (StartCommand()) is still the one set
        field.MergeFrom(action)
        future: asyncio.Future[lifecycle_pb2.CommandResult] = (
            asyncio.get_running_loop().create_future()
        )
        entry.pending[command.id] = PendingCommand(command, future)
        self._registry.event(E.EVENT_TYPE_COMMAND_SENT, entry, name, command.id)
        entry.session.send(lifecycle_pb2.ConnectResponse(command=command))
        sent = time.monotonic()
        try:
            result = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self.command_stats.observe(name, "DEADLINE_EXCEEDED", time.monotonic() - sent)
            entry.pending.pop(command.id, None)
            raise RequestError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"container {entry.id} did not finish {name} within {timeout:g}s",
            ) from None
        except asyncio.CancelledError:  # the caller gave up waiting
            self.command_stats.observe(name, "CANCELLED", time.monotonic() - sent)
            raise
        code = status_code(result.code)
        self.command_stats.observe(name, code.name, time.monotonic() - sent)
        # The container's words go into events and errors: bounded.
        result.message = _cut(result.message, limits.MAX_ERROR_LENGTH)
        self._registry.event(
            E.EVENT_TYPE_COMMAND_FINISHED,
            entry,
            f"{name}: {code.name}" + (f": {result.message}" if result.message else ""),
            command.id,
        )
        if code != grpc.StatusCode.OK:
            raise RequestError(code, result.message)
        return result

    def end_pending(self, entry: Entry, why: str) -> None:
        """Answer the commands a container that is gone can no longer answer: a
        stop that reached STOPPED succeeded, anything else is ABORTED (rather
        than leaving the caller waiting out the command's whole time limit)."""
        for command_id, pending in list(entry.pending.items()):
            del entry.pending[command_id]
            if pending.result.done():
                continue
            action = pending.command.WhichOneof("action")
            result = lifecycle_pb2.CommandResult(command_id=command_id, state=entry.state)
            if action not in ("stop", "evict") or entry.state != S.LIFECYCLE_STATE_STOPPED:
                result.code = code_number(grpc.StatusCode.ABORTED)
                result.message = f"container {entry.id} did not finish {action}: {why}"
            pending.result.set_result(result)

    @staticmethod
    async def wait_for(entry: Entry, predicate: Callable[[Entry], bool], seconds: float) -> bool:
        """Wait until predicate(entry) holds, at most ``seconds``."""
        deadline = time.monotonic() + seconds
        while not predicate(entry):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            entry.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(entry.changed.wait(), remaining)
        return True


_STATES = frozenset(S.LifecycleState.values())


def _known_states(change: lifecycle_pb2.StateChange) -> bool:
    """Both states of a report are LifecycleStates; one that is not is
    dropped (logged) rather than kept as the container's state."""
    for state in (change.from_state, change.to_state):
        if state not in _STATES:
            _log.warning("state change to unknown LifecycleState %d ignored", state)
            return False
    return True


def _set_readiness(entry: Entry, readiness: lifecycle_pb2.Readiness) -> None:
    entry.ready = readiness.ready
    entry.ready_time = _reported_time(readiness)


def _reported_time(readiness: lifecycle_pb2.Readiness) -> float:
    """When the container says its readiness became so; now when it says
    nothing, or a time no Timestamp can hold (it is shown back as one)."""
    try:
        when = timestamp_field(readiness, "time")
    except (ValueError, OverflowError):
        when = None
    return when.timestamp() if when is not None else time.time()


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text.encode())} bytes)"


def _claims_running(state: int) -> bool:
    return state in (S.LIFECYCLE_STATE_RUNNING, S.LIFECYCLE_STATE_PAUSED)


def _with_spec(
    identity: container_pb2.ContainerIdentity, spec: spec_pb2.ContainerSpec | None
) -> container_pb2.ContainerIdentity:
    """A launched container's identity: what it says of itself, with its spec's
    name, labels, priority, resources and grace period winning (the operator
    asked for those; admission and selectors must see them)."""
    if spec is None:
        return identity
    merged = container_pb2.ContainerIdentity()
    merged.CopyFrom(identity)
    merged.name = spec.name or identity.name
    merged.labels.update(spec.labels)
    merged.priority = spec.priority
    if spec.resources.cpu_millis or spec.resources.memory_bytes:
        merged.resources.CopyFrom(spec.resources)
    if spec.HasField("grace_period"):
        merged.grace_period.CopyFrom(spec.grace_period)
    return merged

"""The manager's view of each container and of its live session, and the
registry that holds them: lookups, persistence in the state store, deletion."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from google.protobuf import timestamp_pb2
from google.protobuf.message import DecodeError

from .. import _selectors, limits
from .._errors import RequestError, echo, invalid_argument, not_found, resource_exhausted
from .._secrets import redact_spec
from .._selectors import Requirement
from ..units import timestamp_to_proto
from ..v1 import container_pb2, lifecycle_pb2, manager_pb2, spec_pb2
from ._events import EventBus
from ._scheduler import Claim, Resources
from ._sealing import Sealer, SealError
from ._settings import MAX_ENDED_CONTAINERS
from ._store import ContainerRecord
from ._storewriter import StoreWriter
from ._validation import check_labels, check_name

_log = logging.getLogger("pycontainer.manager")

_TERMINAL = (container_pb2.LIFECYCLE_STATE_STOPPED, container_pb2.LIFECYCLE_STATE_FAILED)


def state_word(state: int) -> str:
    """A state as the manager's messages (and the CLI's tables) name it:
    RUNNING, not LIFECYCLE_STATE_RUNNING; UNKNOWN for an unset or unknown one.
    Events keep the enum's full names (machine output carries them as sent;
    the CLI shortens them for people)."""
    known = container_pb2.LifecycleState.DESCRIPTOR.values_by_number.get(state)
    if known is None or state == container_pb2.LIFECYCLE_STATE_UNSPECIFIED:
        return "UNKNOWN"
    return known.name.removeprefix("LIFECYCLE_STATE_")


def _ts(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    return None if seconds is None else timestamp_to_proto(seconds)


class Session:
    """One live Lifecycle.Connect stream of a container.

    Its outbox is bounded (pycontainer.limits): heartbeat replies past
    SESSION_OUTBOX_SOFT unread messages are dropped (the next says the same),
    and past SESSION_OUTBOX_HARD the session is closed at once, with a reason,
    so that a peer that stops reading cannot grow the manager's memory."""

    def __init__(self, container_id: str = "") -> None:
        self.id = uuid.uuid4().hex[:12]
        self.container_id = container_id
        self.outbox: asyncio.Queue[lifecycle_pb2.ConnectResponse | None] = asyncio.Queue()
        self.last_seen = time.monotonic()
        # Why the manager ended it (empty while open, or for an ordinary end).
        self.closed_reason = ""
        # The task serving the stream: cancelled to end a session whose
        # writes are stuck on a peer that does not read.
        self.task: asyncio.Task[object] | None = None

    def send(self, message: lifecycle_pb2.ConnectResponse) -> None:
        if self.closed_reason:
            return
        if self.outbox.qsize() >= limits.SESSION_OUTBOX_HARD:
            self.abort(
                f"the container read none of {limits.SESSION_OUTBOX_HARD} queued messages "
                "(pycontainer.limits.SESSION_OUTBOX_HARD): session closed"
            )
            return
        self.outbox.put_nowait(message)

    def send_heartbeat(self, message: lifecycle_pb2.ConnectResponse) -> None:
        """A heartbeat reply, unless the peer already has enough unread."""
        if self.outbox.qsize() < limits.SESSION_OUTBOX_SOFT:
            self.send(message)

    def close(self) -> None:
        """End the stream from the manager's side."""
        self.outbox.put_nowait(None)

    def abort(self, reason: str) -> None:
        """End the stream now (without draining what is queued), saying why."""
        if self.closed_reason:
            return
        self.closed_reason = reason
        _log.warning("container %s: %s", self.container_id or "?", reason)
        while not self.outbox.empty():
            self.outbox.get_nowait()
        self.outbox.put_nowait(None)
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()


@dataclass
class PendingCommand:
    """A command sent and not answered yet; resent after a reconnect."""

    command: lifecycle_pb2.Command
    result: asyncio.Future[lifecycle_pb2.CommandResult]


@dataclass
class StopInProgress:
    """A stop or eviction under way: what the exit of its process means."""

    grace: datetime.timedelta
    # Set once the runtime SIGKILLed it at the end of its grace period.
    killed: bool = False


@dataclass
class Entry:
    """One container known to the manager."""

    id: str
    name: str
    identity: container_pb2.ContainerIdentity
    spec: spec_pb2.ContainerSpec | None = None
    state: container_pb2.LifecycleState.ValueType = container_pb2.LIFECYCLE_STATE_CREATED
    pid: int = 0
    session: Session | None = None
    create_time: float = field(default_factory=time.time)
    start_time: float | None = None
    restarts: int = 0
    error: str = ""
    exit_code: int | None = None
    last_checkpoint_id: str = ""
    desired: bool = True
    # Admitted against capacity (running, or being started).
    admitted: bool = False
    # Stopped by an eviction (restarted under OnFailure, like a failure).
    evicted: bool = False
    # Sessions it has opened (reconnects + 1); a container known from the
    # state store had one with an earlier manager.
    sessions: int = 0
    # A seed or checkpoint to restore before the first start.
    restore_state: bytes | None = None
    pending: dict[str, PendingCommand] = field(default_factory=dict)
    # Set whenever the container reports a state, for waiters.
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    # Why it is in its state, in a few words (Container.reason).
    reason: str = ""
    # When it last ended (Unix seconds); kept in memory only.
    finish_time: float | None = None
    # Launched by this manager's runtime (which can signal it while it is not
    # connected); a record from an earlier manager has no process here.
    launched: bool = False
    # The stop or eviction under way, if any.
    stop: StopInProgress | None = None
    # Its mesh endpoints are being drained (DRAINING) before a stop is sent.
    draining: bool = False
    # The signal an operator's kill sent last: an exit of it is their doing.
    kill_signal: int = 0
    # Its end was noted (finish_time): set while it stays ended.
    ended: bool = False
    # When (time.monotonic()) it was last seen without a session: its room
    # is released a heartbeat timeout later (Sessions.release_unclaimed).
    disconnected_at: float | None = None
    # The readiness it last reported (Registration.readiness, then a Readiness
    # message on each change), kept across a lost session (serving needs a
    # session anyway) until its next registration says afresh. None: never
    # reported, as a container older than the report: taken as ready while
    # RUNNING (serving). In memory only, like the session.
    ready: bool | None = None
    # When it became so (Unix seconds, by the container's clock), with ready.
    ready_time: float | None = None

    @property
    def connected(self) -> bool:
        return self.session is not None

    @property
    def terminal(self) -> bool:
        return self.state in _TERMINAL

    @property
    def serving(self) -> bool:
        """Whether it takes traffic, so is an endpoint of the mesh: RUNNING,
        connected, ready (or never said: an older container) and not being
        drained. A stop under way that did not drain (the drain off) leaves
        it serving until the container reports it is not ready or no longer
        RUNNING: what a plain stop does, as Kubernetes' endpoints do.
        Registry.serving_changed is told whenever any of these may have changed."""
        return (
            self.state == container_pb2.LIFECYCLE_STATE_RUNNING
            and self.session is not None
            and self.ready is not False
            and not self.draining
        )

    @property
    def priority(self) -> int:
        return self.identity.priority

    def resources(self) -> Resources:
        r = self.identity.resources
        return Resources(cpu_millis=r.cpu_millis, memory_bytes=r.memory_bytes)

    def claim(self) -> Claim:
        return Claim(
            id=self.id,
            name=self.name,
            priority=self.priority,
            resources=self.resources(),
            start_time=self.start_time or self.create_time,
        )

    def restart_policy_brings_back(self) -> str:
        """The restart policy ("Always", "OnFailure") that will replace this
        ended container, or "" when none will: Always, or OnFailure after a
        failure or an eviction (not the container's choice). An operator's
        stop or scale-down (not desired any more) is never undone."""
        spec = self.spec
        if spec is None or not self.desired:
            return ""
        policy = spec.restart_policy
        failed = self.state == container_pb2.LIFECYCLE_STATE_FAILED or (self.exit_code or 0) != 0
        if policy == spec_pb2.RESTART_POLICY_ALWAYS:
            return "Always"
        if policy == spec_pb2.RESTART_POLICY_ON_FAILURE and (failed or self.evicted):
            return "OnFailure"
        return ""

    def management_address(self) -> str:
        for endpoint in self.identity.endpoints:
            if endpoint.kind == container_pb2.ENDPOINT_KIND_MANAGEMENT:
                return endpoint.address
        return ""

    def matches(self, selector: Sequence[Requirement]) -> bool:
        """Whether the labels satisfy a parsed label selector."""
        return _selectors.matches(selector, self.identity.labels)

    def to_proto(self) -> manager_pb2.Container:
        container = manager_pb2.Container(
            identity=self.identity,
            # Replies never carry a secret's value (pycontainer._secrets).
            spec=redact_spec(self.spec) if self.spec is not None else None,
            state=self.state,
            pid=self.pid,
            connected=self.connected,
            create_time=_ts(self.create_time),
            start_time=_ts(self.start_time),
            restarts=self.restarts,
            error=self.error,
            last_checkpoint_id=self.last_checkpoint_id,
            reason=self.reason,
            finish_time=_ts(self.finish_time),
            launched=self.launched,
        )
        if self.exit_code is not None:
            container.exit_code = self.exit_code
        if self.ready is not None:
            container.readiness.ready = self.ready
            if self.ready_time is not None:
                container.readiness.time.CopyFrom(timestamp_to_proto(self.ready_time))
        return container

    def to_record(self, sealer: Sealer) -> ContainerRecord:
        """What the state store keeps; env values sealed (_sealing)."""
        r = self.identity.resources
        return ContainerRecord(
            id=self.id,
            name=self.name,
            spec=sealer.seal_spec(self.spec) if self.spec is not None else b"",
            labels=dict(self.identity.labels),
            priority=self.priority,
            cpu_millis=r.cpu_millis,
            memory_bytes=r.memory_bytes,
            state=int(self.state),
            create_time=self.create_time,
            start_time=self.start_time,
            restarts=self.restarts,
            error=self.error,
            exit_code=self.exit_code,
            last_checkpoint_id=self.last_checkpoint_id,
            desired=self.desired,
            endpoints=(
                container_pb2.ContainerIdentity(
                    endpoints=self.identity.endpoints
                ).SerializeToString()
                if self.identity.endpoints
                else b""
            ),
        )

    @classmethod
    def from_record(cls, record: ContainerRecord, sealer: Sealer) -> Entry:
        """The entry of a stored record; SealError when its env does not open."""
        spec = sealer.open_spec(record.spec) if record.spec else None
        identity = container_pb2.ContainerIdentity(
            id=record.id,
            name=record.name,
            labels=record.labels,
            priority=record.priority,
            resources=container_pb2.ResourceRequirements(
                cpu_millis=record.cpu_millis, memory_bytes=record.memory_bytes
            ),
        )
        if record.endpoints:
            # The endpoints it registered last: the mesh holds them for a
            # while after a takeover (unreadable ones are as none).
            with contextlib.suppress(DecodeError):
                last = container_pb2.ContainerIdentity.FromString(record.endpoints)
                identity.endpoints.extend(last.endpoints)
        return cls(
            id=record.id,
            name=record.name,
            identity=identity,
            spec=spec,
            state=container_pb2.LifecycleState.ValueType(record.state),
            create_time=record.create_time,
            start_time=record.start_time,
            restarts=record.restarts,
            error=record.error,
            exit_code=record.exit_code,
            last_checkpoint_id=record.last_checkpoint_id,
            desired=record.desired,
            sessions=1,
            admitted=record.state
            in (
                container_pb2.LIFECYCLE_STATE_RUNNING,
                container_pb2.LIFECYCLE_STATE_PAUSED,
                container_pb2.LIFECYCLE_STATE_STARTING,
            ),
        )


def _ended_order(entry: Entry) -> tuple[float, float]:
    """Newest ended last: its finish time (a record from an earlier manager
    has none: its last start or creation stands in), then its creation."""
    return (entry.finish_time or entry.start_time or entry.create_time, entry.create_time)


def _within_bounds(record: ContainerRecord) -> bool:
    """A stored record within today's bounds on names and labels. One kept
    before them (a megabyte name would make every listing fail) stays in the
    store, untouched, but is not served: a warning names it."""
    try:
        check_name(record.id, "id")
        check_name(record.name, "name")
        check_labels(record.labels, "labels")
    except RequestError as exc:
        _log.warning("stored container %s not loaded (kept in the store): %s", echo(record.id), exc)
        return False
    return True


def parse_selector(text: str) -> tuple[Requirement, ...]:
    """A label selector's requirements (pycontainer._selectors has the grammar);
    ValueError naming the mistake if malformed (never "match all")."""
    return _selectors.parse_selector(text)


class Registry:
    """Every container the manager knows, kept in the state store: what
    lookups, selectors, admission and the operator API see. It is the truth
    while the manager runs; the store (written behind, _storewriter) is what
    the next manager starts from."""

    def __init__(
        self,
        writer: StoreWriter,
        events: EventBus,
        sealer: Sealer,
        *,
        max_ended: int = MAX_ENDED_CONTAINERS,
    ) -> None:
        self.writer = writer
        self.events = events
        # What seals the env values of the specs it stores.
        self.sealer = sealer
        self.max_ended = max_ended
        # Ended containers that must stay anyway (a restart is on its way).
        self.pinned: Callable[[Entry], bool] = lambda entry: False
        # Told of each container forgotten for the bound (what else it left
        # behind goes too: run directories, retained logs).
        self.forgotten: Callable[[Entry], None] = lambda entry: None
        # Told whenever something a container's place in the mesh depends on
        # may have changed (its state, session, readiness, or it is gone):
        # the mesh takes its endpoints afresh (manager/_xds).
        self.serving_changed: Callable[[Entry], None] = lambda entry: None
        self.entries: dict[str, Entry] = {}
        # The entries whose end was noted (Entry.ended), for the bound on
        # them: what forget_oldest_ended looks at, never every container.
        self._ended: dict[str, Entry] = {}
        self._prune_due = False
        for record in writer.store.list_containers():
            if not _within_bounds(record):
                continue
            try:
                entry = Entry.from_record(record, sealer)
            except SealError as exc:
                # Left as it is: the right key brings it back.
                _log.warning(
                    "stored container %s not loaded (kept in the store): %s", echo(record.id), exc
                )
                continue
            entry.ended = entry.terminal
            entry.disconnected_at = time.monotonic()  # no session with this manager yet
            self.entries[entry.id] = entry
            if entry.ended:
                self._ended[entry.id] = entry

    def add(self, entry: Entry) -> None:
        self.make_room_for(entry.id)
        self.entries[entry.id] = entry
        self.persist(entry)

    def make_room_for(self, container_id: str) -> None:
        """RESOURCE_EXHAUSTED for a new container past MAX_CONTAINERS (the
        longest-ended are forgotten first, as for their own bound)."""
        if container_id in self.entries or len(self.entries) < limits.MAX_CONTAINERS:
            return
        self.forget_oldest_ended(at_least=len(self.entries) - limits.MAX_CONTAINERS + 1)
        if len(self.entries) >= limits.MAX_CONTAINERS:
            raise resource_exhausted(
                f"the manager keeps {len(self.entries)} containers, its limit "
                f"(pycontainer.limits.MAX_CONTAINERS = {limits.MAX_CONTAINERS}): "
                "delete ended ones (pycontainer rm) or stop some"
            )

    def persist(self, entry: Entry) -> None:
        # A deleted container's late news (its stream ending) is not written back.
        if self.entries.get(entry.id) is not entry:
            return
        newly_ended = entry.terminal and not entry.ended
        entry.ended = entry.terminal
        if entry.ended:
            self._ended[entry.id] = entry
        else:
            self._ended.pop(entry.id, None)
        if newly_ended:
            entry.finish_time = time.time()
        self.writer.put(entry.to_record(self.sealer))
        if newly_ended:
            self._forget_soon()

    def _forget_soon(self) -> None:
        """Keep the bound on ended containers at the loop's next turn: one
        pass for every end seen meanwhile (10,000 containers stopped at once
        would otherwise each scan what has ended); at once off a loop."""
        if len(self._ended) <= self.max_ended or self._prune_due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.forget_oldest_ended()
            return
        self._prune_due = True
        loop.call_soon(self._forget_due)

    def _forget_due(self) -> None:
        self._prune_due = False
        self.forget_oldest_ended()

    def delete(self, entry: Entry) -> None:
        """Forget a container (its record too); its checkpoints stay."""
        if self.entries.get(entry.id) is entry:
            self._ended.pop(entry.id, None)
        self.entries.pop(entry.id, None)
        self.writer.delete(entry.id)
        self.serving_changed(entry)

    def forget_oldest_ended(self, at_least: int = 0) -> None:
        """Keep at most ``max_ended`` ended containers: the longest ended go
        first (a record from an earlier manager has no finish time: its last
        start or creation stands in), and at least ``at_least`` of them when
        room is needed. One still connected, stopping or about to be restarted
        stays."""
        if len(self._ended) <= self.max_ended and at_least <= 0:
            return
        ended = [
            e
            for e in self._ended.values()
            if e.terminal and not e.connected and e.stop is None and not self.pinned(e)
        ]
        excess = max(len(ended) - self.max_ended, min(at_least, len(ended)))
        if excess <= 0:
            return
        ended.sort(key=lambda e: e.finish_time or e.start_time or e.create_time)
        for entry in ended[:excess]:
            self.delete(entry)
            self.forgotten(entry)

    def event(
        self,
        type_: manager_pb2.EventType.ValueType,
        entry: Entry,
        message: str,
        command_id: str = "",
    ) -> None:
        self.events.publish(
            type_, entry.id, entry.name, message, state=entry.state, command_id=command_id
        )
        self.serving_changed(entry)

    def get(self, container_id: str) -> Entry | None:
        return self.entries.get(container_id)

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self.entries.values()))

    def resolve(self, name_or_id: str) -> Entry:
        """A container by id, or by name: the one live (not ended) container
        of that name; when none lives, the newest of those that ended (latest
        finish, else creation). Ambiguous only when several live containers
        share the name. The one rule every verb that takes a name follows."""
        if not name_or_id:
            raise invalid_argument("container", "give a container id or name")
        if name_or_id in self.entries:
            return self.entries[name_or_id]
        named = [e for e in self.entries.values() if e.name == name_or_id]
        if not named:
            raise not_found("container", f"no container with id or name {echo(name_or_id)}")
        live = [e for e in named if not e.terminal]
        if len(live) > 1:
            ids = ", ".join(sorted(e.id for e in live))
            raise invalid_argument(
                "container",
                f"name {echo(name_or_id)} matches {len(live)} live containers ({ids}): use an id",
            )
        if live:
            return live[0]
        return max(named, key=_ended_order)

    def select(self, selector: str, states: Iterable[int]) -> list[Entry]:
        try:
            parsed = parse_selector(selector)
        except ValueError as exc:
            raise invalid_argument("label_selector", str(exc)) from None
        wanted = set(states)
        return sorted(
            (
                e
                for e in self.entries.values()
                if e.matches(parsed) and (not wanted or e.state in wanted)
            ),
            key=lambda e: (e.name, e.create_time),
        )

    def live_group(self, name: str) -> list[Entry]:
        """The live replicas called ``name``, oldest first."""
        return sorted(
            (e for e in self.entries.values() if e.name == name and not e.terminal),
            key=lambda e: e.create_time,
        )

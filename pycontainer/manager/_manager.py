"""The manager: a registry of containers and their Lifecycle sessions,
admission with priorities and eviction, commands routed down the right
stream with their trace context, checkpoints kept in the state store."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from opentelemetry import propagate, trace

from .._errors import (
    RequestError,
    failed_precondition,
    invalid_argument,
    not_found,
    resource_exhausted,
)
from ..units import format_cpu, format_memory
from ..v1 import container_pb2, lifecycle_pb2, manager_pb2, spec_pb2
from ._events import EventBus
from ._registry import Entry, PendingCommand, Session, parse_selector
from ._runc import RuncRuntime
from ._runtime import Launch, ProcessRuntime, Runtime
from ._scheduler import Resources, machine_capacity, plan_admission
from ._store import SQLiteStore, StateStore

_log = logging.getLogger("pycontainer.manager")

E = manager_pb2  # event type names, short
# A launched process still alive this long past its grace period is killed.
_KILL_MARGIN = 2.0
S = container_pb2


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


@dataclass
class ManagerSettings:
    """How the manager runs."""

    listen: str = "127.0.0.1:50050"
    # SQLite state (registry, specs, checkpoints) lives here.
    state_dir: str = "state"
    # Capacity admitted containers share; None means this machine's.
    capacity: Resources | None = None
    # Containers send a heartbeat this often when idle...
    heartbeat_interval: float = 5.0
    # ...and are declared lost after this many silent intervals.
    lost_after_heartbeats: int = 3
    # Total extension of a stop's grace period the manager grants on request.
    max_grace_extension: float = 60.0
    # How long a command other than a stop may take.
    command_timeout: float = 30.0
    # Largest checkpoint stored.
    max_checkpoint_bytes: int = 64 << 20
    # Start containers that register in CREATED (after admission).
    auto_start: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


class Manager:
    """The central manager. Use ``async with Manager(settings) as m``."""

    def __init__(
        self,
        settings: ManagerSettings | None = None,
        *,
        store: StateStore | None = None,
        runtimes: dict[int, Runtime] | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self.settings = settings or ManagerSettings()
        if store is None:
            Path(self.settings.state_dir).mkdir(parents=True, exist_ok=True)
            store = SQLiteStore(
                Path(self.settings.state_dir) / "manager.db",
                max_checkpoint_bytes=self.settings.max_checkpoint_bytes,
            )
        self.store = store
        self.capacity = self.settings.capacity or machine_capacity()
        self.events = EventBus()
        self.entries: dict[str, Entry] = {}
        self._processes = ProcessRuntime(on_exit=self._on_process_exit)
        self.runtimes: dict[int, Runtime] = {
            spec_pb2.RUNTIME_KIND_UNSPECIFIED: self._processes,
            spec_pb2.RUNTIME_KIND_PROCESS: self._processes,
        }
        self._runc = RuncRuntime(
            Path(self.settings.state_dir) / "runc", on_exit=self._on_process_exit
        )
        self.runtimes[spec_pb2.RUNTIME_KIND_RUNC] = self._runc
        self.runtimes.update(runtimes or {})
        for runtime in self.runtimes.values():
            # Runtimes given without an exit callback report exits here too.
            if getattr(runtime, "on_exit", False) is None:
                runtime.on_exit = self._on_process_exit  # type: ignore[attr-defined]
        self.tracer = trace.get_tracer("pycontainer.manager", tracer_provider=tracer_provider)
        self._tracer_provider = tracer_provider
        self._admission = asyncio.Lock()
        self._granted: dict[str, float] = {}
        self._restarting: set[str] = set()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._server: grpc.aio.Server | None = None
        self.port = 0
        for record in self.store.list_containers():
            entry = Entry.from_record(record)
            self.entries[entry.id] = entry

    # -- serving ---------------------------------------------------------------------
    @property
    def address(self) -> str:
        host = self.settings.listen.rsplit(":", 1)[0]
        if host in ("0.0.0.0", "[::]", ""):
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    async def start(self) -> int:
        """Serve the Lifecycle and Manager APIs; returns the port."""
        from ._server import build_server

        self._server = build_server(self)
        self.port = self._server.add_insecure_port(self.settings.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.settings.listen!r}")
        await self._server.start()
        self._spawn(self._watchdog())
        # Long-lived objects made so far never become garbage: keep the cyclic
        # collector from walking them (half-second pauses at 10,000 sessions).
        gc.freeze()
        _log.info("manager serving on %s", self.address)
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        """Stop serving; containers keep running and will reconnect later."""
        for task in list(self._tasks):
            task.cancel()
        for entry in self.entries.values():
            if entry.session is not None:
                entry.session.close()
        if self._server is not None:
            await self._server.stop(grace)
        # Containers outlive the manager (they reconnect to the next one);
        # shutdown_containers() and close_runtimes() end them on purpose.
        self.store.close()

    async def shutdown_containers(self, grace: float | None = None) -> None:
        """Stop every container gracefully (make run's Ctrl-C)."""
        live = [e for e in self.entries.values() if e.connected and not e.terminal]
        await asyncio.gather(
            *(
                self.stop_container(e.id, grace, "manager shutdown", S.STOP_REASON_SHUTDOWN)
                for e in live
            ),
            return_exceptions=True,
        )

    async def close_runtimes(self) -> None:
        """Kill what the runtimes launched and is still there (after a graceful
        shutdown_containers(), only what overran)."""
        for runtime in {id(r): r for r in self.runtimes.values()}.values():
            await runtime.close()

    async def __aenter__(self) -> Manager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self, coro: Any) -> asyncio.Future[Any]:
        task: asyncio.Future[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- registry ----------------------------------------------------------------------
    def _persist(self, entry: Entry) -> None:
        self.store.put_container(entry.to_record())

    def _event(self, type_: Any, entry: Entry, message: str, command_id: str = "") -> None:
        self.events.publish(
            type_, entry.id, entry.name, message, state=entry.state, command_id=command_id
        )

    def resolve(self, name_or_id: str) -> Entry:
        """A container by id, or by a name only one live container has."""
        if not name_or_id:
            raise invalid_argument("container", "give a container id or name")
        if name_or_id in self.entries:
            return self.entries[name_or_id]
        named = [e for e in self.entries.values() if e.name == name_or_id]
        live = [e for e in named if not e.terminal] or named
        if not live:
            raise not_found("container", f"no container with id or name {name_or_id!r}")
        if len(live) > 1:
            ids = ", ".join(sorted(e.id for e in live))
            raise invalid_argument(
                "container",
                f"name {name_or_id!r} matches {len(live)} containers ({ids}): use an id",
            )
        return live[0]

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

    # -- sessions (Lifecycle.Connect) -----------------------------------------------------
    async def connect(
        self, requests: AsyncIterator[lifecycle_pb2.ConnectRequest], context: Any
    ) -> AsyncIterator[lifecycle_pb2.ConnectResponse]:
        first = await anext(aiter(requests), None)
        if first is None or first.WhichOneof("message") != "register":
            raise invalid_argument("register", "the first message of a session must be register")
        entry = self._register(first.register)
        session = Session()
        if entry.session is not None:
            entry.session.close()  # a newer session replaces a stale one
        entry.session = session
        session.send(
            lifecycle_pb2.ConnectResponse(
                registered=lifecycle_pb2.RegistrationAck(
                    session_id=session.id,
                    heartbeat_interval=_duration(self.settings.heartbeat_interval),
                    max_grace_extension=_duration(self.settings.max_grace_extension),
                )
            )
        )
        for pending in entry.pending.values():  # unanswered before the reconnect
            session.send(lifecycle_pb2.ConnectResponse(command=pending.command))
        reader = asyncio.ensure_future(self._read(entry, session, requests))
        if (
            self.settings.auto_start
            and entry.desired
            and entry.state == S.LIFECYCLE_STATE_CREATED
            and not entry.admitted
        ):
            self._spawn(self._admit_and_start(entry))
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
                kind = E.EVENT_TYPE_LOST if not entry.terminal else E.EVENT_TYPE_STATE_CHANGED
                self._event(kind, entry, "session closed" if entry.terminal else "session lost")
                if not entry.terminal:
                    entry.error = "lost contact with the container"
                self._persist(entry)
                entry.changed.set()

    def _register(self, reg: lifecycle_pb2.Registration) -> Entry:
        identity = reg.identity
        if not identity.id or not identity.name:
            raise invalid_argument("register.identity", "id and name are required")
        entry = self.entries.get(identity.id)
        reconnect = entry is not None and entry.sessions > 0
        if entry is None:
            entry = Entry(id=identity.id, name=identity.name, identity=identity)
            self.entries[entry.id] = entry
        else:
            entry.identity = _with_spec(identity, entry.spec)
        entry.sessions += 1
        entry.state = reg.state or S.LIFECYCLE_STATE_CREATED
        entry.pid = reg.pid
        entry.error = reg.error
        if entry.state in (S.LIFECYCLE_STATE_RUNNING, S.LIFECYCLE_STATE_PAUSED):
            entry.admitted = True
            if entry.start_time is None:
                entry.start_time = time.time()
        # Commands the container already ran: its result comes again when we
        # resend them, so they run at most once.
        self._persist(entry)
        self._event(
            E.EVENT_TYPE_REGISTERED,
            entry,
            f"{'reconnected' if reconnect else 'registered'} in state "
            f"{S.LifecycleState.Name(entry.state)} (pid {entry.pid})",
        )
        entry.changed.set()
        return entry

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
                    self._on_state(entry, request.state_change)
                elif kind == "command_result":
                    pending = entry.pending.pop(request.command_result.command_id, None)
                    if pending is not None and not pending.result.done():
                        pending.result.set_result(request.command_result)
                elif kind == "heartbeat":
                    now = timestamp_pb2.Timestamp()
                    now.GetCurrentTime()
                    session.send(
                        lifecycle_pb2.ConnectResponse(heartbeat=lifecycle_pb2.Heartbeat(time=now))
                    )
                elif kind == "grace_extension":
                    session.send(self._grant(entry, request.grace_extension))
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        finally:
            session.close()

    def _on_state(self, entry: Entry, change: lifecycle_pb2.StateChange) -> None:
        entry.state = change.to_state
        if change.to_state == S.LIFECYCLE_STATE_RUNNING and change.from_state in (
            S.LIFECYCLE_STATE_STARTING,
        ):
            entry.start_time = time.time()
        if change.to_state == S.LIFECYCLE_STATE_FAILED:
            entry.error = change.message
        self._event(
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
                self._end_pending(entry, change.message or "it FAILED")
            self._spawn(self._admit_waiting())
            if not isinstance(self._runtime_of(entry), ProcessRuntime | RuncRuntime):
                self._maybe_restart(entry)  # a process restarts when it has exited
        self._persist(entry)
        entry.changed.set()

    def _grant(
        self, entry: Entry, ask: lifecycle_pb2.GraceExtensionRequest
    ) -> lifecycle_pb2.ConnectResponse:
        used = self._granted.get(ask.command_id, 0.0)
        wanted = ask.extension.ToNanoseconds() / 1e9
        granted = max(0.0, min(wanted, self.settings.max_grace_extension - used))
        self._granted[ask.command_id] = used + granted
        self._event(
            E.EVENT_TYPE_COMMAND_FINISHED,
            entry,
            f"grace extension of {wanted:g}s asked ({ask.reason or 'no reason'}): "
            f"granted {granted:g}s",
            ask.command_id,
        )
        return lifecycle_pb2.ConnectResponse(
            grace_extension=lifecycle_pb2.GraceExtensionResponse(
                command_id=ask.command_id, granted=_duration(granted)
            )
        )

    async def _watchdog(self) -> None:
        """Close sessions that went silent: a bounded time to detect a lost container."""
        interval = self.settings.heartbeat_interval
        limit = interval * self.settings.lost_after_heartbeats
        while True:
            await asyncio.sleep(interval / 2)
            now = time.monotonic()
            for entry in list(self.entries.values()):
                session = entry.session
                if session is not None and now - session.last_seen > limit:
                    _log.warning("container %s silent for %.1fs: lost", entry.id, limit)
                    session.close()

    # -- commands ----------------------------------------------------------------------
    async def command(
        self,
        entry: Entry,
        name: str,
        action: Any,
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
                f"{S.LifecycleState.Name(entry.state)}); retry when it reconnects",
            )
        timeout = limit or self.settings.command_timeout
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # the operator's trace continues in the hooks
        deadline = timestamp_pb2.Timestamp()
        deadline.FromNanoseconds(int((time.time() + timeout) * 1e9))
        command = lifecycle_pb2.Command(
            id=command_id or uuid.uuid4().hex,
            deadline=deadline,
            trace_context=carrier,
            **{name: action},
        )
        future: asyncio.Future[lifecycle_pb2.CommandResult] = (
            asyncio.get_running_loop().create_future()
        )
        entry.pending[command.id] = PendingCommand(command, future)
        self._event(E.EVENT_TYPE_COMMAND_SENT, entry, name, command.id)
        entry.session.send(lifecycle_pb2.ConnectResponse(command=command))
        try:
            result = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            entry.pending.pop(command.id, None)
            raise RequestError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"container {entry.id} did not finish {name} within {timeout:g}s",
            ) from None
        self._event(
            E.EVENT_TYPE_COMMAND_FINISHED,
            entry,
            f"{name}: {grpc.StatusCode(_code(result.code)).name}"
            + (f": {result.message}" if result.message else ""),
            command.id,
        )
        if result.code != 0:
            raise RequestError(_code(result.code), result.message)
        return result

    def _grace(self, entry: Entry, grace: float | None) -> float:
        if grace is not None:
            return grace
        if entry.identity.HasField("grace_period"):
            return entry.identity.grace_period.ToNanoseconds() / 1e9
        return 30.0

    async def stop_container(
        self,
        name_or_id: str,
        grace: float | None,
        message: str,
        reason: int = S.STOP_REASON_REQUESTED,
    ) -> Entry:
        entry = self.resolve(name_or_id)
        seconds = self._grace(entry, grace)
        entry.desired = False
        stop = lifecycle_pb2.StopCommand(
            grace_period=_duration(seconds),
            reason=S.StopReason.ValueType(reason),
            message=message,
        )
        await self._stopping(entry, "stop", stop, seconds)
        return entry

    async def _stopping(
        self, entry: Entry, name: str, action: Any, seconds: float
    ) -> lifecycle_pb2.CommandResult:
        """A stop or evict; a process still alive past its grace period (plus
        the extensions granted, plus a margin) is SIGKILLed by its runtime."""
        command_id = uuid.uuid4().hex
        limit = seconds + self.settings.max_grace_extension + 10
        work = asyncio.ensure_future(
            self.command(entry, name, action, limit=limit, command_id=command_id)
        )
        runtime = self._runtime_of(entry)
        started = time.monotonic()
        while not work.done():
            allowed = seconds + self._granted.get(command_id, 0.0) + _KILL_MARGIN
            remaining = allowed - (time.monotonic() - started)
            if remaining <= 0 and runtime is not None and entry.spec is not None:
                _log.warning("container %s overran its grace period: killing it", entry.id)
                self._event(E.EVENT_TYPE_STATE_CHANGED, entry, "grace period over: SIGKILL")
                await runtime.kill(entry.id)
                remaining = limit  # the exit resolves the command
            await asyncio.wait({work}, timeout=max(0.05, min(remaining, 0.5)))
        self._granted.pop(command_id, None)
        return work.result()

    async def simple(self, name_or_id: str, action: str) -> Entry:
        entry = self.resolve(name_or_id)
        kinds = {
            "start": lifecycle_pb2.StartCommand(),
            "pause": lifecycle_pb2.PauseCommand(),
            "resume": lifecycle_pb2.ResumeCommand(),
        }
        await self.command(entry, action, kinds[action])
        return entry

    async def checkpoint(self, name_or_id: str) -> manager_pb2.CheckpointContainerResponse:
        entry = self.resolve(name_or_id)
        result = await self.command(entry, "checkpoint", lifecycle_pb2.CheckpointCommand())
        return self._store_checkpoint(entry, result.checkpoint)

    def _store_checkpoint(
        self, entry: Entry, data: bytes
    ) -> manager_pb2.CheckpointContainerResponse:
        info = self.store.put_checkpoint(entry.id, entry.name, data)
        entry.last_checkpoint_id = info.id
        self._persist(entry)
        self._event(
            E.EVENT_TYPE_CHECKPOINTED, entry, f"checkpoint {info.id} ({info.size_bytes} bytes)"
        )
        created = timestamp_pb2.Timestamp()
        created.FromNanoseconds(int(info.create_time * 1e9))
        return manager_pb2.CheckpointContainerResponse(
            checkpoint_id=info.id,
            size_bytes=info.size_bytes,
            sha256=info.sha256,
            create_time=created,
        )

    async def restore(self, name_or_id: str, checkpoint_id: str) -> Entry:
        entry = self.resolve(name_or_id)
        if not checkpoint_id:
            latest = self.store.latest_checkpoint(entry.name)
            if latest is None:
                raise failed_precondition(f"no checkpoint stored for {entry.name!r}")
            checkpoint_id = latest.id
        _, data = self.store.get_checkpoint(checkpoint_id)
        await self.command(
            entry, "restore", lifecycle_pb2.RestoreCommand(state=data, checkpoint_id=checkpoint_id)
        )
        return entry

    async def evict(self, entry: Entry, grace: float | None, message: str) -> Entry:
        """Stop with reason EVICTED, checkpointing first when the spec asks."""
        seconds = self._grace(entry, grace)
        checkpoint_first = bool(
            entry.spec is not None
            and entry.spec.checkpoint_policy == spec_pb2.CHECKPOINT_POLICY_ON_STOP
        )
        self._event(E.EVENT_TYPE_EVICTED, entry, message)
        evict = lifecycle_pb2.EvictCommand(
            grace_period=_duration(seconds), message=message, checkpoint_first=checkpoint_first
        )
        result = await self._stopping(entry, "evict", evict, seconds)
        if result.checkpoint:
            self._store_checkpoint(entry, result.checkpoint)
        entry.admitted = False
        entry.evicted = True
        return entry

    # -- admission ---------------------------------------------------------------------
    def _claims(self, exclude: Entry) -> list[Any]:
        return [
            e.claim()
            for e in self.entries.values()
            if e.admitted and not e.terminal and e is not exclude
        ]

    async def admit(self, entry: Entry) -> bool:
        """Make room for ``entry`` (evicting lower priorities) or refuse. False
        when a concurrent admission (say, _admit_waiting's while this one was
        evicting) got it in first: that one starts it."""
        async with self._admission:
            if entry.admitted:
                return False
            plan = plan_admission(self.capacity, self._claims(entry), entry.claim())
            if not plan.admitted:
                self._event(E.EVENT_TYPE_REFUSED, entry, plan.reason)
                raise resource_exhausted(f"cannot admit {entry.name!r}: {plan.reason}")
            for victim in plan.victims:
                victim_entry = self.entries[victim.id]
                await self.evict(
                    victim_entry,
                    None,
                    f"evicted to admit {entry.name!r} (priority {entry.priority} > "
                    f"{victim_entry.priority})",
                )
            entry.admitted = True
            return True

    async def _admit_and_start(self, entry: Entry) -> None:
        try:
            if not await self.admit(entry):
                return
            if entry.restore_state is not None:
                await self.command(
                    entry, "restore", lifecycle_pb2.RestoreCommand(state=entry.restore_state)
                )
                entry.restore_state = None
            await self.command(entry, "start", lifecycle_pb2.StartCommand())
        except RequestError as exc:
            _log.info("container %s not started: %s", entry.id, exc.message)

    async def _admit_waiting(self) -> None:
        """Capacity was released: start what waits, highest priority first."""
        waiting = sorted(
            (
                e
                for e in self.entries.values()
                if e.connected
                and e.desired
                and not e.admitted
                and e.state == S.LIFECYCLE_STATE_CREATED
            ),
            key=lambda e: (-e.priority, e.create_time),
        )
        for entry in waiting:
            await self._admit_and_start(entry)

    # -- launching ---------------------------------------------------------------------
    async def run(self, spec: spec_pb2.ContainerSpec) -> list[Entry]:
        """Launch a spec's replicas through its runtime (admission first)."""
        if not spec.name:
            raise invalid_argument("spec.name", "a container needs a name")
        if spec.replicas < 0:
            raise invalid_argument("spec.replicas", f"must be 0 or more, got {spec.replicas}")
        runtime = self.runtimes.get(spec.runtime)
        if runtime is None:
            raise failed_precondition(
                f"runtime {spec_pb2.RuntimeKind.Name(spec.runtime)} is not available here"
            )
        restore = None
        if spec.checkpoint_policy == spec_pb2.CHECKPOINT_POLICY_ON_STOP:
            latest = self.store.latest_checkpoint(spec.name)
            if latest is not None:
                restore = self.store.get_checkpoint(latest.id)[1]
        return [await self._launch(spec, runtime, restore) for _ in range(spec.replicas or 1)]

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
        # Refuse before starting anything that would not fit.
        plan = plan_admission(self.capacity, self._claims(entry), entry.claim())
        if not plan.admitted:
            self._event(E.EVENT_TYPE_REFUSED, entry, plan.reason)
            raise resource_exhausted(f"cannot run {spec.name!r}: {plan.reason}")
        self.entries[container_id] = entry
        self._persist(entry)
        try:
            entry.pid = await runtime.launch(Launch(container_id, spec, self.address))
        except (OSError, ValueError) as exc:
            entry.state = S.LIFECYCLE_STATE_FAILED
            entry.error = f"launch failed: {exc}"
            self._persist(entry)
            raise failed_precondition(f"cannot launch {spec.name!r}: {exc}") from exc
        self._event(E.EVENT_TYPE_LAUNCHED, entry, f"launched (pid {entry.pid})")
        return entry

    async def scale(self, name_or_id: str, replicas: int) -> list[Entry]:
        if replicas < 0:
            raise invalid_argument("replicas", f"must be 0 or more, got {replicas}")
        try:
            entry = self.resolve(name_or_id)
        except RequestError:
            # A name shared by replicas names the group: scale from its oldest.
            named = sorted(
                (e for e in self.entries.values() if e.name == name_or_id and not e.terminal),
                key=lambda e: e.create_time,
            )
            if not named:
                raise
            entry = named[0]
        group = sorted(
            (e for e in self.entries.values() if e.name == entry.name and not e.terminal),
            key=lambda e: e.create_time,
        )
        if replicas > len(group):
            if entry.spec is None:
                raise failed_precondition(
                    f"{entry.name!r} was not launched by this manager: it has no spec to scale"
                )
            count = replicas - len(group)
            result = await self.command(
                entry, "replicate", lifecycle_pb2.ReplicateCommand(count=count)
            )
            runtime = self.runtimes[entry.spec.runtime]
            seed = result.seed_state or None
            for _ in range(count):
                await self._launch(entry.spec, runtime, seed)
        else:
            for extra in reversed(group[replicas:]):  # the youngest go first
                await self.stop_container(extra.id, None, "scaled down", S.STOP_REASON_SCALED_DOWN)
        return [e for e in self.entries.values() if e.name == entry.name and not e.terminal]

    async def _on_process_exit(self, container_id: str, code: int) -> None:
        entry = self.entries.get(container_id)
        if entry is None:
            return
        entry.exit_code = code
        session = entry.session
        if session is not None and not entry.terminal:
            # Its stream's end may not have been seen yet: the session died with
            # the process, so report it LOST now, as connect() would have (once
            # the state below is FAILED it would call it a plain close).
            entry.session = None
            session.close()
            self._event(E.EVENT_TYPE_LOST, entry, "session lost")
        if not entry.terminal:
            entry.state = S.LIFECYCLE_STATE_FAILED
            entry.error = f"process exited with status {code}"
        entry.admitted = False
        self._event(E.EVENT_TYPE_EXITED, entry, f"process exited with status {code}")
        self._end_pending(entry, f"its process exited with status {code}")
        self._persist(entry)
        entry.changed.set()
        await self._admit_waiting()
        self._maybe_restart(entry)

    # -- restarts ------------------------------------------------------------------------
    def _runtime_of(self, entry: Entry) -> Runtime | None:
        return self.runtimes.get(entry.spec.runtime) if entry.spec is not None else None

    def _maybe_restart(self, entry: Entry) -> None:
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
        base = spec.restart_backoff.ToNanoseconds() / 1e9 or 1.0
        delay = min(300.0, base * 2 ** min(entry.restarts, 16))
        self._restarting.add(entry.id)
        self._spawn(self._restart_later(entry, delay))

    async def _restart_later(self, entry: Entry, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
            runtime = self._runtime_of(entry)
            if runtime is None or entry.spec is None or not entry.desired:
                return
            await runtime.kill(entry.id)  # what is left of the old one
            entry.restarts += 1
            entry.state = S.LIFECYCLE_STATE_CREATED
            entry.admitted = entry.evicted = False
            entry.exit_code = None
            entry.restore_state = None
            if entry.spec.checkpoint_policy == spec_pb2.CHECKPOINT_POLICY_ON_STOP:
                latest = self.store.latest_checkpoint(entry.name)
                if latest is not None:
                    entry.restore_state = self.store.get_checkpoint(latest.id)[1]
            entry.pid = await runtime.launch(Launch(entry.id, entry.spec, self.address))
            self._event(
                E.EVENT_TYPE_RESTARTED,
                entry,
                f"restart {entry.restarts} after {delay:g}s (pid {entry.pid})"
                + (", restoring its last checkpoint" if entry.restore_state else ""),
            )
            self._persist(entry)
        except (OSError, ValueError) as exc:
            entry.error = f"restart failed: {exc}"
            self._persist(entry)
        finally:
            self._restarting.discard(entry.id)

    def _end_pending(self, entry: Entry, why: str) -> None:
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
                result.code = grpc.StatusCode.ABORTED.value[0]
                result.message = f"container {entry.id} did not finish {action}: {why}"
            pending.result.set_result(result)

    async def wait_for(self, entry: Entry, predicate: Any, seconds: float) -> bool:
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


def _code(number: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN


__all__ = ["Manager", "ManagerSettings", "format_cpu", "format_memory"]

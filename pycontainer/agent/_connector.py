"""The container's side of Lifecycle.Connect: register, report every
transition and every change of readiness, execute commands exactly once, keep
the session alive, and reconnect with jittered exponential backoff while the
container keeps running.

The session runs on its own thread and event loop, so it works the same for
sync and asyncio apps; commands run where the app's hooks expect them: on the
app's event loop when the container was started with astart(), else in a
worker thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import logging
import os
import random
import threading
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2

from .. import limits, units
from .._errors import RequestError, code_number
from .._tls_env import TLS_DIR_ENV
from ..client._leader import LEADER_METADATA as LEADER_METADATA  # its home; kept importable here
from ..client._leader import leader_named
from ..v1 import container_pb2, lifecycle_pb2, lifecycle_pb2_grpc, management_pb2
from ._health import READINESS, HealthState
from ._lifecycle import Lifecycle, Outcome, Request, StateListener
from ._settings import ContainerSettings, Hooks
from ._state import Command, State, state_proto

_log = logging.getLogger("pycontainer.connector")

_SERVING = health_pb2.HealthCheckResponse.SERVING

_CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    # grpc-core (1.85) times a keepalive ping's ack out by this one (a minute
    # by default), not by keepalive_timeout_ms alone: a cut is noticed in
    # 15 s, however rarely the manager asks for heartbeats.
    ("grpc.http2.ping_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Each session's channel dials its own connection: with gRPC's global
    # subchannel pool a new channel reuses the old one's transport, so a
    # session given up as silent (a network cut) would retry on the same
    # dead connection until TCP keepalive noticed.
    ("grpc.use_local_subchannel_pool", 1),
    # Checkpoints and restore states travel in one message each way: sized as
    # the manager's server is (pycontainer.limits), not gRPC's 4 MiB default.
    ("grpc.max_receive_message_length", limits.MAX_LIFECYCLE_MESSAGE_BYTES),
    ("grpc.max_send_message_length", limits.MAX_LIFECYCLE_MESSAGE_BYTES),
)
# The manager answers every heartbeat: this many intervals without a word
# from it and the session is taken as lost (as the manager's own default
# ManagerSettings.lost_after_heartbeats takes a silent container).
_SILENT_HEARTBEATS = 3
# ... but never less than this: a loaded machine can leave a process
# unscheduled for a second or two, and a false "lost" costs a reconnect (and
# the command that met it). 15 s with the default 5 s interval.
_MIN_SILENCE = 5.0
# A refused container tries again within this many seconds (no backoff: a
# standby's refusal costs it nothing, and the leader may be there already).
_STANDBY_RETRY = 0.5
# Results of this many past commands are kept to answer a resent command id.
_REMEMBERED_RESULTS = 1000
# A DrainCommand with no timeout holds readiness down for the container's
# grace period and this much more (the manager's drain plus its Stop's trip).
_DRAIN_MARGIN = datetime.timedelta(seconds=10)

_REASONS = {
    container_pb2.STOP_REASON_REQUESTED: "requested",
    container_pb2.STOP_REASON_EVICTED: "evicted",
    container_pb2.STOP_REASON_SIGNAL: "signal",
    container_pb2.STOP_REASON_SCALED_DOWN: "scaled down",
    container_pb2.STOP_REASON_SHUTDOWN: "manager shutdown",
    container_pb2.STOP_REASON_UNHEALTHY: "unhealthy",
}


def _manager_channel(target: str) -> grpc.aio.Channel:
    """A new channel to the manager: mutual TLS with the certificate in
    $PYCONTAINER_TLS_DIR (read now, so a reconnect uses a renewed one), checking
    that the manager's names the manager; plaintext without one."""
    tls_dir = os.environ.get(TLS_DIR_ENV)
    if not tls_dir:
        return grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
    from ..security import MANAGER, CredentialFiles, channel_credentials, server_name_options

    credentials = channel_credentials(CredentialFiles.in_directory(tls_dir))
    options = [*_CHANNEL_OPTIONS, *server_name_options(MANAGER)]
    return grpc.aio.secure_channel(target, credentials, options=options)


def _now() -> timestamp_pb2.Timestamp:
    return units.timestamp_to_proto(datetime.datetime.now(datetime.UTC))


class ManagerSilent(Exception):
    """The manager stopped answering heartbeats: the session is lost."""


class Connectable(Protocol):
    """What a manager session needs of its container (a Container is one);
    declared here so that this module does not depend on the container's."""

    @property
    def settings(self) -> ContainerSettings: ...
    @property
    def hooks(self) -> Hooks: ...
    @property
    def state(self) -> State: ...
    @property
    def lifecycle(self) -> Lifecycle: ...
    @property
    def app_loop(self) -> asyncio.AbstractEventLoop | None: ...
    @property
    def health(self) -> HealthState: ...
    def identity(self) -> container_pb2.ContainerIdentity: ...
    def info(self) -> management_pb2.GetInfoResponse: ...
    def add_state_listener(self, listener: StateListener) -> None: ...


class ManagerConnection:
    """One container's session with a manager, kept up until close()."""

    def __init__(
        self,
        container: Connectable,
        target: str,
        *,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        renew_tls_dir: str | None = None,
    ) -> None:
        self._container = container
        # Every manager's address (comma-separated: managers in high
        # availability); the session is kept with the one leading.
        self.targets = [t.strip() for t in target.split(",") if t.strip()] or [target]
        self.target = self.targets[0]
        # A joined container's certificate directory: renewed through this manager.
        self._renew_tls_dir = renew_tls_dir
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._tls_hinted = False
        self._loop = asyncio.new_event_loop()
        self._outbox: asyncio.Queue[lifecycle_pb2.ConnectRequest | None] | None = None
        self._main_task: asyncio.Task[None]
        self._results: collections.OrderedDict[str, lifecycle_pb2.CommandResult] = (
            collections.OrderedDict()
        )
        self._running: set[str] = set()
        self._tasks: set[asyncio.Future[None]] = set()
        self._extensions: dict[str, asyncio.Future[float]] = {}
        self._current_stop_id = ""
        # The highest leader's epoch on a command so far (Command.epoch).
        self._epoch = 0
        self._heartbeat = 5.0
        self._last_heard = time.monotonic()  # of the session's last response
        self._registered = asyncio.Event()  # the session's registration was answered
        self.connected = threading.Event()
        self.sessions = 0  # sessions established so far (reconnects + 1)
        self._closed = False
        self._thread = threading.Thread(
            target=self._main, name="pycontainer-connector", daemon=True
        )
        # The container's readiness as last published (the "readiness"
        # service of its HealthState): what a registration carries. attach()
        # publishes it at once, so it is never left at this placeholder.
        self._readiness = lifecycle_pb2.Readiness(ready=False, time=_now())
        container.health.attach(self._on_health)
        container.add_state_listener(self._on_change)
        container.lifecycle.extension_requester = self._request_extension
        self._thread.start()

    # -- thread and reconnection ---------------------------------------------------
    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        if self._renew_tls_dir:  # cancelled with the other leftovers below
            from ._join import keep_renewed

            self._loop.create_task(keep_renewed(self._renew_tls_dir, self.target))
        self._main_task = self._loop.create_task(self._run())
        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(self._main_task)
        # What grpc left behind (the request iterator of a session the manager
        # ended) is cancelled and let finish, as asyncio.run does, instead of
        # "Task was destroyed but it is pending!" when the loop closes.
        leftover = asyncio.all_tasks(self._loop)
        for task in leftover:
            task.cancel()
        if leftover:
            self._loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
        self._loop.close()

    async def _run(self) -> None:
        backoff = self._backoff_initial
        while not self._closed:
            started = time.monotonic()
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _log.info("manager session with %s ended: %s", self.target, _describe(exc))
                # Once a session was registered, plaintext works here: a later
                # drop (the manager killed, a dial reset while it was dying)
                # says nothing about TLS.
                if self.sessions == 0:
                    self._hint_tls(exc)
                if self._follow(exc):
                    # A standby named the leader (or none is elected yet):
                    # go there soon, with no backoff for a refusal.
                    self.connected.clear()
                    backoff = self._backoff_initial
                    await asyncio.sleep(random.uniform(0, _STANDBY_RETRY))
                    continue
            self.connected.clear()
            if self._closed:
                return
            if time.monotonic() - started > 10:
                backoff = self._backoff_initial  # the session was healthy: start over
            # Full jitter, so that containers of a restarted manager do not
            # all reconnect in the same instant.
            await asyncio.sleep(random.uniform(0, backoff))
            backoff = min(self._backoff_max, backoff * 2)

    def _follow(self, exc: BaseException) -> bool:
        """Where the next session goes: the leader a standby named, or, with
        several managers, the next address after one that failed. Whether
        ``exc`` was a standby's refusal."""
        leader = _leader_named(exc)
        if leader is not None:
            if leader:
                if leader not in self.targets:
                    self.targets.append(leader)
                _log.info("manager %s is a standby; the leader is at %s", self.target, leader)
                self.target = leader
            else:
                self._next_target()
            return True
        self._next_target()
        return False

    def _next_target(self) -> None:
        if len(self.targets) > 1:
            at = self.targets.index(self.target) if self.target in self.targets else -1
            self.target = self.targets[(at + 1) % len(self.targets)]

    def _hint_tls(self, exc: BaseException) -> None:
        """Once: a plaintext dial that the manager drops at once is most likely
        a manager serving mutual TLS (its default); say what to set."""
        if self._tls_hinted or os.environ.get(TLS_DIR_ENV):
            return
        if not isinstance(exc, grpc.aio.AioRpcError):
            return
        details = (exc.details() or "").lower()
        dropped = ("socket closed", "connection reset", "ssl", "handshake")
        if exc.code() == grpc.StatusCode.UNAVAILABLE and any(d in details for d in dropped):
            self._tls_hinted = True
            _log.warning(
                "the manager at %s drops this plaintext connection: it most likely serves "
                "mutual TLS (its default). Set $%s to a certificate directory its CA "
                "issued (containers it launches get one), or start it with --insecure",
                self.target,
                TLS_DIR_ENV,
            )

    def close(self, drain: float = 3.0) -> None:
        """End the session and stop reconnecting: commands in flight finish and
        their results reach the manager first (up to ``drain`` seconds)."""
        if self._closed:
            return
        self._closed = True
        self._container.health.detach(self._on_health)
        if self._loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._drain(drain), self._loop).result(drain + 1)
            # The manager ends the session once our half is closed; then the
            # reconnect loop sees _closed and returns. With no session (say, a
            # backoff sleep) there is nothing to wait for: cancel it now.
            self._thread.join(2.0 if self.connected.is_set() else 0.0)
            if self._thread.is_alive():
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._main_task.cancel)
        self._thread.join(5)

    def flush(self, seconds: float = 0.5) -> None:
        """Give reports already queued (say, a FAILED state) up to ``seconds``
        to reach the manager; for a process about to exit hard."""
        if not self._loop.is_running():
            return

        async def wait() -> None:
            # asyncio.Queue tells nobody when it empties: poll, briefly.
            while self._outbox is not None and not self._outbox.empty():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # the last message leaves the socket

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(wait(), self._loop).result(seconds)

    async def _drain(self, seconds: float) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=seconds)
        if self._outbox is not None:
            self._outbox.put_nowait(None)  # half-close: the manager ends the session

    # -- one session -------------------------------------------------------------------
    def _registration(self) -> lifecycle_pb2.ConnectRequest:
        c = self._container
        info = c.info()
        return lifecycle_pb2.ConnectRequest(
            register=lifecycle_pb2.Registration(
                identity=c.identity(),
                state=state_proto(c.state),
                pid=os.getpid(),
                completed_command_ids=list(self._results),
                start_time=info.start_time,
                error=c.lifecycle.error,
                readiness=self._readiness,
            )
        )

    async def _session(self) -> None:
        outbox: asyncio.Queue[lifecycle_pb2.ConnectRequest | None] = asyncio.Queue()
        outbox.put_nowait(self._registration())
        self._outbox = outbox

        async def requests() -> AsyncIterator[lifecycle_pb2.ConnectRequest]:
            while (message := await outbox.get()) is not None:
                yield message

        self._last_heard = time.monotonic()
        self._registered = asyncio.Event()

        async def responses() -> None:
            async for response in call:
                self._last_heard = time.monotonic()
                await self._handle(response, outbox)

        async with _manager_channel(self.target) as channel:
            call = lifecycle_pb2_grpc.LifecycleStub(channel).Connect(requests())
            reader = asyncio.ensure_future(responses())
            heartbeats = asyncio.ensure_future(self._heartbeats(outbox))
            try:
                # Whichever ends first ends the session: the stream (a cut
                # ends it when a keepalive ping goes unanswered), or the
                # heartbeats finding the manager silent (a manager whose
                # grpc-core answers pings while its sessions do not).
                done, _ = await asyncio.wait(
                    (reader, heartbeats), return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    task.result()
            finally:
                reader.cancel()
                heartbeats.cancel()
                call.cancel()
                await asyncio.gather(reader, heartbeats, return_exceptions=True)
                outbox.put_nowait(None)  # ends requests(), and the call's task reading it
                self._outbox = None
                for future in self._extensions.values():
                    if not future.done():
                        future.set_result(0.0)

    async def _heartbeats(self, outbox: asyncio.Queue[lifecycle_pb2.ConnectRequest | None]) -> None:
        """Send a heartbeat every interval; the manager answers each, so
        hearing nothing from it for _SILENT_HEARTBEATS intervals means the
        session is lost (ManagerSilent): reconnect rather than wait for TCP."""
        # The registration's answer sets the interval (beats start after it).
        try:
            await asyncio.wait_for(self._registered.wait(), self._silence_limit())
        except TimeoutError:
            raise ManagerSilent(self._silence("no answer to the registration")) from None
        while True:
            await asyncio.sleep(self._heartbeat)
            silent = time.monotonic() - self._last_heard
            if silent > self._silence_limit():
                raise ManagerSilent(self._silence(f"nothing from the manager for {silent:.1f}s"))
            outbox.put_nowait(
                lifecycle_pb2.ConnectRequest(heartbeat=lifecycle_pb2.Heartbeat(time=_now()))
            )

    def _silence_limit(self) -> float:
        return max(_SILENT_HEARTBEATS * self._heartbeat, _MIN_SILENCE)

    def _silence(self, what: str) -> str:
        return f"{what} (silent for over {self._silence_limit():g}s)"

    async def _handle(
        self,
        response: lifecycle_pb2.ConnectResponse,
        outbox: asyncio.Queue[lifecycle_pb2.ConnectRequest | None],
    ) -> None:
        kind = response.WhichOneof("message")
        if kind == "registered":
            ack = response.registered
            interval = units.duration_field(ack, "heartbeat_interval")
            if interval:  # unset or zero: the manager leaves it to us
                self._heartbeat = interval.total_seconds()
            self.sessions += 1
            self.connected.set()
            self._registered.set()
            _log.info("registered with manager %s (session %s)", self.target, ack.session_id)
        elif kind == "command":
            command = response.command
            if command.epoch < self._epoch:
                # From a leader deposed since a later one commanded: never run.
                outbox.put_nowait(self._stale(command))
                return
            self._epoch = command.epoch
            if command.id in self._results:  # already done: answer again, never rerun
                outbox.put_nowait(
                    lifecycle_pb2.ConnectRequest(command_result=self._results[command.id])
                )
            elif command.id not in self._running:
                self._running.add(command.id)
                task = asyncio.ensure_future(self._execute(command))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        elif kind == "grace_extension":
            future = self._extensions.pop(response.grace_extension.command_id, None)
            if future is not None and not future.done():
                granted = units.duration_field(response.grace_extension, "granted")
                future.set_result(granted.total_seconds() if granted is not None else 0.0)

    # -- commands -----------------------------------------------------------------------
    def _stale(self, command: lifecycle_pb2.Command) -> lifecycle_pb2.ConnectRequest:
        """The answer to a command whose epoch is below the highest seen."""
        _log.warning(
            "command %s refused: epoch %d is below %d (a deposed leader's)",
            command.id,
            command.epoch,
            self._epoch,
        )
        return lifecycle_pb2.ConnectRequest(
            command_result=lifecycle_pb2.CommandResult(
                command_id=command.id,
                code=code_number(grpc.StatusCode.FAILED_PRECONDITION),
                message=f"command refused: its epoch {command.epoch} is below {self._epoch}, "
                "a later leader's: this manager is no longer the leader",
                state=state_proto(self._container.state),
            )
        )

    async def _execute(self, command: lifecycle_pb2.Command) -> None:
        result = lifecycle_pb2.CommandResult(command_id=command.id)
        try:
            data = await self._perform(command)
            _check_state_size(command.WhichOneof("action"), data)
            if command.WhichOneof("action") in ("checkpoint", "evict"):
                result.checkpoint = data
            elif command.WhichOneof("action") == "replicate":
                result.seed_state = data
        except RequestError as exc:
            result.code = code_number(exc.code)
            result.message = exc.message
        except Exception as exc:  # a bug of ours: still answer the manager
            _log.exception("command %s failed", command.id)
            result.code = code_number(grpc.StatusCode.INTERNAL)
            result.message = f"{type(exc).__name__}: {exc}"
        finally:
            self._running.discard(command.id)
        result.state = state_proto(self._container.state)
        self._results[command.id] = result
        while len(self._results) > _REMEMBERED_RESULTS:
            self._results.popitem(last=False)
        if self._outbox is not None:
            self._outbox.put_nowait(lifecycle_pb2.ConnectRequest(command_result=result))

    async def _perform(self, command: lifecycle_pb2.Command) -> bytes:
        """Run one command; the bytes a checkpoint or replicate returned."""
        context = dict(command.trace_context)
        action = command.WhichOneof("action")
        default_grace = self._container.settings.grace_period

        async def do(cmd: Command, **kw: Any) -> bytes:
            request = Request(cmd, command_id=command.id, trace_context=context, **kw)
            outcome: Outcome = await self._run_request(request)
            return outcome.data

        if action == "evict":
            evict = command.evict
            data = b""
            if evict.checkpoint_first and self._container.hooks.on_checkpoint is not None:
                data = await do(Command.CHECKPOINT)
            self._current_stop_id = command.id
            grace = _or_default(units.duration_field(evict, "grace_period"), default_grace)
            await do(Command.STOP, grace=grace, reason="evicted")
            return data
        if action == "stop":
            self._current_stop_id = command.id
            grace = _or_default(units.duration_field(command.stop, "grace_period"), default_grace)
            return await do(
                Command.STOP, grace=grace, reason=_REASONS.get(command.stop.reason, "requested")
            )
        if action == "drain":
            # Not a lifecycle command: readiness alone, at once, on this loop.
            timeout = units.duration_field(command.drain, "timeout")
            if not timeout:
                timeout = default_grace + _DRAIN_MARGIN
            self._container.health.begin_stop(timeout)
            return b""
        if action == "restore":
            return await do(Command.RESTORE, state=command.restore.state)
        if action == "replicate":
            return await do(Command.REPLICATE, count=command.replicate.count)
        simple = {
            "start": Command.START,
            "pause": Command.PAUSE,
            "resume": Command.RESUME,
            "checkpoint": Command.CHECKPOINT,
        }
        if action not in simple:
            raise RequestError(grpc.StatusCode.UNIMPLEMENTED, f"unknown command {action!r}")
        return await do(simple[action])

    async def _run_request(self, request: Request) -> Outcome:
        """Run on the app's loop if it has one, else in a worker thread."""
        app_loop = self._container.app_loop
        if app_loop is not None and app_loop.is_running():
            future = asyncio.run_coroutine_threadsafe(
                self._container.lifecycle.arun(request), app_loop
            )
            return await asyncio.wrap_future(future)
        return await asyncio.to_thread(self._container.lifecycle.run, request)

    # -- reports from the container -------------------------------------------------------
    def _on_change(self, previous: State, state: State, command_id: str, message: str) -> None:
        change = lifecycle_pb2.ConnectRequest(
            state_change=lifecycle_pb2.StateChange(
                from_state=state_proto(previous),
                to_state=state_proto(state),
                time=_now(),
                command_id=command_id,
                message=message,
            )
        )
        with contextlib.suppress(RuntimeError):  # loop closed: the manager will resync
            self._loop.call_soon_threadsafe(self._post, change)

    def _on_health(self, service: str, status: int) -> None:
        """HealthState's publisher: a service's status changed (on whichever
        thread changed it; never blocks). A change of readiness is sent at
        once: a stop turns it false before its STOPPING is reported."""
        if service != READINESS:
            return
        readiness = lifecycle_pb2.Readiness(ready=status == _SERVING, time=_now())
        self._readiness = readiness  # one assignment: a registration reads it whole
        message = lifecycle_pb2.ConnectRequest(readiness=readiness)
        # Loop closed: no session to tell; a registration carries it anyway.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._post, message)

    def _post(self, message: lifecycle_pb2.ConnectRequest) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(message)

    def _request_extension(self, seconds: float, reason: str) -> float:
        """Called from on_stop (any thread but this connector's loop)."""
        if not self.connected.is_set():
            return 0.0
        command_id = self._current_stop_id

        async def ask() -> float:
            future: asyncio.Future[float] = self._loop.create_future()
            self._extensions[command_id] = future
            extension = units.duration_to_proto(datetime.timedelta(seconds=seconds))
            self._post(
                lifecycle_pb2.ConnectRequest(
                    grace_extension=lifecycle_pb2.GraceExtensionRequest(
                        command_id=command_id, extension=extension, reason=reason
                    )
                )
            )
            return await asyncio.wait_for(future, 5.0)

        try:
            return asyncio.run_coroutine_threadsafe(ask(), self._loop).result(6.0)
        except Exception:  # no answer: no extension
            return 0.0


def _leader_named(exc: BaseException) -> str | None:
    """The leader's address a standby's refusal names ("" when none is
    elected yet); None when ``exc`` is no standby's refusal."""
    if not isinstance(exc, grpc.aio.AioRpcError):
        return None
    if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
        return None
    return leader_named(exc.trailing_metadata())


def _check_state_size(action: str | None, data: bytes) -> None:
    """State past the Lifecycle session's limit is refused here, as the
    command's RESOURCE_EXHAUSTED: sent, it would end the session (gRPC's
    message limit) and the command's resend would end the next one too."""
    if action in ("checkpoint", "evict", "replicate") and len(data) > limits.MAX_CHECKPOINT_BYTES:
        raise RequestError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{action} state is {len(data)} bytes ({units.format_memory(len(data))}), over the "
            f"limit of {limits.MAX_CHECKPOINT_BYTES} bytes "
            f"({units.format_memory(limits.MAX_CHECKPOINT_BYTES)}, "
            "pycontainer.limits.MAX_CHECKPOINT_BYTES, fixed): keep large state outside "
            "(a file or object store) and checkpoint a reference to it",
        )


def _or_default(
    grace: datetime.timedelta | None, default: datetime.timedelta
) -> datetime.timedelta:
    """The grace period a command gave (zero included: no grace), else the default."""
    return default if grace is None else grace


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"

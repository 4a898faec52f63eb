"""Health: named checks and the lifecycle state, served two ways.

``HealthState`` is the one source of truth. It feeds the detailed
``Management.GetHealth`` report and the standard ``grpc.health.v1.Health``
service (grpcio-health-checking's servicers, sync and aio, plus ``List``; the
sync ``Watch`` is ours, since the stock one can deadlock the server).

Service names in grpc.health.v1 (documented in the README):
- ``""`` overall: SERVING only while RUNNING and every check serves;
- ``"liveness"``: SERVING unless the container FAILED or STOPPED, or a liveness
  check fails (a graceful stop is not a reason to restart);
- ``"readiness"``: SERVING only while RUNNING, not draining before a stop
  (:meth:`HealthState.begin_stop`) and every readiness check serves;
- ``"pycontainer.v1.Management"``: the same as overall.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import enum
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health, health_pb2

from .. import units
from .._errors import not_found
from ..v1 import health_pb2 as pc_health_pb2
from ..v1 import management_pb2
from ._state import State, state_proto

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

OVERALL = ""
LIVENESS = "liveness"
READINESS = "readiness"
MANAGEMENT_SERVICE = "pycontainer.v1.Management"
#: The readiness check a stop's drain fails (HealthState.begin_stop), named
#: as the Kubernetes apiserver names its own: listed only while it fails.
SHUTDOWN_CHECK = "shutdown"


class CheckKind(enum.IntEnum):
    """Which probe a check feeds (pycontainer.v1.CheckKind)."""

    LIVENESS = 1
    READINESS = 2


# A pull check returns True/False, or (bool, message); raising means failing.
CheckFunc = Callable[[], "bool | tuple[bool, str]"]


@dataclass
class _Check:
    name: str
    kind: CheckKind
    func: CheckFunc | None
    period: float
    # None until the check first reports.
    serving: bool | None = None
    message: str = "not checked yet"
    last_transition_ns: int = 0
    last_check_ns: int = 0
    next_run: float = 0.0


#: How often a pulled check runs unless told otherwise.
DEFAULT_CHECK_PERIOD = datetime.timedelta(seconds=5)


def _timestamp(ns: int) -> timestamp_pb2.Timestamp | None:
    """The time ``ns`` (Unix nanoseconds), or None for 0: not yet."""
    if not ns:
        return None
    return units.timestamp_to_proto(ns / 1e9)


@dataclass
class _Publisher:
    """Pushes statuses into one grpc.health.v1 servicer, changes only (the
    sync servicer sends every set() to its watchers, changed or not)."""

    push: Callable[[str, int], None]
    last: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class HealthState:
    """Checks plus lifecycle state, published to every attached health servicer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checks: dict[str, _Check] = {}
        self._state = State.CREATED
        self._extra_services: dict[str, bool] = {}
        self._publishers: list[_Publisher] = []
        self._poller: threading.Thread | None = None
        self._wake = threading.Event()
        self._closed = False
        # A stop has begun (its mesh drain) and no Stop came yet: not ready.
        self._draining_since_ns = 0
        self._drain_timer: threading.Timer | None = None

    # -- checks ---------------------------------------------------------------
    def add_check(
        self,
        name: str,
        func: CheckFunc | None = None,
        *,
        kind: CheckKind = CheckKind.READINESS,
        period: datetime.timedelta = DEFAULT_CHECK_PERIOD,
    ) -> None:
        """Add a named check: pulled every ``period`` when ``func`` is given,
        else pushed with :meth:`set_check`."""
        if not name or name in self._checks:
            raise ValueError(f"check name {name!r} is empty or already used")
        if name == SHUTDOWN_CHECK:
            raise ValueError(f"check name {name!r} is the stop's own (a stop begins): pick another")
        if period <= datetime.timedelta(0):
            raise ValueError(f"check {name!r}: period must be positive, got {period}")
        with self._lock:
            self._checks[name] = _Check(name, kind, func, period.total_seconds())
        if func is not None:
            self._ensure_poller()
        self._publish()

    def set_check(self, name: str, serving: bool, message: str = "") -> None:
        """Report the result of a pushed (or pulled) check."""
        with self._lock:
            check = self._checks.get(name)
            if check is None:
                raise KeyError(f"no health check named {name!r}; add it with add_check()")
            now = time.time_ns()
            if check.serving != serving:
                check.last_transition_ns = now
            check.serving, check.message, check.last_check_ns = serving, message, now
        self._publish()

    def set_service(self, service: str, serving: bool) -> None:
        """Status of one of the app's own services in grpc.health.v1 (ANDed with
        overall health, so a stopping container serves nothing)."""
        with self._lock:
            self._extra_services[service] = serving
        self._publish()

    def run_checks_now(self) -> None:
        """Run every pull check once, now (used at start)."""
        for check in list(self._checks.values()):
            if check.func is not None:
                self._run(check)
        self._publish()

    def _run(self, check: _Check) -> None:
        assert check.func is not None
        try:
            result = check.func()
            serving, message = result if isinstance(result, tuple) else (bool(result), "")
        except Exception as exc:  # a failing check is a status, not a crash
            serving, message = False, f"{type(exc).__name__}: {exc}"
        with self._lock:
            now = time.time_ns()
            if check.serving != serving:
                check.last_transition_ns = now
            check.serving, check.message, check.last_check_ns = serving, message, now
            check.next_run = time.monotonic() + check.period

    def _ensure_poller(self) -> None:
        if self._poller is None:
            self._poller = threading.Thread(
                target=self._poll, name="pycontainer-health", daemon=True
            )
            self._poller.start()

    def _poll(self) -> None:
        while not self._closed:
            due = [
                c
                for c in list(self._checks.values())
                if c.func is not None and c.next_run <= time.monotonic()
            ]
            for check in due:
                self._run(check)
            if due:
                self._publish()
            upcoming = [c.next_run for c in self._checks.values() if c.func is not None]
            delay = max(0.05, min(upcoming, default=time.monotonic() + 1) - time.monotonic())
            self._wake.wait(delay)
            self._wake.clear()

    def close(self) -> None:
        """Stop the poller."""
        self._closed = True
        self._wake.set()

    # -- lifecycle ------------------------------------------------------------
    def set_state(self, state: State) -> None:
        """Follow the lifecycle: health is derived from it."""
        with self._lock:
            if state != self._state:
                self._end_drain_locked()  # the stop came (or another change): it rules
            self._state = state
        self._publish()

    def begin_stop(self, timeout: datetime.timedelta) -> None:
        """A stop begins before the Stop itself (the manager drains the
        container's mesh endpoint first): not ready from now until the
        lifecycle state changes, or ``timeout`` passes without it (the stop
        was called off: readiness is the checks' again)."""
        with self._lock:
            self._end_drain_locked()
            self._draining_since_ns = time.time_ns()
            timer = threading.Timer(max(timeout.total_seconds(), 0.0), self._drain_timed_out)
            timer.daemon = True
            self._drain_timer = timer
        timer.start()
        self._publish()

    def _drain_timed_out(self) -> None:
        with self._lock:
            self._end_drain_locked()
        self._publish()

    def _end_drain_locked(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        self._draining_since_ns = 0

    # -- derived statuses ------------------------------------------------------
    def _kind_ok(self, kind: CheckKind) -> bool:
        return all(c.serving for c in self._checks.values() if c.kind == kind)

    def statuses(self) -> dict[str, bool]:
        """Every grpc.health.v1 service name and whether it serves."""
        with self._lock:
            state = self._state
            live = state not in (State.FAILED, State.STOPPED) and self._kind_ok(CheckKind.LIVENESS)
            ready = (
                state == State.RUNNING
                and not self._draining_since_ns
                and self._kind_ok(CheckKind.READINESS)
            )
            overall = live and ready
            result = {
                OVERALL: overall,
                LIVENESS: live,
                READINESS: ready,
                MANAGEMENT_SERVICE: overall,
            }
            for service, serving in self._extra_services.items():
                result[service] = overall and serving
            return result

    def report(self, names: Iterable[str]) -> management_pb2.GetHealthResponse:
        """The GetHealth response; unknown check names are NOT_FOUND."""
        wanted = list(names)
        with self._lock:
            unknown = [n for n in wanted if n not in self._checks]
            if unknown:
                raise not_found(
                    "check_names",
                    f"no health check named {', '.join(map(repr, unknown))}; "
                    f"known: {', '.join(sorted(self._checks)) or '(none)'}",
                )
            chosen = [self._checks[n] for n in wanted] if wanted else list(self._checks.values())
            checks = [
                pc_health_pb2.HealthCheckResult(
                    name=c.name,
                    kind=_pc_kind(c.kind),
                    status=_pc_status(c.serving),
                    message=c.message,
                    last_transition_time=_timestamp(c.last_transition_ns),
                    last_check_time=_timestamp(c.last_check_ns),
                )
                for c in chosen
            ]
            if self._draining_since_ns and not wanted:
                checks.append(
                    pc_health_pb2.HealthCheckResult(
                        name=SHUTDOWN_CHECK,
                        kind=pc_health_pb2.CHECK_KIND_READINESS,
                        status=pc_health_pb2.HEALTH_STATUS_NOT_SERVING,
                        message="a stop begins: its mesh endpoint drains before the Stop",
                        last_transition_time=_timestamp(self._draining_since_ns),
                        last_check_time=_timestamp(self._draining_since_ns),
                    )
                )
            state = self._state
        statuses = self.statuses()
        return management_pb2.GetHealthResponse(
            status=_pc_status(statuses[OVERALL]),
            liveness=_pc_status(statuses[LIVENESS]),
            readiness=_pc_status(statuses[READINESS]),
            checks=checks,
            state=state_proto(state),
        )

    # -- publishing to grpc.health.v1 -------------------------------------------
    def attach(self, push: Callable[[str, int], None]) -> None:
        """Publish statuses into a servicer now and on every change: each
        service's status once now, then each change of one, on the thread that
        made it (``push`` must not block)."""
        self._publishers.append(_Publisher(push))
        self._publish()

    def detach(self, push: Callable[[str, int], None]) -> None:
        """Publish no more into ``push`` (one given to attach)."""
        # A new list, not a removal in place: a _publish on another thread
        # goes on over the one it took.
        self._publishers = [p for p in self._publishers if p.push != push]

    def _publish(self) -> None:
        statuses = self.statuses()
        for publisher in self._publishers:
            with publisher.lock:
                for service, serving in statuses.items():
                    status = _SERVING if serving else _NOT_SERVING
                    if publisher.last.get(service) != status:
                        publisher.last[service] = status
                        publisher.push(service, status)


def _pc_kind(kind: CheckKind) -> pc_health_pb2.CheckKind.ValueType:
    return pc_health_pb2.CheckKind.ValueType(int(kind))


def _pc_status(serving: bool | None) -> pc_health_pb2.HealthStatus.ValueType:
    if serving is None:
        return pc_health_pb2.HEALTH_STATUS_UNSPECIFIED
    return (
        pc_health_pb2.HEALTH_STATUS_SERVING if serving else pc_health_pb2.HEALTH_STATUS_NOT_SERVING
    )


@dataclass(eq=False)
class _SyncWatcher:
    """One sync Watch call: how to send to it and what it was sent last."""

    service: str
    send: Callable[[health_pb2.HealthCheckResponse], None]
    sent: int | None = None
    queued: bool = False
    closed: bool = False


class SyncHealthServicer(health.HealthServicer):
    """grpcio-health-checking's Check, NOT_SERVING until told otherwise, with a
    Watch of ours that cannot deadlock.

    The stock sync Watch holds the servicer's lock while it sends, and a send
    waits for grpc's poll thread; that thread runs the close callback of an
    ended Watch, which takes the same lock: two clients whose Watch calls end
    by short deadlines wedge the whole server for good. Here no lock of ours is
    held while grpc runs (sends, ``add_callback``), and the close callback only
    marks the watcher closed. Sends happen on one thread of ours, which lives
    while there are watchers; each watcher is sent the service's latest status
    (a status that changed back before it could be sent is not sent twice).
    """

    def __init__(self) -> None:
        # Guards the watchers and the send queue; never held while grpc runs.
        self._watch_lock = threading.Condition(threading.Lock())
        self._watchers: dict[str, set[_SyncWatcher]] = {}
        self._due: collections.deque[_SyncWatcher] = collections.deque()
        self._sender: threading.Thread | None = None
        super().__init__()
        # The stock servicer starts out SERVING; a container is not serving
        # before it has started.
        self.set(OVERALL, _NOT_SERVING)

    def set(self, service: str, status: int) -> None:
        """Set a status: visible to Check at once, sent to watchers by our sender."""
        with self._lock:
            if self._gracefully_shutting_down:
                return
            self._server_status[service] = status
        with self._watch_lock:
            for watcher in self._watchers.get(service, ()):
                self._queue(watcher)

    def Watch(
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.ServicerContext,
        send_response_callback: Callable[[health_pb2.HealthCheckResponse], None] | None = None,
    ) -> None:
        if send_response_callback is None:
            # grpc passes it to behaviours marked experimental_non_blocking.
            raise RuntimeError("Health.Watch needs grpc's non-blocking stream handling")
        watcher = _SyncWatcher(request.service, send_response_callback)
        with self._watch_lock:
            self._watchers.setdefault(watcher.service, set()).add(watcher)
            self._queue(watcher)
        if not context.add_callback(lambda: self._forget(watcher)):
            self._forget(watcher)  # the call already ended

    # Served without a thread of the pool held for the call's lifetime.
    Watch.experimental_non_blocking = True  # type: ignore[attr-defined]
    Watch.experimental_thread_pool = None  # type: ignore[attr-defined]

    def _queue(self, watcher: _SyncWatcher) -> None:
        # Caller holds _watch_lock.
        if watcher.closed or watcher.queued:
            return
        watcher.queued = True
        self._due.append(watcher)
        if self._sender is None:
            self._sender = threading.Thread(
                target=self._send_loop, name="pycontainer-health-watch", daemon=True
            )
            self._sender.start()
        self._watch_lock.notify()

    def _forget(self, watcher: _SyncWatcher) -> None:
        # On grpc's poll thread when a call ends: it must never wait.
        with self._watch_lock:
            watcher.closed = True
            watchers = self._watchers.get(watcher.service)
            if watchers is not None:
                watchers.discard(watcher)
                if not watchers:
                    del self._watchers[watcher.service]
            self._watch_lock.notify()

    def _send_loop(self) -> None:
        while True:
            with self._watch_lock:
                while not self._due and self._watchers:
                    self._watch_lock.wait()
                if not self._due:
                    # Nobody is watching: end; the next Watch starts a sender.
                    self._sender = None
                    return
                watcher = self._due.popleft()
                watcher.queued = False
                if watcher.closed:
                    continue
            status = self._server_status.get(
                watcher.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            )
            if status == watcher.sent:
                continue
            watcher.sent = status
            try:
                # Returns once sent, or at once for a call that has ended.
                watcher.send(health_pb2.HealthCheckResponse(status=status))
            except Exception:  # a call that cannot be sent to is over
                self._forget(watcher)

    def list_statuses(self) -> dict[str, int]:
        """Every known service and its status, for Health.List."""
        with self._lock:
            return dict(self._server_status)


# grpc-stubs' health.pyi lacks the asyncio servicer (health.aio, from _async).
class AioHealthServicer(health.aio.HealthServicer):  # type: ignore[name-defined,misc]
    """grpcio-health-checking's asyncio servicer, NOT_SERVING until told
    otherwise, settable from any thread, with a Watch that survives other
    watchers of the same service leaving (the stock one drops their condition)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop
        self._server_status[OVERALL] = _NOT_SERVING
        self._watcher_counts: collections.Counter[str] = collections.Counter()
        # Notifications in flight, held so that they are not collected early.
        self._notifying: set[asyncio.Task[None]] = set()

    def set_nowait(self, service: str, status: int) -> None:
        """Set a status from any thread: visible to Check at once, pushed to
        watchers by the loop."""
        self._server_status[service] = status
        if self._watcher_counts.get(service):
            # A closed loop raises RuntimeError: nobody is watching any more.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._notify, service)

    def _notify(self, service: str) -> None:
        condition = self._server_watchers.get(service)
        if condition is not None:
            task = asyncio.ensure_future(self._notify_all(condition))
            self._notifying.add(task)
            task.add_done_callback(self._notifying.discard)

    @staticmethod
    async def _notify_all(condition: asyncio.Condition) -> None:
        async with condition:
            condition.notify_all()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        service = request.service
        condition = self._server_watchers[service]
        self._watcher_counts[service] += 1
        last: int | None = None
        try:
            async with condition:
                while True:
                    status = self._server_status.get(
                        service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
                    )
                    if status != last:
                        await context.write(health_pb2.HealthCheckResponse(status=status))
                    last = status
                    await condition.wait()
        finally:
            self._watcher_counts[service] -= 1
            if self._watcher_counts[service] <= 0:
                del self._watcher_counts[service]
                self._server_watchers.pop(service, None)

    def list_statuses(self) -> dict[str, int]:
        """Every known service and its status, for Health.List."""
        return dict(self._server_status)


def health_handlers(
    servicer: SyncHealthServicer | AioHealthServicer,
    list_response: Callable[[], Any],
    list_serializer: Callable[[Any], bytes],
    list_deserializer: Callable[[bytes], Any],
) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """Check and Watch from the stock servicer, plus List."""
    is_aio = isinstance(servicer, AioHealthServicer)

    async def aio_list(request: Any, context: Any) -> Any:
        return list_response()

    def sync_list(request: Any, context: Any) -> Any:
        return list_response()

    list_behavior: Callable[[Any, Any], Any] = aio_list if is_aio else sync_list

    return {
        "Check": grpc.unary_unary_rpc_method_handler(
            servicer.Check,
            request_deserializer=health_pb2.HealthCheckRequest.FromString,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        ),
        "Watch": grpc.unary_stream_rpc_method_handler(
            servicer.Watch,
            request_deserializer=health_pb2.HealthCheckRequest.FromString,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        ),
        "List": grpc.unary_unary_rpc_method_handler(
            list_behavior,
            request_deserializer=list_deserializer,
            response_serializer=list_serializer,
        ),
    }


__all__ = [
    "LIVENESS",
    "MANAGEMENT_SERVICE",
    "OVERALL",
    "READINESS",
    "AioHealthServicer",
    "CheckFunc",
    "CheckKind",
    "HealthState",
    "SyncHealthServicer",
    "health_handlers",
]

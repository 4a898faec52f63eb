"""Runs lifecycle commands against the transition table.

One command at a time; hooks run in the table's order and never skip a step;
a hook that raises moves the container to FAILED with the error kept; a stop
waits for on_stop until its deadline (which the hook may ask to extend) and
then gives up on it: the container FAILS and the hard-kill callback runs.
Hooks may be plain or async functions. Each hook run is a span, child of the
command's W3C trace context when one is given.
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import propagate, trace

from .. import units
from .._errors import RequestError, failed_precondition
from ._state import Command, State, Transition, transition

# Hooks, by name; each may be a plain or an async function.
Hook = Callable[..., Any]

# How often a waiting stop re-reads its (extendable) deadline.
_DEADLINE_POLL = 0.05


@dataclass(frozen=True)
class Outcome:
    """What a command left behind."""

    state: State
    # CHECKPOINT: on_checkpoint's bytes. REPLICATE: on_replicate's seed state.
    data: bytes = b""


@dataclass(frozen=True)
class Request:
    """One command with its arguments."""

    command: Command
    command_id: str = ""
    # STOP: the grace period and the reason given to on_stop.
    grace: datetime.timedelta = units.DEFAULT_GRACE_PERIOD
    reason: str = "requested"
    # RESTORE: the state. REPLICATE: unused.
    state: bytes = b""
    # REPLICATE: how many replicas.
    count: int = 0
    # W3C trace context of the caller ("traceparent", "tracestate").
    trace_context: Mapping[str, str] | None = None


StateListener = Callable[[State, State, str, str], None]


class Lifecycle:
    """The state of one container and the runner of its hooks."""

    def __init__(
        self,
        hooks: Any,
        tracer: trace.Tracer,
        on_change: StateListener,
        container_id: str,
    ) -> None:
        self._hooks = hooks
        self._tracer = tracer
        self._on_change = on_change
        self._container_id = container_id
        self._state = State.CREATED
        self._error = ""
        self._lock = threading.Lock()  # guards _state and _error
        self._busy = threading.Lock()  # one command at a time
        self._deadline: float | None = None
        # Called with a message when on_stop overran its deadline; a
        # standalone process exits hard here (as SIGKILL would).
        self.kill: Callable[[str], None] | None = None
        # Asks the manager for more grace: (seconds, reason) -> granted seconds.
        self.extension_requester: Callable[[float, str], float] | None = None

    @property
    def state(self) -> State:
        return self._state

    @property
    def error(self) -> str:
        return self._error

    def deadline(self) -> float | None:
        """Monotonic deadline of the stop in progress, if any."""
        return self._deadline

    def extend_grace(self, seconds: float, reason: str) -> float:
        """Ask for more time during on_stop; returns the seconds granted."""
        if self._deadline is None or self.extension_requester is None or seconds <= 0:
            return 0.0
        granted = max(0.0, self.extension_requester(seconds, reason))
        if granted and self._deadline is not None:
            self._deadline += granted
        return granted

    # -- state -------------------------------------------------------------------
    def _set(self, state: State, command_id: str = "", message: str = "") -> None:
        with self._lock:
            previous, self._state = self._state, state
            if state == State.FAILED:
                self._error = message
        if previous != state:
            self._on_change(previous, state, command_id, message)

    def _plan(self, request: Request) -> Transition:
        with self._lock:
            planned = transition(self._state, request.command)
        hook = getattr(self._hooks, planned.hook, None)
        if hook is None and request.command in (Command.CHECKPOINT, Command.RESTORE):
            raise failed_precondition(
                f"cannot {request.command.value}: the container has no {planned.hook} hook"
            )
        return planned

    def _failed(self, request: Request, hook: str, exc: BaseException) -> RequestError:
        message = f"{hook} raised {type(exc).__name__}: {exc}"
        self._set(State.FAILED, request.command_id, message)
        return RequestError(grpc.StatusCode.INTERNAL, message)

    def _overran(self, request: Request) -> RequestError:
        message = f"on_stop overran its grace period of {units.format_duration(request.grace)}"
        self._set(State.FAILED, request.command_id, message)
        if self.kill is not None:
            self.kill(message)
        return RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, message)

    def _args(self, request: Request) -> tuple[Any, ...]:
        if request.command == Command.STOP:
            assert self._deadline is not None
            return (request.reason, self._deadline)
        if request.command == Command.RESTORE:
            return (request.state,)
        if request.command == Command.REPLICATE:
            return (request.count,)
        return ()

    def _span(self, hook: str, request: Request) -> Any:
        parent = propagate.extract(dict(request.trace_context)) if request.trace_context else None
        return self._tracer.start_as_current_span(
            f"pycontainer.hook {hook}",
            context=parent,
            attributes={
                "pycontainer.container.id": self._container_id,
                "pycontainer.command": request.command.value,
                "pycontainer.command.id": request.command_id,
            },
        )

    def _outcome(self, request: Request, planned: Transition, result: Any) -> Outcome:
        data = b""
        if request.command in (Command.CHECKPOINT, Command.REPLICATE):
            if result is None:
                result = b""
            if not isinstance(result, bytes | bytearray | memoryview):
                raise TypeError(f"{planned.hook} must return bytes, not {type(result).__name__}")
            data = bytes(result)
        self._set(planned.after, request.command_id)
        return Outcome(planned.after, data)

    def _begin(self, request: Request) -> Transition:
        planned = self._plan(request)
        if request.command == Command.STOP:
            self._deadline = time.monotonic() + request.grace.total_seconds()
        if planned.during is not None:
            self._set(
                planned.during,
                request.command_id,
                request.reason if request.command == Command.STOP else "",
            )
        return planned

    # -- sync --------------------------------------------------------------------
    def run(self, request: Request) -> Outcome:
        """Run a command in this thread (async hooks get an event loop of their own)."""
        with self._busy:
            planned = self._begin(request)
            hook = getattr(self._hooks, planned.hook, None)
            try:
                with self._span(planned.hook, request):
                    result = self._call_sync(hook, request)
                return self._outcome(request, planned, result)
            except Exception as exc:
                if self._state == State.FAILED:  # on_stop overran: _overran failed it
                    raise
                # Anything else a hook raises fails the container, a
                # RequestError included (else it would stay in `during`).
                raise self._failed(request, planned.hook, exc) from exc
            finally:
                self._deadline = None

    def _call_sync(self, hook: Hook | None, request: Request) -> Any:
        if hook is None:
            return None
        args = self._args(request)
        if request.command != Command.STOP:
            return resolve_hook_result(hook(*args))
        # A stop must not outlive its deadline: run the hook on a thread and
        # stop waiting for it when the (possibly extended) deadline passes.
        box: dict[str, Any] = {}
        context = trace.set_span_in_context(trace.get_current_span())

        def target() -> None:
            from opentelemetry import context as otel_context

            token = otel_context.attach(context)
            try:
                box["result"] = resolve_hook_result(hook(*args))
            except BaseException as exc:  # reported to the waiting thread
                box["error"] = exc
            finally:
                otel_context.detach(token)

        worker = threading.Thread(target=target, name="pycontainer-on_stop", daemon=True)
        worker.start()
        while worker.is_alive():
            remaining = (self._deadline or 0) - time.monotonic()
            if remaining <= 0:
                raise self._overran(request)
            worker.join(min(remaining, _DEADLINE_POLL))
        if "error" in box:
            raise box["error"]
        return box.get("result")

    # -- async -------------------------------------------------------------------
    async def arun(self, request: Request) -> Outcome:
        """Run a command on the running loop: async hooks are awaited, plain
        ones run in a thread so the loop keeps serving.

        A command cancelled while it waits for the one before it leaves no
        trace; one cancelled in its hook did not finish: a command with a
        transitional state FAILS the container (it is half-way, as when the
        hook raises), one that keeps the state keeps it. Either way the next
        command runs.
        """
        await self._acquire_busy()
        try:
            planned = self._begin(request)
            hook = getattr(self._hooks, planned.hook, None)
            try:
                with self._span(planned.hook, request):
                    result = await self._call_async(hook, request)
                return self._outcome(request, planned, result)
            except asyncio.CancelledError:
                if planned.during is not None and self._state == planned.during:
                    self._set(
                        State.FAILED,
                        request.command_id,
                        f"{planned.hook} was cancelled before it finished",
                    )
                raise
            except Exception as exc:
                if self._state == State.FAILED:  # on_stop overran: _overran failed it
                    raise
                # Anything else a hook raises fails the container, a
                # RequestError included (else it would stay in `during`).
                raise self._failed(request, planned.hook, exc) from exc
            finally:
                self._deadline = None
        finally:
            self._busy.release()

    async def _acquire_busy(self) -> None:
        """Take the one-command-at-a-time lock without blocking the loop.

        The waiting happens on a thread, which cannot be cancelled: when the
        awaiting command is cancelled first, the thread hands the lock back as
        soon as it gets it, so no lock is ever left held by a command that is gone.
        """
        if self._busy.acquire(blocking=False):
            return
        guard = threading.Lock()
        abandoned = False
        taken = False

        def take() -> None:
            nonlocal taken
            self._busy.acquire()
            with guard:
                if abandoned:
                    self._busy.release()
                else:
                    taken = True

        try:
            await asyncio.shield(asyncio.ensure_future(asyncio.to_thread(take)))
        except BaseException:
            with guard:
                abandoned = True
                if taken:  # got it just as we were cancelled: give it back
                    self._busy.release()
            raise

    async def _call_async(self, hook: Hook | None, request: Request) -> Any:
        if hook is None:
            return None
        args = self._args(request)
        if inspect.iscoroutinefunction(hook):
            task: asyncio.Future[Any] = asyncio.ensure_future(hook(*args))
        else:
            task = asyncio.ensure_future(asyncio.to_thread(_call_and_resolve, hook, args))
        if request.command != Command.STOP:
            return await task
        try:
            while not task.done():
                remaining = (self._deadline or 0) - time.monotonic()
                if remaining <= 0:
                    task.cancel()
                    raise self._overran(request)
                await asyncio.wait({task}, timeout=min(remaining, _DEADLINE_POLL))
        except asyncio.CancelledError:
            task.cancel()  # the stop was cancelled: so is its on_stop
            raise
        return task.result()


def resolve_hook_result(result: Any) -> Any:
    """The value of a hook's result, running a coroutine in a loop of its own
    (on a thread of its own when this thread already runs a loop)."""
    if inspect.isawaitable(result):
        awaitable = result

        async def wait() -> Any:
            return await awaitable

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(wait())
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["result"] = asyncio.run(wait())
            except BaseException as exc:  # re-raised in the calling thread
                box["error"] = exc

        worker = threading.Thread(target=target, name="pycontainer-hook-loop", daemon=True)
        worker.start()
        worker.join()
        if "error" in box:
            raise box["error"]
        return box.get("result")
    return result


def _call_and_resolve(hook: Hook, args: tuple[Any, ...]) -> Any:
    return resolve_hook_result(hook(*args))

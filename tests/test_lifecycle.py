"""The lifecycle state machine: every allowed and forbidden transition of the
table, hook order, sync and async hooks on sync and async paths, failures,
stop deadlines with extension and hard kill, health following the state,
checkpoint/restore/replicate, and a property test over random command
sequences."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta as td
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import make_container, start_sync_host, wait_until

import pycontainer
from pycontainer import units
from pycontainer._errors import RequestError, invalid_argument
from pycontainer.agent import _lifecycle
from pycontainer.agent._health import LIVENESS, OVERALL, READINESS
from pycontainer.agent._lifecycle import Request
from pycontainer.agent._state import TRANSITIONS, Command, State, allowed_commands
from pycontainer.v1 import container_pb2, lifecycle_pb2, management_pb2

STABLE = (State.CREATED, State.RUNNING, State.PAUSED, State.STOPPED, State.FAILED)
TRANSITIONAL = (State.STARTING, State.PAUSING, State.RESUMING, State.STOPPING)
HOOK_NAMES = (
    "on_start",
    "on_pause",
    "on_resume",
    "on_stop",
    "on_checkpoint",
    "on_restore",
    "on_replicate",
)
# Generous: the engine polls deadlines every 50 ms; CI machines are slow.
SLACK = 3.0


class Recorder:
    """Hooks (plain or async) that record their calls and may be told to raise."""

    def __init__(self, *, use_async: bool = False) -> None:
        self.calls: list[str] = []
        self.args: list[tuple[str, tuple[Any, ...]]] = []
        self.states: list[State] = []
        self.fail: set[str] = set()
        # Raise in the hook call of this index (0-based, counting every call).
        self.fail_at: int | None = None
        self.count = 0
        self.container: pycontainer.Container | None = None
        self.use_async = use_async

    def _record(self, name: str, args: tuple[Any, ...]) -> Any:
        index, self.count = self.count, self.count + 1
        self.calls.append(name)
        self.args.append((name, args))
        if self.container is not None:
            self.states.append(self.container.state)
        if name in self.fail or index == self.fail_at:
            raise RuntimeError(f"{name} failed on purpose")
        if name == "on_checkpoint":
            return b"snapshot"
        if name == "on_replicate":
            return b"seed"
        return None

    def hook(self, name: str) -> Callable[..., Any]:
        if self.use_async:

            async def async_hook(*args: Any) -> Any:
                await asyncio.sleep(0)
                return self._record(name, args)

            return async_hook

        def sync_hook(*args: Any) -> Any:
            return self._record(name, args)

        return sync_hook

    def hooks(self) -> pycontainer.Hooks:
        return pycontainer.Hooks(**{name: self.hook(name) for name in HOOK_NAMES})


@pytest.fixture
def containers() -> Iterator[Callable[..., pycontainer.Container]]:
    """A factory of containers, each closed at the end of the test."""
    made: list[pycontainer.Container] = []

    def factory(hooks: pycontainer.Hooks | None = None, **kwargs: Any) -> pycontainer.Container:
        container = make_container("lifecycle", hooks=hooks, **kwargs)
        made.append(container)
        return container

    yield factory
    for container in made:
        container.close()


def recorded(
    factory: Callable[..., pycontainer.Container], *, use_async: bool = False
) -> tuple[pycontainer.Container, Recorder]:
    rec = Recorder(use_async=use_async)
    container = factory(rec.hooks())
    rec.container = container
    return container, rec


def listen(container: pycontainer.Container) -> list[tuple[State, State, str, str]]:
    seen: list[tuple[State, State, str, str]] = []
    container.add_state_listener(lambda a, b, cid, msg: seen.append((a, b, cid, msg)))
    return seen


def apply(container: pycontainer.Container, command: Command, *, grace: float = 5.0) -> Any:
    """Run a command through the Container's sync API."""
    if command == Command.START:
        return container.start()
    if command == Command.PAUSE:
        return container.pause()
    if command == Command.RESUME:
        return container.resume()
    if command == Command.STOP:
        return container.stop(td(seconds=grace))
    if command == Command.CHECKPOINT:
        return container.checkpoint()
    if command == Command.RESTORE:
        return container.restore(b"restored-state")
    assert command == Command.REPLICATE
    return container.replicate(3)


async def aapply(container: pycontainer.Container, command: Command) -> Any:
    """Run a command through the async path (astart/astop, else Lifecycle.arun)."""
    if command == Command.START:
        return await container.astart()
    if command == Command.STOP:
        return await container.astop(td(seconds=5.0))
    request = Request(command, state=b"restored-state", count=3)
    return (await container.lifecycle.arun(request)).data


def drive(container: pycontainer.Container, rec: Recorder, target: State) -> None:
    """Bring a container to a stable state through real commands."""
    if target == State.CREATED:
        pass
    elif target == State.RUNNING:
        container.start()
    elif target == State.PAUSED:
        container.start()
        container.pause()
    elif target == State.STOPPED:
        container.start()
        container.stop(td(seconds=5.0))
    else:
        assert target == State.FAILED
        container.start()
        rec.fail.add("on_pause")
        with pytest.raises(RequestError):
            container.pause()
        rec.fail.clear()
    assert container.state == target
    rec.calls.clear()
    rec.args.clear()
    rec.states.clear()


def assert_forbidden(err: RequestError, state: State) -> None:
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert f"state {state.name}" in err.message
    allowed = allowed_commands(state)
    if allowed:
        for cmd in allowed:
            assert cmd.value in err.message
    else:
        assert "nothing (terminal state)" in err.message


# -- 1. the whole table: every (state, command) pair ---------------------------

ALL_PAIRS = [(state, command) for state in STABLE for command in Command]


@pytest.mark.parametrize(("state", "command"), ALL_PAIRS, ids=lambda v: v.name)
@pytest.mark.parametrize("path", ["sync", "async"])
def test_every_transition(
    containers: Callable[..., pycontainer.Container],
    state: State,
    command: Command,
    path: str,
) -> None:
    container, rec = recorded(containers)
    drive(container, rec, state)
    seen = listen(container)
    expected = TRANSITIONS.get((state, command))

    def run() -> Any:
        if path == "sync":
            return apply(container, command)
        return asyncio.run(aapply(container, command))

    if expected is None:
        with pytest.raises(RequestError) as info:
            run()
        assert_forbidden(info.value, state)
        assert container.state == state
        assert rec.calls == []
        assert seen == []
        return

    result = run()
    assert container.state == expected.after
    assert rec.calls == [expected.hook]
    if expected.during is None:
        assert seen == []
        assert rec.states == [state]
    else:
        assert [(a, b) for a, b, _, _ in seen] == [
            (state, expected.during),
            (expected.during, expected.after),
        ]
        assert rec.states == [expected.during]
    if command == Command.CHECKPOINT:
        assert result == b"snapshot"
    if command == Command.REPLICATE:
        assert result == b"seed"
        assert rec.args == [("on_replicate", (3,))]
    if command == Command.RESTORE:
        assert rec.args == [("on_restore", (b"restored-state",))]
    assert container.lifecycle.error == ""


def test_forbidden_message_is_precise(containers: Callable[..., pycontainer.Container]) -> None:
    container, _ = recorded(containers)
    with pytest.raises(RequestError) as info:
        container.pause()
    assert info.value.message == (
        "cannot pause a container in state CREATED; CREATED allows: start, restore, stop"
    )
    container.start()
    container.stop(td(seconds=5.0))
    with pytest.raises(RequestError) as info:
        container.start()
    assert info.value.message == (
        "cannot start a container in state STOPPED; STOPPED allows: nothing (terminal state)"
    )


# -- 2. hooks in order, never skipping a step ----------------------------------


def test_hooks_and_listener_in_order(containers: Callable[..., pycontainer.Container]) -> None:
    container, rec = recorded(containers)
    seen = listen(container)
    container.start()
    container.pause()
    container.stop(td(seconds=5.0), reason="scale down")
    assert rec.calls == ["on_start", "on_pause", "on_stop"]
    assert rec.states == [State.STARTING, State.PAUSING, State.STOPPING]
    assert [(a, b) for a, b, _, _ in seen] == [
        (State.CREATED, State.STARTING),
        (State.STARTING, State.RUNNING),
        (State.RUNNING, State.PAUSING),
        (State.PAUSING, State.PAUSED),
        (State.PAUSED, State.STOPPING),
        (State.STOPPING, State.STOPPED),
    ]
    # The stop's reason reaches on_stop and the STOPPING transition.
    assert seen[4][3] == "scale down"
    name, (reason, deadline) = rec.args[-1]
    assert (name, reason) == ("on_stop", "scale down")
    assert isinstance(deadline, float)


def test_listener_gets_command_ids(containers: Callable[..., pycontainer.Container]) -> None:
    container, _ = recorded(containers)
    seen = listen(container)
    container.lifecycle.run(Request(Command.START, command_id="cmd-1"))
    container.lifecycle.run(Request(Command.STOP, command_id="cmd-2", grace=td(seconds=5)))
    assert [(a, b, cid) for a, b, cid, _ in seen] == [
        (State.CREATED, State.STARTING, "cmd-1"),
        (State.STARTING, State.RUNNING, "cmd-1"),
        (State.RUNNING, State.STOPPING, "cmd-2"),
        (State.STOPPING, State.STOPPED, "cmd-2"),
    ]


def test_full_tour(containers: Callable[..., pycontainer.Container]) -> None:
    container, rec = recorded(containers)
    container.start()
    container.pause()
    assert container.checkpoint() == b"snapshot"
    container.resume()
    container.restore(b"x")
    assert container.replicate(2) == b"seed"
    container.stop(td(seconds=5.0))
    assert rec.calls == [
        "on_start",
        "on_pause",
        "on_checkpoint",
        "on_resume",
        "on_restore",
        "on_replicate",
        "on_stop",
    ]
    assert container.state == State.STOPPED


def _blocked_in_run(thread: threading.Thread) -> bool:
    """Whether ``thread`` waits for the lifecycle's command lock: its innermost
    Python frame is Lifecycle.run (acquiring ``_busy`` is C code under it)."""
    frame = sys._current_frames().get(thread.ident or 0)
    return (
        frame is not None
        and frame.f_code.co_name == "run"
        and frame.f_code.co_filename == _lifecycle.__file__
    )


def test_one_command_at_a_time(containers: Callable[..., pycontainer.Container]) -> None:
    """A command issued while another runs waits for it, then meets its result."""
    entered = threading.Event()
    release = threading.Event()

    def on_stop(reason: str, deadline: float) -> None:
        entered.set()
        release.wait(5)

    container = containers(pycontainer.Hooks(on_stop=on_stop))
    container.start()
    stopper = threading.Thread(target=container.stop, args=(td(seconds=10),))
    stopper.start()
    try:
        assert entered.wait(5)
        box: dict[str, BaseException] = {}

        def pause() -> None:
            try:
                container.pause()
            except BaseException as exc:
                box["error"] = exc

        pauser = threading.Thread(target=pause)
        pauser.start()
        # Waiting for the stop (blocked on the command lock in Lifecycle.run),
        # not failing on STOPPING: a failure would end the thread instead.
        wait_until(lambda: _blocked_in_run(pauser) or not pauser.is_alive(), 10, "pause")
        assert pauser.is_alive(), box
    finally:
        release.set()
        stopper.join(5)
    pauser.join(5)
    assert container.state == State.STOPPED
    err = box["error"]
    assert isinstance(err, RequestError)
    assert_forbidden(err, State.STOPPED)


async def test_cancelled_waiting_command_leaves_no_lock(
    containers: Callable[..., pycontainer.Container],
) -> None:
    """A command cancelled while it waits for the one before it does not keep
    the command lock once it frees: the next command runs (it hung before)."""
    entered = asyncio.Event()
    release = asyncio.Event()

    async def on_checkpoint() -> bytes:
        entered.set()
        await release.wait()
        return b"state"

    container = containers(pycontainer.Hooks(on_checkpoint=on_checkpoint))
    await container.astart()
    first = asyncio.ensure_future(container.lifecycle.arun(Request(Command.CHECKPOINT)))
    await asyncio.wait_for(entered.wait(), SLACK)
    waiting = asyncio.ensure_future(container.lifecycle.arun(Request(Command.PAUSE)))
    await asyncio.sleep(0)  # let it run up to its wait for the lock
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    assert (await asyncio.wait_for(first, SLACK)).data == b"state"
    await asyncio.wait_for(container.lifecycle.arun(Request(Command.PAUSE)), SLACK)
    assert container.state == State.PAUSED


async def test_cancelled_mid_hook_keeps_a_stable_state(
    containers: Callable[..., pycontainer.Container],
) -> None:
    """A command that keeps the state (a checkpoint) cancelled in its hook
    leaves the state as it was, and the next command runs."""
    entered = asyncio.Event()

    async def on_checkpoint() -> bytes:
        entered.set()
        await asyncio.Event().wait()  # until cancelled
        return b""

    container = containers(pycontainer.Hooks(on_checkpoint=on_checkpoint))
    await container.astart()
    task = asyncio.ensure_future(container.lifecycle.arun(Request(Command.CHECKPOINT)))
    await asyncio.wait_for(entered.wait(), SLACK)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert container.state == State.RUNNING
    await asyncio.wait_for(container.astop(td(seconds=5)), SLACK)
    assert container.state == State.STOPPED


async def test_cancelled_mid_transition_fails_and_answers_the_next(
    containers: Callable[..., pycontainer.Container],
) -> None:
    """A start cancelled in on_start is half done: the container FAILS saying
    so, and the next command gets its answer at once instead of hanging."""
    entered = asyncio.Event()

    async def on_start() -> None:
        entered.set()
        await asyncio.Event().wait()  # until cancelled

    container = containers(pycontainer.Hooks(on_start=on_start))
    task = asyncio.ensure_future(container.astart())
    await asyncio.wait_for(entered.wait(), SLACK)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert container.state == State.FAILED
    assert container.lifecycle.error == "on_start was cancelled before it finished"
    with pytest.raises(RequestError) as info:
        await asyncio.wait_for(container.astop(td(seconds=5)), SLACK)
    assert_forbidden(info.value, State.FAILED)


async def test_a_cancelled_stop_cancels_its_on_stop(
    containers: Callable[..., pycontainer.Container],
) -> None:
    """A stop cancelled while on_stop runs takes on_stop with it (it does not
    run on unseen), and the container FAILS saying the stop was cut short."""
    entered = asyncio.Event()
    cancelled = asyncio.Event()

    async def on_stop(reason: str, deadline: float) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    container = containers(pycontainer.Hooks(on_stop=on_stop))
    await container.astart()
    task = asyncio.ensure_future(container.astop(td(seconds=30)))
    await asyncio.wait_for(entered.wait(), SLACK)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(cancelled.wait(), SLACK)
    assert container.state == State.FAILED
    assert container.lifecycle.error == "on_stop was cancelled before it finished"


# -- 3. sync and async hooks on sync and async paths ---------------------------


TOUR = [Command.START, Command.PAUSE, Command.RESUME, Command.CHECKPOINT, Command.STOP]
TOUR_HOOKS = ["on_start", "on_pause", "on_resume", "on_checkpoint", "on_stop"]


class WhereHooks:
    """Hooks that record which thread and loop they ran on."""

    def __init__(self, use_async: bool) -> None:
        self.calls: list[tuple[str, int, asyncio.AbstractEventLoop | None]] = []
        self.use_async = use_async

    def hooks(self) -> pycontainer.Hooks:
        def make(name: str) -> Callable[..., Any]:
            if self.use_async:

                async def async_hook(*args: Any) -> Any:
                    await asyncio.sleep(0)
                    loop = asyncio.get_running_loop()
                    self.calls.append((name, threading.get_ident(), loop))
                    return b"state" if name == "on_checkpoint" else None

                return async_hook

            def sync_hook(*args: Any) -> Any:
                try:
                    loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
                except RuntimeError:
                    loop = None
                self.calls.append((name, threading.get_ident(), loop))
                return b"state" if name == "on_checkpoint" else None

            return sync_hook

        return pycontainer.Hooks(**{name: make(name) for name in TOUR_HOOKS})


@pytest.mark.parametrize("use_async", [False, True], ids=["sync_hooks", "async_hooks"])
def test_sync_path(containers: Callable[..., pycontainer.Container], use_async: bool) -> None:
    where = WhereHooks(use_async)
    container = containers(where.hooks())
    results = [apply(container, command) for command in TOUR]
    assert container.state == State.STOPPED
    assert results[3] == b"state"
    assert [name for name, _, _ in where.calls] == TOUR_HOOKS
    me = threading.get_ident()
    for name, thread, loop in where.calls:
        if name != "on_stop":
            assert thread == me, name  # the sync path runs hooks in the caller's thread
        if use_async:
            # Each async hook got a loop of its own, closed once it returned.
            assert loop is not None, name
            assert loop.is_closed(), name
        else:
            assert loop is None, name
    if use_async:
        loops = [loop for _, _, loop in where.calls]
        assert len({id(loop) for loop in loops}) == len(loops)


@pytest.mark.parametrize("use_async", [False, True], ids=["sync_hooks", "async_hooks"])
async def test_async_path(
    containers: Callable[..., pycontainer.Container], use_async: bool
) -> None:
    where = WhereHooks(use_async)
    container = containers(where.hooks())
    results = [await aapply(container, command) for command in TOUR]
    assert container.state == State.STOPPED
    assert results[3] == b"state"
    assert [name for name, _, _ in where.calls] == TOUR_HOOKS
    me = threading.get_ident()
    running = asyncio.get_running_loop()
    for name, thread, loop in where.calls:
        if use_async:
            # Awaited on the running loop.
            assert (thread, loop) == (me, running), name
        else:
            # Plain hooks run on a worker thread so that the loop keeps serving.
            assert thread != me, name
            assert loop is None, name


async def test_sync_path_inside_a_running_loop(
    containers: Callable[..., pycontainer.Container],
) -> None:
    """An async hook on the sync path gets a loop of its own even when the
    calling thread already runs one (e.g. a Container built in ``async def
    main`` with an async on_create)."""
    loops: list[asyncio.AbstractEventLoop] = []

    async def hook(*args: Any) -> None:
        loops.append(asyncio.get_running_loop())

    container = containers(pycontainer.Hooks(on_create=hook, on_start=hook, on_stop=hook))
    container.start()
    container.stop(td(seconds=5.0))
    assert container.state == State.STOPPED
    assert len(loops) == 3
    assert all(loop is not asyncio.get_running_loop() for loop in loops)


# -- 4. a hook that raises: FAILED, the error kept, FAILED terminal ------------


@pytest.mark.parametrize("hook", HOOK_NAMES)
@pytest.mark.parametrize("use_async", [False, True], ids=["sync_hook", "async_hook"])
def test_hook_raises(
    containers: Callable[..., pycontainer.Container], hook: str, use_async: bool
) -> None:
    container, rec = recorded(containers, use_async=use_async)
    seen = listen(container)
    rec.fail.add(hook)
    command = {
        "on_start": Command.START,
        "on_pause": Command.PAUSE,
        "on_resume": Command.RESUME,
        "on_stop": Command.STOP,
        "on_checkpoint": Command.CHECKPOINT,
        "on_restore": Command.RESTORE,
        "on_replicate": Command.REPLICATE,
    }[hook]
    if command != Command.START:
        container.start()
    if command == Command.RESUME:
        container.pause()
    before = container.state
    with pytest.raises(RequestError) as info:
        apply(container, command)
    message = f"{hook} raised RuntimeError: {hook} failed on purpose"
    assert info.value.code == grpc.StatusCode.INTERNAL
    assert info.value.message == message
    assert container.state == State.FAILED
    assert container.lifecycle.error == message
    assert seen[-1][0] in (before, *TRANSITIONAL)
    assert seen[-1][1:] == (State.FAILED, "", message)
    assert rec.calls[-1] == hook
    # FAILED is terminal.
    calls = len(rec.calls)
    for other in Command:
        with pytest.raises(RequestError) as info:
            apply(container, other)
        assert_forbidden(info.value, State.FAILED)
        assert container.state == State.FAILED
    assert len(rec.calls) == calls
    assert container.lifecycle.error == message


def test_hook_raising_request_error_fails(
    containers: Callable[..., pycontainer.Container],
) -> None:
    """A RequestError from a hook is a hook failure like any other: the
    container must not stay in the transitional state."""

    def on_start() -> None:
        raise invalid_argument("config.port", "out of range")

    container = containers(pycontainer.Hooks(on_start=on_start))
    with pytest.raises(RequestError) as info:
        container.start()
    assert info.value.code == grpc.StatusCode.INTERNAL
    assert container.state == State.FAILED
    assert "on_start raised RequestError" in container.lifecycle.error
    assert "config.port: out of range" in container.lifecycle.error
    with pytest.raises(RequestError) as info:
        container.stop(td(seconds=1.0))
    assert_forbidden(info.value, State.FAILED)


async def test_async_hook_raising_request_error_fails(
    containers: Callable[..., pycontainer.Container],
) -> None:
    async def on_stop(reason: str, deadline: float) -> None:
        raise invalid_argument("reason", "not today")

    container = containers(pycontainer.Hooks(on_stop=on_stop))
    await container.astart()
    with pytest.raises(RequestError) as info:
        await container.astop(td(seconds=5.0))
    assert info.value.code == grpc.StatusCode.INTERNAL
    assert container.state == State.FAILED
    assert "on_stop raised RequestError" in container.lifecycle.error


def test_failure_in_get_info_over_a_server() -> None:
    def on_pause() -> None:
        raise ValueError("disk on fire")

    container = make_container("broken", hooks=pycontainer.Hooks(on_pause=on_pause))
    host = start_sync_host(container)
    try:
        container.start()
        info = host.management.GetInfo(management_pb2.GetInfoRequest(), timeout=5)
        assert info.state == container_pb2.LIFECYCLE_STATE_RUNNING
        assert info.error == ""
        with pytest.raises(RequestError) as err:
            container.pause()
        assert err.value.code == grpc.StatusCode.INTERNAL
        info = host.management.GetInfo(management_pb2.GetInfoRequest(), timeout=5)
        assert info.state == container_pb2.LIFECYCLE_STATE_FAILED
        assert info.error == "on_pause raised ValueError: disk on fire"
        assert container.lifecycle.error == info.error
    finally:
        host.stop()


# -- 5. on_stop overrunning its deadline ---------------------------------------


def test_sync_on_stop_overruns(containers: Callable[..., pycontainer.Container]) -> None:
    release = threading.Event()
    entered = threading.Event()

    def on_stop(reason: str, deadline: float) -> None:
        entered.set()
        release.wait(5)  # "sleeps" 5 s, released at the end of the test

    kills: list[str] = []
    container = containers(pycontainer.Hooks(on_stop=on_stop))
    container.lifecycle.kill = kills.append
    container.start()
    began = time.monotonic()
    try:
        with pytest.raises(RequestError) as info:
            container.stop(td(seconds=0.3))
        took = time.monotonic() - began
    finally:
        release.set()
    assert entered.is_set()
    assert took < SLACK
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert container.state == State.FAILED
    assert kills == ["on_stop overran its grace period of 300ms"]
    assert container.lifecycle.error == kills[0]
    assert container.lifecycle.deadline() is None
    with pytest.raises(RequestError) as info:
        container.stop(td(seconds=1.0))
    assert_forbidden(info.value, State.FAILED)


def test_sync_path_async_on_stop_overruns(
    containers: Callable[..., pycontainer.Container],
) -> None:
    release = threading.Event()

    async def on_stop(reason: str, deadline: float) -> None:
        for _ in range(250):  # up to 5 s
            if release.is_set():
                return
            await asyncio.sleep(0.02)

    kills: list[str] = []
    container = containers(pycontainer.Hooks(on_stop=on_stop))
    container.lifecycle.kill = kills.append
    container.start()
    began = time.monotonic()
    try:
        with pytest.raises(RequestError) as info:
            container.stop(td(seconds=0.3))
        took = time.monotonic() - began
    finally:
        release.set()
    assert took < SLACK
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert container.state == State.FAILED
    assert len(kills) == 1
    assert "grace period of 300ms" in kills[0]


async def test_async_on_stop_overruns_and_is_cancelled(
    containers: Callable[..., pycontainer.Container],
) -> None:
    cancelled = asyncio.Event()

    async def on_stop(reason: str, deadline: float) -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    kills: list[str] = []
    container = containers(pycontainer.Hooks(on_stop=on_stop))
    container.lifecycle.kill = kills.append
    await container.astart()
    began = time.monotonic()
    with pytest.raises(RequestError) as info:
        await container.astop(td(seconds=0.3))
    assert time.monotonic() - began < SLACK
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert container.state == State.FAILED
    assert kills == ["on_stop overran its grace period of 300ms"]
    assert container.lifecycle.error == kills[0]
    await asyncio.wait_for(cancelled.wait(), SLACK)


async def test_async_path_sync_on_stop_overruns(
    containers: Callable[..., pycontainer.Container],
) -> None:
    release = threading.Event()

    def on_stop(reason: str, deadline: float) -> None:
        release.wait(5)

    kills: list[str] = []
    container = containers(pycontainer.Hooks(on_stop=on_stop))
    container.lifecycle.kill = kills.append
    await container.astart()
    began = time.monotonic()
    try:
        with pytest.raises(RequestError) as info:
            await container.astop(td(seconds=0.3))
        took = time.monotonic() - began
    finally:
        release.set()
    assert took < SLACK
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert container.state == State.FAILED
    assert len(kills) == 1
    assert "grace period of 300ms" in kills[0]


def test_overrun_without_kill_callback(containers: Callable[..., pycontainer.Container]) -> None:
    release = threading.Event()
    container = containers(pycontainer.Hooks(on_stop=lambda reason, deadline: release.wait(5)))
    container.start()
    try:
        with pytest.raises(RequestError) as info:
            container.stop(td(seconds=0.2))
    finally:
        release.set()
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert container.state == State.FAILED


def test_on_stop_gets_its_deadline(containers: Callable[..., pycontainer.Container]) -> None:
    got: list[tuple[float, float | None]] = []
    container = containers()

    def on_stop(reason: str, deadline: float) -> None:
        got.append((deadline - time.monotonic(), container.lifecycle.deadline()))

    container.hooks.on_stop = on_stop
    container.start()
    container.stop(td(seconds=2.0))
    ((remaining, engine_deadline),) = got
    assert 0 < remaining <= 2.0
    assert engine_deadline is not None
    assert container.lifecycle.deadline() is None


def test_default_grace_comes_from_settings(
    containers: Callable[..., pycontainer.Container],
) -> None:
    got: list[float] = []
    container = containers(
        pycontainer.Hooks(on_stop=lambda reason, deadline: got.append(deadline - time.monotonic())),
        grace_period=td(seconds=7),
    )
    container.start()
    container.stop()
    assert 5.0 < got[0] <= 7.0


@pytest.mark.parametrize(("grace", "expected"), [(td(0), td(0)), (None, td(seconds=60))])
def test_a_manager_stop_with_a_zero_grace_means_zero(
    containers: Callable[..., pycontainer.Container], grace: td | None, expected: td
) -> None:
    """A StopCommand's grace period is read with presence: a zero that was
    set is no grace at all, only an unset one means the container's default."""
    remaining: list[float] = []
    done = threading.Event()

    def on_stop(reason: str, deadline: float) -> None:
        remaining.append(deadline - time.monotonic())
        done.set()

    container = containers(pycontainer.Hooks(on_stop=on_stop), grace_period=td(seconds=60))
    container.start()
    # A manager that is not there: the session retries in the background while
    # the connector runs the command it would have sent.
    connection = container.connect("127.0.0.1:1")
    stop = lifecycle_pb2.StopCommand()
    if grace is not None:
        stop.grace_period.CopyFrom(units.duration_to_proto(grace))
    command = lifecycle_pb2.Command(id="stop-1", stop=stop)
    future = asyncio.run_coroutine_threadsafe(connection._perform(command), connection._loop)
    with contextlib.suppress(RequestError):  # no grace: on_stop may overrun at once
        future.result(SLACK)
    assert done.wait(SLACK)
    assert expected.total_seconds() - SLACK < remaining[0] <= expected.total_seconds()


# -- 6. grace extension ---------------------------------------------------------


def _past(deadline: float) -> float:
    """Seconds from now until 0.2 s past ``deadline`` (the stop's, when
    on_stop was called): an on_stop that needs more than its grace period, and
    far less than the 5 s an extension gives it, however busy the machine."""
    return max(0.0, deadline + 0.2 - time.monotonic())


def _extending_container(
    factory: Callable[..., pycontainer.Container], *, ask: float, use_async: bool = False
) -> tuple[pycontainer.Container, list[tuple[float, str]], list[td], list[str]]:
    asked: list[tuple[float, str]] = []
    granted: list[td] = []
    kills: list[str] = []
    container = factory()

    def requester(seconds: float, reason: str) -> float:
        asked.append((seconds, reason))
        return min(seconds, 5.0)

    if use_async:

        async def async_on_stop(reason: str, deadline: float) -> None:
            if ask:
                granted.append(container.request_grace_extension(td(seconds=ask), "flushing"))
            await asyncio.sleep(_past(deadline))

        container.hooks.on_stop = async_on_stop
    else:

        def on_stop(reason: str, deadline: float) -> None:
            if ask:
                granted.append(container.request_grace_extension(td(seconds=ask), "flushing"))
            time.sleep(_past(deadline))

        container.hooks.on_stop = on_stop
    container.lifecycle.extension_requester = requester
    container.lifecycle.kill = kills.append
    return container, asked, granted, kills


def test_grace_extension_lets_on_stop_finish(
    containers: Callable[..., pycontainer.Container],
) -> None:
    container, asked, granted, kills = _extending_container(containers, ask=10.0)
    container.start()
    container.stop(td(seconds=0.4))
    assert container.state == State.STOPPED
    assert asked == [(10.0, "flushing")]
    assert granted == [td(seconds=5)]
    assert kills == []


def test_no_extension_fails(containers: Callable[..., pycontainer.Container]) -> None:
    container, asked, granted, kills = _extending_container(containers, ask=0.0)
    container.start()
    with pytest.raises(RequestError) as info:
        container.stop(td(seconds=0.4))
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert container.state == State.FAILED
    assert asked == []
    assert granted == []
    assert len(kills) == 1


async def test_async_grace_extension(containers: Callable[..., pycontainer.Container]) -> None:
    container, asked, granted, kills = _extending_container(containers, ask=10.0, use_async=True)
    await container.astart()
    await container.astop(td(seconds=0.4))
    assert container.state == State.STOPPED
    assert asked == [(10.0, "flushing")]
    assert granted == [td(seconds=5)]
    assert kills == []


async def test_async_no_extension_fails(containers: Callable[..., pycontainer.Container]) -> None:
    container, _, _, kills = _extending_container(containers, ask=0.0, use_async=True)
    await container.astart()
    with pytest.raises(RequestError) as info:
        await container.astop(td(seconds=0.4))
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert container.state == State.FAILED
    assert len(kills) == 1


def test_extension_without_requester_is_zero(
    containers: Callable[..., pycontainer.Container],
) -> None:
    granted: list[td] = []
    container = containers()
    container.hooks.on_stop = lambda reason, deadline: granted.append(
        container.request_grace_extension(td(seconds=2), "flushing")
    )
    container.start()
    container.stop(td(seconds=5.0))
    assert granted == [td(0)]
    assert container.state == State.STOPPED


def test_extension_outside_a_stop_is_zero(
    containers: Callable[..., pycontainer.Container],
) -> None:
    asked: list[float] = []
    container = containers()

    def requester(seconds: float, reason: str) -> float:
        asked.append(seconds)
        return 1.0

    container.lifecycle.extension_requester = requester
    assert container.request_grace_extension(td(seconds=2), "early") == td(0)
    container.start()
    assert container.request_grace_extension(td(seconds=2), "running") == td(0)
    assert asked == []


def test_extension_refused_or_nonpositive(
    containers: Callable[..., pycontainer.Container],
) -> None:
    got: list[td] = []
    container = containers()
    container.lifecycle.extension_requester = lambda seconds, reason: -5.0

    def on_stop(reason: str, deadline: float) -> None:
        before = container.lifecycle.deadline()
        got.append(container.request_grace_extension(td(seconds=1), "please"))
        got.append(container.request_grace_extension(td(0), "nothing"))
        got.append(container.request_grace_extension(td(seconds=-1), "less"))
        assert container.lifecycle.deadline() == before

    container.hooks.on_stop = on_stop
    container.start()
    container.stop(td(seconds=5.0))
    assert got == [td(0), td(0), td(0)]
    assert container.state == State.STOPPED


# -- 7. health follows the state --------------------------------------------------


def _health(container: pycontainer.Container) -> tuple[bool, bool, bool]:
    s = container.health.statuses()
    return s[OVERALL], s[LIVENESS], s[READINESS]


def test_health_follows_the_state(containers: Callable[..., pycontainer.Container]) -> None:
    inside: list[tuple[State, tuple[bool, bool, bool]]] = []
    container = containers()

    def record(*args: Any) -> None:
        inside.append((container.state, _health(container)))

    container.hooks.on_start = record
    container.hooks.on_pause = record
    container.hooks.on_resume = record
    container.hooks.on_stop = record
    # (overall, liveness, readiness)
    assert _health(container) == (False, True, False)
    container.start()
    assert _health(container) == (True, True, True)
    container.pause()
    assert _health(container) == (False, True, False)
    container.resume()
    assert _health(container) == (True, True, True)
    container.stop(td(seconds=5.0))
    assert _health(container) == (False, False, False)
    assert inside == [
        (State.STARTING, (False, True, False)),
        (State.PAUSING, (False, True, False)),
        (State.RESUMING, (False, True, False)),
        # Not ready from the moment the stop begins, yet still alive.
        (State.STOPPING, (False, True, False)),
    ]


def test_health_once_failed(containers: Callable[..., pycontainer.Container]) -> None:
    def on_pause() -> None:
        raise RuntimeError("nope")

    container = containers(pycontainer.Hooks(on_pause=on_pause))
    container.start()
    with pytest.raises(RequestError):
        container.pause()
    assert _health(container) == (False, False, False)
    report = container.health.report([])
    assert report.state == container_pb2.LIFECYCLE_STATE_FAILED


def test_health_after_stop_from_paused(containers: Callable[..., pycontainer.Container]) -> None:
    container = containers()
    container.start()
    container.pause()
    container.stop(td(seconds=5.0))
    assert _health(container) == (False, False, False)


# -- 8. checkpoint / restore / replicate -------------------------------------------


def test_checkpoint_bytes_come_back(containers: Callable[..., pycontainer.Container]) -> None:
    container = containers(pycontainer.Hooks(on_checkpoint=lambda: bytearray(b"\x00abc")))
    container.start()
    data = container.checkpoint()
    assert data == b"\x00abc"
    assert type(data) is bytes
    container.pause()
    assert container.checkpoint() == b"\x00abc"
    assert container.state == State.PAUSED


async def test_async_checkpoint(containers: Callable[..., pycontainer.Container]) -> None:
    async def on_checkpoint() -> bytes:
        return b"async-state"

    container = containers(pycontainer.Hooks(on_checkpoint=on_checkpoint))
    await container.astart()
    outcome = await container.lifecycle.arun(Request(Command.CHECKPOINT))
    assert outcome.data == b"async-state"
    assert outcome.state == State.RUNNING
    assert container.checkpoint() == b"async-state"  # sync path, own loop


@pytest.mark.parametrize("value", ["text", 42, {"a": 1}])
def test_checkpoint_non_bytes_fails(
    containers: Callable[..., pycontainer.Container], value: Any
) -> None:
    container = containers(pycontainer.Hooks(on_checkpoint=lambda: value))
    container.start()
    with pytest.raises(RequestError) as info:
        container.checkpoint()
    assert info.value.code == grpc.StatusCode.INTERNAL
    assert container.state == State.FAILED
    expected = f"on_checkpoint must return bytes, not {type(value).__name__}"
    assert expected in info.value.message
    assert expected in container.lifecycle.error


def test_replicate_non_bytes_fails(containers: Callable[..., pycontainer.Container]) -> None:
    container = containers(pycontainer.Hooks(on_replicate=lambda count: ["seed"] * count))
    container.start()
    with pytest.raises(RequestError) as info:
        container.replicate(2)
    assert info.value.code == grpc.StatusCode.INTERNAL
    assert "on_replicate must return bytes, not list" in container.lifecycle.error
    assert container.state == State.FAILED


@pytest.mark.parametrize("paused", [False, True], ids=["running", "paused"])
def test_checkpoint_and_restore_without_hook(
    containers: Callable[..., pycontainer.Container], paused: bool
) -> None:
    container = containers()
    container.start()
    if paused:
        container.pause()
    state = container.state
    with pytest.raises(RequestError) as info:
        container.checkpoint()
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "no on_checkpoint hook" in info.value.message
    assert container.state == state
    with pytest.raises(RequestError) as info:
        container.restore(b"x")
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "no on_restore hook" in info.value.message
    assert container.state == state
    assert container.lifecycle.error == ""


async def test_async_checkpoint_without_hook(
    containers: Callable[..., pycontainer.Container],
) -> None:
    container = containers()
    await container.astart()
    with pytest.raises(RequestError) as info:
        await container.lifecycle.arun(Request(Command.CHECKPOINT))
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert container.state == State.RUNNING


def test_restore_passes_the_bytes(containers: Callable[..., pycontainer.Container]) -> None:
    got: list[bytes] = []
    container = containers(pycontainer.Hooks(on_restore=got.append))
    container.restore(b"before start")
    states = [container.state]
    container.start()
    container.restore(b"\x00\xffwhile running")
    states.append(container.state)
    assert got == [b"before start", b"\x00\xffwhile running"]
    assert states == [State.CREATED, State.RUNNING]


@pytest.mark.parametrize(
    ("returned", "expected"), [(b"seed-3", b"seed-3"), (None, b""), (memoryview(b"mv"), b"mv")]
)
def test_replicate_returns_the_seed(
    containers: Callable[..., pycontainer.Container], returned: Any, expected: bytes
) -> None:
    counts: list[int] = []

    def on_replicate(count: int) -> Any:
        counts.append(count)
        return returned

    container = containers(pycontainer.Hooks(on_replicate=on_replicate))
    container.start()
    assert container.replicate(3) == expected
    assert counts == [3]
    assert container.state == State.RUNNING


def test_replicate_without_hook(containers: Callable[..., pycontainer.Container]) -> None:
    container = containers()
    container.start()
    assert container.replicate(2) == b""
    assert container.state == State.RUNNING


# -- 9. property: random command sequences ------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    commands=st.lists(st.sampled_from(list(Command)), max_size=12),
    fail_at=st.one_of(st.none(), st.integers(min_value=0, max_value=12)),
    use_async=st.booleans(),
)
def test_random_command_sequences(
    commands: list[Command], fail_at: int | None, use_async: bool
) -> None:
    rec = Recorder(use_async=use_async)
    rec.fail_at = fail_at
    container = make_container("property", hooks=rec.hooks())
    try:
        expected_hooks: list[str] = []
        for command in commands:
            before = container.state
            planned = TRANSITIONS.get((before, command))
            calls_before = rec.count
            try:
                apply(container, command)
            except RequestError as exc:
                succeeded = False
                error: RequestError | None = exc
            else:
                succeeded, error = True, None
            hook_raised = rec.count > calls_before and calls_before == fail_at
            after = container.state
            assert after in STABLE
            assert succeeded == (planned is not None and not hook_raised)
            if planned is None:
                assert error is not None
                assert_forbidden(error, before)
                assert after == before
            else:
                expected_hooks.append(planned.hook)
                if hook_raised:
                    assert error is not None
                    assert error.code == grpc.StatusCode.INTERNAL
                    assert after == State.FAILED
                else:
                    assert after == planned.after
            assert rec.calls == expected_hooks
            if before.terminal:
                assert not succeeded
                assert after == before
            statuses = container.health.statuses()
            assert statuses[OVERALL] == (after == State.RUNNING)
            assert statuses[READINESS] == (after == State.RUNNING)
            assert statuses[LIVENESS] == (not after.terminal)
    finally:
        container.close()

"""Runtime profile: tracked locks, thread and task stacks, CPU sampling
(checked with an independent pprof parser), channelz sockets, GetProfile."""

from __future__ import annotations

import asyncio
import gc
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from pprof import parse_pprof

from pycontainer._errors import RequestError
from pycontainer.agent import _profile
from pycontainer.agent._profile import (
    CpuSamples,
    LockRegistry,
    LoopRegistry,
    ProfileRequest,
    TrackedLock,
    TrackedRLock,
)
from pycontainer.v1 import management_pb2, profile_pb2


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def contention_of(registry: LockRegistry, name: str) -> profile_pb2.LockContention:
    (found,) = [c for c in _profile.lock_contention(registry) if c.name == name]
    return found


# --- Locks -------------------------------------------------------------------


def test_uncontended_lock_counts_acquisitions_only() -> None:
    registry = LockRegistry()
    lock = TrackedLock("quiet", registry=registry)
    for _ in range(3):
        with lock:
            assert lock.locked()
            held = contention_of(registry, "quiet")
            assert held.holder == threading.current_thread().name
    assert lock.acquire(blocking=False)
    lock.release()
    assert not lock.locked()
    stats = contention_of(registry, "quiet")
    assert stats.acquisitions == 4
    assert stats.contentions == 0
    assert stats.total_wait.ToNanoseconds() == 0
    assert stats.max_wait.ToNanoseconds() == 0
    assert stats.holder == ""
    assert stats.waiters == 0


def _blocked_worker_body(lock: TrackedLock) -> None:
    with lock:
        pass


def test_contended_lock_shows_waiter_holder_and_wait() -> None:
    registry = LockRegistry()
    lock = TrackedLock("contended", registry=registry)
    lock.acquire()
    worker = threading.Thread(
        target=_blocked_worker_body, args=(lock,), name="blocked-worker", daemon=True
    )
    worker.start()
    try:
        wait_until(lambda: len(lock.waiting()) == 1)
        time.sleep(0.1)

        (stack,) = [t for t in _profile.thread_stacks(registry) if t.name == "blocked-worker"]
        assert stack.waiting_for_lock == "contended"
        assert stack.waiting_for.ToNanoseconds() >= 100_000_000
        assert stack.ident == worker.ident
        assert stack.native_id == worker.native_id
        assert stack.daemon
        functions = [f.function for f in stack.frames]
        assert functions[0] == "_bootstrap"  # outermost first
        assert "_blocked_worker_body" in functions
        # Threads not waiting carry no lock.
        (me,) = [t for t in _profile.thread_stacks(registry) if t.ident == threading.get_ident()]
        assert me.waiting_for_lock == ""
        assert me.frames[-1].function == "thread_stacks"

        during = contention_of(registry, "contended")
        assert during.holder == threading.current_thread().name
        assert during.waiters == 1
        assert during.acquisitions == 1
        assert during.contentions == 1  # counted as the wait begins
        assert during.total_wait.ToNanoseconds() == 0  # added as it ends
    finally:
        lock.release()
        worker.join(5)
    after = contention_of(registry, "contended")
    assert after.acquisitions == 2
    assert after.contentions == 1
    assert after.total_wait.ToNanoseconds() >= 100_000_000
    assert after.max_wait == after.total_wait
    assert after.waiters == 0
    assert after.holder == ""


def test_timeouts_and_failed_tries() -> None:
    registry = LockRegistry()
    lock = TrackedLock("timeouts", registry=registry)
    lock.acquire()
    got: list[bool] = []
    worker = threading.Thread(
        target=lambda: got.extend([lock.acquire(blocking=False), lock.acquire(timeout=0.05)])
    )
    worker.start()
    worker.join(5)
    lock.release()
    assert got == [False, False]
    stats = contention_of(registry, "timeouts")
    # The failed try did not wait; the timed-out acquire did.
    assert stats.acquisitions == 1
    assert stats.contentions == 1
    assert stats.max_wait.ToNanoseconds() >= 40_000_000
    with pytest.raises(ValueError, match="non-blocking"):
        lock.acquire(blocking=False, timeout=1)
    with pytest.raises(RuntimeError):
        lock.release()


def test_rlock_reenters_and_works_with_condition() -> None:
    registry = LockRegistry()
    lock = TrackedRLock("reentrant", registry=registry)
    with lock, lock:
        assert contention_of(registry, "reentrant").holder == threading.current_thread().name
    assert not lock.locked()
    assert contention_of(registry, "reentrant").acquisitions == 1

    cond = threading.Condition(lock)  # type: ignore[arg-type]
    ready: list[int] = []

    def producer() -> None:
        with cond:
            ready.append(1)
            cond.notify()

    with lock, cond:  # held twice while waiting: wait must release both levels
        threading.Thread(target=producer).start()
        assert cond.wait_for(lambda: ready, timeout=5)
    assert not lock.locked()

    lock.acquire()
    other: list[BaseException] = []

    def release_from_other() -> None:
        try:
            lock.release()
        except RuntimeError as exc:
            other.append(exc)

    t = threading.Thread(target=release_from_other)
    t.start()
    t.join(5)
    assert other
    assert lock.locked()
    lock.release()


def test_registry_forgets_dead_locks_and_names_default_to_creation_site() -> None:
    registry = LockRegistry()
    lock = TrackedLock(registry=registry)
    assert lock.name.endswith(f"test_profile.py:{lock_line()}")
    assert [x.name for x in registry.locks()] == [lock.name]
    del lock
    gc.collect()
    assert registry.locks() == []
    # Locks without a registry go to the default one.
    default = TrackedLock("in-default")
    assert default in _profile.DEFAULT_LOCK_REGISTRY.locks()


def lock_line() -> int:
    """The line of the TrackedLock() call in the test above."""
    import inspect

    source, start = inspect.getsourcelines(
        test_registry_forgets_dead_locks_and_names_default_to_creation_site
    )
    (offset,) = [i for i, line in enumerate(source) if "TrackedLock(registry=registry)" in line]
    return start + offset


# --- asyncio tasks -----------------------------------------------------------


@pytest.fixture
def loop_thread() -> Iterator[tuple[asyncio.AbstractEventLoop, threading.Thread]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="loop-thread", daemon=True)
    thread.start()
    yield loop, thread
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


async def _innermost_wait(event: asyncio.Event) -> None:
    await event.wait()


async def _distinctive_waiter(event: asyncio.Event) -> None:
    await _innermost_wait(event)


def test_task_stacks_of_a_loop_in_another_thread(
    loop_thread: tuple[asyncio.AbstractEventLoop, threading.Thread],
) -> None:
    loop, _ = loop_thread
    registry = LoopRegistry()

    async def start() -> asyncio.Event:
        registry.register(asyncio.get_running_loop())  # thread found as the running one
        event = asyncio.Event()
        for i in range(3):
            asyncio.get_running_loop().create_task(_distinctive_waiter(event), name=f"waiter-{i}")
        await asyncio.sleep(0.01)  # let them reach their await
        return event

    event = asyncio.run_coroutine_threadsafe(start(), loop).result(5)
    tasks = [t for t in _profile.task_stacks(registry) if t.name.startswith("waiter-")]
    assert [t.name for t in tasks] == ["waiter-0", "waiter-1", "waiter-2"]
    for task in tasks:
        assert task.coroutine == "_distinctive_waiter"
        assert not task.done
        assert task.thread_name == "loop-thread"
        functions = [f.function for f in task.frames]
        # The await chain is followed down to where the task waits.
        assert functions[:3] == ["_distinctive_waiter", "_innermost_wait", "wait"]
    # A plain list of loops works too; the thread comes from the running loop.
    assert {t.thread_name for t in _profile.task_stacks([loop])} == {"loop-thread"}

    loop.call_soon_threadsafe(event.set)
    wait_until(lambda: not [t for t in _profile.task_stacks(registry) if t.name.startswith("w")])
    registry.unregister(loop)
    assert registry.loops() == []


# --- CPU sampling ------------------------------------------------------------


def _busy_spin_for_profile(stop: threading.Event) -> None:
    # A plain loop, no generator: a running generator's frame can be sampled
    # without its caller, which would blur what these tests check.
    while not stop.is_set():
        total = 0
        for i in range(2000):
            total += i * i


def _sleepy_thread_body(stop: threading.Event) -> None:
    stop.wait()


_SAMPLED_S = 3.0


@pytest.fixture(scope="module")
def cpu_samples() -> Iterator[CpuSamples]:
    stop = threading.Event()
    threads = [
        threading.Thread(target=_busy_spin_for_profile, args=(stop,), name="busy"),
        threading.Thread(target=_sleepy_thread_body, args=(stop,), name="sleepy"),
    ]
    for t in threads:
        t.start()
    try:
        # Three seconds, not one: on a loaded 2-core machine one second at
        # 100 Hz ran as few as 18 ticks (each waits for a CPU, then for the
        # GIL behind the spinner, and before Python 3.12 a stack read costs
        # about 10 ms), under the floor of 30 the tests below check.
        yield _profile.sample_cpu(_SAMPLED_S, 100)
    finally:
        stop.set()
        for t in threads:
            t.join(5)


@pytest.mark.alone
def test_pprof_profile_of_a_busy_thread(cpu_samples: CpuSamples) -> None:
    profile = parse_pprof(_profile.to_pprof(cpu_samples))

    strings = list(profile.string_table)
    assert strings[0] == ""
    assert len(set(strings)) == len(strings)
    assert [(strings[t.type], strings[t.unit]) for t in profile.sample_type] == [
        ("samples", "count"),
        ("cpu", "nanoseconds"),
    ]
    assert (strings[profile.period_type.type], strings[profile.period_type.unit]) == (
        "cpu",
        "nanoseconds",
    )
    assert profile.period == 10_000_000
    assert profile.duration_nanos >= (_SAMPLED_S - 0.1) * 10**9
    assert abs(profile.time_nanos - time.time_ns()) < 60 * 10**9

    functions = {fn.id: fn for fn in profile.function}
    locations = {loc.id: loc for loc in profile.location}
    assert len(functions) == len(profile.function)
    assert len(locations) == len(profile.location)
    assert 0 not in functions
    assert 0 not in locations
    for fn in functions.values():
        assert 0 < fn.name < len(strings)
        assert 0 < fn.filename < len(strings)
    # Names are qualified; system names are the code objects' own.
    (bootstrap,) = [fn for fn in functions.values() if strings[fn.name] == "Thread._bootstrap"]
    assert strings[bootstrap.system_name] == "_bootstrap"
    for loc in locations.values():
        assert len(loc.line) == 1
        assert loc.line[0].function_id in functions
        assert loc.line[0].line > 0

    by_thread: Counter[str] = Counter()
    busy = total = rooted = 0
    for sample in profile.sample:
        assert len(sample.value) == 2
        count, cpu_ns = sample.value
        assert count > 0
        assert cpu_ns > 0
        assert all(loc in locations for loc in sample.location_id)
        names = [
            strings[functions[locations[loc].line[0].function_id].name]
            for loc in sample.location_id
        ]
        # The leaf comes first, the root last. A running generator's frame can
        # be sampled without its caller (CPython links it lazily): tolerate a few.
        if names[-1] == "Thread._bootstrap":
            rooted += count
        (label,) = sample.label
        assert strings[label.key] == "thread"
        by_thread[strings[label.str]] += count
        total += count
        if any("_busy_spin_for_profile" in name for name in names):
            busy += count
    assert rooted >= 0.9 * total
    assert total == cpu_samples.total
    assert total >= 30  # 100 Hz for 3 s: enough ticks see the spinner, even on a busy host
    assert busy >= 0.8 * total
    assert by_thread["busy"] == busy
    assert by_thread["sleepy"] <= 2


@pytest.mark.alone
def test_sampling_uses_thread_cpu_clocks_and_skips_sleepers(cpu_samples: CpuSamples) -> None:
    assert cpu_samples.thread_cpu_clocks  # Linux
    # A tick may wait for the GIL (up to 5 ms behind the spinner) or for a CPU.
    assert 30 <= cpu_samples.ticks <= _SAMPLED_S * 100 + 1
    sleepy = sum(n for (thread, _), n in cpu_samples.counts.items() if thread == "sleepy")
    assert sleepy <= 2
    # The sampler never samples itself.
    assert all(thread != threading.current_thread().name for thread, _ in cpu_samples.counts)
    # Sample values carry the CPU time the thread really used.
    busy_cpu = sum(ns for (thread, _), ns in cpu_samples.cpu_ns.items() if thread == "busy")
    assert busy_cpu >= 0.8 * sum(cpu_samples.cpu_ns.values())
    assert busy_cpu <= cpu_samples.duration_ns + 50_000_000


@pytest.mark.alone
def test_collapsed_stacks(cpu_samples: CpuSamples) -> None:
    lines = _profile.to_collapsed(cpu_samples).decode().splitlines()
    assert lines
    counts: dict[str, int] = {}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        counts[stack] = int(count)
    # Root first; a generator sampled without its caller may lack the root.
    rooted = sum(n for stack, n in counts.items() if stack.startswith("Thread._bootstrap ("))
    assert rooted >= 0.9 * sum(counts.values())
    assert sum(counts.values()) == cpu_samples.total
    busy = sum(n for stack, n in counts.items() if "_busy_spin_for_profile" in stack)
    assert busy >= 0.8 * cpu_samples.total
    frames = {frame for stack in counts for frame in stack.split(";")}
    assert any(
        re.fullmatch(r"_busy_spin_for_profile \(.*test_profile\.py:\d+\)", f) for f in frames
    )


def test_sampling_stops_early() -> None:
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    start = time.monotonic()
    samples = _profile.sample_cpu(30, 100, stop)
    assert time.monotonic() - start < 5
    assert samples.duration_ns < 5 * 10**9
    # Even a profile without samples is a valid pprof file.
    profile = parse_pprof(_profile.to_pprof(CpuSamples(period_ns=10)))
    assert profile.string_table[0] == ""
    assert profile.period == 10
    assert len(profile.sample_type) == 2
    with pytest.raises(ValueError, match="hz"):
        _profile.sample_cpu(1, 0)


# --- GetProfile request and response -----------------------------------------


@pytest.mark.parametrize(
    ("request_kwargs", "field"),
    [
        ({"cpu_duration": {"seconds": -1}}, "cpu_duration"),
        ({"cpu_duration": {"nanos": -5}}, "cpu_duration"),
        ({"cpu_duration": {"seconds": 300, "nanos": 1}}, "cpu_duration"),
        ({"cpu_duration": {"seconds": 1, "nanos": -1}}, "cpu_duration"),
        ({"cpu_sample_hz": 1001}, "cpu_sample_hz"),
        ({"cpu_format": 7}, "cpu_format"),
    ],
)
def test_invalid_requests(request_kwargs: dict[str, Any], field: str) -> None:
    req = management_pb2.GetProfileRequest(**request_kwargs)
    with pytest.raises(RequestError) as info:
        ProfileRequest.from_request(req)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.field == field
    assert field in str(info.value)


def test_request_defaults_and_limits() -> None:
    assert ProfileRequest.from_request(management_pb2.GetProfileRequest()) == ProfileRequest(
        cpu_duration_ns=0, cpu_sample_hz=100, cpu_format=profile_pb2.CPU_PROFILE_FORMAT_PPROF
    )
    req = management_pb2.GetProfileRequest(
        cpu_sample_hz=1000, cpu_format=profile_pb2.CPU_PROFILE_FORMAT_COLLAPSED
    )
    req.cpu_duration.FromSeconds(300)
    assert ProfileRequest.from_request(req) == ProfileRequest(
        300 * 10**9, 1000, profile_pb2.CPU_PROFILE_FORMAT_COLLAPSED
    )


def test_build_profile(loop_thread: tuple[asyncio.AbstractEventLoop, threading.Thread]) -> None:
    loop, thread = loop_thread
    locks, loops = LockRegistry(), LoopRegistry()
    loops.register(loop, thread)
    lock = TrackedLock("in-profile", registry=locks)
    with lock:
        pass
    stop = threading.Event()
    # The test holds the event, and through its waiters the task (asyncio holds tasks weakly).
    event = asyncio.Event()
    asyncio.run_coroutine_threadsafe(_distinctive_waiter(event), loop)
    wait_until(lambda: bool(asyncio.all_tasks(loop)))  # the task is made on the loop's thread
    spinner = threading.Thread(target=_busy_spin_for_profile, args=(stop,), name="busy")
    spinner.start()
    try:
        req = ProfileRequest(200_000_000, 100, profile_pb2.CPU_PROFILE_FORMAT_COLLAPSED)
        resp = _profile.build_profile(req, locks=locks, loops=loops, stop=None)
    finally:
        stop.set()
        spinner.join(5)
    assert abs(resp.time.ToNanoseconds() - time.time_ns()) < 60 * 10**9
    assert threading.get_ident() in [t.ident for t in resp.threads]
    assert "loop-thread" in [t.name for t in resp.threads]
    assert [t.coroutine for t in resp.tasks] == ["_distinctive_waiter"]
    loop.call_soon_threadsafe(event.set)
    wait_until(lambda: not asyncio.all_tasks(loop))
    assert [(c.name, c.acquisitions) for c in resp.locks] == [("in-profile", 1)]
    assert not resp.rpc_messages
    cpu = resp.cpu_profile
    assert cpu.format == profile_pb2.CPU_PROFILE_FORMAT_COLLAPSED
    assert b"_busy_spin_for_profile (" in cpu.data
    assert cpu.sample_period.ToNanoseconds() == 10_000_000
    assert cpu.duration.ToNanoseconds() >= 150_000_000
    assert cpu.samples > 0

    # Without a duration there is no CPU profile.
    resp = _profile.build_profile(ProfileRequest(), locks=locks, loops=loops, stop=None)
    assert not resp.HasField("cpu_profile")


# --- channelz ----------------------------------------------------------------


def test_channelz_sockets_of_a_real_server() -> None:
    def echo(request: bytes, context: Any) -> bytes:
        return request

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        call = channel.unary_unary("/test.Echo/Echo")
        for _ in range(3):
            assert call(b"ping", timeout=5) == b"ping"

        def ours() -> list[profile_pb2.SocketStats]:
            return [
                s
                for s in _profile.channelz_sockets()
                # Counters are updated as streams end, just after the call returns.
                if s.local == f"127.0.0.1:{port}" and s.streams_succeeded >= 3
            ]

        wait_until(lambda: bool(ours()))
        (socket,) = ours()
        assert socket.remote.startswith("127.0.0.1:")
        assert socket.messages_sent >= 3
        assert socket.streams_started >= 3
        assert socket.messages_received >= 3
        assert socket.streams_failed == 0
        assert socket.HasField("last_message_received_time")
        assert socket.HasField("last_message_sent_time")
    finally:
        channel.close()
        server.stop(None)

"""StreamLogs and GetProfile in depth over a real server (sync and aio):
follow with each filter, a deliberately slow reader, pprof and asyncio tasks."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from pprof import function_samples, parse_pprof
from support import (
    Host,
    make_container,
    run_in_host_loop,
    start_aio_host,
    start_container,
)

from pycontainer.v1 import logs_pb2, management_pb2, management_pb2_grpc, profile_pb2

LOG = logging.getLogger("streams.test")


def _first_batch_while(stream: Any, log_once: Any) -> Any:
    """next(stream), logging in the background until it returns: a follow
    stream starts "now", so only a line logged after it opened proves it live."""
    done = threading.Event()

    def keep_logging() -> None:
        while not done.wait(0.05):
            log_once()

    thread = threading.Thread(target=keep_logging, daemon=True)
    thread.start()
    try:
        return next(stream)
    finally:
        done.set()
        thread.join(5)


CHILD = logging.getLogger("streams.test.child")


@pytest.mark.parametrize(
    ("filters", "probe", "expected"),
    [
        (
            {"min_severity": logs_pb2.SEVERITY_WARN},
            (LOG, logging.ERROR, "probe"),
            ["warn 1", "error 2 disk"],
        ),
        ({"contains": "disk"}, (LOG, logging.ERROR, "probe disk"), ["info disk 0", "error 2 disk"]),
        ({"pattern": r"^(info|warn) \d$"}, (LOG, logging.WARNING, "warn 9"), ["warn 1"]),
        ({"logger": "streams.test.child"}, (CHILD, logging.ERROR, "probe"), ["child 3"]),
        (
            {"since": None},
            (LOG, logging.ERROR, "probe"),
            ["info disk 0", "warn 1", "error 2 disk", "child 3"],
        ),
    ],
)
def test_follow_with_each_filter(
    host: Host,
    filters: dict[str, Any],
    probe: tuple[logging.Logger, int, str],
    expected: list[str],
) -> None:
    if "since" in filters:
        filters = {"since": timestamp_pb2.Timestamp(seconds=int(time.time()) - 1)}
    stream = host.management.StreamLogs(
        management_pb2.StreamLogsRequest(follow=True, tail=0, **filters), timeout=30
    )
    logger, level, probe_message = probe
    _first_batch_while(stream, lambda: logger.log(level, probe_message))
    LOG.info("info disk 0")
    LOG.warning("warn 1")
    LOG.error("error 2 disk")
    CHILD.info("child 3")
    LOG.debug("debug 4 disk")  # below the capture level: never captured
    logger.log(level, probe_message)  # passes the filter: marks the end
    got: list[str] = []
    for batch in stream:
        got.extend(e.message for e in batch.entries)
        if probe_message in got:
            break
    stream.cancel()
    # Probes logged before the first batch was read may still be in flight.
    assert [m for m in got if m != probe_message] == expected


def test_slow_reader_is_told_what_it_missed(new_host: Any) -> None:
    host: Host = new_host(make_container("slow", log_capacity=200))
    start_container(host)
    stream = host.management.StreamLogs(
        management_pb2.StreamLogsRequest(follow=True, tail=0, max_batch_size=50, logger="slow"),
        timeout=60,
    )
    slow = logging.getLogger("slow")
    _first_batch_while(stream, lambda: slow.warning("hello"))
    produced = 20_000
    for i in range(produced):  # nobody reads meanwhile
        slow.warning("line %d %s", i, "x" * 200)
    slow.warning("the end")
    # The buffer never holds more than its capacity, whatever the reader does.
    assert len(host.container.logs) <= 200
    received, missed, last = 0, 0, 0
    for batch in stream:
        missed += batch.missed
        for entry in batch.entries:
            assert entry.sequence > last
            last = entry.sequence
            if entry.message.startswith("line "):
                received += 1
        if any(e.message == "the end" for e in batch.entries):
            break
    stream.cancel()
    assert missed > 0, "a reader that did not read for 20,000 lines missed nothing"
    assert received > 0
    # Every line was either delivered or counted as missed (other loggers'
    # entries skipped in the gap are counted too, hence >=).
    assert received + missed >= produced


@pytest.mark.alone
def test_cpu_profile_parses_as_pprof(host: Host) -> None:
    stop = threading.Event()

    def rpc_busy_loop_for_pprof() -> None:
        n = 0
        while not stop.is_set():
            n += 1

    busy = threading.Thread(target=rpc_busy_loop_for_pprof, name="busy")
    busy.start()
    try:
        response = host.management.GetProfile(
            management_pb2.GetProfileRequest(
                cpu_duration=duration_pb2.Duration(seconds=1, nanos=500_000_000), cpu_sample_hz=100
            ),
            timeout=30,
        )
    finally:
        stop.set()
        busy.join(5)
    cpu = response.cpu_profile
    assert cpu.format == profile_pb2.CPU_PROFILE_FORMAT_PPROF
    assert cpu.sample_period.ToNanoseconds() == 10_000_000
    profile = parse_pprof(cpu.data)
    strings = list(profile.string_table)
    assert strings[0] == ""
    assert [strings[t.type] for t in profile.sample_type] == ["samples", "cpu"]
    counts = function_samples(profile)
    total = sum(sample.value[0] for sample in profile.sample)
    busy = sum(n for name, n in counts.items() if "rpc_busy_loop_for_pprof" in name)
    # The busy thread is the one using the CPU: of the functions on the
    # sampled stacks (threading's own frames aside, on every thread's), its
    # loop is on the most. (Not a share of every sample: on a loaded machine,
    # with other tests beside it, the busy thread gets less of the CPU and the
    # server's own threads a larger part of the samples.)
    own = {name: n for name, n in counts.items() if not name.startswith("Thread.")}
    assert busy > 0, counts
    assert busy == max(own.values()), counts
    assert busy >= total / 4, counts
    assert profile.duration_nanos > 0
    # Per-RPC message statistics come with every profile.
    methods = {m.method for m in response.rpc_messages}
    assert "/pycontainer.v1.Management/GetProfile" in methods


def test_asyncio_tasks_in_profile() -> None:
    aio_host = start_aio_host(make_container("tasks"))
    start_container(aio_host)
    stop = asyncio.Event()

    async def waits_for_orders() -> None:
        await stop.wait()

    async def spawn() -> asyncio.Task[None]:
        return asyncio.create_task(waits_for_orders(), name="order-poller")

    task = run_in_host_loop(aio_host, spawn)
    try:
        response = aio_host.management.GetProfile(management_pb2.GetProfileRequest(), timeout=10)
    finally:
        aio_host.extra["loop"].call_soon_threadsafe(stop.set)
        aio_host.stop()
    tasks = {t.name: t for t in response.tasks}
    assert "order-poller" in tasks
    assert "waits_for_orders" in tasks["order-poller"].coroutine
    assert any(f.function == "waits_for_orders" for f in tasks["order-poller"].frames)
    assert not task.cancelled()


# -- followers end cleanly when their container stops -----------------------------


def test_async_example_stops_cleanly_with_a_follower(tmp_path: Any) -> None:
    """`logs -f` attached while the asyncio example stops: the follow stream
    ends normally with the last lines (STOPPED included), the server stops
    without waiting out its grace for it, and nothing is printed about a
    cancelled StreamLogs handler."""
    root = pathlib.Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, str(root / "examples" / "async_app.py"), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert ready.startswith("serving on "), ready
        with grpc.insecure_channel(ready.split()[-1]) as channel:
            stub = management_pb2_grpc.ManagementStub(channel)
            stream = stub.StreamLogs(management_pb2.StreamLogsRequest(follow=True, tail=1))
            next(stream)  # attached
            proc.send_signal(signal.SIGTERM)
            messages = [e.message for response in stream for e in response.entries]
            assert stream.code() == grpc.StatusCode.OK
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "stopped" in out
    assert any(m.endswith("STOPPING -> STOPPED") for m in messages), messages[-5:]
    for bad in ("Exception not handled", "CancelledError", "Traceback"):
        assert bad not in err, err

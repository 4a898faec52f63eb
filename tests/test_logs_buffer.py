"""The log ring buffer: capture from real logging, filters, and follow streams
read by real threads and asyncio tasks."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import logging
import queue
import random
import sys
import threading
import tracemalloc
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.sdk.trace import TracerProvider

from pycontainer._errors import RequestError
from pycontainer.agent._logs import (
    BufferedEntry,
    LogBuffer,
    LogBufferHandler,
    LogQuery,
    LogReader,
    entry_to_proto,
    install,
    severity_from_level,
    uninstall,
)
from pycontainer.v1 import logs_pb2, management_pb2

_names = itertools.count()


@pytest.fixture
def buf() -> LogBuffer:
    return LogBuffer(capacity=1000)


@contextlib.contextmanager
def private_logger(buffer: LogBuffer) -> Iterator[logging.Logger]:
    """A logger of its own (not propagating to the root) feeding ``buffer``."""
    log = logging.getLogger(f"test_logs.private{next(_names)}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    handler = LogBufferHandler(buffer)
    log.addHandler(handler)
    try:
        yield log
    finally:
        log.removeHandler(handler)


@pytest.fixture
def logger(buf: LogBuffer) -> Iterator[logging.Logger]:
    """A private logger feeding ``buf``."""
    with private_logger(buf) as log:
        yield log


@contextlib.contextmanager
def bare_root(level: int = logging.WARNING) -> Iterator[logging.Logger]:
    """The root logger with no handlers (pytest's removed) and no capture
    installed, as in a fresh process; put back afterwards."""
    root = logging.getLogger()
    uninstall()
    saved_handlers, saved_level = root.handlers[:], root.level
    for h in saved_handlers:
        root.removeHandler(h)
    root.setLevel(level)
    try:
        yield root
    finally:
        uninstall()
        for h in root.handlers[:]:
            root.removeHandler(h)
        for h in saved_handlers:
            root.addHandler(h)
        root.setLevel(saved_level)


def read_all(buffer: LogBuffer, **request: Any) -> list[management_pb2.StreamLogsResponse]:
    """Every response of a non-following StreamLogs request."""
    query = LogQuery.from_request(management_pb2.StreamLogsRequest(**request))
    return list(LogReader(buffer, query).iter_responses(lambda: True))


def messages(responses: list[management_pb2.StreamLogsResponse]) -> list[str]:
    return [e.message for r in responses for e in r.entries]


# -- capture ---------------------------------------------------------------------------


def test_captures_records_with_extra_and_code_attributes(
    buf: LogBuffer, logger: logging.Logger
) -> None:
    logger.info("user %s logged in", "bob", extra={"user_id": 42, "tenant": "acme"})
    line = sys._getframe().f_lineno - 1
    logger.warning("disk at %d%%", 91)

    info, warning = buf.snapshot()
    assert (info.sequence, warning.sequence) == (1, 2)
    assert (info.severity, info.severity_text) == (logs_pb2.SEVERITY_INFO, "INFO")
    assert (warning.severity, warning.severity_text) == (logs_pb2.SEVERITY_WARN, "WARNING")
    assert info.logger == logger.name
    assert info.message == "user bob logged in"
    assert warning.message == "disk at 91%"
    assert info.attributes["user_id"] == "42"
    assert info.attributes["tenant"] == "acme"
    assert info.attributes["thread.name"] == threading.current_thread().name
    assert info.attributes["code.filepath"] == __file__
    assert info.attributes["code.lineno"] == str(line)
    assert info.attributes["code.function"] == (
        "test_captures_records_with_extra_and_code_attributes"
    )
    assert "user_id" not in warning.attributes
    assert info.trace_id == info.span_id == ""


def test_captures_exception_as_semconv_attributes(buf: LogBuffer, logger: logging.Logger) -> None:
    try:
        raise ValueError("bad value 7")
    except ValueError:
        logger.exception("could not parse")

    (entry,) = buf.snapshot()
    assert entry.severity == logs_pb2.SEVERITY_ERROR
    assert entry.message == "could not parse"
    assert entry.attributes["exception.type"] == "ValueError"
    assert entry.attributes["exception.message"] == "bad value 7"
    stack = entry.attributes["exception.stacktrace"]
    assert stack.startswith("Traceback (most recent call last):")
    assert 'raise ValueError("bad value 7")' in stack


def test_bad_format_args_still_make_an_entry(buf: LogBuffer) -> None:
    # Made here, not in a fixture: pytest attaches its own handlers (which fail
    # the test on such a record) to non-propagating loggers made before the test.
    with private_logger(buf) as logger:
        logger.info("%d items", "not a number")

    (entry,) = buf.snapshot()
    assert entry.message.startswith("%d items")
    assert "not a number" in entry.message


def test_unprintable_extra_still_makes_an_entry(buf: LogBuffer, logger: logging.Logger) -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no str")

    logger.info("hello", extra={"thing": Broken()})

    (entry,) = buf.snapshot()
    assert entry.message == "hello"
    assert "unprintable Broken" in entry.attributes["thing"]


@pytest.mark.parametrize(
    ("level", "severity"),
    [
        (logging.DEBUG, logs_pb2.SEVERITY_DEBUG),
        (logging.INFO, logs_pb2.SEVERITY_INFO),
        (logging.WARNING, logs_pb2.SEVERITY_WARN),
        (logging.ERROR, logs_pb2.SEVERITY_ERROR),
        (logging.CRITICAL, logs_pb2.SEVERITY_FATAL),
        (5, logs_pb2.SEVERITY_TRACE),  # a custom TRACE level
        (21, logs_pb2.SEVERITY_INFO2),
        (25, logs_pb2.SEVERITY_INFO4),  # a custom NOTICE level: still INFO
        (39, logs_pb2.SEVERITY_WARN4),
        (100, logs_pb2.SEVERITY_FATAL4),
    ],
)
def test_severity_from_level(level: int, severity: int) -> None:
    assert severity_from_level(level) == severity


def test_custom_level_keeps_its_name(buf: LogBuffer, logger: logging.Logger) -> None:
    logging.addLevelName(25, "NOTICE")
    logger.log(25, "noted")

    (entry,) = buf.snapshot()
    assert (entry.severity, entry.severity_text) == (logs_pb2.SEVERITY_INFO4, "NOTICE")


def test_long_messages_are_truncated_with_a_marker() -> None:
    buffer = LogBuffer(capacity=4, max_message_chars=10)
    buffer.append(9, "INFO", "app", "x" * 25)
    buffer.append(9, "INFO", "app", "y" * 10)

    long, exact = buffer.snapshot()
    assert long.message == "x" * 10 + "... [truncated 15 chars]"
    assert exact.message == "y" * 10


def test_trace_and_span_ids_inside_a_span(buf: LogBuffer, logger: logging.Logger) -> None:
    provider = TracerProvider()
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        logger.info("inside")
    logger.info("outside")
    provider.shutdown()

    inside, outside = buf.snapshot()
    ctx = span.get_span_context()
    assert inside.trace_id == f"{ctx.trace_id:032x}"
    assert inside.span_id == f"{ctx.span_id:016x}"
    assert len(inside.trace_id) == 32
    assert len(inside.span_id) == 16
    assert outside.trace_id == outside.span_id == ""


def test_entry_to_proto_has_every_field() -> None:
    entry = BufferedEntry(
        sequence=7,
        time_ns=1_700_000_000_123_456_789,
        severity=logs_pb2.SEVERITY_WARN,
        severity_text="WARNING",
        logger="app.db",
        message="slow",
        attributes={"k": "v"},
        trace_id="a" * 32,
        span_id="b" * 16,
    )
    msg = entry_to_proto(entry)
    assert msg == logs_pb2.LogEntry(
        sequence=7,
        time=Timestamp(seconds=1_700_000_000, nanos=123_456_789),
        severity=logs_pb2.SEVERITY_WARN,
        severity_text="WARNING",
        logger="app.db",
        message="slow",
        attributes={"k": "v"},
        trace_id="a" * 32,
        span_id="b" * 16,
    )
    # The batched path builds the same message.
    buffer = LogBuffer()
    buffer.append(
        entry.severity,
        entry.severity_text,
        entry.logger,
        entry.message,
        entry.attributes,
        time_ns=entry.time_ns,
        trace_id=entry.trace_id,
        span_id=entry.span_id,
    )
    (response,) = read_all(buffer)
    sent = response.entries[0]
    assert sent == entry_to_proto(buffer.snapshot()[0])
    assert sent.time == msg.time
    assert sent.attributes == msg.attributes


# -- installing on the root logger -------------------------------------------------------


def test_install_keeps_the_apps_console_output() -> None:
    with bare_root() as root:
        out = io.StringIO()
        console = logging.StreamHandler(out)
        console.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        root.addHandler(console)
        quiet = logging.getLogger("test_logs.console.quiet")
        verbose = logging.getLogger("test_logs.console.verbose")
        verbose.setLevel(logging.DEBUG)  # as apps do: basicConfig() plus a chatty logger

        def log_all(tag: str) -> str:
            out.seek(0)
            out.truncate()
            quiet.info("info %s", tag)
            quiet.warning("warning %s", tag)
            verbose.debug("debug %s", tag)
            root.info("root info %s", tag)
            root.error("root error %s", tag)
            return out.getvalue().replace(tag, "T")

        before = log_all("before")
        assert before.splitlines() == [
            "WARNING test_logs.console.quiet warning T",
            "DEBUG test_logs.console.verbose debug T",
            "ERROR root root error T",
        ]

        buffer = LogBuffer()
        install(buffer, logging.INFO)
        assert root.level == logging.INFO
        assert log_all("during") == before
        assert [e.message for e in buffer.snapshot()] == [
            "info during",
            "warning during",
            "root info during",
            "root error during",
        ]

        uninstall(buffer)
        assert root.level == logging.WARNING
        assert root.handlers == [console]
        assert console.filters == []
        assert log_all("after") == before


def test_install_keeps_last_resort_output(capsys: pytest.CaptureFixture[str]) -> None:
    with bare_root() as root:
        plain = logging.getLogger("test_logs.lastresort.plain")
        handled = logging.getLogger("test_logs.lastresort.handled")
        own = io.StringIO()
        own_handler = logging.StreamHandler(own)
        handled.addHandler(own_handler)

        def log_all(tag: str) -> tuple[str, str]:
            own.seek(0)
            own.truncate()
            capsys.readouterr()
            plain.info("info %s", tag)
            plain.warning("warning %s", tag)
            handled.warning("handled %s", tag)
            root.critical("critical %s", tag)
            return capsys.readouterr().err.replace(tag, "T"), own.getvalue().replace(tag, "T")

        try:
            before = log_all("before")
            # No handler anywhere: logging.lastResort prints WARNING and up.
            assert before == ("warning T\ncritical T\n", "handled T\n")

            buffer = LogBuffer()
            install(buffer, logging.INFO)
            assert log_all("during") == before
            assert [e.message for e in buffer.snapshot()] == [
                "info during",
                "warning during",
                "handled during",
                "critical during",
            ]

            uninstall(buffer)
            assert root.handlers == []
            assert root.level == logging.WARNING
            assert log_all("after") == before
        finally:
            handled.removeHandler(own_handler)


def test_install_is_idempotent_and_uninstall_restores() -> None:
    with bare_root(logging.WARNING) as root:
        console = logging.NullHandler()
        root.addHandler(console)
        first, second = LogBuffer(), LogBuffer()
        log = logging.getLogger("test_logs.idempotent")

        install(first, logging.INFO)
        install(first, logging.INFO)
        assert len(root.handlers) == 2
        install(second, logging.DEBUG)
        assert root.level == logging.DEBUG
        log.debug("d1")
        log.info("i1")
        assert [e.message for e in first.snapshot()] == ["i1"]
        assert [e.message for e in second.snapshot()] == ["d1", "i1"]

        uninstall(second)
        uninstall(second)  # not installed any more: nothing to do
        assert root.level == logging.INFO
        log.info("i2")
        assert [e.message for e in second.snapshot()] == ["d1", "i1"]
        assert first.snapshot()[-1].message == "i2"

        uninstall(first)
        assert root.level == logging.WARNING
        assert root.handlers == [console]
        assert console.filters == []


def test_install_never_raises_the_root_level() -> None:
    with bare_root(logging.DEBUG) as root:
        buffer = LogBuffer()
        install(buffer, logging.INFO)
        assert root.level == logging.DEBUG
        logging.getLogger("test_logs.debug").debug("not captured")
        logging.getLogger("test_logs.debug").info("captured")
        assert [e.message for e in buffer.snapshot()] == ["captured"]
        uninstall()
        assert root.level == logging.DEBUG


# -- queries -------------------------------------------------------------------------------


@pytest.fixture
def sample() -> LogBuffer:
    buffer = LogBuffer()
    for seconds, severity, text, name, message in [
        (1000, logs_pb2.SEVERITY_INFO, "INFO", "app", "hello world"),
        (2000, logs_pb2.SEVERITY_WARN, "WARNING", "app.db", "slow query 120ms"),
        (3000, logs_pb2.SEVERITY_ERROR, "ERROR", "apple", "disk full"),
        (4000, logs_pb2.SEVERITY_DEBUG, "DEBUG", "other", "hello debug"),
        (5000, logs_pb2.SEVERITY_FATAL, "CRITICAL", "app", "fatal crash"),
    ]:
        buffer.append(severity, text, name, message, time_ns=seconds * 1_000_000_000)
    return buffer


ALL = ["hello world", "slow query 120ms", "disk full", "hello debug", "fatal crash"]


@pytest.mark.parametrize(
    ("request_fields", "expected"),
    [
        ({}, ALL),
        ({"tail": 2}, ["hello debug", "fatal crash"]),
        ({"tail": 0}, []),
        ({"tail": 99}, ALL),
        ({"since": Timestamp(seconds=3000)}, ["disk full", "hello debug", "fatal crash"]),
        ({"since": Timestamp(seconds=2999, nanos=999_999_999)}, ALL[2:]),
        (
            {"min_severity": logs_pb2.SEVERITY_WARN},
            ["slow query 120ms", "disk full", "fatal crash"],
        ),
        ({"contains": "hello"}, ["hello world", "hello debug"]),
        ({"contains": "Hello"}, []),
        ({"pattern": r"\d+ms$"}, ["slow query 120ms"]),
        ({"pattern": "^(hello|disk)"}, ["hello world", "disk full", "hello debug"]),
        ({"logger": "app"}, ["hello world", "slow query 120ms", "fatal crash"]),
        ({"logger": "app.db"}, ["slow query 120ms"]),
        ({"logger": "ap"}, []),
        # tail is the newest N of what passes the filters.
        ({"tail": 1, "logger": "app"}, ["fatal crash"]),
        ({"tail": 2, "min_severity": logs_pb2.SEVERITY_WARN}, ["disk full", "fatal crash"]),
        ({"tail": 2, "contains": "hello"}, ["hello world", "hello debug"]),
        ({"logger": "app", "contains": "o", "min_severity": logs_pb2.SEVERITY_INFO}, ALL[:2]),
    ],
)
def test_filters(sample: LogBuffer, request_fields: dict[str, Any], expected: list[str]) -> None:
    assert messages(read_all(sample, **request_fields)) == expected


def test_matches_is_usable_on_its_own(sample: LogBuffer) -> None:
    query = LogQuery.from_request(management_pb2.StreamLogsRequest(logger="app", contains="o"))
    assert query.has_filters
    assert [e.message for e in sample.snapshot() if query.matches(e)] == [
        "hello world",
        "slow query 120ms",
    ]
    assert not LogQuery().has_filters


def test_query_defaults() -> None:
    query = LogQuery.from_request(management_pb2.StreamLogsRequest())
    assert query.tail is None
    assert query.since_ns is None
    assert query.max_batch_size == 1000
    assert not query.follow
    assert LogQuery.from_request(management_pb2.StreamLogsRequest(tail=0)).tail == 0


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"tail": -1}, "tail"),
        ({"pattern": "(unclosed"}, "pattern"),
        ({"pattern": "a{2,1}"}, "pattern"),
        ({"max_batch_size": 10_001}, "max_batch_size"),
        ({"min_severity": 99}, "min_severity"),
        ({"since": Timestamp(seconds=1, nanos=1_000_000_000)}, "since"),
    ],
)
def test_invalid_requests_name_the_field(request_fields: dict[str, Any], field: str) -> None:
    with pytest.raises(RequestError) as caught:
        LogQuery.from_request(management_pb2.StreamLogsRequest(**request_fields))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_pattern_error_says_what_is_wrong() -> None:
    with pytest.raises(RequestError, match=r"pattern: .*RE2 refuses it: missing \)"):
        LogQuery.from_request(management_pb2.StreamLogsRequest(pattern="(unclosed"))


def test_max_batch_size_at_the_limit_is_fine() -> None:
    request = management_pb2.StreamLogsRequest(max_batch_size=10_000)
    assert LogQuery.from_request(request).max_batch_size == 10_000


# -- history and batching --------------------------------------------------------------------


def test_empty_history_without_follow_sends_nothing() -> None:
    assert read_all(LogBuffer()) == []
    assert read_all(LogBuffer(), tail=10) == []


def test_history_comes_in_batches() -> None:
    buf = LogBuffer(capacity=5000)
    for i in range(2500):
        buf.append(9, "INFO", "app", f"m{i}")

    responses = read_all(buf, max_batch_size=1000)
    assert [len(r.entries) for r in responses] == [1000, 1000, 500]
    assert [e.sequence for r in responses for e in r.entries] == list(range(1, 2501))

    tailed = read_all(buf, tail=250, max_batch_size=100)
    assert [len(r.entries) for r in tailed] == [100, 100, 50]
    assert tailed[0].entries[0].message == "m2250"


def test_history_is_what_was_retained_when_the_reader_was_made() -> None:
    buffer = LogBuffer(capacity=10)
    for i in range(25):
        buffer.append(9, "INFO", "app", f"m{i}")
    reader = LogReader(buffer, LogQuery())
    buffer.append(9, "INFO", "app", "later")

    assert messages(list(reader.iter_responses(lambda: True))) == [f"m{i}" for i in range(16, 25)]


def test_follow_sends_pending_entries_in_full_batches() -> None:
    buffer = LogBuffer()
    for i in range(10):
        buffer.append(9, "INFO", "app", f"old{i}")
    reader = LogReader(buffer, LogQuery(tail=0, follow=True, max_batch_size=1000))
    responses = reader.iter_responses(lambda: True)
    for i in range(2500):
        buffer.append(9, "INFO", "app", f"new{i}")

    sizes = [len(next(responses).entries) for _ in range(3)]
    assert sizes == [1000, 1000, 500]


# -- following ----------------------------------------------------------------------------------


def test_follow_in_a_thread_gets_new_entries_and_stops_when_inactive(
    buf: LogBuffer, logger: logging.Logger
) -> None:
    logger.info("before")
    reader = LogReader(buf, LogQuery(follow=True))
    got: queue.Queue[str] = queue.Queue()
    stop = threading.Event()

    def follow() -> None:
        for response in reader.iter_responses(lambda: not stop.is_set()):
            for entry in response.entries:
                got.put(entry.message)

    thread = threading.Thread(target=follow)
    thread.start()
    try:
        assert got.get(timeout=10) == "before"
        for i in range(3):
            logger.info("after %d", i)
        assert [got.get(timeout=10) for _ in range(3)] == ["after 0", "after 1", "after 2"]
    finally:
        stop.set()
        # A cancelled client frees the thread: is_active() is checked every 0.25 s.
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert buf.waiting == 0


async def test_follow_async_gets_new_entries_and_cleans_up_on_cancel(
    buf: LogBuffer, logger: logging.Logger
) -> None:
    reader = LogReader(buf, LogQuery(follow=True, logger=logger.name))
    got: asyncio.Queue[str] = asyncio.Queue()

    async def follow() -> None:
        async for response in reader.aiter_responses():
            for entry in response.entries:
                got.put_nowait(entry.message)

    task = asyncio.create_task(follow())
    logger.info("from the loop")
    assert await asyncio.wait_for(got.get(), 10) == "from the loop"

    thread = threading.Thread(target=logger.warning, args=("from a thread",))
    thread.start()
    thread.join()
    assert await asyncio.wait_for(got.get(), 10) == "from a thread"

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert buf.waiting == 0
    # Appending after the reader left wakes nobody and does not fail.
    logger.info("after")
    assert buf.last_sequence == 3


async def test_follow_async_batches_pending_entries() -> None:
    buffer = LogBuffer()
    reader = LogReader(buffer, LogQuery(follow=True, max_batch_size=1000))
    for i in range(2500):
        buffer.append(9, "INFO", "app", f"m{i}")
    responses = reader.aiter_responses()
    sizes = [len((await anext(responses)).entries) for _ in range(3)]
    assert sizes == [1000, 1000, 500]
    await responses.aclose()


def test_many_entries_arrive_in_few_responses() -> None:
    produced = 5000
    # Room for all of them: a reader descheduled on a loaded machine must not
    # lose entries here (losing them is tested with the slow readers below).
    buf = LogBuffer(capacity=produced)
    reader = LogReader(buf, LogQuery(follow=True))
    sizes: list[int] = []
    missed: list[int] = []
    stop = threading.Event()

    def follow() -> None:
        for response in reader.iter_responses(lambda: not stop.is_set()):
            sizes.append(len(response.entries))
            missed.append(response.missed)
            if sum(sizes) >= produced:
                return

    thread = threading.Thread(target=follow)
    thread.start()
    try:
        with private_logger(buf) as logger:
            for i in range(produced):
                logger.info("entry %d", i)
        thread.join(timeout=30)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert sum(sizes) == produced
    assert sum(missed) == 0
    # Lingering lets entries gather: far fewer responses than entries.
    assert len(sizes) <= produced // 20, sizes


# -- slow readers ----------------------------------------------------------------------------------


def _account(response: management_pb2.StreamLogsResponse, last_seen: int) -> tuple[int, int, int]:
    """(received, gap, last sequence) of one response after ``last_seen``."""
    seqs = [e.sequence for e in response.entries]
    assert seqs == sorted(seqs)
    gap = (seqs[-1] - last_seen - len(seqs)) if seqs else 0
    return len(seqs), gap, seqs[-1] if seqs else last_seen


def test_slow_reader_gets_missed_counts_that_add_up() -> None:
    capacity = 16
    buffer = LogBuffer(capacity=capacity)
    reader = LogReader(buffer, LogQuery(follow=True, max_batch_size=4))
    responses = reader.iter_responses(lambda: True)
    rng = random.Random(7)
    produced = received = missed = gaps = last_seen = 0

    def pull() -> None:
        nonlocal received, missed, gaps, last_seen
        response = next(responses)
        assert response.entries or response.missed
        n, gap, last_seen = _account(response, last_seen)
        received += n
        missed += response.missed
        gaps += gap

    for _ in range(300):
        for _ in range(rng.randint(0, 40)):
            produced += 1
            buffer.append(9, "INFO", "app", f"m{produced}", {"i": str(produced)})
        for _ in range(rng.randint(0, 3)):
            if received + missed < produced:
                pull()
    while received + missed < produced:
        pull()

    assert received + missed == produced
    assert missed > 0
    # The skipped entries are exactly the gaps in the sequence numbers.
    assert gaps == missed
    assert len(buffer) == capacity


def test_missed_is_sent_even_when_no_entry_passes_the_filter() -> None:
    buffer = LogBuffer(capacity=4)
    reader = LogReader(buffer, LogQuery(follow=True, contains="wanted"))
    responses = reader.iter_responses(lambda: True)
    for i in range(10):
        buffer.append(9, "INFO", "app", f"other {i}")

    response = next(responses)
    assert list(response.entries) == []
    assert response.missed == 6


def test_slow_reader_against_a_fast_thread_stays_bounded() -> None:
    capacity, produced = 64, 20_000
    buffer = LogBuffer(capacity=capacity)
    reader = LogReader(buffer, LogQuery(follow=True, max_batch_size=8))
    responses = reader.iter_responses(lambda: True)
    received = missed = gaps = last_seen = 0
    tracemalloc.start()
    try:

        def produce() -> None:
            for i in range(produced):
                buffer.append(9, "INFO", "app", f"message number {i}", {"i": str(i)})

        producer = threading.Thread(target=produce)
        producer.start()
        baseline: int | None = None
        while received + missed < produced:
            response = next(responses)
            response.SerializeToString()  # some work per response, as a server does
            n, gap, last_seen = _account(response, last_seen)
            received, missed, gaps = received + n, missed + response.missed, gaps + gap
            if baseline is None and received + missed > produced // 10:
                baseline = tracemalloc.get_traced_memory()[0]
        producer.join()
        grown = tracemalloc.get_traced_memory()[0] - (baseline or 0)
    finally:
        tracemalloc.stop()

    assert received + missed == produced
    assert gaps == missed
    assert len(buffer) == capacity
    # 18,000 more entries went through: the buffer and reader did not keep them.
    assert grown < 256 * 1024, grown


def test_a_log_reader_counts_as_open_until_its_stream_ends_or_closes() -> None:
    buffer = LogBuffer()
    buffer.append(logs_pb2.SEVERITY_INFO, "INFO", "app", "one")
    assert buffer.readers == 0
    assert buffer.wait_read(0.0)  # none open: at once
    ended = threading.Event()
    follow = LogQuery.from_request(management_pb2.StreamLogsRequest(follow=True))
    frames = LogReader(buffer, follow).iter_frames(lambda: True, ended.is_set)
    next(frames)
    assert buffer.readers == 1
    assert not buffer.wait_read(0.01)
    waited: list[bool] = []
    waiter = threading.Thread(target=lambda: waited.append(buffer.wait_read(30.0)))
    waiter.start()
    buffer.append(logs_pb2.SEVERITY_INFO, "INFO", "app", "two")
    ended.set()
    buffer.wake_all()
    assert [e.message for f in frames for e in _decode(f)] == ["two"]  # the rest, then the end
    waiter.join(30)
    assert waited == [True]
    assert buffer.readers == 0
    # A reader dropped before its end (its client went) is closed too.
    frames = LogReader(buffer, follow).iter_frames(lambda: True)
    next(frames)
    assert buffer.readers == 1
    frames.close()
    assert buffer.readers == 0


def test_an_async_log_reader_counts_as_open_until_it_is_closed() -> None:
    async def main() -> None:
        buffer = LogBuffer()
        buffer.append(logs_pb2.SEVERITY_INFO, "INFO", "app", "one")
        follow = LogQuery.from_request(management_pb2.StreamLogsRequest(follow=True))
        frames = LogReader(buffer, follow).aiter_frames()
        await anext(frames)
        assert buffer.readers == 1
        await frames.aclose()
        assert buffer.readers == 0

    asyncio.run(main())


def _decode(frame: bytes) -> list[logs_pb2.LogEntry]:
    return list(management_pb2.StreamLogsResponse.FromString(frame).entries)

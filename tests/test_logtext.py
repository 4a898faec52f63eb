"""Reading what a program printed as log entries (pycontainer.logtext): the
formats of Python's logging give their level, logger, message and time; any
other line its stream's level (or the sidecar's rules'), no logger, its text."""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from pycontainer.logtext import (
    INFO,
    WARN,
    Level,
    PrintedStream,
    Severities,
    parse_rule,
    read_line,
)
from pycontainer.v1 import logs_pb2

NOW_NS = time.time_ns()
_NS = 1_000_000_000


def _asctime(when_ns: int) -> str:
    """``when_ns`` as logging's default asctime prints it (local time)."""
    record = logging.LogRecord("x", logging.INFO, "", 0, "", None, None)
    record.created, record.msecs = when_ns / _NS, (when_ns // 1_000_000) % 1000
    return logging.Formatter().formatTime(record)


STAMP_NS = NOW_NS - NOW_NS % 1_000_000 - 2 * _NS  # printed two seconds before it was read
STAMP = _asctime(STAMP_NS)


def _timeless_id(value: object) -> str | None:
    """A test id without the time (ids must be the same in every pytest-xdist
    worker, which each collect at their own time)."""
    return value.replace(STAMP, "STAMP") if isinstance(value, str) else None


@pytest.mark.parametrize(
    ("line", "want"),
    [
        # "%(asctime)s %(levelname)s %(name)s %(message)s", as the examples print.
        (
            f"{STAMP} INFO examples.sync_app workers stopped",
            ("INFO", logs_pb2.SEVERITY_INFO, "examples.sync_app", "workers stopped"),
        ),
        (
            f"{STAMP} WARNING examples.async_app queue is long: 12 jobs",
            ("WARNING", logs_pb2.SEVERITY_WARN, "examples.async_app", "queue is long: 12 jobs"),
        ),
        (f"{STAMP} DEBUG app", ("DEBUG", logs_pb2.SEVERITY_DEBUG, "app", "")),
        # With the level in brackets, a colon or a dash after the name.
        (
            f"{STAMP} [ERROR] app.db: connection lost",
            ("ERROR", logs_pb2.SEVERITY_ERROR, "app.db", "connection lost"),
        ),
        (
            f"{STAMP} CRITICAL __main__ - gone",
            ("CRITICAL", logs_pb2.SEVERITY_FATAL, "__main__", "gone"),
        ),
        # "%(asctime)s - %(name)s - %(levelname)s - %(message)s" (the cookbook's).
        (
            f"{STAMP} - app.web - WARNING - slow: 2s",
            ("WARNING", logs_pb2.SEVERITY_WARN, "app.web", "slow: 2s"),
        ),
    ],
    ids=_timeless_id,
)
def test_logging_formats_with_a_time(line: str, want: tuple[str, int, str, str]) -> None:
    for default in (INFO, WARN):  # the stream does not matter
        printed = read_line(line, default, NOW_NS)
        got = (printed.level.text, printed.level.number, printed.logger, printed.message)
        assert got == want
        assert printed.time_ns == STAMP_NS  # its own, to the millisecond


@pytest.mark.parametrize(
    ("line", "want"),
    [
        # logging.BASIC_FORMAT, basicConfig's default: no time of its own.
        ("WARNING:root:disk low", ("WARNING", logs_pb2.SEVERITY_WARN, "root", "disk low")),
        ("INFO:app.db:x: y", ("INFO", logs_pb2.SEVERITY_INFO, "app.db", "x: y")),
        ("ERROR:app:", ("ERROR", logs_pb2.SEVERITY_ERROR, "app", "")),
    ],
)
def test_logging_basic_format(line: str, want: tuple[str, int, str, str]) -> None:
    printed = read_line(line, WARN, NOW_NS)
    assert (printed.level.text, printed.level.number, printed.logger, printed.message) == want
    assert printed.time_ns == NOW_NS


def test_a_line_formatted_by_logging_itself_reads_back_as_its_record() -> None:
    record = logging.LogRecord("tryout.db", logging.ERROR, "", 0, "lost %d jobs", (3,), None)
    formats = (
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        logging.BASIC_FORMAT,
        "%(asctime)s - %(name)s - %(levelname)s - %(message)s",
    )
    for fmt in formats:
        printed = read_line(logging.Formatter(fmt).format(record), INFO, time.time_ns())
        assert (printed.level.number, printed.level.text) == (logs_pb2.SEVERITY_ERROR, "ERROR")
        assert (printed.logger, printed.message) == ("tryout.db", "lost 3 jobs"), fmt


def test_iso_times_with_a_zone() -> None:
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S") + ".123456789Z"
    printed = read_line(f"{stamp} INFO app hi", INFO, time.time_ns())
    assert printed.time_ns == int(when.timestamp()) * _NS + 123_456_789
    offset = when.astimezone(timezone(timedelta(hours=5, minutes=30)))
    printed = read_line(f"{offset.isoformat()} INFO app hi", INFO, time.time_ns())
    assert printed.time_ns == int(when.timestamp()) * _NS


@pytest.mark.parametrize(
    "stamp",
    [
        "2001-01-01 00:00:00,000",  # long before it was read (or another time zone)
        _asctime(NOW_NS + 3600 * _NS),  # an hour after it was read
        "2026-13-01 00:00:00,000",  # no such month
    ],
    ids=["long-before", "an-hour-after", "no-such-month"],
)
def test_an_implausible_own_time_gives_the_time_read(stamp: str) -> None:
    printed = read_line(f"{stamp} ERROR app boom", INFO, NOW_NS)
    assert printed.time_ns == NOW_NS
    assert (printed.level.text, printed.logger, printed.message) == ("ERROR", "app", "boom")


@pytest.mark.parametrize(
    ("line", "default", "want"),
    [
        ("plain words", INFO, ("INFO", logs_pb2.SEVERITY_INFO)),
        ("plain words", WARN, ("WARN", logs_pb2.SEVERITY_WARN)),
        # The sidecar's rules: a leading level word, logfmt's level=.
        ("ERROR something broke", INFO, ("ERROR", logs_pb2.SEVERITY_ERROR)),
        ("[debug] detail", WARN, ("DEBUG", logs_pb2.SEVERITY_DEBUG)),
        ("ts=1 level=warn msg=slow", INFO, ("WARN", logs_pb2.SEVERITY_WARN)),
        # Lower case levelnames are not logging's: the rules read them, whole.
        ("info:app:hello", WARN, ("INFO", logs_pb2.SEVERITY_INFO)),
        # Not a level word (INFOS), not a logger (a space before the colon).
        ("INFOS:app:x", INFO, ("INFO", logs_pb2.SEVERITY_INFO)),
        ("Traceback (most recent call last):", WARN, ("WARN", logs_pb2.SEVERITY_WARN)),
    ],
)
def test_other_lines_keep_their_text_and_name_no_logger(
    line: str, default: Level, want: tuple[str, int]
) -> None:
    printed = read_line(line, default, NOW_NS)
    assert (printed.level.text, printed.level.number) == want
    assert (printed.logger, printed.message, printed.time_ns) == ("", line, NOW_NS)


def test_operator_rules_apply_to_other_lines() -> None:
    severities = Severities([parse_rule("^panic:=fatal")])
    printed = read_line("panic: nil map", WARN, NOW_NS, severities)
    assert printed.level.number == logs_pb2.SEVERITY_FATAL
    assert printed.message == "panic: nil map"


def test_a_long_line_is_read_in_linear_time() -> None:
    # Near misses: a time and a level but no name; a level but no second colon.
    for line in (f"{STAMP} INFO " + "-" * 200_000, "INFO:" + "a" * 200_000):
        started = time.monotonic()
        printed = read_line(line, INFO, NOW_NS)
        assert time.monotonic() - started < 1.0
        assert (printed.logger, printed.message) == ("", line)


def _logged_with_a_chained_traceback() -> list[str]:
    """What logger.exception() prints for an exception raised while handling one."""
    record = logging.LogRecord("app.jobs", logging.ERROR, "", 0, "job %d failed", (7,), None)
    try:
        try:
            {}["missing"]
        except KeyError as exc:
            raise ValueError("bad job") from exc
    except ValueError:
        record.exc_info = sys.exc_info()
    text = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s").format(record)
    return text.splitlines()


def test_a_traceback_goes_with_its_record() -> None:
    lines = _logged_with_a_chained_traceback()
    assert "The above exception was the direct cause of the following exception:" in lines
    assert lines[-1] == "ValueError: bad job"
    stream = PrintedStream(WARN)
    printed = [stream.read(line, NOW_NS) for line in [*lines, "plain after", *lines[:1]]]
    assert printed[0].message == "job 7 failed"
    # Every line of it: the record's level and logger, the line's own text.
    assert {(p.level.text, p.logger) for p in printed[: len(lines)]} == {("ERROR", "app.jobs")}
    assert [p.message for p in printed[1 : len(lines)]] == lines[1:]
    # What follows it is a line of its own (and the next record one too).
    after = printed[len(lines)]
    assert (after.level.text, after.logger, after.message) == ("WARN", "", "plain after")
    assert printed[-1].message == "job 7 failed"


@pytest.mark.parametrize(
    "lines",
    [
        # No record before it: an uncaught exception's traceback (sys.excepthook).
        ["Traceback (most recent call last):", '  File "x.py", line 1', "KeyError: 1"],
        # After a record, a line that starts no traceback ends it.
        ["INFO:app:hi", "  indented but no traceback"],
        # A plain record line of the generic rules is not a record.
        ["ERROR something", "Traceback (most recent call last):"],
    ],
)
def test_lines_that_are_not_a_records_traceback(lines: list[str]) -> None:
    stream = PrintedStream(WARN)
    printed = [stream.read(line, NOW_NS) for line in lines]
    assert printed[-1].logger == ""
    assert printed[-1].message == lines[-1]

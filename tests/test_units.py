"""pycontainer.units: the one parser and formatter of durations and quantities, and the
Duration/Timestamp conversions with presence."""

from __future__ import annotations

import argparse
import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycontainer import units
from pycontainer.v1 import manager_pb2

td = datetime.timedelta


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", td(0)),
        ("0s", td(0)),
        ("30s", td(seconds=30)),
        ("1h30m", td(hours=1, minutes=30)),
        ("1.5h", td(minutes=90)),
        ("500ms", td(milliseconds=500)),
        ("250us", td(microseconds=250)),
        ("2d", td(days=2)),
        (" 2m ", td(minutes=2)),
    ],
)
def test_parse_duration(text: str, expected: datetime.timedelta) -> None:
    assert units.parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        ("30", "no unit"),
        ("-1s", "negative"),
        ("5 minutes", "not a duration"),
        ("999999999d", "too long"),
    ],
)
def test_parse_duration_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        units.parse_duration(text)


def test_duration_arg_is_a_usage_error() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="no unit"):
        units.duration_arg("5")


@given(st.timedeltas(min_value=td(0), max_value=td(days=3650)))
def test_format_then_parse_is_exact(value: datetime.timedelta) -> None:
    assert units.parse_duration(units.format_duration(value)) == value


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (td(0), "0s"),
        (td(minutes=90), "1h30m"),
        (td(seconds=1.5), "1.5s"),
        (td(milliseconds=5), "5ms"),
    ],
)
def test_format_duration(value: datetime.timedelta, text: str) -> None:
    assert units.format_duration(value) == text


def test_duration_field_has_presence() -> None:
    request = manager_pb2.StopContainerRequest(container="x")
    assert units.duration_field(request, "grace_period") is None
    request.grace_period.CopyFrom(units.duration_to_proto(td(0)))
    assert units.duration_field(request, "grace_period") == td(0)
    request.grace_period.CopyFrom(units.duration_to_proto(td(seconds=2.5)))
    assert units.duration_field(request, "grace_period") == td(seconds=2.5)


def test_timestamp_round_trip_and_presence() -> None:
    container = manager_pb2.Container()
    assert units.timestamp_field(container, "create_time") is None
    when = datetime.datetime(2026, 12, 1, 7, 44, 18, 123456, tzinfo=datetime.UTC)
    container.create_time.CopyFrom(units.timestamp_to_proto(when))
    assert units.timestamp_field(container, "create_time") == when
    assert units.timestamp_to_proto(1.5).ToNanoseconds() == 1_500_000_000
    with pytest.raises(ValueError, match="timezone"):
        units.timestamp_to_proto(datetime.datetime(2026, 1, 1))


def test_default_grace_period_is_kubernetes() -> None:
    assert td(seconds=30) == units.DEFAULT_GRACE_PERIOD


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (2**63 - 1, datetime.timedelta.max),
        (2**62, datetime.timedelta.max),
        (-(2**63), datetime.timedelta.min),
    ],
)
def test_duration_past_timedeltas_range_saturates(
    seconds: int, expected: datetime.timedelta
) -> None:
    """A Duration no timedelta holds (found by fuzzing: a grace period of 2^62 s
    was an OverflowError, hence UNKNOWN) is the longest timedelta of its sign,
    which every bound check rejects."""
    from google.protobuf import duration_pb2

    message = duration_pb2.Duration(seconds=seconds, nanos=999_999_999)
    assert units.duration_from_proto(message) == expected

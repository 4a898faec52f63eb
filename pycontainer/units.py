"""One home for units and time: durations, Kubernetes quantities, protobuf times.

Durations are written as operators write them (``30s``, ``2m``, ``1h30m``,
``500ms``) and held as :class:`datetime.timedelta`. Quantities are Kubernetes'
(``500m`` cpu, ``256Mi`` memory). ``google.protobuf.Duration`` and
``Timestamp`` fields convert to and from ``timedelta`` and ``datetime`` *with
presence*: an unset field is ``None``, never zero (``stop --grace 0`` means no
grace at all, not "the default").

Every module of the project parses, formats and converts through here; the
defaults that several places need (the grace period) are defined here once.
"""

from __future__ import annotations

import argparse
import datetime
import math
import re
from collections.abc import Mapping
from fractions import Fraction

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message

__all__ = [
    "DEFAULT_GRACE_PERIOD",
    "DURATION_HELP",
    "MAX_DURATION",
    "duration_arg",
    "duration_field",
    "duration_from_proto",
    "duration_to_proto",
    "format_cpu",
    "format_duration",
    "format_memory",
    "parse_cpu",
    "parse_duration",
    "parse_memory",
    "timestamp_field",
    "timestamp_from_proto",
    "timestamp_to_proto",
]

#: How long a stop waits for the program before it is killed, when neither the
#: spec nor the caller says (Kubernetes' terminationGracePeriodSeconds default).
DEFAULT_GRACE_PERIOD = datetime.timedelta(seconds=30)

#: The longest duration google.protobuf.Duration holds (about 10,000 years).
MAX_DURATION = datetime.timedelta(seconds=315_576_000_000)

DURATION_HELP = "such as 30s, 2m, 1h30m or 500ms (units ns, us, ms, s, m, h, d)"

# --- Durations -----------------------------------------------------------------------------

_NS_PER_UNIT: Mapping[str, int] = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
}
# Longer units first, so that "ms" is not read as "m" and then "s".
_UNIT = "|".join(sorted(_NS_PER_UNIT, key=len, reverse=True))
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_PART = re.compile(rf"({_NUMBER})({_UNIT})")
_WHOLE = re.compile(rf"(?:{_NUMBER}(?:{_UNIT}))+")
_BARE_NUMBER = re.compile(_NUMBER)
_MAX_NS = (MAX_DURATION // datetime.timedelta(microseconds=1)) * 1_000


def parse_duration(text: str) -> datetime.timedelta:
    """The duration written in ``text``; ValueError saying what is wrong and what to write.

    Units: ns, us (or µs), ms, s, m, h, d; a number may have a fraction
    (``1.5h``); ``0`` needs no unit. A bare number is refused rather than
    guessed at: ``30`` could mean seconds or milliseconds. Held to the
    microsecond (``timedelta``'s resolution).
    """
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"empty duration: write one {DURATION_HELP}")
    if stripped.startswith("-"):
        raise ValueError(f"{text!r} is negative: a duration must be 0 or more")
    if stripped == "0":
        return datetime.timedelta(0)
    if _BARE_NUMBER.fullmatch(stripped):
        raise ValueError(f"{text!r} has no unit: write {stripped}s, {stripped}ms or {stripped}m")
    if not _WHOLE.fullmatch(stripped):
        raise ValueError(f"{text!r} is not a duration: write one {DURATION_HELP}")
    total = sum(
        (Fraction(number) * _NS_PER_UNIT[unit] for number, unit in _PART.findall(stripped)),
        Fraction(0),
    )
    ns = round(total)
    if ns > _MAX_NS:
        raise ValueError(f"{text!r} is too long (at most {MAX_DURATION.days:,} days)")
    return datetime.timedelta(microseconds=round(Fraction(ns, 1_000)))


def duration_arg(text: str) -> datetime.timedelta:
    """argparse ``type=``: a duration, or a usage error naming the mistake."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_FORMAT_UNITS = (("h", 3_600_000_000), ("m", 60_000_000))


def format_duration(duration: datetime.timedelta) -> str:
    """``duration`` as it would be written: ``1h30m``, ``45s``, ``1.5s``, ``500ms``, ``0s``.

    :func:`parse_duration` reads it back exactly.
    """
    us = duration // datetime.timedelta(microseconds=1)
    if us < 0:
        return "-" + format_duration(-duration)
    if us == 0:
        return "0s"
    if us < 1_000_000:
        if us >= 1_000:
            return f"{_trim(Fraction(us, 1_000))}ms"
        return f"{us}us"
    out = []
    rest = us
    for unit, size in _FORMAT_UNITS:
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    if rest:
        out.append(f"{_trim(Fraction(rest, 1_000_000))}s")
    return "".join(out)


def _trim(value: Fraction) -> str:
    """Up to 6 decimals, no trailing zeros: 1.5, 2, 0.000001."""
    return f"{float(value):.6f}".rstrip("0").rstrip(".")


# --- google.protobuf.Duration and Timestamp --------------------------------------------------


def duration_to_proto(duration: datetime.timedelta) -> duration_pb2.Duration:
    """A google.protobuf.Duration holding ``duration``."""
    message = duration_pb2.Duration()
    message.FromTimedelta(duration)
    return message


def duration_from_proto(message: duration_pb2.Duration) -> datetime.timedelta:
    """The timedelta a Duration message holds (to the microsecond).

    One past timedelta's range (±999,999,999 days, far beyond protobuf's own
    ±10,000 years, so never a valid Duration) saturates to timedelta.max or
    .min: every bound check then rejects it as too long, instead of an
    OverflowError reaching the caller as UNKNOWN."""
    try:
        return datetime.timedelta(seconds=message.seconds, microseconds=message.nanos // 1_000)
    except OverflowError:
        return datetime.timedelta.max if message.seconds > 0 else datetime.timedelta.min


def duration_field(message: Message, field: str) -> datetime.timedelta | None:
    """``message.field`` as a timedelta, or None when the field is unset.

    Presence, not value: a Duration of zero that was set is ``timedelta(0)``.
    """
    if not message.HasField(field):
        return None
    value = getattr(message, field)
    assert isinstance(value, duration_pb2.Duration)
    return duration_from_proto(value)


def timestamp_to_proto(when: datetime.datetime | float) -> timestamp_pb2.Timestamp:
    """A google.protobuf.Timestamp of an aware datetime or of Unix seconds."""
    message = timestamp_pb2.Timestamp()
    if isinstance(when, datetime.datetime):
        if when.tzinfo is None:
            raise ValueError("a naive datetime has no instant: give it a timezone")
        message.FromDatetime(when.astimezone(datetime.UTC))
    else:
        message.FromNanoseconds(round(when * 1e9))
    return message


def timestamp_from_proto(message: timestamp_pb2.Timestamp) -> datetime.datetime:
    """The aware UTC datetime a Timestamp message holds."""
    return message.ToDatetime(tzinfo=datetime.UTC)


def timestamp_field(message: Message, field: str) -> datetime.datetime | None:
    """``message.field`` as an aware datetime, or None when the field is unset."""
    if not message.HasField(field):
        return None
    value = getattr(message, field)
    assert isinstance(value, timestamp_pb2.Timestamp)
    return timestamp_from_proto(value)


# --- Kubernetes quantities -----------------------------------------------------------------

_INT64_MAX = 2**63 - 1
_QUANTITY = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?P<suffix>[a-zA-Z]*)")
_CPU_SUFFIXES: Mapping[str, Fraction] = {"": Fraction(1), "m": Fraction(1, 1000)}
_MEMORY_SUFFIXES: Mapping[str, Fraction] = {
    "": Fraction(1),
    **{s: Fraction(1000**i) for i, s in enumerate("kMGTPE", start=1)},
    **{f"{s}i": Fraction(1024**i) for i, s in enumerate("KMGTPE", start=1)},
}
_CPU_EXPECTED = "cores such as '2' or '0.5', or millicores such as '500m'"
_MEMORY_EXPECTED = (
    "bytes such as '1024', or a quantity such as '256Mi' or '1G' "
    "(suffixes k M G T P E, Ki Mi Gi Ti Pi Ei)"
)


def parse_cpu(value: str | int | float) -> int:
    """Millicores from a Kubernetes cpu quantity: ``"500m"``, ``"2"``, ``"0.5"`` or a number
    of cores; fractions of a millicore round up. Raises ValueError on anything else."""
    return _parse_quantity("cpu", value, _CPU_SUFFIXES, 1000, _CPU_EXPECTED)


def parse_memory(value: str | int | float) -> int:
    """Bytes from a Kubernetes memory quantity: ``"256Mi"``, ``"1G"``, ``"1024"`` or a number
    of bytes; fractions of a byte round up. Raises ValueError on anything else."""
    if isinstance(value, str) and value.strip().endswith("m"):
        # Kubernetes reads "m" as milli even for memory; nobody means millibytes.
        raise ValueError(
            f"memory: expected {_MEMORY_EXPECTED}; got {value!r} "
            "('m' means thousandths: did you mean 'M' or 'Mi'?)"
        )
    return _parse_quantity("memory", value, _MEMORY_SUFFIXES, 1, _MEMORY_EXPECTED)


def _parse_quantity(
    what: str,
    value: str | int | float,
    suffixes: Mapping[str, Fraction],
    scale: int,
    expected: str,
) -> int:
    """``value`` times its suffix's multiplier times ``scale``, rounded up."""
    amount: Fraction | None = None
    # bool is an int, but True cores is a mistake, not one core.
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value):
            # str() first: Fraction(0.1) is the binary float, a hair above 1/10.
            amount = Fraction(str(value))
    elif isinstance(value, str):
        match = _QUANTITY.fullmatch(value.strip())
        if match and match["suffix"] in suffixes:
            amount = Fraction(match["number"]) * suffixes[match["suffix"]]
    if amount is None or amount < 0:
        raise ValueError(f"{what}: expected {expected}; got {value!r}")
    result = math.ceil(amount * scale)
    if result > _INT64_MAX:
        raise ValueError(f"{what}: {value!r} is too large")
    return result


def format_cpu(millis: int) -> str:
    """A cpu amount as Kubernetes writes it: whole cores as ``"2"``, else ``"1500m"``."""
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


_BINARY_UNITS = [(f"{s}i", 1024**i) for i, s in reversed(list(enumerate("KMGTPE", start=1)))]


def format_memory(n: int) -> str:
    """A memory amount, short: ``"512Mi"``, ``"2Gi"``, ``"1536Mi"``, ``"22.5Gi"``.

    Exact (and parsed back by :func:`parse_memory`) when a whole number of some
    unit that takes at most 4 digits; otherwise rounded to one decimal in the
    largest unit it has at least one of (``"1.5Gi"``, not ``"23635008Ki"``), and
    under 1Ki plain bytes. Callers that need the exact amount check the round
    trip (as spec files do).
    """
    for unit, size in _BINARY_UNITS:
        if abs(n) >= size and n % size == 0 and abs(n // size) < 10_000:
            return f"{n // size}{unit}"
    for unit, size in _BINARY_UNITS:
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)

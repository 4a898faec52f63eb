"""Durations as operators write them: ``30s``, ``2m``, ``1h30m``, ``500ms``.

The one parser of the command line and of spec files. Units: ns, us (or µs),
ms, s, m, h, d; a number may have a fraction (``1.5h``); ``0`` needs no unit.
A bare number is refused rather than guessed at: ``30`` could mean seconds or
milliseconds.
"""

from __future__ import annotations

import argparse
import re
from fractions import Fraction

from google.protobuf import duration_pb2

__all__ = [
    "DURATION_HELP",
    "duration_arg",
    "format_duration",
    "parse_duration",
    "to_proto",
]

_NS_PER_UNIT: dict[str, int] = {
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
# google.protobuf.Duration's range.
_MAX_NS = 315_576_000_000 * 1_000_000_000

DURATION_HELP = "such as 30s, 2m, 1h30m or 500ms (units ns, us, ms, s, m, h, d)"


def parse_duration(text: str) -> int:
    """Nanoseconds in ``text``; ValueError saying what is wrong and what to write."""
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"empty duration: write one {DURATION_HELP}")
    if stripped.startswith("-"):
        raise ValueError(f"{text!r} is negative: a duration must be 0 or more")
    if stripped == "0":
        return 0
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
        raise ValueError(f"{text!r} is too long (at most 10,000 years)")
    return ns


def duration_arg(text: str) -> int:
    """argparse ``type=``: nanoseconds, or a usage error naming the mistake."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def to_proto(ns: int) -> duration_pb2.Duration:
    """A google.protobuf.Duration of ``ns`` nanoseconds."""
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(ns)
    return duration


_FORMAT_UNITS = (("h", 3_600_000_000_000), ("m", 60_000_000_000))


def format_duration(ns: int) -> str:
    """``ns`` as it would be written: ``1h30m``, ``45s``, ``1.5s``, ``500ms``, ``0s``.

    parse_duration() reads it back (exactly, down to the microsecond).
    """
    if ns < 0:
        return "-" + format_duration(-ns)
    if ns == 0:
        return "0s"
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("us", 1_000)):
            if ns >= size:
                return f"{_trim(Fraction(ns, size))}{unit}"
        return f"{ns}ns"
    out = []
    rest = ns
    for unit, size in _FORMAT_UNITS:
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    if rest:
        out.append(f"{_trim(Fraction(rest, 1_000_000_000))}s")
    return "".join(out)


def _trim(value: Fraction) -> str:
    """Up to 6 decimals, no trailing zeros: 1.5, 2, 0.000001."""
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    return text

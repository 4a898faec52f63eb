"""Argument types of the command line: what argparse checks before a verb
runs (a mistake is a usage error naming it). Cheap to import: the grammar is
built from these without grpc or rich."""

from __future__ import annotations

import argparse
import datetime

from ..units import duration_arg, format_duration
from ..v1 import container_pb2, logs_pb2

#: The default `logs --tail` with a selector, as kubectl's.
SELECTOR_TAIL = 10

__all__ = [
    "LIVE_STATES",
    "SELECTOR_TAIL",
    "SEVERITY_CHOICES",
    "STATE_NAMES",
    "bounded_duration",
    "count",
    "hz",
    "level",
    "parse_severity",
    "parse_state",
    "pattern",
    "route_weight",
    "selector",
    "states",
]

_STATE_PREFIX = "LIFECYCLE_STATE_"
STATE_NAMES: dict[str, int] = {
    name.removeprefix(_STATE_PREFIX).lower(): number
    for name, number in container_pb2.LifecycleState.items()
    if number != container_pb2.LIFECYCLE_STATE_UNSPECIFIED
}

S = container_pb2
#: States of a container that is still there (not STOPPED or FAILED): what
#: ``ps`` lists without -a, and what top follows.
LIVE_STATES = (
    S.LIFECYCLE_STATE_CREATED,
    S.LIFECYCLE_STATE_STARTING,
    S.LIFECYCLE_STATE_RUNNING,
    S.LIFECYCLE_STATE_PAUSING,
    S.LIFECYCLE_STATE_PAUSED,
    S.LIFECYCLE_STATE_RESUMING,
    S.LIFECYCLE_STATE_STOPPING,
)


def parse_state(text: str) -> int:
    """A LifecycleState from ``running`` (or ``RUNNING``, ``LIFECYCLE_STATE_RUNNING``)."""
    key = text.strip().lower().removeprefix(_STATE_PREFIX.lower())
    if key not in STATE_NAMES:
        raise ValueError(f"unknown state {text!r}: use one of {', '.join(STATE_NAMES)}")
    return STATE_NAMES[key]


def states(text: str) -> list[int]:
    """``running,paused``: the states."""
    try:
        return [parse_state(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def count(text: str) -> int:
    """A whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def bounded_count(low: int, high: int) -> argparse._ActionType:
    """argparse ``type=``: a whole number from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
        return value

    return parse


def hz(text: str) -> int:
    """Samples per second, 1 to 1000."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be from 1 to 1000, got {value}")
    return value


def bounded_duration(
    low: datetime.timedelta, high: datetime.timedelta, *, exclusive_low: bool = False
) -> argparse._ActionType:
    """argparse ``type=``: a duration from ``low`` to ``high``."""

    def parse(text: str) -> datetime.timedelta:
        value = duration_arg(text)
        too_low = value <= low if exclusive_low else value < low
        if too_low or value > high:
            lower = f"more than {format_duration(low)}" if exclusive_low else format_duration(low)
            raise argparse.ArgumentTypeError(
                f"must be from {lower} to {format_duration(high)}, got {text!r}"
            )
        return value

    return parse


_SEVERITY_NAMES = {
    "trace": logs_pb2.SEVERITY_TRACE,
    "debug": logs_pb2.SEVERITY_DEBUG,
    "info": logs_pb2.SEVERITY_INFO,
    "warn": logs_pb2.SEVERITY_WARN,
    "warning": logs_pb2.SEVERITY_WARN,
    "error": logs_pb2.SEVERITY_ERROR,
    "fatal": logs_pb2.SEVERITY_FATAL,
    "critical": logs_pb2.SEVERITY_FATAL,
}
SEVERITY_CHOICES = ("trace", "debug", "info", "warn", "error", "fatal")


def parse_severity(text: str) -> int:
    """A Severity from ``warn`` (or warning, WARN, error, critical, ...)."""
    key = text.strip().lower()
    if key not in _SEVERITY_NAMES:
        raise ValueError(f"unknown level {text!r}: use one of {', '.join(SEVERITY_CHOICES)}")
    return _SEVERITY_NAMES[key]


def level(text: str) -> int:
    """argparse ``type=`` for --level."""
    try:
        return parse_severity(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def pattern(text: str) -> str:
    """A regular expression the container accepts (RE2 syntax)."""
    # Here, not at the top: the grammar module stays cheap to import.
    from ..agent._pattern import PatternError, compile_pattern

    try:
        compile_pattern(text)
    except PatternError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a regular expression: {exc}") from None
    return text


def selector(text: str) -> str:
    """-l SELECTOR: checked with the manager's own grammar (a usage error
    here, rather than INVALID_ARGUMENT after dialling)."""
    if not text.strip():
        # The default (no selector), also for a blank one: a verb that acts on
        # containers then asks for ids, -l or --all rather than taking all.
        return ""
    from .._selectors import parse_selector

    try:
        parse_selector(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad label selector: {exc}") from None
    return text


def route_weight(text: str) -> tuple[str, int]:
    """SUBSET=WEIGHT of `pycontainer route`: a subset name and a whole number
    from 0 to limits.MAX_MESH_TRAFFIC_WEIGHT."""
    from ..limits import MAX_MESH_TRAFFIC_WEIGHT

    subset, sep, weight = text.partition("=")
    subset = subset.strip()
    if not sep or not subset:
        raise argparse.ArgumentTypeError(
            f"{text!r}: write SUBSET=WEIGHT, such as v1=90 (a spec's service.subset, or "
            "the spec's name, and its share of the traffic)"
        )
    try:
        value = int(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the weight {weight!r} is not a whole number (such as v1=90)"
        ) from None
    if not 0 <= value <= MAX_MESH_TRAFFIC_WEIGHT:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the weight must be from 0 to {MAX_MESH_TRAFFIC_WEIGHT}, got {value}"
        )
    return subset, value

"""Deadlines as ``timedelta``: the client's default for unary calls, a caller's
own, or none."""

from __future__ import annotations

import datetime
import enum

__all__ = ["DEFAULT", "DEFAULT_TIMEOUT", "Default", "Timeout", "seconds"]

#: How long a unary call may take unless the client or the caller says otherwise.
DEFAULT_TIMEOUT = datetime.timedelta(seconds=30)


class Default(enum.Enum):
    """The type of :data:`DEFAULT`: "the client's default deadline"."""

    TOKEN = "default"


DEFAULT = Default.TOKEN

#: What a method's ``timeout`` takes: a deadline, None (no deadline) or DEFAULT.
Timeout = datetime.timedelta | None | Default


def seconds(timeout: Timeout, default: datetime.timedelta | None) -> float | None:
    """The deadline in the float seconds grpc takes."""
    chosen = default if timeout is DEFAULT else timeout
    if chosen is None:
        return None
    assert isinstance(chosen, datetime.timedelta)
    if chosen < datetime.timedelta(0):
        raise ValueError(f"a deadline must be 0 or more, got {chosen}")
    return chosen.total_seconds()

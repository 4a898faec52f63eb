"""Python frames as the profile reports them."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from types import FrameType

from pycontainer.v1 import profile_pb2

__all__ = ["Frame", "Stack", "frame_of", "frame_pbs", "thread_names", "walk"]

# function is the code object's name in thread and task stacks (as the proto
# says) and its qualified name, such as "Class.method", in CPU profiles.
Frame = tuple[str, str, int]
Stack = tuple[Frame, ...]


def frame_of(frame: FrameType, qualified: bool = False) -> Frame:
    code = frame.f_code
    name = code.co_qualname if qualified else code.co_name
    return (name, code.co_filename, frame.f_lineno or 0)


def walk(frame: FrameType | None, qualified: bool = False) -> Stack:
    """The stack ending in frame, outermost first."""
    out: list[Frame] = []
    while frame is not None:
        out.append(frame_of(frame, qualified))
        frame = frame.f_back
    out.reverse()
    return tuple(out)


def frame_pbs(stack: Iterable[Frame]) -> list[profile_pb2.StackFrame]:
    return [profile_pb2.StackFrame(function=f, file=p, line=n) for f, p, n in stack]


def thread_names() -> dict[int, str]:
    return {t.ident: t.name for t in threading.enumerate() if t.ident is not None}

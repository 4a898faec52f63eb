"""Every thread's Python stack at one instant, read safely on every CPython.

Before 3.12, reading the frames of *other, running* threads from Python is
unsafe: ``sys._current_frames()`` makes frame objects for frames those threads
own, and walking them (``f_back``, ``f_lineno``) takes bytecodes, between which
the GIL passes to the owners, which pop, reuse and hand over those frames. A
sampler doing it under load crashes the process (SIGSEGV in
``PyFrame_GetBack``/``_PyFrame_IsIncomplete``, CPython gh-99110 and its
follow-ups) or deadlocks it (gh-106883: ``_PyThread_CurrentFrames`` holds the
runtime's HEAD_LOCK while a collection it triggers lets another thread take the
GIL; CPython's fix disables the collector there). CPython 3.11.7 crashed or
hung in 6 of 6 loaded trials; 3.12 did not.

So before 3.12 the stacks are read by ``faulthandler.dump_traceback``: one C
call, under the GIL from start to end, that walks every thread's interpreter
frames without making frame objects, running Python code or collecting, and
writes them out; we parse that text. Its limits are CPython's: 100 threads,
100 innermost frames a thread, names and paths cut at 500 characters. It names
functions plainly (``co_name``); qualified names (``Class.method``) are found
afterwards among the live functions' code objects (immutable, so safe to read),
by file, name and line. The calling thread's own stack is read directly. From
3.12 on, frames are
read from ``sys._current_frames()`` (the collector held off during that call,
as CPython's own gh-106883 fix does).
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import os
import re
import sys
import tempfile
import threading
import types
from collections.abc import Iterator
from typing import Final

from ._frames import Frame, Stack, walk

__all__ = ["FRAME_OBJECTS_SAFE", "StackReader"]

#: Whether other threads' frame objects may be walked from Python.
FRAME_OBJECTS_SAFE: Final = sys.version_info >= (3, 12)

_THREAD = re.compile(r"^(?:Current thread|Thread) 0x([0-9a-fA-F]+) ")
_FRAME = re.compile(r'^  File "(?P<file>.*)", line (?P<line>\S+) in (?P<name>.*)$')


@contextlib.contextmanager
def _collector_held() -> Iterator[None]:
    """No garbage collection in the block (gh-106883); restored after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class StackReader:
    """Reads every thread's stack, outermost frame first, by thread ident.

    Holds a scratch file (an in-memory one on Linux) for the faulthandler
    dumps; close it with :meth:`close` or use the reader as a context manager.
    """

    def __init__(self, qualified: bool = False, *, dump: bool = not FRAME_OBJECTS_SAFE) -> None:
        self._qualified = qualified
        self._fd: int | None = None
        self._names: _QualifiedNames | None = None
        if dump:
            self._fd = _scratch_fd()
            self._names = _QualifiedNames() if qualified else None

    def read(self) -> dict[int, Stack]:
        """Every thread's stack now (threads without Python frames left out)."""
        stacks = self._frame_stacks() if self._fd is None else self._dumped_stacks(self._fd)
        # This thread's own frames are safe to walk, and its stack ends in the caller.
        stacks[threading.get_ident()] = walk(sys._getframe(1), self._qualified)
        return stacks

    def _frame_stacks(self) -> dict[int, Stack]:
        with _collector_held():
            frames = sys._current_frames()
        return {ident: walk(frame, self._qualified) for ident, frame in frames.items()}

    def _dumped_stacks(self, fd: int) -> dict[int, Stack]:
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        faulthandler.dump_traceback(fd, all_threads=True)
        size = os.lseek(fd, 0, os.SEEK_CUR)
        stacks = parse_dump(os.pread(fd, size, 0).decode("ascii", "replace"))
        if self._names is not None:
            names = self._names
            stacks = {
                ident: tuple((names.qualify(n, f, line), f, line) for n, f, line in stack)
                for ident, stack in stacks.items()
            }
        return stacks

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StackReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _scratch_fd() -> int:
    if hasattr(os, "memfd_create"):
        with contextlib.suppress(OSError):
            return os.memfd_create("pycontainer-stacks", os.MFD_CLOEXEC)
    fd, path = tempfile.mkstemp(prefix="pycontainer-stacks-")
    os.unlink(path)
    return fd


def parse_dump(text: str) -> dict[int, Stack]:
    """The stacks in faulthandler's all-threads dump, by thread ident."""
    stacks: dict[int, Stack] = {}
    ident: int | None = None
    frames: list[Frame] = []

    def flush() -> None:
        if ident is not None and frames:
            # The dump lists the innermost frame first.
            stacks[ident] = tuple(reversed(frames))

    for line in text.splitlines():
        thread = _THREAD.match(line)
        if thread is not None:
            flush()
            ident, frames = int(thread.group(1), 16), []
            continue
        frame = _FRAME.match(line)
        if frame is not None and ident is not None:
            number = frame.group("line")
            frames.append(
                (frame.group("name"), frame.group("file"), int(number) if number.isdigit() else 0)
            )
    flush()
    return stacks


class _QualifiedNames:
    """Qualified names of functions, by (file, plain name, line), from the
    code objects of live functions (indexed once, at the first need)."""

    def __init__(self) -> None:
        self._index: dict[tuple[str, str], list[tuple[str, frozenset[int]]]] | None = None
        self._found: dict[tuple[str, str, int], str] = {}

    def qualify(self, name: str, file: str, line: int) -> str:
        key = (name, file, line)
        found = self._found.get(key)
        if found is None:
            found = self._found[key] = self._lookup(name, file, line)
        return found

    def _lookup(self, name: str, file: str, line: int) -> str:
        if self._index is None:
            self._index = _index_code()
        candidates = self._index.get((file, name), [])
        for qualname, lines in candidates:
            if line in lines:
                return qualname
        return candidates[0][0] if len(candidates) == 1 else name


def _index_code() -> dict[tuple[str, str], list[tuple[str, frozenset[int]]]]:
    index: dict[tuple[str, str], list[tuple[str, frozenset[int]]]] = {}
    seen: set[int] = set()
    todo = [obj.__code__ for obj in gc.get_objects() if isinstance(obj, types.FunctionType)]
    # gc.get_objects() leaves out what gc.freeze() moved to the permanent
    # generation (a manager in the same process freezes its start-up objects):
    # modules' functions and classes' methods are found through sys.modules too.
    todo.extend(_module_code())
    while todo:
        code = todo.pop()
        if id(code) in seen:
            continue
        seen.add(id(code))
        lines = frozenset(n for _, _, n in code.co_lines() if n is not None)
        index.setdefault((code.co_filename, code.co_name), []).append((code.co_qualname, lines))
        todo.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return index


def _module_code() -> list[types.CodeType]:
    """The code objects of every loaded module's functions and its classes' methods."""
    found: list[types.CodeType] = []
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for value in list(namespace.values()):
            if isinstance(value, types.FunctionType):
                found.append(value.__code__)
            elif isinstance(value, type):
                for member in list(vars(value).values()):
                    function = getattr(member, "__func__", member)  # static/class methods
                    if isinstance(function, types.FunctionType):
                        found.append(function.__code__)
    return found

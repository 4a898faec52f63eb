"""tests/apps/run_manager.py, and on SIGUSR1 the C heap's bytes in use
(glibc mallinfo2, all arenas) written to $MALLINFO_FILE: live native memory,
whatever the heap's fragmentation does to RSS; on SIGUSR2 the same after a
malloc_trim(0)."""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys
from pathlib import Path


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _Mallinfo2


def _report(signum: int, frame: object) -> None:
    info = _libc.mallinfo2()
    out = Path(os.environ["MALLINFO_FILE"])
    tmp = out.with_suffix(".tmp")
    tmp.write_text(f"{info.uordblks + info.hblkhd} {info.arena + info.hblkhd}\n")
    tmp.replace(out)


def _trim(signum: int, frame: object) -> None:
    _libc.malloc_trim(0)
    _report(signum, frame)


signal.signal(signal.SIGUSR1, _report)
signal.signal(signal.SIGUSR2, _trim)  # what a periodic malloc_trim would give back
root = Path(__file__).resolve().parent.parent
sys.argv[0] = str(root / "tests/apps/run_manager.py")
runpy.run_path(sys.argv[0], run_name="__main__")

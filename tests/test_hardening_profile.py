"""CPU sampling of a loaded sync app is safe on every supported CPython: on
3.11, walking other threads' frame objects crashed (SIGSEGV) or hung the app
in every loaded trial (CPython gh-99110, gh-106883)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from pycontainer.agent._profile._threads import StackReader, parse_dump

APP = Path(__file__).parent / "apps" / "profile_stress.py"


def test_cpu_sampling_under_load_neither_crashes_nor_hangs() -> None:
    # Eight 1 s samples at 250 Hz while threads call, raise, start threads and
    # serve gRPC requests; a crash is a negative return code (-11: SIGSEGV).
    done = subprocess.run(
        [sys.executable, str(APP), "8", "1", "250"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])


def _parked(ready: threading.Event, release: threading.Event) -> None:
    ready.set()
    release.wait(10)


class _Holder:
    def park(self, ready: threading.Event, release: threading.Event) -> None:
        _parked(ready, release)


def test_both_readers_see_other_threads_with_qualified_names() -> None:
    ready, release = threading.Event(), threading.Event()
    holder = _Holder()
    thread = threading.Thread(target=holder.park, args=(ready, release))
    thread.start()
    try:
        assert ready.wait(10)
        for dump in (True, False):
            with StackReader(qualified=True, dump=dump) as reader:
                stacks = reader.read()
            names = [name for name, _file, _line in stacks[thread.ident or 0]]
            assert names[0] == "Thread._bootstrap", (dump, names)
            assert "_Holder.park" in names, (dump, names)
            assert "_parked" in names, (dump, names)
            # The caller's own stack ends in the caller.
            mine = stacks[threading.get_ident()]
            assert mine[-1][0] == "test_both_readers_see_other_threads_with_qualified_names"
    finally:
        release.set()
        thread.join(10)


def test_parse_dump() -> None:
    text = (
        "Thread 0x00007f00000000aa (most recent call first):\n"
        '  File "/app/b.py", line 7 in inner\n'
        '  File "/app/a.py", line 3 in outer\n'
        '  File "???", line ??? in ???\n'
        "\n"
        "Current thread 0x00000000000000bb (most recent call first):\n"
        "  <no Python frame>\n"
    )
    assert parse_dump(text) == {
        0x00007F00000000AA: (
            ("???", "???", 0),
            ("outer", "/app/a.py", 3),
            ("inner", "/app/b.py", 7),
        )
    }

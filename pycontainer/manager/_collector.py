"""The cyclic garbage collector of a manager holding thousands of sessions.

Each session is a few hundred long-lived objects (its entry, queues, tasks,
the grpc.aio call's state). CPython's collector walks every tracked object
in a full collection, and runs one each time the survivors grew by a
quarter: at 20,000 sessions each took 1 to 5 s here, with the event loop
(every stream, every operator call) stopped meanwhile: most of a 20,000
registration storm's time, and a 5 s stall in the middle of a 10,000 stop.

So what survives is frozen (gc.freeze: the collector no longer walks it),
a turn at a time: the young generations are collected first (cheap: the
objects made since the last turn), then what is left is moved out of the
collector's sight. Freed by reference counting as ever; only garbage in
cycles among frozen objects waits for the full collection made every
FULL_EVERY (one pause, bounded in frequency, instead of one per growth).
Only for a manager that holds many containers (FREEZE_FROM): a small one
(tests, a laptop) keeps the collector as Python has it.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import logging
import time
from collections.abc import Callable

_log = logging.getLogger("pycontainer.manager")

# From how many containers known survivors are frozen.
FREEZE_FROM = 1_000
# How often survivors are frozen.
FREEZE_EVERY = datetime.timedelta(seconds=1)
# How often everything is unfrozen and collected in full (cycles among the
# frozen: sessions that ended).
FULL_EVERY = datetime.timedelta(minutes=15)


def freeze_survivors() -> None:
    """Collect the young generations, then freeze what survived."""
    gc.collect(1)
    gc.freeze()


def collect_all() -> None:
    """A full collection of everything, frozen included; then freeze again."""
    t0 = time.perf_counter()
    gc.unfreeze()
    found = gc.collect()
    gc.freeze()
    _log.debug("full collection: %d unreachable in %.2fs", found, time.perf_counter() - t0)


async def keep_frozen(
    containers: Callable[[], int],
    every: datetime.timedelta = FREEZE_EVERY,
    full_every: datetime.timedelta = FULL_EVERY,
) -> None:
    """While ``containers()`` is at least FREEZE_FROM: freeze survivors every
    ``every``, and collect all every ``full_every``."""
    last_full = time.monotonic()
    while True:
        await asyncio.sleep(every.total_seconds())
        if containers() < FREEZE_FROM:
            continue
        if time.monotonic() - last_full >= full_every.total_seconds():
            collect_all()
            last_full = time.monotonic()
        else:
            freeze_survivors()

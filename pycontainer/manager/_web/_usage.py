"""CPU and memory of the fleet over time, for the web view: each connected
container's own WatchMetrics stream (the manager's relay, _metricsrelay),
kept as a short ring of samples per container.

Only while a page watches: the first watcher starts one stream per
connected container (and per container that connects later), the last one
to leave ends them all, so a manager nobody looks at holds no stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...units import duration_to_proto
from ...v1 import management_pb2, manager_pb2
from .. import _metricsrelay as metricsrelay

if TYPE_CHECKING:
    from .._manager import Manager

_log = logging.getLogger("pycontainer.manager")

#: How often each container reports while a page watches.
SAMPLE_INTERVAL = datetime.timedelta(seconds=1)
#: Samples kept per container: the charts' width (5 minutes at 1 s).
SAMPLES_KEPT = 300
#: Containers sampled at most (the first by name): a page of a huge fleet
#: must not open a stream to each of 20,000 containers.
SAMPLED_CONTAINERS = 200
# How often the set of sampled containers follows the registry.
_RESYNC_SECONDS = 1.0


@dataclass(frozen=True)
class Sample:
    time: float
    cpu_percent: float
    rss_bytes: int


class Usage:
    """The rings of samples, and the streams that fill them while watched."""

    def __init__(self, manager: Manager) -> None:
        self._m = manager
        self.samples: dict[str, deque[Sample]] = {}
        self._streams: dict[str, asyncio.Task[None]] = {}
        self._watchers = 0
        self._sync: asyncio.Task[None] | None = None

    def latest(self) -> dict[str, Sample]:
        return {cid: ring[-1] for cid, ring in self.samples.items() if ring}

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """While a page watches: the streams run."""
        self._watchers += 1
        if self._sync is None:
            self._sync = asyncio.ensure_future(self._follow_registry())
        try:
            yield
        finally:
            self._watchers -= 1
            if self._watchers == 0 and self._sync is not None:
                self._sync.cancel()
                self._sync = None
                for task in self._streams.values():
                    task.cancel()
                self._streams.clear()

    async def _follow_registry(self) -> None:
        while True:
            wanted = sorted(
                (e for e in self._m.entries.values() if e.connected and e.management_address()),
                key=lambda e: e.name,
            )[:SAMPLED_CONTAINERS]
            ids = {e.id for e in wanted}
            for cid in [c for c in self._streams if c not in ids]:
                self._streams.pop(cid).cancel()
            for entry in wanted:
                if entry.id not in self._streams or self._streams[entry.id].done():
                    self._streams[entry.id] = asyncio.ensure_future(self._sample(entry.id))
            for cid in [c for c in self.samples if c not in self._m.entries]:
                del self.samples[cid]  # forgotten by the registry
            await asyncio.sleep(_RESYNC_SECONDS)

    async def _sample(self, container_id: str) -> None:
        entry = self._m.entries.get(container_id)
        if entry is None:  # forgotten meanwhile
            return
        request = management_pb2.WatchMetricsRequest(
            interval=duration_to_proto(SAMPLE_INTERVAL),
            # Process figures only (always sent): a pattern no name matches.
            metric_filters=["re:^$"],
        )
        ring = self.samples.setdefault(container_id, deque(maxlen=SAMPLES_KEPT))
        try:
            async for raw in metricsrelay.relay(self._m.trust.container_channel, [entry], request):
                snapshot = manager_pb2.ManagerWatchMetricsResponse.FromString(raw).snapshot
                process = snapshot.process
                when = snapshot.time.seconds + snapshot.time.nanos / 1e9
                ring.append(Sample(when, process.cpu_percent, process.rss_bytes))
        except Exception as exc:  # its stream ended (it stopped): resynced later
            _log.debug("web view: metrics of %s ended: %s", container_id, exc)

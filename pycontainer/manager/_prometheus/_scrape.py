"""Containers' metrics fetched through the manager: one snapshot of each
container's Management.WatchMetrics (its first answer, sent at once), over
the channel and credentials the manager's other relays use
(Trust.container_channel).

One slow container must not stall a scrape: every fetch has a deadline of
its own (gRPC's, so that no read is cancelled under grpc.aio: _upstream),
at most ``limits.SCRAPE_CONCURRENCY`` run at once, and a container whose turn
comes after the whole scrape's time ran out is not asked. A container that
does not answer is left out of the answer and counted (:attr:`Scraper.errors`,
``pycontainer_manager_scrape_errors_total``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc

from ... import limits
from ..._errors import RequestError
from ...units import duration_to_proto, format_duration
from ...v1 import management_pb2, metrics_pb2
from .._metricsrelay import WATCH_METRICS
from .._registry import Entry
from .._upstream import responses

__all__ = ["ScrapeError", "Scraper"]

# The first snapshot comes at once; this keeps a second from being made.
_INTERVAL = duration_to_proto(datetime.timedelta(hours=1))


@dataclass
class ScrapeError(Exception):
    """A container's metrics could not be had: why, and whether it was time."""

    container_id: str
    message: str
    timed_out: bool = False

    def __str__(self) -> str:
        return self.message


class Scraper:
    """Fetches snapshots with ``dial`` (a channel to a container's Management
    endpoint); counts the containers that did not answer."""

    def __init__(self, dial: Callable[[Entry], grpc.aio.Channel]) -> None:
        self._dial = dial
        #: Failed scrapes by container id, since the manager started (ids of
        #: containers no longer known are dropped by :meth:`forget_unknown`).
        self.errors: dict[str, int] = {}

    def forget_unknown(self, known: Callable[[str], bool]) -> None:
        """Drop the counts of containers ``known`` no longer knows (a deleted
        record), so that 10,000 containers coming and going keep no series."""
        for container_id in [c for c in self.errors if not known(c)]:
            del self.errors[container_id]

    async def snapshot(self, entry: Entry, seconds: float) -> metrics_pb2.MetricsSnapshot:
        """``entry``'s snapshot within ``seconds``; ScrapeError (counted) if not."""
        try:
            return await self._fetch(entry, seconds)
        except ScrapeError:
            self.errors[entry.id] = self.errors.get(entry.id, 0) + 1
            raise

    async def snapshots(
        self, entries: Iterable[Entry], each: float, total: float
    ) -> list[tuple[Entry, metrics_pb2.MetricsSnapshot | ScrapeError]]:
        """Every entry's snapshot or why not, in order: each within
        ``each`` s, all within ``total`` s (one not yet asked by then is not)."""
        deadline = time.monotonic() + total
        gate = asyncio.Semaphore(limits.SCRAPE_CONCURRENCY)

        async def one(entry: Entry) -> metrics_pb2.MetricsSnapshot | ScrapeError:
            async with gate:
                left = min(each, deadline - time.monotonic())
                try:
                    if left <= 0:
                        self.errors[entry.id] = self.errors.get(entry.id, 0) + 1
                        return ScrapeError(
                            entry.id, f"{entry.id}: not asked, the scrape's time ran out", True
                        )
                    return await self.snapshot(entry, left)
                except ScrapeError as exc:
                    return exc

        chosen = list(entries)
        results = await asyncio.gather(*(one(e) for e in chosen))
        return list(zip(chosen, results, strict=True))

    async def _fetch(self, entry: Entry, seconds: float) -> metrics_pb2.MetricsSnapshot:
        if not entry.management_address():
            raise ScrapeError(
                entry.id,
                f"container {entry.id} advertises no Management endpoint: add one to the "
                "app (container.add_endpoint(..., kind='management'))",
            )
        try:
            channel = self._dial(entry)
        except RequestError as exc:
            raise ScrapeError(entry.id, exc.message) from None
        try:
            call = channel.unary_stream(
                WATCH_METRICS,
                request_serializer=management_pb2.WatchMetricsRequest.SerializeToString,
                response_deserializer=management_pb2.WatchMetricsResponse.FromString,
            )(management_pb2.WatchMetricsRequest(interval=_INTERVAL), timeout=seconds)
            try:
                async for response in responses(call):
                    snapshot: metrics_pb2.MetricsSnapshot = response.snapshot
                    return snapshot
            except grpc.aio.AioRpcError as exc:
                timed_out = exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                why = (
                    f"no answer within {format_duration(datetime.timedelta(seconds=seconds))}"
                    if timed_out
                    else f"{exc.code().name}: {exc.details()}"
                )
                raise ScrapeError(
                    entry.id,
                    f"container {entry.id} did not give its metrics ({why}) "
                    f"from {entry.management_address()}",
                    timed_out,
                ) from None
            finally:
                call.cancel()
            raise ScrapeError(
                entry.id, f"container {entry.id} ended its metrics stream without a snapshot"
            )
        finally:
            with contextlib.suppress(Exception):
                await channel.close(None)

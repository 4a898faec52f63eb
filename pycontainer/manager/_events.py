"""The manager's event stream: a bounded history and live subscribers."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Callable, Iterable

from google.protobuf import timestamp_pb2

from ..v1 import container_pb2, manager_pb2

# A watcher that falls this far behind loses its oldest events (and is told).
_SUBSCRIBER_BUFFER = 10_000
# Event numbers reserved ahead in the store: a manager killed before its last
# events were written leaves its successor numbering after the reservation,
# so that no number is ever given to two events (a gap says events were lost).
SEQUENCE_RESERVATION = 100_000


class EventBus:
    """Publishes events to WatchEvents streams; keeps the recent ones."""

    def __init__(
        self,
        history: int = 1000,
        *,
        restored: Iterable[manager_pb2.Event] = (),
        last_sequence: int = 0,
        sink: Callable[[manager_pb2.Event], None] | None = None,
        reserve: Callable[[int], None] | None = None,
    ) -> None:
        """``restored``: an earlier manager's events (the history starts with
        them); ``last_sequence``: the highest it numbered, where this one goes
        on; ``sink``: told every event (the journal that keeps them);
        ``reserve``: told, ahead, the numbers a successor must start after."""
        self._history: collections.deque[manager_pb2.Event] = collections.deque(
            restored, maxlen=history
        )
        self._subscribers: set[asyncio.Queue[manager_pb2.Event]] = set()
        self._sequence = max([last_sequence, *(e.sequence for e in self._history)])
        self._sink = sink
        self._reserve = reserve
        self._reserved = self._sequence
        #: Events published by this manager, by EventType (/metrics counts
        #: restarts, evictions and lost sessions from it).
        self.published: dict[int, int] = {}

    @property
    def sequence(self) -> int:
        """The number of the newest event."""
        return self._sequence

    def publish(
        self,
        type_: manager_pb2.EventType.ValueType,
        container_id: str,
        container_name: str,
        message: str,
        *,
        state: container_pb2.LifecycleState.ValueType = container_pb2.LIFECYCLE_STATE_UNSPECIFIED,
        command_id: str = "",
        actor: str = "",
        request_id: str = "",
    ) -> manager_pb2.Event:
        """Record an event and hand it to every watcher (call on the loop)."""
        self._sequence += 1
        self.published[type_] = self.published.get(type_, 0) + 1
        if (
            self._reserve is not None
            and self._sequence > self._reserved - SEQUENCE_RESERVATION // 2
        ):
            self._reserved = self._sequence + SEQUENCE_RESERVATION
            self._reserve(self._reserved)
        now = time.time_ns()
        event = manager_pb2.Event(
            sequence=self._sequence,
            time=timestamp_pb2.Timestamp(seconds=now // 10**9, nanos=now % 10**9),
            type=type_,
            container_id=container_id,
            container_name=container_name,
            message=message,
            state=state,
            command_id=command_id,
            actor=actor,
            request_id=request_id,
        )
        self._history.append(event)
        if self._sink is not None:
            self._sink(event)
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()  # drop the oldest for a watcher that lags
            queue.put_nowait(event)
        return event

    def history(self) -> list[manager_pb2.Event]:
        return list(self._history)

    async def subscribe(
        self, include_history: bool, history_only: bool = False
    ) -> AsyncIterator[manager_pb2.Event]:
        """Events as they come, after the retained ones when asked (and only
        those with ``history_only``)."""
        if history_only:
            for event in list(self._history):
                yield event
            return
        queue: asyncio.Queue[manager_pb2.Event] = asyncio.Queue(_SUBSCRIBER_BUFFER)
        self._subscribers.add(queue)
        try:
            if include_history:
                for event in list(self._history):
                    yield event
            while True:
                yield await queue.get()
        finally:
            self._subscribers.discard(queue)

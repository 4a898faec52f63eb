"""The ring of retained log entries: appends never wait, readers hold a cursor.

Each entry is encoded for the wire once, when it is taken (:mod:`._wire`):
a reader sends the kept bytes, however many readers there are, and filters
on the fields kept beside them, never decoding.

Everything a reader needs is public here (``read``, ``wait``, ``wait_async``,
``wake_all``), so that serving entries never reaches into the ring's lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple, Protocol, TypeVar, cast

from pycontainer.v1 import management_pb2

from ...limits import DEFAULT_LOG_CAPACITY
from ._wire import ENTRIES_TAG, SEQUENCE_TAG, entries_fields, entry_fields, varint

__all__ = ["BufferedEntry", "Level", "LogBuffer", "RetainedEntry", "decode_entries"]

_T = TypeVar("_T")
_NEVER = sys.maxsize
# Entries per joined block (see LogBuffer._blocks): batches of a few hundred
# and more are mostly whole blocks; joining one costs its appender ~6 µs.
_BLOCK = 256
_BLOCK_MASK = _BLOCK - 1
# The sequence field's tag and first varint byte, by the sequence's low 7 bits
# (for sequences of 128 and more).
_SEQUENCE_LOW = tuple(SEQUENCE_TAG + bytes((low | 0x80,)) for low in range(128))
# The sequence field of sequences under 128 (0 is never a sequence).
_SEQUENCE_SMALL = tuple(SEQUENCE_TAG + bytes((n,)) for n in range(128))
# An entries element's tag and length, by the LogEntry's length (most are
# under a few hundred bytes).
_HEADS = 1024
_HEAD = tuple(ENTRIES_TAG + varint(size) for size in range(_HEADS))
_NS = 1_000_000_000
# A NamedTuple's own constructor is a Python function; this is the C one.
_new_tuple = tuple.__new__


class Level(Protocol):
    """A severity as :meth:`LogBuffer.extend` takes it."""

    @property
    def number(self) -> int:
        """The OpenTelemetry severity number."""

    @property
    def text(self) -> str:
        """The severity text."""


class BufferedEntry(NamedTuple):
    """One log entry, every field decoded (the manager keeps its stores'
    entries so; :meth:`LogBuffer.snapshot` gives the ring's so)."""

    sequence: int
    time_ns: int
    severity: int
    severity_text: str
    logger: str
    message: str
    attributes: Mapping[str, str]
    trace_id: str = ""
    span_id: str = ""


class RetainedEntry(NamedTuple):
    """One entry as the ring keeps it: the fields filters read, and its encoding."""

    sequence: int
    time_ns: int
    severity: int
    logger: str
    message: str
    #: The entry as one element of ``StreamLogsResponse.entries`` (tag,
    #: length, ``LogEntry``): a batch is the join of its entries' elements.
    element: bytes


def decode_entries(entries: list[RetainedEntry]) -> list[BufferedEntry]:
    """``entries`` decoded from their kept bytes."""
    response = management_pb2.StreamLogsResponse.FromString(b"".join(e.element for e in entries))
    return [
        BufferedEntry(
            m.sequence,
            m.time.seconds * _NS + m.time.nanos,
            int(m.severity),
            m.severity_text,
            m.logger,
            m.message,
            dict(m.attributes),
            m.trace_id,
            m.span_id,
        )
        for m in response.entries
    ]


class _Waiter:
    """A reader waiting until the buffer's newest sequence reaches ``target``."""

    __slots__ = ("cond", "event", "loop", "target")

    def __init__(
        self,
        target: int,
        cond: threading.Condition | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        event: asyncio.Event | None = None,
    ) -> None:
        self.target = target
        self.cond = cond
        self.loop = loop
        self.event = event


class LogBuffer:
    """The newest ``capacity`` log entries, numbered from 1.

    Appending is O(1) and never waits for readers; a reader holds only a
    cursor, so a slow one loses the oldest entries instead of holding memory.
    """

    def __init__(
        self, capacity: int = DEFAULT_LOG_CAPACITY, max_message_chars: int = 16_384
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if max_message_chars < 1:
            raise ValueError(f"max_message_chars must be at least 1, got {max_message_chars}")
        self._capacity = capacity
        self._max_chars = max_message_chars
        self._ring: list[RetainedEntry | None] = [None] * capacity
        # The entries' elements again, by themselves, and joined by blocks
        # of _BLOCK (block b: sequences b * _BLOCK to b * _BLOCK + _BLOCK - 1)
        # when a block's last entry is taken: an unfiltered batch is a few
        # blocks and the elements at its edges, joined.
        self._elements: list[bytes | None] = [None] * capacity
        self._blocks: list[tuple[int, bytes] | None] = [None] * (capacity // _BLOCK + 2)
        self._last = 0  # sequence of the newest entry; 0 when empty
        self._lock = threading.Lock()
        self._waiters: list[_Waiter] = []
        # min(w.target for w in _waiters): append compares one int when no
        # reader waits, or none waits for this entry yet.
        self._wake_at = _NEVER
        # Readers sending entries now (see reading), and their condition.
        self._readers = 0
        self._readers_changed = threading.Condition(threading.Lock())
        # The sequence field of sequence n is _low[n & 0x7F] + _high_bytes
        # (its tag and low 7 bits, then the varint of n >> 7) while
        # n >> 7 == _high.
        self._high, self._high_bytes = 0, b""
        self._low = _SEQUENCE_SMALL

    @property
    def capacity(self) -> int:
        """Most entries retained."""
        return self._capacity

    @property
    def max_message_chars(self) -> int:
        """Longer messages (and attribute values) are truncated to this."""
        return self._max_chars

    @property
    def last_sequence(self) -> int:
        """Sequence number of the newest entry; 0 when nothing was logged."""
        return self._last

    @property
    def oldest_sequence(self) -> int:
        """Sequence number of the oldest entry still retained (1 when empty)."""
        return max(1, self._last - self._capacity + 1)

    @property
    def waiting(self) -> int:
        """How many readers are waiting for new entries now."""
        with self._lock:
            return len(self._waiters)

    def __len__(self) -> int:
        return min(self._last, self._capacity)

    def snapshot(self) -> list[BufferedEntry]:
        """The retained entries, oldest first, decoded."""
        with self._lock:
            last = self._last
        return decode_entries(self.read(max(1, last - self._capacity + 1), last, self._capacity)[0])

    def append(
        self,
        severity: int,
        severity_text: str,
        logger: str,
        message: str,
        attributes: Mapping[str, str] | None = None,
        *,
        time_ns: int | None = None,
        trace_id: str = "",
        span_id: str = "",
    ) -> int:
        """Add one entry (the oldest is dropped when full); returns its sequence."""
        if time_ns is None:
            time_ns = time.time_ns()
        if len(message) > self._max_chars:
            message = self.truncate(message)
        fields = entry_fields(
            time_ns, severity, severity_text, logger, message, attributes, trace_id, span_id
        )
        return self.append_encoded(time_ns, severity, logger, message, fields)

    def append_encoded(
        self, time_ns: int, severity: int, logger: str, message: str, fields: bytes
    ) -> int:
        """Add one entry already encoded: ``fields`` is every ``LogEntry`` field
        but the sequence (``_wire.entry_fields``), and agrees with the other
        arguments, which filters read. Returns its sequence."""
        # acquire/release, not `with`: half the cost, on every entry.
        self._lock.acquire()
        try:
            seq = self._last + 1
            if seq >> 7 != self._high:  # once every 128 entries
                self._renumber(seq)
            # _store, written out: this is every captured record's path.
            number = self._low[seq & 0x7F]
            high = self._high_bytes
            size = len(fields) + len(number) + len(high)
            element = b"".join(
                (_HEAD[size] if size < _HEADS else ENTRIES_TAG + varint(size), fields, number, high)
            )
            slot = seq % self._capacity
            self._elements[slot] = element
            self._ring[slot] = _new_tuple(
                RetainedEntry, (seq, time_ns, severity, logger, message, element)
            )
            self._last = seq
            if seq & _BLOCK_MASK == _BLOCK_MASK:
                self._join_block(seq // _BLOCK)
            if seq < self._wake_at:
                return seq
            ready = self._fire(seq)
        finally:
            self._lock.release()
        if ready:
            _wake_async(ready)
        return seq

    def extend(
        self,
        logger: str,
        messages: Sequence[str],
        levels: Sequence[Level],
        attributes: Mapping[str, str] | None = None,
        *,
        time_ns: int | None = None,
    ) -> int:
        """Add entries that arrived together (lines read at once), as
        :meth:`append` would one by one: ``messages[i]`` at ``levels[i]``, all
        of ``logger`` with ``attributes`` and one time; under one hold of the
        lock. Returns the last one's sequence (the last sequence when none)."""
        if time_ns is None:
            time_ns = time.time_ns()
        limit = self._max_chars
        if max(map(len, messages), default=0) > limit:
            messages = [self.truncate(m) for m in messages]
        encoded = entries_fields(
            time_ns,
            logger,
            ((level.number, level.text, m) for m, level in zip(messages, levels, strict=True)),
            attributes,
        )
        ready: list[_Waiter] = []
        with self._lock:
            for message, level, fields in zip(messages, levels, encoded, strict=True):
                self._store(time_ns, level.number, logger, message, fields)
            seq = self._last
            if seq >= self._wake_at:
                ready = self._fire(seq)
        if ready:
            _wake_async(ready)
        return seq

    def _store(self, time_ns: int, severity: int, logger: str, message: str, fields: bytes) -> None:
        """Under the lock: take one entry (as append_encoded does, which has
        this written out), without waking readers."""
        seq = self._last + 1
        if seq >> 7 != self._high:
            self._renumber(seq)
        number = self._low[seq & 0x7F]
        high = self._high_bytes
        size = len(fields) + len(number) + len(high)
        element = b"".join(
            (_HEAD[size] if size < _HEADS else ENTRIES_TAG + varint(size), fields, number, high)
        )
        slot = seq % self._capacity
        self._elements[slot] = element
        self._ring[slot] = _new_tuple(
            RetainedEntry, (seq, time_ns, severity, logger, message, element)
        )
        self._last = seq
        if seq & _BLOCK_MASK == _BLOCK_MASK:
            self._join_block(seq // _BLOCK)

    def _renumber(self, seq: int) -> None:
        """Under the lock: the sequence field's parts for ``seq`` and the 127
        after it (see _low and _high_bytes in __init__)."""
        self._high = high = seq >> 7
        self._high_bytes = varint(high) if high else b""
        self._low = _SEQUENCE_LOW if high else _SEQUENCE_SMALL

    def _join_block(self, block: int) -> None:
        """Under the lock: keep block ``block`` joined, if all of it is retained."""
        first = block * _BLOCK
        if first >= max(1, self._last - self._capacity + 1):
            elements = self._slice(self._elements, first, first + _BLOCK - 1)
            joined = b"".join(cast(list[bytes], elements))
            self._blocks[block % len(self._blocks)] = (block, joined)

    def _slice(self, ring: list[_T], start: int, end: int) -> list[_T]:
        """Under the lock: the ring's items for sequences ``start`` to ``end``."""
        cap = self._capacity
        i, j = start % cap, end % cap + 1
        return ring[i:j] if i < j else ring[i:] + ring[:j]

    def truncate(self, text: str) -> str:
        """``text`` cut to :attr:`max_message_chars`, saying how much was cut."""
        if len(text) <= self._max_chars:
            return text
        cut = len(text) - self._max_chars
        return f"{text[: self._max_chars]}... [truncated {cut} chars]"

    def read(self, start: int, stop: int, limit: int) -> tuple[list[RetainedEntry], int, int]:
        """Entries from ``start`` up to ``stop`` (inclusive), at most ``limit``.

        Returns the entries, how many in the range were already overwritten
        (skipped), and the sequence to read next.
        """
        chunk, lost, after = self._read(self._ring, start, stop, limit)
        return cast(list[RetainedEntry], chunk), lost, after

    def read_joinable(self, start: int, stop: int, limit: int) -> tuple[list[bytes], int, int, int]:
        """As :meth:`read`, the entries' encodings only, as parts to join: whole
        blocks already joined, elements at the edges. Returns the parts, how
        many entries they hold, how many were skipped, and the sequence to
        read next."""
        with self._lock:
            start, end, lost = self._range(start, stop, limit)
            parts: list[bytes] = []
            blocks, elements = self._blocks, self._elements
            at = start
            while at <= end:
                block = at // _BLOCK
                last = block * _BLOCK + _BLOCK - 1
                if at == block * _BLOCK and last <= end:
                    joined = blocks[block % len(blocks)]
                    if joined is not None and joined[0] == block:
                        parts.append(joined[1])
                        at = last + 1
                        continue
                upto = min(end, last)
                parts += cast(list[bytes], self._slice(elements, at, upto))
                at = upto + 1
        return parts, max(0, end - start + 1), lost, max(start, end + 1)

    def _read(self, ring: list[_T], start: int, stop: int, limit: int) -> tuple[list[_T], int, int]:
        with self._lock:
            start, end, lost = self._range(start, stop, limit)
            if end < start:
                return [], lost, start
            chunk = self._slice(ring, start, end)
        return chunk, lost, end + 1

    def _range(self, start: int, stop: int, limit: int) -> tuple[int, int, int]:
        """Under the lock: the retained sequences from ``start`` up to ``stop``,
        at most ``limit`` (first, last; last < first when none), and how many
        of those asked for were overwritten."""
        oldest = max(1, self._last - self._capacity + 1)
        lost = 0
        if start < oldest:
            skip_to = min(oldest, stop + 1)
            lost = skip_to - start
            start = skip_to
        return start, min(stop, self._last, start + limit - 1), lost

    def wait(self, target: int, timeout: float) -> None:
        """Block until the newest sequence reaches ``target``, ``timeout``
        passes, or :meth:`wake_all` is called."""
        with self._lock:
            if self._last >= target:
                return
            waiter = _Waiter(target, cond=threading.Condition(self._lock))
            self._add_waiter(waiter)
            try:
                assert waiter.cond is not None
                waiter.cond.wait(timeout)
            finally:
                self._remove_waiter(waiter)

    async def wait_async(self, target: int) -> None:
        """Await the newest sequence reaching ``target`` (or :meth:`wake_all`)."""
        event = asyncio.Event()
        waiter = _Waiter(target, loop=asyncio.get_running_loop(), event=event)
        with self._lock:
            if self._last >= target:
                return
            self._add_waiter(waiter)
        try:
            await event.wait()
        finally:
            # Also on cancellation: a waiter left behind would be woken forever.
            with self._lock:
                self._remove_waiter(waiter)

    def wake_all(self) -> None:
        """Wake every waiting reader now, whatever it waits for (readers
        that should end, say because their container stopped, then see so)."""
        with self._lock:
            ready = self._fire(_NEVER)
        _wake_async(ready)

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Count a reader (a StreamLogs stream) as open while in the block, so
        that :meth:`wait_read` can let it finish sending before a server stops."""
        with self._readers_changed:
            self._readers += 1
        try:
            yield
        finally:
            with self._readers_changed:
                self._readers -= 1
                self._readers_changed.notify_all()

    @property
    def readers(self) -> int:
        """How many readers are open (see :meth:`reading`)."""
        return self._readers

    def wait_read(self, timeout: float) -> bool:
        """Wait until no reader is open, at most ``timeout`` seconds; whether
        none is. At once when none is."""
        with self._readers_changed:
            return self._readers_changed.wait_for(lambda: self._readers == 0, timeout)

    def _fire(self, seq: int) -> list[_Waiter]:
        """Under the lock: notify sync waiters reached by ``seq``; return async ones."""
        ready: list[_Waiter] = []
        keep: list[_Waiter] = []
        for w in self._waiters:
            if w.target > seq:
                keep.append(w)
            elif w.cond is not None:
                w.cond.notify()
            else:
                ready.append(w)
        self._waiters = keep
        self._wake_at = min((w.target for w in keep), default=_NEVER)
        return ready

    def _add_waiter(self, waiter: _Waiter) -> None:
        self._waiters.append(waiter)
        self._wake_at = min(self._wake_at, waiter.target)

    def _remove_waiter(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            self._wake_at = min((w.target for w in self._waiters), default=_NEVER)


def _wake_async(ready: list[_Waiter]) -> None:
    """Outside the lock (waking a loop writes to its self-pipe): set each waiter's event."""
    for w in ready:
        loop, event = cast(asyncio.AbstractEventLoop, w.loop), cast(asyncio.Event, w.event)
        # RuntimeError: the reader's loop is closed, nobody to wake.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(event.set)

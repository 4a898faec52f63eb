"""Log entries encoded once, when taken: the kept bytes decode to exactly the
entry (as protobuf's own encoder would build it), a StreamLogs batch joined
from them is the StreamLogsResponse of those entries, filters on the kept
fields pick what they picked before, and real servers (sync and aio) send
the batches to generated stubs, every follower getting everything."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf.internal.encoder import _VarintBytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pycontainer.agent._logs import (
    BufferedEntry,
    LogBuffer,
    LogBufferHandler,
    LogQuery,
    LogReader,
    decode_entries,
    entry_to_proto,
)
from pycontainer.agent._logs import _wire as wire
from pycontainer.agent._pattern import compile_pattern, searcher
from pycontainer.v1 import logs_pb2, management_pb2, management_pb2_grpc

from .support import Host, make_container, start_aio_host, start_sync_host, wait_until

SEVERITIES = sorted(logs_pb2.Severity.values())
# Text a protobuf string can hold (no lone surrogates), any plane.
_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
_ids = st.sampled_from([("", ""), ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")])
_entry = st.builds(
    lambda ids, **fields: BufferedEntry(trace_id=ids[0], span_id=ids[1], **fields),
    ids=_ids,
    sequence=st.just(0),
    time_ns=st.integers(0, (1 << 63) - 1),
    severity=st.sampled_from(SEVERITIES),
    severity_text=_text,
    logger=_text,
    message=st.text(st.characters(exclude_categories=("Cs",)), max_size=300),
    attributes=st.dictionaries(_text, _text, max_size=5),
    # Inside a span both are set, outside neither.
)


@dataclass(frozen=True)
class _Level:
    number: int
    text: str


def _append(buffer: LogBuffer, e: BufferedEntry) -> int:
    return buffer.append(
        e.severity,
        e.severity_text,
        e.logger,
        e.message,
        e.attributes,
        time_ns=e.time_ns,
        trace_id=e.trace_id,
        span_id=e.span_id,
    )


def _frames(buffer: LogBuffer, **request: object) -> list[bytes]:
    query = LogQuery.from_request(management_pb2.StreamLogsRequest(**request))  # type: ignore[arg-type]
    return list(LogReader(buffer, query).iter_frames(lambda: True))


# -- the encoding ----------------------------------------------------------------------


@given(st.integers(0, (1 << 64) - 1))
def test_a_varint_is_protobufs_own(n: int) -> None:
    assert wire.varint(n) == _VarintBytes(n)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_entry, min_size=1, max_size=8))
def test_a_frame_is_the_response_protobuf_builds_of_the_same_entries(
    entries: list[BufferedEntry],
) -> None:
    buffer = LogBuffer(capacity=len(entries), max_message_chars=1000)
    numbered = [e._replace(sequence=_append(buffer, e)) for e in entries]

    (frame,) = _frames(buffer, max_batch_size=len(entries))

    expected = management_pb2.StreamLogsResponse(entries=[entry_to_proto(e) for e in numbered])
    assert management_pb2.StreamLogsResponse.FromString(frame) == expected
    # What the ring keeps decodes to the entries themselves.
    assert decode_entries(buffer.read(1, len(entries), len(entries))[0]) == [
        e._replace(attributes=dict(e.attributes)) for e in numbered
    ]


def test_missed_entries_are_counted_in_the_frame_that_follows_them() -> None:
    buffer = LogBuffer(capacity=3)
    query = LogQuery.from_request(management_pb2.StreamLogsRequest(follow=True))
    reader = LogReader(buffer, query)  # its history: nothing yet
    for i in range(5):
        buffer.append(logs_pb2.SEVERITY_INFO, "INFO", "app", f"m{i}")
    frames = reader.iter_frames(lambda: True)
    response = management_pb2.StreamLogsResponse.FromString(next(frames))
    assert response.missed == 2
    assert [e.message for e in response.entries] == ["m2", "m3", "m4"]
    assert [e.sequence for e in response.entries] == [3, 4, 5]


def test_a_message_with_a_lone_surrogate_is_sent_escaped_not_lost() -> None:
    buffer = LogBuffer()
    buffer.append(logs_pb2.SEVERITY_INFO, "INFO", "stdout", "bad \udcff byte")
    buffer.append(logs_pb2.SEVERITY_INFO, "INFO", "stdout", "next")
    (frame,) = _frames(buffer)
    entries = management_pb2.StreamLogsResponse.FromString(frame).entries
    assert [e.message for e in entries] == ["bad \\udcff byte", "next"]


def test_captured_records_decode_to_what_the_record_says() -> None:
    buffer = LogBuffer()
    log = logging.getLogger("test_logs_wire.capture")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    handler = LogBufferHandler(buffer)
    log.addHandler(handler)
    try:
        for i in range(3):  # one call site, its fields encoded once and kept
            log.warning("call %d", i, extra={"request.id": f"r{i}"})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    *calls, failure = buffer.snapshot()
    assert [e.message for e in calls] == ["call 0", "call 1", "call 2"]
    assert [e.attributes["request.id"] for e in calls] == ["r0", "r1", "r2"]
    for e in calls:
        assert e.severity == logs_pb2.SEVERITY_WARN
        assert e.severity_text == "WARNING"
        assert e.logger == "test_logs_wire.capture"
        assert (
            e.attributes["code.function"] == "test_captured_records_decode_to_what_the_record_says"
        )
        assert e.attributes["thread.name"] == threading.current_thread().name
    assert failure.severity == logs_pb2.SEVERITY_ERROR
    assert failure.attributes["exception.type"] == "ValueError"
    assert failure.attributes["exception.message"] == "boom"
    assert "raise ValueError" in failure.attributes["exception.stacktrace"]
    assert "request.id" not in failure.attributes
    # The sequence and time are the entry's own, not the call site's.
    assert [e.sequence for e in buffer.snapshot()] == [1, 2, 3, 4]
    times = [e.time_ns for e in buffer.snapshot()]
    assert times == sorted(times)
    assert all(t > 0 for t in times)


# Instants around second edges and the 2 ms windows the handler keeps time
# fields for, and anywhere.
_instants = st.one_of(
    st.integers(0, 1 << 62),
    st.builds(
        lambda second, offset: max(0, second * 1_000_000_000 + offset),
        st.integers(0, 4_000_000_000),
        st.sampled_from([0, 1, -1, 127, 128, 1 << 14, (1 << 21) - 1, 1 << 21, 1 << 28, -(1 << 21)])
        | st.integers(-(1 << 22), 1 << 22),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_instants, st.text(max_size=200)), min_size=1, max_size=12))
def test_a_captured_record_is_encoded_as_protobuf_encodes_its_entry(
    records: list[tuple[int, str]],
) -> None:
    buffer = LogBuffer(capacity=len(records), max_message_chars=100)
    handler = LogBufferHandler(buffer)
    made = []
    for time_ns, message in records:
        record = logging.LogRecord("app", logging.INFO, "app.py", 7, message, None, None, "f")
        record.created = time_ns / 1e9
        handler.handle(record)
        made.append(record)
    entries = buffer.read(1, len(records), len(records))[0]
    for record, entry in zip(made, entries, strict=True):
        response = management_pb2.StreamLogsResponse.FromString(entry.element)
        (proto,) = response.entries
        expected_ns = int(record.created * 1_000_000_000)
        assert proto.time.seconds * 1_000_000_000 + proto.time.nanos == expected_ns == entry.time_ns
        assert proto.message == wire.utf8(buffer.truncate(record.msg)).decode()
        # As long as protobuf's own encoding: every varint in its shortest form.
        assert response.ByteSize() == len(entry.element)


# -- filters on the kept fields --------------------------------------------------------

_PATTERNS = ["", "a", "^a", "b$", "a.b", r"\d+", "é", "(a|b)c", "[^a]", "x*"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=st.lists(st.text(st.sampled_from("abcé1\n x"), max_size=8), max_size=30),
    pattern=st.sampled_from(_PATTERNS),
    min_severity=st.sampled_from([0, *SEVERITIES]),
    since=st.none() | st.integers(0, 40),
)
def test_selecting_kept_entries_picks_what_matching_each_does(
    messages: list[str], pattern: str, min_severity: int, since: int | None
) -> None:
    compiled = compile_pattern(pattern)
    found = searcher(compiled)
    for m in messages:
        assert found(m) == (compiled.search(m) is not None)
    buffer = LogBuffer(capacity=max(1, len(messages)))
    for i, m in enumerate(messages):
        buffer.append(SEVERITIES[i % len(SEVERITIES)], "", "app", m, time_ns=i)
    query = LogQuery(
        min_severity=min_severity,
        pattern=compiled if pattern else None,
        since_ns=since,
    )
    kept = buffer.read(1, len(messages), len(messages))[0]
    assert query.select(kept) == [e for e in kept if query.matches(e)]
    assert [e.message for e in query.select(kept)] == [
        m
        for i, m in enumerate(messages)
        if SEVERITIES[i % len(SEVERITIES)] >= min_severity
        and (since is None or i >= since)
        and (not pattern or compiled.search(m) is not None)
    ]


# -- real servers, generated stubs -----------------------------------------------------


@pytest.fixture(params=["sync", "aio"])
def host(request: pytest.FixtureRequest) -> Iterator[Host]:
    container = make_container("logs-wire")
    started = start_sync_host(container) if request.param == "sync" else start_aio_host(container)
    try:
        yield started
    finally:
        started.stop()


def test_every_follower_gets_every_entry_through_generated_stubs(host: Host) -> None:
    buffer = host.container.logs
    buffer.append(logs_pb2.SEVERITY_INFO, "INFO", "app", "before", {"k": "v"})
    followers = 4
    count = 2000
    # Only the app's: the container logs of its own too.
    request = management_pb2.StreamLogsRequest(
        follow=True, tail=1, max_batch_size=500, logger="app"
    )
    got: list[list[logs_pb2.LogEntry]] = [[] for _ in range(followers)]
    calls = []
    channels = [grpc.insecure_channel(host.target) for _ in range(followers)]
    try:
        for channel in channels:
            calls.append(
                management_pb2_grpc.ManagementStub(channel).StreamLogs(request, timeout=60)
            )
        for call, out in zip(calls, got, strict=True):
            out.extend(next(call).entries)  # the tail: each stream is live
        for i in range(count):
            buffer.append(
                logs_pb2.SEVERITY_WARN, "WARNING", "app.worker", f"entry {i}", {"i": str(i)}
            )

        def read(call: grpc.Call, out: list[logs_pb2.LogEntry]) -> None:
            for response in call:  # type: ignore[attr-defined]
                assert response.missed == 0
                out.extend(response.entries)
                if len(out) == count + 1:
                    return

        readers = [
            threading.Thread(target=read, args=(call, out))
            for call, out in zip(calls, got, strict=True)
        ]
        for t in readers:
            t.start()
        for t in readers:
            t.join(60)
        wait_until(lambda: all(len(out) == count + 1 for out in got), what="every entry, to each")
    finally:
        for call in calls:
            call.cancel()
        for channel in channels:
            channel.close()
    for out in got:
        assert out[0].message == "before"
        assert dict(out[0].attributes) == {"k": "v"}
        sequences = [e.sequence for e in out]
        assert sequences == sorted(set(sequences))
        assert [e.message for e in out[1:]] == [f"entry {i}" for i in range(count)]
        assert [dict(e.attributes) for e in out[1:]] == [{"i": str(i)} for i in range(count)]
        assert all(e.severity == logs_pb2.SEVERITY_WARN for e in out[1:])
        assert all(e.time.seconds > 0 for e in out)


def test_a_raw_client_reads_the_same_bytes_as_a_decoded_stream(host: Host) -> None:
    """The frames on the wire are exactly StreamLogsResponse messages: a client
    reading raw bytes gets what parses to the decoded stream's responses."""
    buffer = host.container.logs
    for i in range(25):
        buffer.append(logs_pb2.SEVERITY_INFO, "INFO", "app", f"m{i}")
    request = management_pb2.StreamLogsRequest(max_batch_size=10, logger="app")
    raw = host.channel.unary_stream(
        "/pycontainer.v1.Management/StreamLogs",
        request_serializer=management_pb2.StreamLogsRequest.SerializeToString,
    )
    frames = list(raw(request, timeout=30))
    decoded = list(host.management.StreamLogs(request, timeout=30))
    assert [management_pb2.StreamLogsResponse.FromString(f) for f in frames] == decoded
    assert [len(r.entries) for r in decoded] == [10, 10, 5]
    assert [e.message for r in decoded for e in r.entries] == [f"m{i}" for i in range(25)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    capacity=st.sampled_from([256, 300, 512, 1000]),
    count=st.integers(0, 3000),
    batch=st.sampled_from([1, 7, 255, 256, 257, 1000, 10_000]),
    tail=st.none() | st.integers(0, 1200),
)
def test_batches_of_joined_blocks_hold_exactly_the_retained_entries(
    capacity: int, count: int, batch: int, tail: int | None
) -> None:
    def decode(frames: list[bytes]) -> list[management_pb2.StreamLogsResponse]:
        return [management_pb2.StreamLogsResponse.FromString(f) for f in frames]

    buffer = LogBuffer(capacity=capacity)
    half = count // 2
    for i in range(1, half + 1):
        buffer.append(logs_pb2.SEVERITY_INFO, "", "app", f"m{i}")
    # Made now, read after the rest is logged: what it had is partly overwritten.
    follower = LogReader(buffer, LogQuery(follow=True, max_batch_size=batch))
    for i in range(half + 1, count + 1):
        buffer.append(logs_pb2.SEVERITY_INFO, "", "app", f"m{i}")
    retained = list(range(max(1, count - capacity + 1), count + 1))

    request: dict[str, object] = {"max_batch_size": batch}
    if tail is not None:
        request["tail"] = tail
    responses = decode(_frames(buffer, **request))
    expected = retained if tail is None else retained[-tail:] if tail else []
    assert [e.sequence for r in responses for e in r.entries] == expected
    assert [e.message for r in responses for e in r.entries] == [f"m{s}" for s in expected]
    assert all(len(r.entries) <= batch for r in responses)

    # Its history and then (ended at once) the rest: every retained entry,
    # and the overwritten ones counted as missed.
    followed = decode(list(follower.iter_frames(lambda: True, lambda: True)))
    assert [e.sequence for r in followed for e in r.entries] == retained
    first_asked = max(1, half - capacity + 1)
    missed = retained[0] - first_asked if retained else 0
    assert sum(r.missed for r in followed) == missed
    assert all(len(r.entries) <= batch for r in followed)


def test_sequences_past_two_varint_bytes_decode() -> None:
    buffer = LogBuffer(capacity=8)
    for i in range(1, (1 << 14) + 6):
        buffer.append(logs_pb2.SEVERITY_INFO, "", "app", f"m{i}")
    sequences = [e.sequence for e in buffer.snapshot()]
    assert sequences == list(range((1 << 14) - 2, (1 << 14) + 6))
    assert [e.message for e in buffer.snapshot()] == [f"m{s}" for s in sequences]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=st.lists(st.text(max_size=30), max_size=300),
    before=st.integers(0, 300),
    capacity=st.integers(1, 400),
)
def test_entries_taken_together_are_those_appended_one_by_one(
    messages: list[str], before: int, capacity: int
) -> None:
    levels = [
        _Level(int(logs_pb2.SEVERITY_WARN if "w" in m else logs_pb2.SEVERITY_INFO), "X")
        for m in messages
    ]
    attributes = {"log.iostream": "stdout"}
    together, one_by_one = (LogBuffer(capacity, max_message_chars=20) for _ in range(2))
    for buffer in (together, one_by_one):
        for i in range(before):  # sequences past the edges of varints and blocks
            buffer.append(logs_pb2.SEVERITY_INFO, "INFO", "app", f"m{i}", time_ns=1)
    last = together.extend("stdout", messages, levels, attributes, time_ns=12_345)
    for m, level in zip(messages, levels, strict=True):
        one_by_one.append(level.number, level.text, "stdout", m, attributes, time_ns=12_345)
    assert last == together.last_sequence == one_by_one.last_sequence == before + len(messages)
    assert together.snapshot() == one_by_one.snapshot()
    assert _frames(together) == _frames(one_by_one)

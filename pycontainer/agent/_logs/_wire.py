"""The protobuf wire encoding of log entries, written by hand so that each
entry is encoded once, when it is logged, and a StreamLogs batch is the join
of its entries' bytes.

An entry is kept as one element of ``StreamLogsResponse.entries`` (field 1):
its tag, its length and the ``LogEntry`` message. A repeated message field is
its elements' encodings one after another, so joining kept entries (and
:func:`missed_field`) gives a ``StreamLogsResponse`` that any protobuf library
decodes. Fields go in any order on the wire (parsers accept that); the
sequence comes last because the buffer numbers an entry only when it takes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = [
    "ENTRIES_TAG",
    "MORE_BYTE",
    "SEQUENCE_TAG",
    "attribute_fields",
    "entries_fields",
    "entry_element",
    "entry_fields",
    "message_field",
    "missed_field",
    "source_fields",
    "string_field",
    "time_field",
    "time_window",
    "utf8",
    "varint",
]

_ONE_BYTE = tuple(bytes((i,)) for i in range(128))
# Byte i with the continuation bit set: a varint's byte that more follow.
MORE_BYTE = tuple(bytes((i | 0x80,)) for i in range(128))

# Tags: (field number << 3) | wire type (0 varint, 2 length-delimited).
ENTRIES_TAG = b"\x0a"  # StreamLogsResponse.entries = 1
_MISSED_TAG = b"\x10"  # StreamLogsResponse.missed = 2
SEQUENCE_TAG = b"\x08"  # LogEntry.sequence = 1
_TIME_TAG = b"\x12"  # LogEntry.time = 2
_SEVERITY_TAG = b"\x18"  # LogEntry.severity = 3
_SEVERITY_TEXT = 4
_LOGGER = 5
_MESSAGE_TAG = b"\x32"
_ATTRIBUTES_TAG = b"\x3a"  # LogEntry.attributes = 7 (map entries)
_TRACE_ID = 8
_SPAN_ID = 9
_SECONDS_TAG = b"\x08"  # Timestamp.seconds = 1
_NANOS_TAG = b"\x10"  # Timestamp.nanos = 2
_KEY_TAG = b"\x0a"  # map entry key = 1
_VALUE_TAG = b"\x12"  # map entry value = 2
_NS = 1_000_000_000


def varint(n: int) -> bytes:
    """``n`` (not negative) as a protobuf varint, in its shortest form."""
    if n < 0x80:
        return _ONE_BYTE[n]
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    if n < 0x200000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14))
    if n < 0x10000000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14 & 0x7F | 0x80, n >> 21))
    if n < 0x800000000:  # nanoseconds and seconds of a timestamp
        return bytes(
            (
                n & 0x7F | 0x80,
                n >> 7 & 0x7F | 0x80,
                n >> 14 & 0x7F | 0x80,
                n >> 21 & 0x7F | 0x80,
                n >> 28,
            )
        )
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _delimited(tag: bytes, data: bytes) -> bytes:
    return tag + varint(len(data)) + data


def string_field(number: int, text: str) -> bytes:
    """Field ``number`` of type string; empty text is left out, as proto3 does."""
    if not text:
        return b""
    return _delimited(_ONE_BYTE[number << 3 | 2], utf8(text))


def message_field(text: str) -> bytes:
    """``LogEntry.message`` (:func:`string_field`, for every entry)."""
    if not text:
        return b""
    try:
        data = text.encode()
    except UnicodeEncodeError:
        data = utf8(text)
    size = len(data)
    return (_MESSAGE_TAG + _ONE_BYTE[size] if size < 0x80 else _MESSAGE_TAG + varint(size)) + data


def utf8(text: str) -> bytes:
    """``text`` as UTF-8; a lone surrogate (undecodable bytes read with
    ``surrogateescape``) is written as its escape, since a protobuf string
    must be valid UTF-8 and the entry must not be lost."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


# The last second seen and the start of its time fields (tag, length, the
# seconds and the nanos tag): entries come many a second, and most nanos
# take five bytes, so most time fields are this and five bytes.
_last_second: tuple[int, bytes] = (-1, b"")


def _second(seconds: int) -> bytes:
    global _last_second
    seconds_field = _SECONDS_TAG + varint(seconds) if seconds else b""
    start = _TIME_TAG + _ONE_BYTE[len(seconds_field) + 6] + seconds_field + _NANOS_TAG
    _last_second = (seconds, start)
    return start


def time_field(time_ns: int) -> bytes:
    """``LogEntry.time`` for ``time_ns`` nanoseconds since the epoch."""
    seconds, nanos = divmod(time_ns, _NS)
    if nanos >= 0x10000000:
        last = _last_second  # one read: another thread may replace it
        start = last[1] if last[0] == seconds else _second(seconds)
        return start + bytes(
            (
                nanos & 0x7F | 0x80,
                nanos >> 7 & 0x7F | 0x80,
                nanos >> 14 & 0x7F | 0x80,
                nanos >> 21 & 0x7F | 0x80,
                nanos >> 28,
            )
        )
    body = (_SECONDS_TAG + varint(seconds) if seconds else b"") + (
        _NANOS_TAG + varint(nanos) if nanos else b""
    )
    return _TIME_TAG + _ONE_BYTE[len(body)] + body  # at most 11 bytes


# A time window spans 2**21 ns (2 ms) of one second's nanos: its instants'
# time fields differ only in the nanos' three low varint bytes.
_WINDOW_BITS = 21


def time_window(time_ns: int) -> tuple[int, int, bytes, bytes] | None:
    """The window of instants around ``time_ns`` whose time fields differ only
    in the nanos' low three varint bytes: its first and past-last instants
    (ns since the epoch), the field's bytes before those three and after.
    For an instant ``t`` in it, ``time_field(t)`` is ``before``, then
    ``MORE_BYTE[d & 127], MORE_BYTE[d >> 7 & 127], MORE_BYTE[d >> 14]`` where
    ``d = t - first``, then ``after``. None in a second's first 2 ms (where
    the nanos take fewer bytes)."""
    seconds, nanos = divmod(time_ns, _NS)
    if nanos >> _WINDOW_BITS == 0:
        return None
    first = seconds * _NS + (nanos >> _WINDOW_BITS << _WINDOW_BITS)
    end = min(first + (1 << _WINDOW_BITS), (seconds + 1) * _NS)
    field = time_field(time_ns)
    nanos_bytes = len(varint(nanos))  # 4 or 5
    before = field[: len(field) - nanos_bytes]
    return first, end, before, field[len(before) + 3 :]


def attribute_fields(attributes: Mapping[str, str] | Iterable[tuple[str, str]]) -> bytes:
    """``LogEntry.attributes``: one map entry per key and value."""
    items = attributes.items() if isinstance(attributes, Mapping) else attributes
    out = []
    for key, value in items:
        body = string_field(1, key) + string_field(2, value)
        out.append(_delimited(_ATTRIBUTES_TAG, body))
    return b"".join(out)


# The last attributes encoded (a copy) and their fields: callers that log
# with the same attributes again and again (a constant dict) pay a compare.
_last_attributes: tuple[dict[str, str], bytes] = ({}, b"")
# Severity, severity text and logger encoded, by the three (few distinct ones).
_sources: dict[tuple[int, str, str], bytes] = {}
_MAX_SOURCES = 1024


def _attributes_again(attributes: Mapping[str, str]) -> bytes:
    global _last_attributes
    last = _last_attributes  # one read: another thread may replace it
    if attributes == last[0]:
        return last[1]
    encoded = attribute_fields(attributes)
    _last_attributes = (dict(attributes), encoded)
    return encoded


def _source_again(severity: int, severity_text: str, logger: str) -> bytes:
    key = (severity, severity_text, logger)
    encoded = _sources.get(key)
    if encoded is None:
        if len(_sources) >= _MAX_SOURCES:
            _sources.clear()
        encoded = _sources[key] = source_fields(severity, severity_text, logger)
    return encoded


def source_fields(severity: int, severity_text: str, logger: str) -> bytes:
    """``LogEntry.severity``, ``severity_text`` and ``logger``."""
    return b"".join(
        (
            _SEVERITY_TAG + varint(severity) if severity else b"",
            string_field(_SEVERITY_TEXT, severity_text),
            string_field(_LOGGER, logger),
        )
    )


def entry_fields(
    time_ns: int,
    severity: int,
    severity_text: str,
    logger: str,
    message: str,
    attributes: Mapping[str, str] | None = None,
    trace_id: str = "",
    span_id: str = "",
) -> bytes:
    """Every ``LogEntry`` field but the sequence (see :func:`entry_element`)."""
    return b"".join(
        (
            time_field(time_ns),
            _source_again(severity, severity_text, logger),
            message_field(message),
            _attributes_again(attributes) if attributes else b"",
            string_field(_TRACE_ID, trace_id) + string_field(_SPAN_ID, span_id)
            if trace_id or span_id
            else b"",
        )
    )


def entries_fields(
    time_ns: int,
    logger: str,
    messages: Iterable[tuple[int, str, str]],
    attributes: Mapping[str, str] | None = None,
) -> list[bytes]:
    """:func:`entry_fields` of entries that share a time, a logger and
    attributes (lines read at once), each given as its severity, severity
    text and message: what they share is encoded once."""
    time = time_field(time_ns)
    tail = _attributes_again(attributes) if attributes else b""
    return [
        b"".join((time, _source_again(severity, text, logger), message_field(message), tail))
        for severity, text, message in messages
    ]


def entry_element(fields: bytes, sequence: int) -> bytes:
    """The entry numbered ``sequence`` as one element of
    ``StreamLogsResponse.entries``; ``fields`` from :func:`entry_fields`."""
    seq = varint(sequence)
    size = len(fields) + 1 + len(seq)
    length = _ONE_BYTE[size] if size < 0x80 else varint(size)
    return b"".join((ENTRIES_TAG, length, fields, SEQUENCE_TAG, seq))


def missed_field(missed: int) -> bytes:
    """``StreamLogsResponse.missed``; nothing for 0."""
    return _MISSED_TAG + varint(missed) if missed else b""

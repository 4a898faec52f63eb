"""The container's logs: a bounded ring buffer (:mod:`._buffer`) of entries
encoded once for the wire (:mod:`._wire`), the capture of Python ``logging``
into it (:mod:`._capture`), and StreamLogs readers of it (:mod:`._reader`)."""

from ._buffer import BufferedEntry, LogBuffer, RetainedEntry, decode_entries
from ._capture import LogBufferHandler, install, severity_from_level, uninstall
from ._reader import (
    DEFAULT_BATCH_SIZE,
    MAX_BATCH_SIZE,
    LogFields,
    LogQuery,
    LogReader,
    entry_to_proto,
    write_frame,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "MAX_BATCH_SIZE",
    "BufferedEntry",
    "LogBuffer",
    "LogBufferHandler",
    "LogFields",
    "LogQuery",
    "LogReader",
    "RetainedEntry",
    "decode_entries",
    "entry_to_proto",
    "install",
    "severity_from_level",
    "uninstall",
    "write_frame",
]

"""Python logging records exported through the SDK's LoggerProvider, as
OTEL_LOGS_EXPORTER asks: each record with its severity, attributes and the
trace and span ids of the span it was logged in."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from typing import Any

from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler, LogRecordProcessor
from opentelemetry.sdk._logs import export as logs_export
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource

from ._env import sdk_disabled, signal_export
from ._otlp import otlp_log_exporter
from ._resource import service_resource

__all__ = ["configure_log_export", "export_handler", "logger_provider_from_environ"]

# ConsoleLogRecordExporter since SDK 1.39 or so; ConsoleLogExporter before
# (deprecated since, still there).
_ConsoleExporter: Any = (
    getattr(logs_export, "ConsoleLogRecordExporter", None) or logs_export.ConsoleLogExporter
)


def _processor(name: str, protocol: str) -> LogRecordProcessor:
    if name == "console":
        # Simple, not batched: a console is for watching records as they come.
        processor: LogRecordProcessor = SimpleLogRecordProcessor(_ConsoleExporter())
        return processor
    return BatchLogRecordProcessor(otlp_log_exporter(protocol))


def logger_provider_from_environ(
    resource: Resource, environ: Mapping[str, str] | None = None
) -> LoggerProvider | None:
    """An SDK LoggerProvider with the processors OTEL_LOGS_EXPORTER names, or
    None when it names none (unset: ``otlp`` with an OTLP endpoint set) or
    OTEL_SDK_DISABLED is true. TelemetryConfigError for a bad value. Not set
    globally: the caller owns it (``shutdown()`` flushes)."""
    env = os.environ if environ is None else environ
    if sdk_disabled(env):
        return None
    export = signal_export(env, "logs")
    processors = [_processor(name, export.protocol) for name in export.exporters]
    if not processors:
        return None
    provider = LoggerProvider(resource=resource)
    for processor in processors:
        provider.add_log_record_processor(processor)
    return provider


class _NotTheSdks(logging.Filter):
    """Keeps the SDK's and exporters' own records (an export that failed, a
    full queue) out of the export: they would feed the trouble they report."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("opentelemetry")


def export_handler(provider: LoggerProvider, level: int = logging.NOTSET) -> logging.Handler:
    """A logging handler that hands each record to ``provider``, with the
    current span's trace and span ids (the SDK's LoggingHandler)."""
    with warnings.catch_warnings():
        # SDK 1.39+ points to opentelemetry-instrumentation-logging's handler
        # (a beta whose versions pin the API's exactly); the SDK's does the same.
        warnings.simplefilter("ignore", DeprecationWarning)
        handler = LoggingHandler(level=level, logger_provider=provider)
    handler.addFilter(_NotTheSdks())
    return handler


def configure_log_export(
    service_name: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    level: int = logging.INFO,
) -> LoggerProvider | None:
    """For programs (the manager): export the root logger's records at
    ``level`` and above, as OTEL_LOGS_EXPORTER asks. Returns the provider
    (``shutdown()`` on exit to flush), or None when logs are not exported.
    TelemetryConfigError for a bad OTEL_* value.

    A program without logging configuration (no root handler) keeps what it
    printed: logging's last resort (WARNING and above to stderr) becomes a
    root handler, since it fires only while there is none, and the root's
    level is lowered to ``level`` for the export.
    """
    provider = logger_provider_from_environ(service_resource(service_name), environ)
    if provider is None:
        return provider
    root = logging.root
    if not root.handlers and logging.lastResort is not None:
        root.addHandler(logging.lastResort)
        if root.level > level:
            root.setLevel(level)
    root.addHandler(export_handler(provider, level))
    return provider

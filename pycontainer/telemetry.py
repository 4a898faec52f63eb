"""OpenTelemetry export set up from the standard OTEL_* variables.

Libraries use only the OpenTelemetry API; this is for programs (the examples,
standalone containers, the manager) that own their process:

- ``OTEL_TRACES_EXPORTER``, ``OTEL_LOGS_EXPORTER``, ``OTEL_METRICS_EXPORTER``:
  ``otlp``, ``console`` or ``none`` (comma-separated); unset means ``otlp``
  when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the signal's own endpoint
  variable) is set, else ``none``;
- ``OTEL_EXPORTER_OTLP_PROTOCOL`` (or the signal's own): ``grpc`` (the
  default) or ``http/protobuf``;
- ``OTEL_METRIC_EXPORT_INTERVAL``: milliseconds between metric exports;
- ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``
  and the other ``OTEL_EXPORTER_OTLP_*`` settings are read by the SDK itself;
- ``OTEL_SDK_DISABLED=true`` turns it all off;
- ``PYCONTAINER_TRACES_FILE``: with no trace exporter configured, spans are
  appended to this file as JSON lines (``pycontainer up`` sets it for its
  containers).

A bad value raises :class:`TelemetryConfigError` (a ValueError) naming the
variable and what it takes. A :class:`pycontainer.Container` exports its
captured logs and the app's metrics itself, as these variables ask
(:func:`configure_log_export` is for a program's own logs, the manager's).

:class:`RpcTracing` traces the app's own RPCs (client and server interceptors,
sync and grpc.aio) with the spans built off the call path.
"""

from __future__ import annotations

from ._otel import (
    MetricExport,
    TelemetryConfigError,
    configure_log_export,
    configure_tracing,
    logger_provider_from_environ,
    metric_export_from_environ,
    service_resource,
)
from ._rpctrace import RpcTracing

__all__ = [
    "MetricExport",
    "RpcTracing",
    "TelemetryConfigError",
    "configure_log_export",
    "configure_tracing",
    "logger_provider_from_environ",
    "metric_export_from_environ",
    "service_resource",
]

"""OpenTelemetry export set up from the standard OTEL_* variables: traces
(:mod:`._tracing`), logs (:mod:`._logs`) and metrics (:mod:`._metrics`)
through the SDK's own exporters (:mod:`._otlp`), the variables read in one
place (:mod:`._env`), one resource (:mod:`._resource`). Public as
:mod:`pycontainer.telemetry`."""

from ._env import (
    EXPORTERS,
    PROTOCOLS,
    SignalExport,
    TelemetryConfigError,
    metric_export_interval,
    sdk_disabled,
    signal_export,
)
from ._logs import configure_log_export, export_handler, logger_provider_from_environ
from ._metrics import MetricExport, metric_export_from_environ
from ._resource import service_resource
from ._tracing import configure_tracing

__all__ = [
    "EXPORTERS",
    "PROTOCOLS",
    "MetricExport",
    "SignalExport",
    "TelemetryConfigError",
    "configure_log_export",
    "configure_tracing",
    "export_handler",
    "logger_provider_from_environ",
    "metric_export_from_environ",
    "metric_export_interval",
    "sdk_disabled",
    "service_resource",
    "signal_export",
]

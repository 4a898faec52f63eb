"""Metric readers that export, as OTEL_METRICS_EXPORTER asks, for the
MeterProvider the app's metrics come from."""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping

from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)

from ._env import SignalExport, metric_export_interval, sdk_disabled, signal_export
from ._otlp import otlp_metric_exporter, require_otlp

__all__ = ["MetricExport", "metric_export_from_environ"]


class MetricExport:
    """What OTEL_METRICS_EXPORTER and OTEL_METRIC_EXPORT_INTERVAL ask, read
    (and checked) up front; :meth:`readers` makes the readers, each with its
    export thread, once a MeterProvider is to take them."""

    def __init__(self, export: SignalExport, interval: datetime.timedelta | None) -> None:
        self.export = export
        self.interval = interval

    def readers(self) -> list[MetricReader]:
        """One PeriodicExportingMetricReader per exporter named."""
        millis = (
            None if self.interval is None else self.interval / datetime.timedelta(milliseconds=1)
        )
        out: list[MetricReader] = []
        for name in self.export.exporters:
            exporter: MetricExporter = (
                ConsoleMetricExporter()
                if name == "console"
                else otlp_metric_exporter(self.export.protocol)
            )
            out.append(PeriodicExportingMetricReader(exporter, export_interval_millis=millis))
        return out


def metric_export_from_environ(environ: Mapping[str, str] | None = None) -> MetricExport | None:
    """The metric export OTEL_* asks for, or None when it asks for none
    (unset: ``otlp`` with an OTLP endpoint set; OTEL_SDK_DISABLED=true).
    TelemetryConfigError for a bad value."""
    env = os.environ if environ is None else environ
    if sdk_disabled(env):
        return None
    export = signal_export(env, "metrics")
    if not export.exporters:
        return None
    interval = metric_export_interval(env)
    if "otlp" in export.exporters:
        require_otlp("metrics", export.protocol)
    return MetricExport(export, interval)

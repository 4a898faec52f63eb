"""The SDK's OTLP exporters, by signal and protocol, with what to do when
the one asked for does not import. Each reads its endpoint, headers,
timeout, compression and TLS settings from OTEL_EXPORTER_OTLP_* itself."""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from ._env import Signal, TelemetryConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk._logs.export import LogRecordExporter
    from opentelemetry.sdk.metrics.export import MetricExporter
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["otlp_log_exporter", "otlp_metric_exporter", "otlp_span_exporter", "require_otlp"]

# The distribution and import package of each protocol's exporters.
_PACKAGES = {
    "grpc": ("opentelemetry-exporter-otlp-proto-grpc", "opentelemetry.exporter.otlp.proto.grpc"),
    "http/protobuf": (
        "opentelemetry-exporter-otlp-proto-http",
        "opentelemetry.exporter.otlp.proto.http",
    ),
}

# The module of each signal's exporter, in the protocol's package.
_MODULES = {"traces": "trace_exporter", "metrics": "metric_exporter", "logs": "_log_exporter"}


def require_otlp(signal: Signal, protocol: str) -> None:
    """Import the OTLP exporter of ``signal`` for ``protocol`` now, so that a
    missing one is said at start, not when the first export is due."""
    try:
        importlib.import_module(f"{_PACKAGES[protocol][1]}.{_MODULES[signal]}")
    except ImportError as exc:
        raise TelemetryConfigError(otlp_missing(signal, protocol, exc)) from None


def otlp_span_exporter(protocol: str) -> SpanExporter:
    """OTLP's span exporter for ``protocol`` (grpc or http/protobuf)."""
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        return HttpSpanExporter()
    except ImportError as exc:
        raise TelemetryConfigError(otlp_missing("traces", protocol, exc)) from None


def otlp_metric_exporter(protocol: str) -> MetricExporter:
    """OTLP's metric exporter for ``protocol`` (grpc or http/protobuf)."""
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter,
            )

            return OTLPMetricExporter()
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as HttpMetricExporter,
        )

        return HttpMetricExporter()
    except ImportError as exc:
        raise TelemetryConfigError(otlp_missing("metrics", protocol, exc)) from None


def otlp_log_exporter(protocol: str) -> LogRecordExporter:
    """OTLP's log record exporter for ``protocol`` (grpc or http/protobuf)."""
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

            return OTLPLogExporter()
        from opentelemetry.exporter.otlp.proto.http._log_exporter import (
            OTLPLogExporter as HttpLogExporter,
        )

        return HttpLogExporter()
    except ImportError as exc:
        raise TelemetryConfigError(otlp_missing("logs", protocol, exc)) from None


def otlp_missing(signal: Signal, protocol: str, exc: ImportError) -> str:
    """What to do when the OTLP exporter of ``signal`` does not import."""
    distribution, package = _PACKAGES[protocol]
    try:
        installed = importlib.util.find_spec(package) is not None
    except ImportError:
        installed = False
    variable = f"OTEL_{signal.upper()}_EXPORTER=otlp"
    if not installed:
        return (
            f"{variable} ({protocol}) needs the OTLP exporter: "
            f"pip install 'pycontainer-grpc[otlp]' (or {distribution})"
        )
    # Installed but broken: xds-protos (the manager extra's) ships an old copy
    # of opentelemetry-proto's modules at the same paths (grpc/grpc#42926), and
    # installed after opentelemetry-proto it replaces them.
    return (
        f"{variable}: the OTLP exporter is installed but does not import ({exc}); "
        "if xds-protos was installed after opentelemetry-proto, its old copy replaced "
        "opentelemetry-proto's files: pip install --force-reinstall --no-deps opentelemetry-proto"
    )

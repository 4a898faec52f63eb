"""A TracerProvider from the OTEL_* variables, set globally (for programs)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)

from ._env import sdk_disabled, signal_export
from ._otlp import otlp_span_exporter
from ._resource import service_resource

__all__ = ["configure_tracing"]


def _processor(name: str, protocol: str, file: str | None) -> SpanProcessor:
    if name == "file" and file:
        # One JSON object per span, appended (ConsoleSpanExporter's format).
        out = open(file, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the exporter
        return BatchSpanProcessor(
            ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")
        )
    if name == "console":
        # Simple, not batched: a console is for watching spans as they end.
        return SimpleSpanProcessor(ConsoleSpanExporter())
    return BatchSpanProcessor(otlp_span_exporter(protocol))


def configure_tracing(
    service_name: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    default_file: str | None = None,
) -> TracerProvider | None:
    """Make an SDK TracerProvider from the environment and set it globally.

    ``service_name`` is used unless OTEL_SERVICE_NAME is set. With
    ``default_file`` and no exporter configured, spans go to that file as JSON
    lines. Returns the provider (call ``shutdown()`` on exit to flush), or None
    when tracing is disabled or no exporter is configured.
    TelemetryConfigError (a ValueError) for a bad OTEL_* value.
    """
    env = os.environ if environ is None else environ
    if sdk_disabled(env):
        return None
    # `pycontainer up` names one file for itself and every container it launches.
    default_file = default_file or env.get("PYCONTAINER_TRACES_FILE") or None
    export = signal_export(env, "traces", default="file" if default_file else "none")
    processors = [_processor(name, export.protocol, default_file) for name in export.exporters]
    if not processors:
        return None
    provider = TracerProvider(resource=service_resource(service_name))
    for processor in processors:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return provider

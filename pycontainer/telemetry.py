"""OpenTelemetry tracing set up from the standard OTEL_* variables.

Libraries use only the OpenTelemetry API; this is for programs (the examples,
standalone containers) that own their process and want spans exported:

- ``OTEL_TRACES_EXPORTER``: ``otlp``, ``console`` or ``none`` (comma-separated);
  unset means ``otlp`` when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or its traces
  variant) is set, else ``none``;
- ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``
  and the ``OTEL_EXPORTER_OTLP_*`` settings are read by the SDK itself;
- ``OTEL_SDK_DISABLED=true`` turns it all off;
- ``PYCONTAINER_TRACES_FILE``: with no exporter configured, spans are appended
  to this file as JSON lines (``pycontainer up`` sets it for its containers).

:class:`RpcTracing` traces the app's own RPCs (client and server interceptors,
sync and grpc.aio) with the spans built off the call path.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)

from ._rpctrace import RpcTracing

__all__ = ["RpcTracing", "configure_tracing"]


def _exporter_names(environ: Mapping[str, str], default: str = "none") -> list[str]:
    configured = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if not configured:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        configured = "otlp" if endpoint else default
    return [name.strip().lower() for name in configured.split(",") if name.strip()]


def _processor(name: str, file: str | None = None) -> SpanProcessor | None:
    if name == "none":
        return None
    if name == "file" and file:
        # One JSON object per span, appended (ConsoleSpanExporter's format).
        out = open(file, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the exporter
        return BatchSpanProcessor(
            ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")
        )
    if name == "console":
        # Simple, not batched: a console is for watching spans as they end.
        return SimpleSpanProcessor(ConsoleSpanExporter())
    if name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter,
            )
        except ImportError as exc:
            raise ValueError(_otlp_missing(exc)) from None
        return BatchSpanProcessor(OTLPSpanExporter())
    raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r}; use otlp, console or none")


def _otlp_missing(exc: ImportError) -> str:
    """What to do when the OTLP exporter does not import."""
    try:
        installed = importlib.util.find_spec("opentelemetry.exporter.otlp.proto.grpc") is not None
    except ImportError:
        installed = False
    if not installed:
        return (
            "OTEL_TRACES_EXPORTER=otlp needs the OTLP exporter: "
            "pip install 'pycontainer-grpc[otlp]'"
        )
    # Installed but broken: xds-protos (the manager extra's) ships an old copy
    # of opentelemetry-proto's modules at the same paths (grpc/grpc#42926), and
    # installed after opentelemetry-proto it replaces them.
    return (
        f"OTEL_TRACES_EXPORTER=otlp: the OTLP exporter is installed but does not import ({exc}); "
        "if xds-protos was installed after opentelemetry-proto, its old copy replaced "
        "opentelemetry-proto's files: pip install --force-reinstall --no-deps opentelemetry-proto"
    )


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
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    # `pycontainer up` names one file for itself and every container it launches.
    default_file = default_file or env.get("PYCONTAINER_TRACES_FILE") or None
    names = _exporter_names(env, "file" if default_file else "none")
    processors = [p for p in (_processor(n, default_file) for n in names) if p is not None]
    if not processors:
        return None
    attributes = {}
    if service_name and not env.get("OTEL_SERVICE_NAME"):
        attributes[SERVICE_NAME] = service_name
    provider = TracerProvider(resource=Resource.create(attributes))
    for processor in processors:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return provider

"""The OTEL_* variables pycontainer reads itself, and the one error their bad
values raise: which exporters a signal has, its OTLP protocol, the metric
export interval and OTEL_SDK_DISABLED. (The endpoints, headers, timeouts,
OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are read by the SDK.)"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "EXPORTERS",
    "PROTOCOLS",
    "Signal",
    "SignalExport",
    "TelemetryConfigError",
    "metric_export_interval",
    "sdk_disabled",
    "signal_export",
]

Signal = Literal["traces", "metrics", "logs"]

#: The exporter names OTEL_{TRACES,METRICS,LOGS}_EXPORTER take.
EXPORTERS = ("otlp", "console", "none")
#: The OTLP protocols OpenTelemetry's Python SDK has exporters for (no
#: http/json), the first the default, as the SDK's own ``otlp`` exporter.
PROTOCOLS = ("grpc", "http/protobuf")


class TelemetryConfigError(ValueError):
    """An OTEL_* variable pycontainer cannot use (or an exporter it names that
    is not installed); the message names the variable and what it takes."""


@dataclass(frozen=True)
class SignalExport:
    """Where one signal is to go: its exporters, and OTLP's protocol."""

    signal: Signal
    #: Exporter names from EXPORTERS, without "none" (may be empty).
    exporters: tuple[str, ...]
    #: The OTLP protocol (one of PROTOCOLS); meaningful when "otlp" is named.
    protocol: str = PROTOCOLS[0]


def sdk_disabled(environ: Mapping[str, str]) -> bool:
    """OTEL_SDK_DISABLED: true turns every signal off."""
    value = environ.get("OTEL_SDK_DISABLED", "").strip()
    if value.lower() in ("", "false"):
        return False
    if value.lower() == "true":
        return True
    raise TelemetryConfigError(f"OTEL_SDK_DISABLED={value!r}: use true or false")


def signal_export(
    environ: Mapping[str, str], signal: Signal, *, default: str = "none"
) -> SignalExport:
    """The exporters OTEL_<SIGNAL>_EXPORTER names (comma-separated), and the
    protocol OTLP uses for the signal.

    Unset, the exporter is ``otlp`` when an OTLP endpoint is set for the
    signal (OTEL_EXPORTER_OTLP_ENDPOINT or its per-signal variant), else
    ``default``. TelemetryConfigError for a name not in EXPORTERS, or a
    protocol not in PROTOCOLS.
    """
    upper = signal.upper()
    variable = f"OTEL_{upper}_EXPORTER"
    configured = environ.get(variable, "").strip()
    if configured:
        names = [name.strip().lower() for name in configured.split(",") if name.strip()]
        for name in names:
            if name not in EXPORTERS:
                raise TelemetryConfigError(
                    f"{variable}={configured!r}: unknown exporter {name!r}; "
                    f"use {', '.join(EXPORTERS)} (comma-separated)"
                )
    elif environ.get(f"OTEL_EXPORTER_OTLP_{upper}_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    ):
        names = ["otlp"]
    else:
        names = [default]
    exporters = tuple(dict.fromkeys(name for name in names if name != "none"))
    protocol = _protocol(environ, upper) if "otlp" in exporters else PROTOCOLS[0]
    return SignalExport(signal, exporters, protocol)


def _protocol(environ: Mapping[str, str], upper: str) -> str:
    # The signal's own variable wins over the general one.
    for variable in (f"OTEL_EXPORTER_OTLP_{upper}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = environ.get(variable, "").strip()
        if not value:
            continue
        if value.lower() not in PROTOCOLS:
            raise TelemetryConfigError(
                f"{variable}={value!r}: use {' or '.join(PROTOCOLS)} "
                "(OpenTelemetry's Python SDK has no http/json exporter)"
            )
        return value.lower()
    return PROTOCOLS[0]


def metric_export_interval(environ: Mapping[str, str]) -> datetime.timedelta | None:
    """OTEL_METRIC_EXPORT_INTERVAL (milliseconds between exports), or None
    when unset (the SDK's default, 60 s). The SDK itself takes a bad value
    for its default with a warning; here it is an error."""
    value = environ.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip()
    if not value:
        return None
    try:
        millis = int(value)
    except ValueError:
        millis = 0
    if millis <= 0:
        raise TelemetryConfigError(
            f"OTEL_METRIC_EXPORT_INTERVAL={value!r}: use a whole number of milliseconds "
            "above 0 (60000 is a minute)"
        )
    return datetime.timedelta(milliseconds=millis)

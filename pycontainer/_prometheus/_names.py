"""Prometheus names for what OpenTelemetry and gRPC call things: metric and
label names made valid, OpenTelemetry units as Prometheus suffixes (the
OpenTelemetry specification's "Prometheus and OpenMetrics compatibility"
rules, in the part an application's instruments meet)."""

from __future__ import annotations

import re

__all__ = ["label_name", "metric_name", "split_method", "unit_suffix"]

_INVALID = re.compile(r"[^a-zA-Z0-9_:]+")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]+")
_UNDERSCORES = re.compile(r"__+")

# UCUM units as the specification names them in Prometheus (base units:
# seconds and bytes; others as they read).
_UNITS = {
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "TiBy": "tibibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "TBy": "terabytes",
    "m": "meters",
    "V": "volts",
    "A": "amperes",
    "J": "joules",
    "W": "watts",
    "g": "grams",
    "Cel": "celsius",
    "Hz": "hertz",
    "%": "percent",
}
_PER = {
    "s": "second",
    "m": "minute",
    "h": "hour",
    "d": "day",
    "w": "week",
    "mo": "month",
    "y": "year",
}


def metric_name(text: str) -> str:
    """``text`` as a valid metric name: each run of other characters one
    ``_``, never a leading digit."""
    name = _UNDERSCORES.sub("_", _INVALID.sub("_", text)).strip("_") or "unnamed"
    return f"_{name}" if name[0].isdigit() else name


def label_name(text: str) -> str:
    """``text`` as a valid label name (``__`` prefixes are Prometheus' own)."""
    name = _UNDERSCORES.sub("_", _INVALID_LABEL.sub("_", text)).strip("_") or "key"
    return f"key_{name}" if name[0].isdigit() else name


def unit_suffix(unit: str) -> str:
    """An OpenTelemetry unit as a name suffix ("" for none, "1" and
    ``{annotations}``): "ms" is "milliseconds", "By/s" "bytes_per_second"."""
    unit = re.sub(r"\{[^}]*\}", "", unit).strip()
    if not unit or unit == "1":
        return ""
    if "/" in unit:
        top, _, bottom = unit.partition("/")
        top_name = _UNITS.get(top, top) if top and top != "1" else ""
        per = f"per_{_PER.get(bottom, _UNITS.get(bottom, bottom))}"
        return label_name(f"{top_name}_{per}" if top_name else per)
    return label_name(_UNITS.get(unit, unit))


def split_method(method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` as (``pkg.Service``, ``Method``), the
    grpc_service and grpc_method labels of gRPC's Prometheus conventions."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name

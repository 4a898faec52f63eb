"""The severity of what the sidecar's program prints: the rules live in
:mod:`pycontainer.logtext`, shared with the manager (which reads the output it
retained with them); re-exported for the sidecar's modules."""

from __future__ import annotations

from ..logtext import (
    DEBUG,
    DEFAULT_RULES,
    ERROR,
    FATAL,
    INFO,
    STDERR_DEFAULT,
    STDOUT_DEFAULT,
    TRACE,
    WARN,
    Level,
    Severities,
    SeverityRule,
    parse_level,
    parse_rule,
)

__all__ = [
    "DEBUG",
    "DEFAULT_RULES",
    "ERROR",
    "FATAL",
    "INFO",
    "STDERR_DEFAULT",
    "STDOUT_DEFAULT",
    "TRACE",
    "WARN",
    "Level",
    "Severities",
    "SeverityRule",
    "parse_level",
    "parse_rule",
]

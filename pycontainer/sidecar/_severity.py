"""Severity of a line a program printed: the stream's default (INFO for
stdout, WARN for stderr) unless a rule's regular expression matches the line.

Rules are tried in order, the operator's (``--severity-rule REGEX=LEVEL``, RE2
syntax) before the built-in ones, which read a leading level word (``ERROR ...``,
``[warn] ...``, ``2024-05-01 12:00:00 DEBUG ...``) or a logfmt ``level=...``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..agent._pattern import Pattern, PatternError, compile_pattern
from ..v1 import logs_pb2

__all__ = [
    "DEFAULT_RULES",
    "STDERR_DEFAULT",
    "STDOUT_DEFAULT",
    "Level",
    "Severities",
    "SeverityRule",
    "parse_level",
    "parse_rule",
]


@dataclass(frozen=True)
class Level:
    """An OpenTelemetry severity number and the text shown with it."""

    number: int
    text: str


TRACE = Level(int(logs_pb2.SEVERITY_TRACE), "TRACE")
DEBUG = Level(int(logs_pb2.SEVERITY_DEBUG), "DEBUG")
INFO = Level(int(logs_pb2.SEVERITY_INFO), "INFO")
WARN = Level(int(logs_pb2.SEVERITY_WARN), "WARN")
ERROR = Level(int(logs_pb2.SEVERITY_ERROR), "ERROR")
FATAL = Level(int(logs_pb2.SEVERITY_FATAL), "FATAL")

STDOUT_DEFAULT = INFO
STDERR_DEFAULT = WARN

# Level words as programs print them (case-insensitive).
_WORDS: dict[str, Level] = {
    "trace": TRACE,
    "debug": DEBUG,
    "info": INFO,
    "notice": INFO,
    "warn": WARN,
    "warning": WARN,
    "error": ERROR,
    "fatal": FATAL,
    "critical": FATAL,
    "crit": FATAL,
    "panic": FATAL,
}

_BANDS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")


def parse_level(text: str) -> Level:
    """A level from a name (trace, debug, info, warn/warning, error,
    fatal/critical, any case) or an OpenTelemetry severity number 1-24."""
    word = text.strip().lower()
    if word in _WORDS:
        return _WORDS[word]
    if word.isdigit() and 1 <= int(word) <= 24:
        number = int(word)
        band, step = divmod(number - 1, 4)
        return Level(number, _BANDS[band] + (str(step + 1) if step else ""))
    raise ValueError(
        f"unknown level {text!r}: write trace, debug, info, warn, error or fatal "
        "(or an OpenTelemetry severity number 1-24)"
    )


@dataclass(frozen=True)
class SeverityRule:
    """Lines in which ``pattern`` is found (re.search) get ``level``; with a
    ``level`` named group in the pattern, that group's word decides instead."""

    pattern: Pattern
    level: Level | None = None

    def match(self, line: str) -> Level | None:
        found = self.pattern.search(line)
        if found is None:
            return None
        if self.level is not None:
            return self.level
        return _WORDS.get((found.group("level") or "").lower())


def parse_rule(text: str) -> SeverityRule:
    """``REGEX=LEVEL`` (split at the last ``=``, so the regex may hold one)."""
    regex, sep, level = text.rpartition("=")
    if not sep or not regex:
        raise ValueError(f"{text!r} is not REGEX=LEVEL (such as '^panic:=fatal')")
    # The operator's rules run on every line the program prints: RE2 (linear
    # time), as every pattern from outside is. The built-in rules below need
    # lookahead, and are re's.
    try:
        pattern = compile_pattern(regex)
    except PatternError as exc:
        raise ValueError(f"invalid regular expression {regex!r}: {exc}") from None
    return SeverityRule(pattern, parse_level(level))


_WORD_ALTERNATIVES = "|".join(sorted(_WORDS, key=len, reverse=True))
DEFAULT_RULES: tuple[SeverityRule, ...] = (
    # A leading level word, perhaps bracketed, perhaps after a date and a time
    # (tokens holding a digit): "ERROR x", "[warn] x", "2024-05-01 12:00:00 DEBUG x".
    SeverityRule(
        re.compile(
            rf"^\s*(?:\S*\d\S*\s+){{0,2}}[\[(<]?(?P<level>{_WORD_ALTERNATIVES})\b(?![.\-/])",
            re.IGNORECASE,
        )
    ),
    # logfmt and friends: level=error, "level":"warn".
    SeverityRule(
        re.compile(
            rf"""\b(?:level|lvl|severity)"?\s*[=:]\s*"?(?P<level>{_WORD_ALTERNATIVES})\b""",
            re.IGNORECASE,
        )
    ),
)


class Severities:
    """Classifies lines: the first matching rule, else the stream's default."""

    def __init__(self, rules: Sequence[SeverityRule] = (), *, defaults: bool = True) -> None:
        self.rules: tuple[SeverityRule, ...] = (*rules, *(DEFAULT_RULES if defaults else ()))

    def classify(self, line: str, default: Level) -> Level:
        for rule in self.rules:
            level = rule.match(line)
            if level is not None:
                return level
        return default

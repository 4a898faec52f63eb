"""What a line a program printed says of itself: its severity, and for the
formats of Python's ``logging`` its logger, its time and its message.

Severity: the stream's default (INFO for stdout, WARN for stderr) unless a
rule's regular expression matches the line. Rules are tried in order, the
operator's (``--severity-rule REGEX=LEVEL``, RE2 syntax) before the built-in
ones, which read a leading level word (``ERROR ...``, ``[warn] ...``,
``2024-05-01 12:00:00 DEBUG ...``) or a logfmt ``level=...``. The sidecar
classifies its program's output so (:class:`Severities`).

:func:`read_line` goes further, for output that is read back as log entries
(the manager's retained stdout and stderr): a line in one of the common
formats of Python's ``logging`` (:data:`PYTHON_FORMATS`) becomes the entry the
app's own logging would have made, its level, logger, message (the prefix
taken off) and its own timestamp; any other line keeps its text whole, with
the severity of the rules and no logger. :class:`PrintedStream` reads a
stream's lines in order, so that the traceback logging prints after a record
goes with that record.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from .agent._pattern import Pattern, PatternError, compile_pattern
from .v1 import logs_pb2

__all__ = [
    "DEFAULT_RULES",
    "PYTHON_FORMATS",
    "STDERR_DEFAULT",
    "STDOUT_DEFAULT",
    "Level",
    "PrintedLine",
    "PrintedStream",
    "Severities",
    "SeverityRule",
    "parse_level",
    "parse_rule",
    "read_line",
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
# Every level word holds one of these (Severities.classify_all's sieve).
_WORD_ROOTS = tuple(sorted(w for w in _WORDS if not any(o != w and o in w for o in _WORDS)))
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
        # Only the built-in rules: a line without a level word matches none.
        self._words_only = not rules

    def classify(self, line: str, default: Level) -> Level:
        for rule in self.rules:
            level = rule.match(line)
            if level is not None:
                return level
        return default

    def classify_all(self, lines: Sequence[str], default: Level) -> list[Level]:
        """``classify(line, default)`` of each line, in bulk: with the built-in
        rules alone, a search of all the lines at once for the level words
        (which every built-in rule needs) finds the few lines to classify."""
        levels = [default] * len(lines)
        if not self.rules:
            return levels
        block = "\n".join(lines)
        if not self._words_only or not block.isascii():
            # An operator's rule can match anything; and outside ASCII, a
            # case-insensitive match finds more than lower() does (the
            # dotted and dotless i, the Kelvin sign).
            return [self.classify(line, default) for line in lines]
        low = block.lower()
        found: list[int] = []  # where a line's first occurrence of a word is
        for word in _WORD_ROOTS:
            at = low.find(word)
            while at >= 0:
                found.append(at)
                end = low.find("\n", at)
                at = low.find(word, end + 1) if end >= 0 else -1
        found.sort()
        index, at, done = 0, 0, -1
        for position in found:
            index += low.count("\n", at, position)
            at = position
            if index != done:
                levels[index] = self.classify(lines[index], default)
                done = index
        return levels


# -- whole lines: Python logging's formats -------------------------------------------------

# A timestamp as logging's asctime prints it ("2026-12-01 09:06:22,202", local
# time) or as ISO 8601 ("2026-12-01T09:06:22.202Z", "...+01:00").
_TIME = (
    r"(?P<time>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d)"
    r"(?:[.,](?P<fraction>\d{1,9}))?(?P<zone>Z|[+-]\d\d:?\d\d)?"
)
# A levelname as logging prints it (upper case), and the custom levels often added.
_LEVELNAME = r"(?P<level>TRACE|DEBUG|INFO|NOTICE|WARNING|WARN|ERROR|CRITICAL|FATAL)"
# A logger name: dotted words ("examples.sync_app", "__main__", "root").
_NAME = r"(?P<logger>[A-Za-z_][\w.\-]*)"

#: The formats :func:`read_line` recognises (Python's ``re``: they are ours,
#: anchored, and without nested repetition, so linear), in the order tried.
PYTHON_FORMATS: tuple[re.Pattern[str], ...] = (
    # "%(asctime)s %(levelname)s %(name)s %(message)s" (as the examples print),
    # also with "[LEVEL]", "name:" or "name -".
    re.compile(rf"{_TIME}\s+\[?{_LEVELNAME}\]?\s+{_NAME}:?(?:\s+-)?(?:\s+(?P<message>.*))?"),
    # "%(asctime)s - %(name)s - %(levelname)s - %(message)s" (logging's cookbook).
    re.compile(rf"{_TIME}\s+-\s+{_NAME}\s+-\s+{_LEVELNAME}\s+-(?:\s(?P<message>.*))?"),
    # "%(levelname)s:%(name)s:%(message)s" (logging.BASIC_FORMAT, basicConfig's default).
    re.compile(rf"{_LEVELNAME}:(?P<logger>[^:\s]+):(?P<message>.*)"),
)

# A line is printed before it is read: its own time is believed when it is at
# most this much before the time it was read (print buffers, a busy reader) ...
_EARLIEST = timedelta(minutes=10)
# ... or this much after (clocks of a second's resolution). Outside, it is
# taken to be in another time zone than ours (asctime has none) or wrong.
_LATEST = timedelta(seconds=1)
_NS_PER_US = 1000
_EARLIEST_NS = _EARLIEST // timedelta(microseconds=1) * _NS_PER_US
_LATEST_NS = _LATEST // timedelta(microseconds=1) * _NS_PER_US

_DEFAULT_SEVERITIES = Severities()


@dataclass(frozen=True)
class PrintedLine:
    """A line a program printed, read as a log entry."""

    level: Level
    logger: str
    message: str
    time_ns: int


def read_line(
    text: str,
    default: Level,
    received_ns: int,
    severities: Severities = _DEFAULT_SEVERITIES,
) -> PrintedLine:
    """``text`` (a line printed on a stream whose default level is
    ``default``, read at ``received_ns``) as a log entry.

    In a format of :data:`PYTHON_FORMATS`: the level its levelname says (the
    text as printed, as logging's own records have it), its logger, the
    message after the prefix, and the line's timestamp when it has a plausible
    one. Otherwise: the level of ``severities``, no logger, the whole text, the
    time it was read.
    """
    for form in PYTHON_FORMATS:
        found = form.fullmatch(text)
        if found is None:
            continue
        word = found.group("level")
        level = Level(_WORDS[word.lower()].number, word)
        return PrintedLine(
            level=level,
            logger=found.group("logger"),
            message=found.group("message") or "",
            time_ns=_own_time(found, received_ns),
        )
    return PrintedLine(severities.classify(text, default), "", text, received_ns)


def _own_time(found: re.Match[str], received_ns: int) -> int:
    """The time the line says it was printed, else ``received_ns``."""
    stamp = found.groupdict().get("time")
    if stamp is None:
        return received_ns
    try:
        when = datetime.fromisoformat(stamp + _zone(found.group("zone")))
    except ValueError:  # a month 13 and such
        return received_ns
    # Naive (asctime): local time, as the program printed it.
    fraction = found.group("fraction") or ""
    own_ns = int(when.timestamp()) * 1_000_000_000 + int(fraction.ljust(9, "0"))
    plausible = received_ns - _EARLIEST_NS <= own_ns <= received_ns + _LATEST_NS
    return own_ns if plausible else received_ns


def _zone(zone: str | None) -> str:
    if not zone:
        return ""
    return "+00:00" if zone == "Z" else zone


# -- a stream's lines in order: tracebacks after records -------------------------------------

# What logging prints after a record's message: logger.exception()'s traceback
# (perhaps chained), stack_info's stack.
_STACK_STARTS = frozenset({"Traceback (most recent call last):", "Stack (most recent call last):"})
_CHAINS = frozenset(
    {
        "During handling of the above exception, another exception occurred:",
        "The above exception was the direct cause of the following exception:",
    }
)
# Where a stream is, after a record: its stack's start is next; in the stack
# (indented lines, then the exception's line); after that line (a blank line,
# a chain sentence); after a chain sentence (a blank line, another traceback).
_NEXT, _IN_STACK, _AFTER_EXCEPTION, _CHAINED = range(4)


class PrintedStream:
    """One stream's lines, read in order: as :func:`read_line`, and the lines
    of the traceback (or stack) that logging prints after a record's message
    get that record's level and logger, as a live entry carries its stack."""

    def __init__(self, default: Level, severities: Severities = _DEFAULT_SEVERITIES) -> None:
        self.default = default
        self.severities = severities
        self._record: PrintedLine | None = None
        self._where = _NEXT

    def read(self, text: str, received_ns: int) -> PrintedLine:
        line = read_line(text, self.default, received_ns, self.severities)
        if line.logger:  # a record of one of logging's formats
            self._record, self._where = line, _NEXT
            return line
        record = self._record
        if record is None or not self._continues(text):
            self._record = None
            return line
        return PrintedLine(record.level, record.logger, text, received_ns)

    def _continues(self, text: str) -> bool:
        """Whether ``text`` is the next line of the record's stack (moving on)."""
        where = self._where
        if where in (_NEXT, _CHAINED) and text in _STACK_STARTS:
            self._where = _IN_STACK
        elif where == _IN_STACK:
            if not text[:1].isspace():
                self._where = _AFTER_EXCEPTION  # the exception's own line
        elif where == _AFTER_EXCEPTION and text in _CHAINS:
            self._where = _CHAINED
        elif not (where in (_AFTER_EXCEPTION, _CHAINED) and not text):
            return False
        return True

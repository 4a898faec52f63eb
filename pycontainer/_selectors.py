"""Label selectors, as Kubernetes writes them: ``app=web,tier!=db``,
``env in (prod, staging)``, ``track notin (canary)``, ``gpu`` (exists),
``!legacy`` (does not exist). One grammar for the manager (a bad selector is
INVALID_ARGUMENT) and the command line (a usage error before any call); no
imports beyond the standard library, so that ``pycontainer --help`` stays cheap.

An empty selector selects everything; a selector that does not parse selects
nothing: it is an error, never "match all".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Requirement", "matches", "parse_selector"]

# How the parser reads its tokens (None past the end).
_Take = Callable[[], "str | None"]

# A label name or value: at most 63 of A-Z a-z 0-9 - _ . starting and ending
# alphanumeric (a value may also be empty); a key's optional prefix is a DNS
# subdomain (lowercase, at most 253), then '/'.
_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
_NAME_RULE = "at most 63 of A-Z a-z 0-9 - _ . starting and ending with a letter or digit"
_OPERATORS = ("!=", "==", "=", "!", "(", ")", ",")
_HELP = "write key=value, key!=value, key in (a,b), key notin (a,b), key or !key, comma-separated"


@dataclass(frozen=True)
class Requirement:
    """One comma-separated part of a selector."""

    key: str
    #: =, !=, in, notin, exists or !exists (== is written =).
    op: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return value is not None and value in self.values
        if self.op in ("!=", "notin"):
            return value is None or value not in self.values
        if self.op == "exists":
            return value is not None
        return value is None


def matches(requirements: Sequence[Requirement], labels: Mapping[str, str]) -> bool:
    """Whether labels satisfy every requirement (all of none: yes)."""
    return all(r.matches(labels) for r in requirements)


def _q(text: str | None) -> str:
    """``text`` quoted for a message, cut short (a selector can be long)."""
    return repr(text if text is None or len(text) <= 70 else text[:67] + "...")


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    index = 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        operator = next((op for op in _OPERATORS if text.startswith(op, index)), None)
        if operator is not None:
            out.append(operator)
            index += len(operator)
            continue
        start = index
        while (
            index < len(text)
            and not text[index].isspace()
            and not any(text.startswith(op, index) for op in _OPERATORS)
        ):
            index += 1
        out.append(text[start:index])
    return out


def _is_word(token: str | None) -> bool:
    return token is not None and token not in _OPERATORS


def _check_key(key: str) -> str:
    prefix, slash, name = key.rpartition("/")
    if slash and not (len(prefix) <= 253 and _DNS_SUBDOMAIN.fullmatch(prefix)):
        raise ValueError(
            f"label key {_q(key)}: its prefix {_q(prefix)} must be a DNS subdomain "
            "(lowercase letters, digits, '-' and '.', at most 253)"
        )
    if not (len(name) <= 63 and _NAME.fullmatch(name)):
        raise ValueError(f"label key {_q(key)} is not valid: a key's name is {_NAME_RULE}")
    return key


def _check_value(key: str, value: str) -> str:
    if value and not (len(value) <= 63 and _NAME.fullmatch(value)):
        raise ValueError(
            f"label value {_q(value)} (of {_q(key)}) is not valid: a value is empty or {_NAME_RULE}"
        )
    return value


def parse_selector(text: str) -> tuple[Requirement, ...]:
    """The requirements of ``text`` (none for an empty selector); ValueError
    naming the mistake when it is not a selector."""
    if not text.strip():
        return ()
    tokens = _tokens(text)
    position = 0

    def peek() -> str | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> str | None:
        nonlocal position
        token = peek()
        position += 1
        return token

    def shown(token: str | None) -> str:
        return "the end" if token is None else _q(token)

    out: list[Requirement] = []
    while True:
        token = take()
        if token == "!":
            key = take()
            if not _is_word(key):
                raise ValueError(f"expected a label key after '!', found {shown(key)}; {_HELP}")
            assert key is not None
            out.append(Requirement(_check_key(key), "!exists"))
        elif _is_word(token):
            assert token is not None
            key = _check_key(token)
            operator = peek()
            if operator in (None, ","):
                out.append(Requirement(key, "exists"))
            elif operator in ("=", "==", "!="):
                take()
                value = "" if peek() in (None, ",") else take()
                if not _is_word(value) and value != "":
                    raise ValueError(
                        f"expected a value after {key}{operator}, found {shown(value)}; {_HELP}"
                    )
                assert value is not None
                op = "!=" if operator == "!=" else "="
                out.append(Requirement(key, op, frozenset({_check_value(key, value)})))
            elif operator in ("in", "notin"):
                take()
                out.append(Requirement(key, operator, _value_set(key, operator, take, peek)))
            else:
                raise ValueError(
                    f"after the label key {_q(key)}, expected =, ==, !=, in, notin, ',' or the "
                    f"end, found {shown(operator)}; {_HELP}"
                )
        else:
            raise ValueError(f"expected a label key, found {shown(token)}; {_HELP}")
        after = take()
        if after is None:
            return tuple(out)
        if after != ",":
            raise ValueError(f"expected ',' or the end, found {shown(after)}; {_HELP}")


def _value_set(key: str, operator: str, take: _Take, peek: _Take) -> frozenset[str]:
    """The ``(a, b)`` after ``key in`` or ``key notin``."""
    opened = take()
    if opened != "(":
        raise ValueError(f"expected '(' after {key} {operator}, found {_q(opened)}; {_HELP}")
    values: set[str] = set()
    while True:
        value = "" if peek() in (",", ")") else take()
        if value is None:
            raise ValueError(f"{key} {operator} (...: expected ')' before the end; {_HELP}")
        if not _is_word(value) and value != "":
            raise ValueError(f"{key} {operator} (...): expected a value, found {_q(value)}")
        values.add(_check_value(key, value))
        closing = take()
        if closing == ")":
            return frozenset(values)
        if closing != ",":
            shown = "the end" if closing is None else _q(closing)
            raise ValueError(f"{key} {operator} (...): expected ',' or ')', found {shown}")

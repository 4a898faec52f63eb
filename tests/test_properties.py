"""Property-based tests (issue 8, "hostile input") of the log filters and the spec parser.

The state machine has its own in tests/test_lifecycle.py. Here:
- a StreamLogs query over a buffer returns exactly the entries a plain
  reference filter picks, in order, whatever the entries, the filters, the
  tail, the batch size and the buffer's capacity;
- a literal pattern filters as Python's own substring test does (RE2 and the
  reference agree), and any pattern text is either a query or INVALID_ARGUMENT;
- the spec parser takes any text to either specs or a SpecError (never another
  exception), and a spec it accepted survives spec_to_dict -> YAML -> parse.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pycontainer._errors import RequestError
from pycontainer.agent._logs._buffer import LogBuffer
from pycontainer.agent._logs._reader import LogQuery, LogReader
from pycontainer.spec import SpecError, parse_specs, spec_to_dict
from pycontainer.v1 import logs_pb2, management_pb2

SEVERITIES = [v for v in logs_pb2.Severity.values() if v]
LOGGERS = ["", "app", "app.db", "apple", "app.db.pool", "web"]
WORDS = ["alpha", "beta", "app", "db", "x", "", "ünï", "a.b", "(", "*"]

_entry = st.tuples(
    st.sampled_from(SEVERITIES),
    st.sampled_from(LOGGERS),
    st.lists(st.sampled_from(WORDS), max_size=4).map(" ".join),
)


def _reference_logger_match(name: str, want: str) -> bool:
    return not want or name == want or name.startswith(want + ".")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    entries=st.lists(_entry, max_size=60),
    capacity=st.integers(1, 40),
    min_severity=st.sampled_from([0, *SEVERITIES]),
    logger=st.sampled_from(LOGGERS),
    contains=st.sampled_from(["", *WORDS]),
    literal=st.sampled_from(["", *WORDS]),
    tail=st.none() | st.integers(0, 70),
    batch=st.integers(0, 7),
)
def test_a_log_query_returns_exactly_what_a_reference_filter_picks(
    entries: list[tuple[int, str, str]],
    capacity: int,
    min_severity: int,
    logger: str,
    contains: str,
    literal: str,
    tail: int | None,
    batch: int,
) -> None:
    buffer = LogBuffer(capacity=capacity)
    for severity, name, message in entries:
        buffer.append(severity, "", name, message)
    request = management_pb2.StreamLogsRequest(
        min_severity=min_severity,  # type: ignore[arg-type]
        logger=logger,
        contains=contains,
        pattern=re.escape(literal) if literal else "",
        max_batch_size=batch,
    )
    if tail is not None:
        request.tail = tail
    query = LogQuery.from_request(request)
    responses = list(LogReader(buffer, query).iter_responses(lambda: True))
    got = [(e.severity, e.logger, e.message) for r in responses for e in r.entries]

    retained = entries[-capacity:] if entries else []
    expected = [
        (severity, name, message)
        for severity, name, message in retained
        if severity >= min_severity
        and _reference_logger_match(name, logger)
        and contains in message
        and literal in message
    ]
    if tail is not None:
        expected = expected[-tail:] if tail else []
    assert got == expected
    # Batches are bounded by what the caller asked (0: the default).
    if batch:
        assert all(len(r.entries) <= batch for r in responses)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_pattern_text_is_a_query_or_invalid_argument(pattern: str) -> None:
    refusal: RequestError | None = None
    try:
        query = LogQuery.from_request(management_pb2.StreamLogsRequest(pattern=pattern))
    except RequestError as exc:
        refusal = exc
    if refusal is not None:
        assert refusal.code.name == "INVALID_ARGUMENT"
        assert "pattern" in refusal.message
        return
    # A query that compiled answers for any message, in bounded time (RE2).
    buffer = LogBuffer(capacity=4)
    buffer.append(logs_pb2.SEVERITY_INFO, "", "app", "a" * 5000 + "!")
    list(LogReader(buffer, query).iter_responses(lambda: True))


# -- the spec parser ---------------------------------------------------------------

_names = st.from_regex(r"[a-z]([a-z0-9-]{0,18}[a-z0-9])?", fullmatch=True)
_env = st.dictionaries(
    st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True),
    st.text(st.characters(blacklist_categories=["Cs", "Cc"]), max_size=20),
    max_size=4,
)
_valid_spec = st.fixed_dictionaries(
    {"name": _names, "command": st.lists(st.sampled_from(["sh", "-c", "echo hi", "sleep 1"]))},
    optional={
        "env": _env,
        "replicas": st.integers(1, 5),
        "priority": st.integers(-100, 100),
        "gracePeriod": st.sampled_from(["0s", "1s", "250ms", "2m", "1h"]),
        "labels": st.dictionaries(_names, _names, max_size=3),
        "restartPolicy": st.sampled_from(["Never", "OnFailure", "Always"]),
        "resources": st.fixed_dictionaries(
            {
                "cpu": st.sampled_from(["100m", "1", "2.5"]),
                "memory": st.sampled_from(["64Mi", "1Gi"]),
            }
        ),
    },
).filter(lambda d: bool(d["command"]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_valid_spec)
def test_an_accepted_spec_survives_its_own_rendering(document: dict[str, Any]) -> None:
    [spec] = parse_specs(yaml.safe_dump(document), source="generated.yaml")
    rendered = yaml.safe_dump(spec_to_dict(spec))
    [again] = parse_specs(rendered, source="rendered.yaml")
    assert again == spec


_yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
)
_yaml_values = st.recursive(
    _yaml_scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "name",
                    "command",
                    "env",
                    "replicas",
                    "gracePeriod",
                    "resources",
                    "probes",
                    "containers",
                    "labels",
                    "priority",
                    "restartPolicy",
                    "secretEnv",
                    "healthListen",
                    "x",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_yaml_values)
def test_any_document_is_specs_or_a_spec_error(document: Any) -> None:
    _specs_or_error(yaml.safe_dump(document), "yaml")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_specs_or_a_spec_error(text: str) -> None:
    for kind in ("yaml", "toml"):
        _specs_or_error(text, kind)


def _specs_or_error(text: str, kind: str) -> None:
    """Parse; a SpecError (with a message) is an answer, any other exception fails."""
    message = None
    try:
        parse_specs(text, source="any", kind=kind)
    except SpecError as exc:
        message = str(exc)
    assert message is None or message.startswith("any")


# What these properties found, kept as plain cases.
def test_a_control_character_is_a_spec_error_naming_its_line() -> None:
    with pytest.raises(SpecError) as caught:
        parse_specs("name: a\ncommand: [x\x08]\n", source="f.yaml")
    assert str(caught.value) == "f.yaml:2: invalid YAML: character #x0008 is not allowed"


def test_a_secret_env_list_holding_a_list_is_a_spec_error() -> None:
    with pytest.raises(SpecError) as caught:
        parse_specs("name: a\ncommand: [x]\nsecretEnv: [[]]\n", source="f.yaml")
    assert "secretEnv" in str(caught.value)

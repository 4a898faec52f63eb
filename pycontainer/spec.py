"""Spec files: the containers to launch, written as Kubernetes-flavoured YAML
(or TOML, by the file's extension) and read into ``ContainerSpec`` messages.

A file holds one or more containers: a YAML stream of documents, one container
each, or a top-level ``containers:`` list (TOML: ``[[containers]]``)::

    containers:
      - name: web
        command: [python, app.py, --listen, 127.0.0.1:0]
        labels: {app: web}
        env: {DATABASE_URL: "postgres://app:s3cret@db/app", API_KEY: "..."}
        secretEnv: [DATABASE_URL]
        priority: 10
        resources: {cpu: 500m, memory: 256Mi}
        gracePeriod: 30s
        restartPolicy: OnFailure
        replicas: 2
        service: {name: web, endpoint: grpc}

``service`` makes the containers endpoints of a mesh service (clients dial
``xds:///web``); ``proxy: envoy`` (with ``sidecar: true``) puts Envoy beside a
program that cannot dial xDS itself, and ``envoy`` gives its listeners.

:func:`load_specs` checks everything before anything is launched and reports
every mistake at once, each with where it is (``demo.yaml:12:
containers[1].resources.cpu: "lots" is not a CPU quantity (use 500m or 2)``),
by raising :class:`SpecError`.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import difflib
import json
import os
import re
import shlex
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf import duration_pb2
from google.protobuf.message import DecodeError

from ._meshrules import (
    DEFAULT_FAILURE_PERCENTAGE_THRESHOLD,
    DEFAULT_MAX_EJECTION_PERCENT,
    DEFAULT_REQUEST_VOLUME,
    FieldPath,
    Spelling,
    mesh_problems,
)
from ._secrets import SECRET_NAMES
from .limits import DNS_LABEL_PATTERN, MAX_DNS_LABEL_LENGTH, MAX_LOG_CAPACITY
from .units import (
    duration_from_proto,
    duration_to_proto,
    format_cpu,
    format_duration,
    format_memory,
    parse_cpu,
    parse_duration,
    parse_memory,
)
from .v1 import mesh_pb2, spec_pb2

if TYPE_CHECKING:
    import yaml  # imported when a YAML file is read: the wire helpers below do not need it

__all__ = [
    "MAX_GRACE_PERIOD",
    "MAX_PROBE_DURATION",
    "MAX_REPLICAS",
    "MAX_RESTART_BACKOFF",
    "MAX_START_TIMEOUT",
    "MIN_RESTART_BACKOFF",
    "MIN_START_TIMEOUT",
    "SPEC_ENV",
    "SpecError",
    "decode_spec",
    "encode_spec",
    "load_specs",
    "parse_specs",
    "spec_to_dict",
]

SpecPath = tuple[str | int, ...]

_INT32_MAX = 2**31 - 1
_UINT32_MAX = 2**32 - 1

# Bounds that catch a slip of the keyboard before it reaches the machine.
#: One manager runs its containers as processes of one machine; Kubernetes
#: allows 110 pods per node by default. 1000 leaves room for small programs,
#: while a typed 100000 would fork until the machine gives out.
MAX_REPLICAS = 1000
#: A stop (and an eviction making room) waits this long for the program; an
#: operator's `pycontainer stop` should not wait longer than an hour. A program
#: that needs longer to drain should checkpoint instead.
MAX_GRACE_PERIOD = datetime.timedelta(hours=1)
#: The first delay between restarts (then doubled): a crash loop restarting
#: faster than this burns a core and floods the logs (the kubelet starts at 10s).
MIN_RESTART_BACKOFF = datetime.timedelta(milliseconds=100)
#: The kubelet's CrashLoopBackOff never waits more than 5 minutes; a first
#: delay longer than that reads as a mistake.
MAX_RESTART_BACKOFF = datetime.timedelta(minutes=5)

#: How long a launched program may take to register with the manager: under a
#: second no interpreter has even imported its modules; past an hour a program
#: that never registers goes unreported for too long.
MIN_START_TIMEOUT = datetime.timedelta(seconds=1)
MAX_START_TIMEOUT = datetime.timedelta(hours=1)
#: A probe's period, timeout or initial delay: past an hour it says nothing
#: about the program's health any more.
MAX_PROBE_DURATION = datetime.timedelta(hours=1)

#: The environment variable a launcher hands a sidecar its ContainerSpec in
#: (:func:`encode_spec`): the one launch description, never re-spelt as flags.
SPEC_ENV = "PYCONTAINER_SPEC"

RUNTIMES: dict[str, spec_pb2.RuntimeKind.ValueType] = {
    "process": spec_pb2.RUNTIME_KIND_PROCESS,
    "runc": spec_pb2.RUNTIME_KIND_RUNC,
    "in-process": spec_pb2.RUNTIME_KIND_IN_PROCESS,
}
RESTART_POLICIES: dict[str, spec_pb2.RestartPolicy.ValueType] = {
    "Always": spec_pb2.RESTART_POLICY_ALWAYS,
    "OnFailure": spec_pb2.RESTART_POLICY_ON_FAILURE,
    "Never": spec_pb2.RESTART_POLICY_NEVER,
}
CHECKPOINT_POLICIES: dict[str, spec_pb2.CheckpointPolicy.ValueType] = {
    "Manual": spec_pb2.CHECKPOINT_POLICY_MANUAL,
    "OnStop": spec_pb2.CHECKPOINT_POLICY_ON_STOP,
}
PROXIES: dict[str, mesh_pb2.MeshProxy.ValueType] = {
    "none": mesh_pb2.MESH_PROXY_NONE,
    "envoy": mesh_pb2.MESH_PROXY_ENVOY,
}
LOAD_BALANCING: dict[str, mesh_pb2.LoadBalancingPolicy.ValueType] = {
    "RoundRobin": mesh_pb2.LOAD_BALANCING_POLICY_ROUND_ROBIN,
    "RingHash": mesh_pb2.LOAD_BALANCING_POLICY_RING_HASH,
    "LeastRequest": mesh_pb2.LOAD_BALANCING_POLICY_LEAST_REQUEST,
}

_CONTAINER_KEYS = (
    "name",
    "labels",
    "runtime",
    "command",
    "env",
    "secretEnv",
    "workingDir",
    "oci",
    "priority",
    "resources",
    "gracePeriod",
    "restartPolicy",
    "restartBackoff",
    "checkpointPolicy",
    "replicas",
    "livenessProbe",
    "readinessProbe",
    "hooks",
    "sidecar",
    "startTimeout",
    "healthListen",
    "httpListen",
    "logCapacity",
    "service",
    "proxy",
    "envoy",
)
_FLAT = (
    "pycontainer specs are flat: name, labels, command and the rest at the top of each container"
)
_CONTAINER_HINTS = {
    "image": "pycontainer runs programs, not images: give command (and oci.rootfs for runc)",
    "args": "put the arguments in command, after the program",
    "cwd": 'did you mean "workingDir"?',
    "terminationGracePeriodSeconds": 'did you mean "gracePeriod" (such as 30s)?',
    "apiVersion": _FLAT,
    "kind": _FLAT,
    "metadata": _FLAT,
    "spec": _FLAT,
    "mesh": "the mesh settings are service (what the containers serve), proxy and envoy",
    "sidecarProxy": 'did you mean "proxy" (such as proxy: envoy, with sidecar: true)?',
}
_SERVICE_KEYS = (
    "name",
    "endpoint",
    "subset",
    "weight",
    "zone",
    "loadBalancing",
    "hashHeader",
    "timeout",
    "retry",
    "outlierDetection",
    "trafficWeight",
)
_SERVICE_HINTS = {
    "port": "a service is served on one of the container's endpoints: give endpoint, "
    "such as grpc (the name it registers the endpoint under)",
    "lbPolicy": 'did you mean "loadBalancing" (RoundRobin, RingHash or LeastRequest)?',
    "retries": 'did you mean "retry" (retryOn, maxAttempts, initialBackoff, maxBackoff)?',
    "version": 'did you mean "subset" (such as v2)?',
    "locality": 'did you mean "zone"?',
}
_RETRY_KEYS = ("retryOn", "maxAttempts", "initialBackoff", "maxBackoff")
_RETRY_HINTS = {
    "attempts": 'did you mean "maxAttempts" (attempts in all, the first included)?',
    "perTryTimeout": "there is no per-attempt timeout: service.timeout bounds the whole call",
    "backoff": "give initialBackoff and maxBackoff (such as 25ms and 250ms)",
}
_OUTLIER_KEYS = (
    "interval",
    "baseEjectionTime",
    "maxEjectionPercent",
    "failurePercentageThreshold",
    "requestVolume",
)
_OUTLIER_HINTS = {
    key: "endpoints are ejected by their failure percentage (all grpcio implements of "
    "Envoy's detectors): give failurePercentageThreshold"
    for key in ("consecutiveErrors", "consecutive5xxErrors", "consecutiveGatewayErrors")
}
_ENVOY_KEYS = ("inboundListen", "upstreams", "programAddress")
_ENVOY_HINTS = {
    "listen": 'did you mean "inboundListen"?',
    "inbound": 'did you mean "inboundListen"?',
    "admin": "Envoy's admin listens on 127.0.0.1 only, on a port the sidecar picks",
    "outbound": 'did you mean "upstreams" ([{service: orders, listen: 127.0.0.1:9001}])?',
}
_UPSTREAM_KEYS = ("service", "listen")
_UPSTREAM_HINTS = {
    "port": "write listen: 127.0.0.1:PORT (the address the program dials)",
    "address": 'did you mean "listen"?',
    "name": 'did you mean "service"?',
}
_RESOURCE_HINTS = {
    "requests": "write cpu and memory directly under resources",
    "limits": "write cpu and memory directly under resources (they are requests)",
}
_PROBE_HANDLERS = ("exec", "http", "tcp", "grpc")
_PROBE_KEYS = (*_PROBE_HANDLERS, "period", "timeout", "failureThreshold", "initialDelay")

# The id the manager makes is NAME-xxxxxxxx, in the ids' alphabet.
_NAME = DNS_LABEL_PATTERN
_NAME_MAX = MAX_DNS_LABEL_LENGTH
# Kubernetes label syntax: [prefix/]name, and values of the same shape.
_LABEL_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"(?:[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?/)?{_LABEL_NAME}")
_LABEL_VALUE = re.compile(rf"(?:{_LABEL_NAME})?")
_ENV_NAME = re.compile(r"[^=\0]+")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
# The smallest duration there is (timedelta's resolution): "at least this" is "more than 0".
_TINY = datetime.timedelta(microseconds=1)


class SpecError(ValueError):
    """A spec file with mistakes; ``errors`` has one line per mistake."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


def encode_spec(spec: spec_pb2.ContainerSpec) -> str:
    """``spec`` as the value of :data:`SPEC_ENV`: base64 of its wire form."""
    return base64.b64encode(spec.SerializeToString(deterministic=True)).decode("ascii")


def decode_spec(text: str) -> spec_pb2.ContainerSpec:
    """The spec :func:`encode_spec` wrote; ValueError naming what is wrong."""
    try:
        data = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"${SPEC_ENV} is not base64: it holds a ContainerSpec as encode_spec() writes it"
        ) from None
    spec = spec_pb2.ContainerSpec()
    try:
        spec.ParseFromString(data)
    except DecodeError:
        raise ValueError(f"${SPEC_ENV} does not hold a ContainerSpec (not its wire form)") from None
    return spec


def load_specs(path: str | os.PathLike[str]) -> list[spec_pb2.ContainerSpec]:
    """The containers a spec file describes, checked; SpecError with every mistake.

    ``.toml`` files are TOML; anything else is YAML (JSON included).
    """
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError([f"{source}: cannot read it: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise SpecError([f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    kind = "toml" if Path(source).suffix.lower() == ".toml" else "yaml"
    return parse_specs(text, source=source, kind=kind)


def parse_specs(
    text: str, *, source: str = "<spec>", kind: str = "yaml"
) -> list[spec_pb2.ContainerSpec]:
    """The containers in spec text (``kind`` "yaml" or "toml"), checked;
    SpecError with every mistake, each prefixed by ``source``."""
    if kind == "toml":
        try:
            documents = [_Document(tomllib.loads(text), {}, [])]
        except tomllib.TOMLDecodeError as exc:
            raise SpecError([f"{source}: invalid TOML: {exc}"]) from None
    elif kind == "yaml":
        documents = _read_yaml(text, source)
    else:
        raise ValueError(f"kind must be 'yaml' or 'toml', got {kind!r}")

    checker = _Checker()
    specs: list[tuple[SpecPath, spec_pb2.ContainerSpec]] = []
    several = sum(d.data is not None for d in documents) > 1
    for number, document in enumerate(documents):
        base: SpecPath = ("documents", number) if several else ()
        for path, line in document.lines.items():
            checker.lines[base + path] = line
        for path in document.duplicates:
            checker.error(base + path, "duplicate key (the later value would win)")
        data = document.data
        if data is None:
            continue  # an empty document, such as after a trailing ---
        if not isinstance(data, dict):
            checker.error(
                base,
                f"expected a container (a mapping) or containers: [...], got {_describe(data)}",
            )
            continue
        if "containers" in data:
            for key in data:
                if key != "containers":
                    checker.error(
                        (*base, key),
                        "unknown key beside containers (container settings go inside each "
                        "item of containers)",
                    )
            items = data["containers"]
            if not isinstance(items, list):
                checker.error(
                    (*base, "containers"), f"must be a list of containers, got {_describe(items)}"
                )
                continue
            for index, item in enumerate(items):
                path = (*base, "containers", index)
                spec = checker.container(item, path)
                if spec is not None:
                    specs.append((path, spec))
        else:
            spec = checker.container(data, base)
            if spec is not None:
                specs.append((base, spec))

    first: dict[str, SpecPath] = {}
    for path, spec in specs:
        if not spec.name:
            continue
        if spec.name in first:
            checker.error(
                (*path, "name"),
                f"duplicate name {json.dumps(spec.name)} (also at {_render(first[spec.name])})",
            )
        else:
            first[spec.name] = path
    if not specs and not checker.errors:
        checker.error((), "no containers: give a container, or containers: [...]")
    if checker.errors:
        raise SpecError(checker.render(source))
    return [spec for _, spec in specs]


# -- YAML with positions ---------------------------------------------------------------------
class _Document:
    def __init__(self, data: Any, lines: dict[SpecPath, int], duplicates: list[SpecPath]) -> None:
        self.data = data
        self.lines = lines
        self.duplicates = duplicates


def _read_yaml(text: str, source: str) -> list[_Document]:
    """Each document's data, the line of every key and item, and duplicate keys."""
    import yaml

    try:
        # The reader checks every character first: a control character is a
        # ReaderError (a YAMLError) here, before any document.
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise SpecError(
            [f"{source}:{line}: invalid YAML: character #x{exc.character:04x} is not allowed"]
        ) from None
    documents = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                break
            lines: dict[SpecPath, int] = {}
            duplicates: list[SpecPath] = []
            _index(node, (), lines, duplicates)
            documents.append(_Document(loader.construct_document(node), lines, duplicates))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        what = "; ".join(part for part in (exc.context, exc.problem) if part)
        raise SpecError([f"{where}: invalid YAML: {what or exc}"]) from None
    except yaml.YAMLError as exc:
        raise SpecError([f"{source}: invalid YAML: {exc}"]) from None
    finally:
        loader.dispose()
    return documents


def _index(
    node: yaml.Node, path: SpecPath, lines: dict[SpecPath, int], duplicates: list[SpecPath]
) -> None:
    import yaml

    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key = str(key_node.value)
            child = (*path, key)
            if key in seen and key != "<<":
                duplicates.append(child)
            seen.add(key)
            lines[child] = key_node.start_mark.line + 1
            _index(value_node, child, lines, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index(item, (*path, index), lines, duplicates)


# -- checking --------------------------------------------------------------------------------
def _render(path: SpecPath) -> str:
    """containers[1].resources.cpu; odd keys quoted: labels["app.kubernetes.io/name"]."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


def _describe(value: Any) -> str:
    """What a wrong value is: 'integer 8080', 'a list', 'null'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {json.dumps(value)}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {json.dumps(value)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"{type(value).__name__} {value}"


def _shown(value: Any) -> str:
    """A value as the file would show it, for messages: "lots", 12, true."""
    if isinstance(value, str | int | float | bool) or value is None:
        return json.dumps(value)
    return str(value)


def _suggest(key: str, allowed: Sequence[str]) -> str | None:
    """The allowed key ``key`` is most likely a typo of."""

    def norm(text: str) -> str:
        return text.lower().replace("_", "").replace("-", "")

    for candidate in allowed:
        if norm(candidate) == norm(key):
            return candidate
    lowered = {candidate.lower(): candidate for candidate in allowed}
    close = difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


class _Checker:
    """Builds messages from parsed data, collecting every mistake with its path."""

    def __init__(self) -> None:
        self.errors: list[tuple[SpecPath, str]] = []
        self.lines: dict[SpecPath, int] = {}

    def error(self, path: SpecPath, message: str) -> None:
        self.errors.append((path, message))

    def line(self, path: SpecPath) -> int | None:
        for end in range(len(path), -1, -1):
            found = self.lines.get(path[:end])
            if found is not None:
                return found
        return None

    def render(self, source: str) -> list[str]:
        """One line per mistake, top of the file first."""
        out = []
        ordered = sorted(self.errors, key=lambda e: self.line(e[0]) or 0)
        for path, message in ordered:
            line = self.line(path)
            where = f"{source}:{line}" if line is not None else source
            out.append(f"{where}: {_render(path)}: {message}" if path else f"{where}: {message}")
        return out

    # -- shapes ----------------------------------------------------------------------------
    def mapping(
        self,
        value: Any,
        path: SpecPath,
        allowed: Sequence[str],
        hints: Mapping[str, str] | None = None,
    ) -> dict[str, Any] | None:
        """``value`` if it is a mapping; every unknown key reported."""
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping, got {_describe(value)}")
            return None
        known: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.error(path, f"key {_shown(key)} must be a string")
                continue
            if key in allowed:
                known[key] = item
                continue
            hint = (hints or {}).get(key)
            suggestion = _suggest(key, allowed)
            if hint is not None:
                self.error((*path, key), f"unknown key ({hint})")
            elif suggestion is not None:
                self.error((*path, key), f"unknown key (did you mean {json.dumps(suggestion)}?)")
            else:
                self.error((*path, key), f"unknown key (expected one of: {', '.join(allowed)})")
        return known

    def string(self, value: Any, path: SpecPath, *, empty_ok: bool = True) -> str | None:
        if not isinstance(value, str):
            self.error(path, f"must be a string, got {_describe(value)}{_quote_hint(value)}")
            return None
        if not empty_ok and not value.strip():
            self.error(path, "must not be empty")
            return None
        return value

    def strings(self, value: Any, path: SpecPath, example: str) -> list[str] | None:
        """A non-empty list of strings (an argument vector)."""
        if isinstance(value, str):
            try:
                words = shlex.split(value)
            except ValueError:
                words = []
            hint = f" (did you mean {json.dumps(words)}?)" if words else ""
            self.error(path, f"must be a list, such as {example}{hint}")
            return None
        if not isinstance(value, list):
            self.error(path, f"must be a list, such as {example}, got {_describe(value)}")
            return None
        if not value:
            self.error(path, f"must not be empty: give the program and its arguments ({example})")
            return None
        out = []
        for index, item in enumerate(value):
            text = self.string(item, (*path, index))
            if text is not None:
                out.append(text)
        return out if len(out) == len(value) else None

    def string_map(
        self,
        value: Any,
        path: SpecPath,
        check_key: Callable[[str, SpecPath], None],
        *,
        hidden: Callable[[str], bool] = lambda key: False,
    ) -> dict[str, str] | None:
        """A mapping of strings; the values of keys ``hidden`` picks are never
        echoed in errors (secrets)."""
        if isinstance(value, list):
            self.error(path, f"must be a mapping (KEY: value), got {_describe(value)}")
            return None
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping, got {_describe(value)}")
            return None
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.error(path, f"key {_shown(key)} must be a string")
                continue
            check_key(key, (*path, key))
            if hidden(key) and not isinstance(item, str):
                self.error((*path, key), "must be a string (quote it; a secret is not shown)")
                continue
            text = self.string(item, (*path, key))
            if text is not None:
                out[key] = text
        return out

    def integer(
        self,
        value: Any,
        path: SpecPath,
        *,
        minimum: int,
        maximum: int,
        why: str = "",
        why_max: str = "",
    ) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, f"must be a whole number, got {_describe(value)}")
            return None
        if value < minimum:
            self.error(path, why or f"must be {minimum} or more, got {value}")
            return None
        if value > maximum:
            self.error(path, why_max or f"must be at most {maximum}, got {value}")
            return None
        return value

    def boolean(self, value: Any, path: SpecPath) -> bool | None:
        if not isinstance(value, bool):
            self.error(path, f"must be true or false, got {_describe(value)}")
            return None
        return value

    def duration(
        self,
        value: Any,
        path: SpecPath,
        *,
        minimum: datetime.timedelta = datetime.timedelta(0),
        maximum: datetime.timedelta | None = None,
        why: str = "",
    ) -> duration_pb2.Duration | None:
        """A duration within [minimum, maximum]; ``why`` follows a bound's message."""
        if isinstance(value, int | float) and not isinstance(value, bool) and value != 0:
            self.error(path, f"{_shown(value)} has no unit: write {json.dumps(f'{value}s')}")
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            duration = datetime.timedelta(0)
        elif isinstance(value, str):
            try:
                duration = parse_duration(value)
            except ValueError as exc:
                self.error(path, str(exc))
                return None
        else:
            self.error(path, f"must be a duration such as 30s, got {_describe(value)}")
            return None
        shown = _shown(value)
        reason = f" ({why})" if why else ""
        if duration < minimum:
            wanted = "more than 0s" if minimum <= _TINY else f"at least {format_duration(minimum)}"
            self.error(path, f"{shown} is too short: must be {wanted}{reason}")
            return None
        if maximum is not None and duration > maximum:
            self.error(
                path, f"{shown} is too long: must be at most {format_duration(maximum)}{reason}"
            )
            return None
        return duration_to_proto(duration)

    def choice(self, value: Any, path: SpecPath, choices: Mapping[str, int]) -> int | None:
        if isinstance(value, str) and value in choices:
            return choices[value]
        names = ", ".join(choices)
        suggestion = _suggest(value, list(choices)) if isinstance(value, str) else None
        if suggestion is not None:
            self.error(path, f"{_shown(value)} is not one of {names} (did you mean {suggestion}?)")
        else:
            self.error(path, f"{_shown(value)} is not one of {names}")
        return None

    def port(self, value: Any, path: SpecPath) -> int | None:
        return self.integer(value, path, minimum=1, maximum=65535)

    # -- a container -----------------------------------------------------------------------
    def container(self, value: Any, path: SpecPath) -> spec_pb2.ContainerSpec | None:
        """The spec, None when not even a mapping; mistakes go to errors."""
        fields = self.mapping(value, path, _CONTAINER_KEYS, _CONTAINER_HINTS)
        if fields is None:
            return None
        spec = spec_pb2.ContainerSpec()

        if "name" not in fields:
            self.error(path, 'missing "name"')
        else:
            name = self.string(fields["name"], (*path, "name"), empty_ok=False)
            if name is not None:
                if len(name) > _NAME_MAX:
                    self.error((*path, "name"), f"must be at most {_NAME_MAX} characters")
                elif not _NAME.fullmatch(name):
                    self.error(
                        (*path, "name"),
                        f"{json.dumps(name)} is not a valid name (lower-case letters, digits "
                        "and '-', starting and ending with a letter or digit)",
                    )
                else:
                    spec.name = name

        if "labels" in fields:
            labels = self.string_map(fields["labels"], (*path, "labels"), self._label_key)
            if labels is not None:
                for key, text in labels.items():
                    if len(text) > 63 or not _LABEL_VALUE.fullmatch(text):
                        self.error(
                            (*path, "labels", key),
                            f"{json.dumps(text)} is not a valid label value (at most 63 "
                            "letters, digits, '-', '_' or '.', starting and ending with a "
                            "letter or digit)",
                        )
                spec.labels.update(labels)

        if "runtime" in fields:
            runtime = self.choice(fields["runtime"], (*path, "runtime"), RUNTIMES)
            if runtime is not None:
                spec.runtime = runtime  # type: ignore[assignment]

        if "oci" in fields:
            oci = self.mapping(fields["oci"], (*path, "oci"), ("rootfs", "bundle", "hostname"))
            for key, item in (oci or {}).items():
                oci_text = self.string(item, (*path, "oci", key))
                if oci_text is not None:
                    setattr(spec.oci, key, oci_text)

        if "command" in fields:
            command = self.strings(
                fields["command"], (*path, "command"), "[python, app.py, --port, '8080']"
            )
            if command is not None:
                spec.command.extend(command)
        elif spec.runtime != spec_pb2.RUNTIME_KIND_IN_PROCESS and not spec.oci.bundle:
            self.error(
                path, 'missing "command" (the program and its arguments, such as [python, app.py])'
            )

        declared = fields.get("secretEnv")
        # Only its strings (what else it holds is an error reported below).
        declared_names = (
            {name for name in declared if isinstance(name, str)}
            if isinstance(declared, list)
            else set()
        )
        if "env" in fields:
            env = self.string_map(
                fields["env"],
                (*path, "env"),
                self._env_key,
                # A secret's value stays out of the error about it.
                hidden=lambda name: name in declared_names or SECRET_NAMES.is_secret(name),
            )
            if env is not None:
                spec.env.update(env)

        if fields.get("secretEnv", None) not in (None, []):
            names = self.strings(fields["secretEnv"], (*path, "secretEnv"), "[DATABASE_URL]")
            for index, name in enumerate(names or ()):
                if name not in spec.env:
                    self.error(
                        (*path, "secretEnv", index),
                        f"{json.dumps(name)} is not a key of env (secretEnv names the env "
                        "entries whose values are secret)",
                    )
            spec.secret_env.extend(sorted(set(names or ())))

        if "workingDir" in fields:
            working_dir = self.string(fields["workingDir"], (*path, "workingDir"))
            if working_dir is not None:
                spec.working_dir = working_dir

        if "priority" in fields:
            priority = self.integer(
                fields["priority"], (*path, "priority"), minimum=-_INT32_MAX - 1, maximum=_INT32_MAX
            )
            if priority is not None:
                spec.priority = priority

        if "resources" in fields:
            self._resources(fields["resources"], (*path, "resources"), spec)

        if "gracePeriod" in fields:
            grace = self.duration(
                fields["gracePeriod"],
                (*path, "gracePeriod"),
                maximum=MAX_GRACE_PERIOD,
                why="a stop waits this long for the program; checkpoint a program that needs "
                "longer",
            )
            if grace is not None:
                spec.grace_period.CopyFrom(grace)
        if "restartBackoff" in fields:
            backoff = self.duration(
                fields["restartBackoff"],
                (*path, "restartBackoff"),
                minimum=MIN_RESTART_BACKOFF,
                maximum=MAX_RESTART_BACKOFF,
                why="the first delay between restarts, doubled after each",
            )
            if backoff is not None:
                spec.restart_backoff.CopyFrom(backoff)
        if "startTimeout" in fields:
            start_timeout = self.duration(
                fields["startTimeout"],
                (*path, "startTimeout"),
                minimum=MIN_START_TIMEOUT,
                maximum=MAX_START_TIMEOUT,
                why="how long the program may take to register with the manager",
            )
            if start_timeout is not None:
                spec.start_timeout.CopyFrom(start_timeout)

        if "restartPolicy" in fields:
            restart = self.choice(
                fields["restartPolicy"], (*path, "restartPolicy"), RESTART_POLICIES
            )
            if restart is not None:
                spec.restart_policy = restart  # type: ignore[assignment]

        if "checkpointPolicy" in fields:
            checkpoint = self.choice(
                fields["checkpointPolicy"], (*path, "checkpointPolicy"), CHECKPOINT_POLICIES
            )
            if checkpoint is not None:
                spec.checkpoint_policy = checkpoint  # type: ignore[assignment]

        if "replicas" in fields:
            replicas = self.integer(
                fields["replicas"],
                (*path, "replicas"),
                minimum=1,
                maximum=MAX_REPLICAS,
                why=(
                    f"must be 1 or more, got {fields['replicas']} "
                    "(to run none, leave the container out or scale it to 0)"
                ),
                why_max=f"must be at most {MAX_REPLICAS}, got {fields['replicas']} "
                "(one manager runs its replicas on one machine)",
            )
            if replicas is not None:
                spec.replicas = replicas

        for key, target in (
            ("livenessProbe", "liveness_probe"),
            ("readinessProbe", "readiness_probe"),
        ):
            if key in fields:
                probe = self._probe(fields[key], (*path, key))
                if probe is not None:
                    getattr(spec, target).CopyFrom(probe)

        if "hooks" in fields:
            hooks = self.mapping(
                fields["hooks"], (*path, "hooks"), ("preStop", "checkpoint", "restore")
            )
            for key, item in (hooks or {}).items():
                command = self.strings(item, (*path, "hooks", key), "[sh, -c, 'kill -USR1 1']")
                if command is not None:
                    target = {"preStop": "pre_stop"}.get(key, key)
                    getattr(spec.hooks, target).extend(command)

        if "sidecar" in fields:
            sidecar = self.boolean(fields["sidecar"], (*path, "sidecar"))
            if sidecar is not None:
                spec.sidecar = sidecar

        if "healthListen" in fields:
            health_listen = self._listen(fields["healthListen"], (*path, "healthListen"))
            if health_listen is not None:
                if spec.replicas > 1 and not health_listen.endswith(":0"):
                    self.error(
                        (*path, "healthListen"),
                        f"a fixed port serves one replica per machine, not {spec.replicas} "
                        "(write port 0 for a free one each, or replicas: 1)",
                    )
                spec.health_listen = health_listen

        if "httpListen" in fields:
            http_listen = self._listen(fields["httpListen"], (*path, "httpListen"))
            if http_listen is not None:
                if spec.replicas > 1 and not http_listen.endswith(":0"):
                    self.error(
                        (*path, "httpListen"),
                        f"a fixed port serves one replica per machine, not {spec.replicas} "
                        "(write port 0 for a free one each, or replicas: 1)",
                    )
                spec.http_listen = http_listen

        if "logCapacity" in fields:
            capacity = self.integer(
                fields["logCapacity"],
                (*path, "logCapacity"),
                minimum=1,
                maximum=MAX_LOG_CAPACITY,
                why=f"must be 1 or more log entries, got {fields['logCapacity']}",
                why_max=f"must be at most {MAX_LOG_CAPACITY:,} log entries, got "
                f"{fields['logCapacity']} (pycontainer.limits.MAX_LOG_CAPACITY)",
            )
            if capacity is not None:
                spec.log_capacity = capacity

        if "service" in fields:
            self._service(fields["service"], (*path, "service"), spec.service)
        if "proxy" in fields:
            proxy = self.choice(fields["proxy"], (*path, "proxy"), PROXIES)
            if proxy is not None:
                spec.proxy = proxy  # type: ignore[assignment]
        if "envoy" in fields:
            self._envoy(fields["envoy"], (*path, "envoy"), spec.envoy)
        self._mesh_rules(spec, path)
        return spec

    # -- the mesh ----------------------------------------------------------------------------
    def _service(self, value: Any, path: SpecPath, service: mesh_pb2.MeshService) -> None:
        """``service: {name: orders, ...}``, or ``service: orders`` for the name alone."""
        if isinstance(value, str):
            value = {"name": value}
        fields = self.mapping(value, path, _SERVICE_KEYS, _SERVICE_HINTS)
        if fields is None:
            return
        service.SetInParent()
        # Empty text is the message's "default": in a file, leave the key out.
        for key, target in (
            ("name", "name"),
            ("endpoint", "endpoint"),
            ("subset", "subset"),
            ("zone", "zone"),
            ("hashHeader", "hash_header"),
        ):
            if key in fields:
                text = self.string(fields[key], (*path, key), empty_ok=False)
                if text is not None:
                    setattr(service, target, text)
        if "weight" in fields:
            weight = self.integer(
                fields["weight"],
                (*path, "weight"),
                minimum=1,
                maximum=_UINT32_MAX,
                why=f"must be 1 or more, got {fields['weight']} (an endpoint's weight; a "
                "subset's share of the service's traffic is trafficWeight)",
            )
            if weight is not None:
                service.weight = weight
        if "trafficWeight" in fields:
            share = self.integer(
                fields["trafficWeight"], (*path, "trafficWeight"), minimum=0, maximum=_UINT32_MAX
            )
            if share is not None:
                service.traffic_weight = share
        if "loadBalancing" in fields:
            policy = self.choice(fields["loadBalancing"], (*path, "loadBalancing"), LOAD_BALANCING)
            if policy is not None:
                service.load_balancing = policy  # type: ignore[assignment]
        if "timeout" in fields:
            timeout = self.duration(fields["timeout"], (*path, "timeout"))
            if timeout is not None:
                service.timeout.CopyFrom(timeout)
        if "retry" in fields:
            self._retry(fields["retry"], (*path, "retry"), service.retry)
        if "outlierDetection" in fields:
            self._outlier_detection(
                fields["outlierDetection"], (*path, "outlierDetection"), service.outlier_detection
            )

    def _retry(self, value: Any, path: SpecPath, retry: mesh_pb2.MeshRetryPolicy) -> None:
        fields = self.mapping(value, path, _RETRY_KEYS, _RETRY_HINTS)
        if fields is None:
            return
        retry.SetInParent()
        if "retryOn" in fields:
            codes = self._retry_on(fields["retryOn"], (*path, "retryOn"))
            retry.retry_on.extend(codes or ())
        if "maxAttempts" in fields:
            attempts = self.integer(
                fields["maxAttempts"],
                (*path, "maxAttempts"),
                minimum=1,
                maximum=_UINT32_MAX,
                why=f"must be 1 or more, got {fields['maxAttempts']} (attempts in all, the "
                "first included: 1 retries nothing)",
            )
            if attempts is not None:
                retry.max_attempts = attempts
        for key, target in (("initialBackoff", "initial_backoff"), ("maxBackoff", "max_backoff")):
            if key in fields:
                backoff = self.duration(fields[key], (*path, key))
                if backoff is not None:
                    getattr(retry, target).CopyFrom(backoff)

    def _retry_on(self, value: Any, path: SpecPath) -> list[str] | None:
        """Status names: a list, or one text of them comma-separated as Envoy
        and Istio write them ("unavailable,resource-exhausted")."""
        if isinstance(value, str):
            codes = [code.strip() for code in value.split(",")]
            if not all(codes):
                self.error(path, f"{_shown(value)} has an empty name between its commas")
                return None
            return codes
        if not isinstance(value, list):
            self.error(path, f"must be a list, such as [unavailable], got {_describe(value)}")
            return None
        if not value:
            self.error(path, "must not be empty (leave it out to retry on unavailable)")
            return None
        out = []
        for index, item in enumerate(value):
            text = self.string(item, (*path, index), empty_ok=False)
            if text is not None:
                out.append(text)
        return out if len(out) == len(value) else None

    def _outlier_detection(
        self, value: Any, path: SpecPath, detection: mesh_pb2.MeshOutlierDetection
    ) -> None:
        fields = self.mapping(value, path, _OUTLIER_KEYS, _OUTLIER_HINTS)
        if fields is None:
            return
        detection.SetInParent()
        for key, target in (("interval", "interval"), ("baseEjectionTime", "base_ejection_time")):
            if key in fields:
                duration = self.duration(fields[key], (*path, key))
                if duration is not None:
                    getattr(detection, target).CopyFrom(duration)
        # The message's 0 means the default: a 0 written here would not mean 0.
        for key, target, default in (
            ("maxEjectionPercent", "max_ejection_percent", DEFAULT_MAX_EJECTION_PERCENT),
            (
                "failurePercentageThreshold",
                "failure_percentage_threshold",
                DEFAULT_FAILURE_PERCENTAGE_THRESHOLD,
            ),
            ("requestVolume", "request_volume", DEFAULT_REQUEST_VOLUME),
        ):
            if key in fields:
                number = self.integer(
                    fields[key],
                    (*path, key),
                    minimum=1,
                    maximum=_UINT32_MAX,
                    why=f"must be 1 or more, got {fields[key]} (leave it out for the "
                    f"default, {default})",
                )
                if number is not None:
                    setattr(detection, target, number)

    def _envoy(self, value: Any, path: SpecPath, envoy: mesh_pb2.EnvoySettings) -> None:
        fields = self.mapping(value, path, _ENVOY_KEYS, _ENVOY_HINTS)
        if fields is None:
            return
        envoy.SetInParent()
        if "inboundListen" in fields:
            inbound = self._address(fields["inboundListen"], (*path, "inboundListen"))
            if inbound is not None:
                envoy.inbound_listen = inbound
        if "programAddress" in fields:
            program = self._address(fields["programAddress"], (*path, "programAddress"))
            if program is not None:
                envoy.program_address = program
        if "upstreams" not in fields:
            return
        items = fields["upstreams"]
        if not isinstance(items, list):
            self.error(
                (*path, "upstreams"),
                "must be a list, such as [{service: orders, listen: 127.0.0.1:9001}], got "
                f"{_describe(items)}",
            )
            return
        for index, item in enumerate(items):
            where = (*path, "upstreams", index)
            upstream = envoy.upstreams.add()  # even a wrong one: the indexes stay the file's
            upstream_fields = self.mapping(item, where, _UPSTREAM_KEYS, _UPSTREAM_HINTS)
            if upstream_fields is None:
                continue
            if "service" in upstream_fields:
                service = self.string(
                    upstream_fields["service"], (*where, "service"), empty_ok=False
                )
                if service is not None:
                    upstream.service = service
            if "listen" in upstream_fields:
                listen = self._address(upstream_fields["listen"], (*where, "listen"))
                if listen is not None:
                    upstream.listen = listen

    def _address(self, value: Any, path: SpecPath) -> str | None:
        """A HOST:PORT as text, normalized when it parses (the mesh's rules
        say what is wrong with one that does not)."""
        from .client._target import TargetError, parse_listen

        text = self.string(value, path, empty_ok=False)
        if text is None:
            return None
        try:
            return parse_listen(text)
        except TargetError:
            return text

    def _mesh_rules(self, spec: spec_pb2.ContainerSpec, path: SpecPath) -> None:
        """The rules a spec's mesh settings follow wherever the spec comes
        from (pycontainer._meshrules), reported at the file's keys; one the
        file's own checks already caught, in a field it reads, is left out."""
        # Mistakes inside this container (one at the container itself, such
        # as a missing name, is about none of its fields).
        caught = [
            where
            for where, _ in self.errors
            if len(where) > len(path) and where[: len(path)] == path
        ]

        def related(where: SpecPath, read: SpecPath) -> bool:
            shorter = min(len(where), len(read))
            return where[:shorter] == read[:shorter]

        for problem in mesh_problems(spec, _MESH_SPELLING):
            reads = [(*path, *_file_path(field)) for field in (problem.path, *problem.involves)]
            if any(related(where, read) for read in reads for where in caught):
                continue
            self.error((*path, *_file_path(problem.path)), problem.message)

    def _listen(self, value: Any, path: SpecPath) -> str | None:
        """An address to serve on: HOST:PORT with a port from 0 (any free one) to 65535."""
        from .client._target import TargetError, parse_listen

        text = self.string(value, path, empty_ok=False)
        if text is None:
            return None
        try:
            return parse_listen(text)
        except TargetError as exc:
            self.error(path, str(exc))
            return None

    def _label_key(self, key: str, path: SpecPath) -> None:
        if len(key) > 253 or not _LABEL_KEY.fullmatch(key):
            self.error(
                path,
                "not a valid label key (such as app or example.com/tier: letters, digits, "
                "'-', '_' and '.', with an optional DNS prefix and '/')",
            )

    def _env_key(self, key: str, path: SpecPath) -> None:
        if not _ENV_NAME.fullmatch(key):
            self.error(path, "not a valid environment variable name (no '=' and not empty)")

    def _resources(self, value: Any, path: SpecPath, spec: spec_pb2.ContainerSpec) -> None:
        fields = self.mapping(value, path, ("cpu", "memory"), _RESOURCE_HINTS)
        if fields is None:
            return
        if "cpu" in fields:
            cpu = fields["cpu"]
            try:
                if isinstance(cpu, bool) or not isinstance(cpu, str | int | float):
                    raise ValueError
                spec.resources.cpu_millis = parse_cpu(cpu)
            except ValueError as exc:
                too_large = "too large" in str(exc)
                self.error(
                    (*path, "cpu"),
                    f"{_shown(cpu)} is too large"
                    if too_large
                    else f"{_shown(cpu)} is not a CPU quantity (use 500m or 2)",
                )
        if "memory" in fields:
            memory = fields["memory"]
            try:
                if isinstance(memory, bool) or not isinstance(memory, str | int | float):
                    raise ValueError
                spec.resources.memory_bytes = parse_memory(memory)
            except ValueError as exc:
                if "too large" in str(exc):
                    message = f"{_shown(memory)} is too large"
                else:
                    message = f"{_shown(memory)} is not a memory quantity (use 256Mi or 1Gi)"
                    if isinstance(memory, str) and memory.strip().endswith("m"):
                        message += "; 'm' means thousandths: did you mean 'M' or 'Mi'?"
                self.error((*path, "memory"), message)

    def _probe(self, value: Any, path: SpecPath) -> spec_pb2.Probe | None:
        fields = self.mapping(value, path, _PROBE_KEYS)
        if fields is None:
            return None
        probe = spec_pb2.Probe()
        handlers = [key for key in _PROBE_HANDLERS if key in fields]
        if not handlers:
            self.error(path, "needs one of exec, http, tcp or grpc")
        elif len(handlers) > 1:
            self.error(path, f"has {' and '.join(handlers)}: give only one")
        if "exec" in fields:
            exec_fields = self.mapping(fields["exec"], (*path, "exec"), ("command",))
            if exec_fields is not None:
                if "command" not in exec_fields:
                    self.error((*path, "exec"), 'missing "command"')
                else:
                    command = self.strings(
                        exec_fields["command"], (*path, "exec", "command"), "[test, -f, /tmp/ok]"
                    )
                    if command is not None:
                        probe.exec.command.extend(command)
        for kind, extra in (("http", ("path",)), ("tcp", ()), ("grpc", ("service",))):
            if kind not in fields:
                continue
            sub = self.mapping(fields[kind], (*path, kind), ("host", "port", *extra))
            if sub is None:
                continue
            target = getattr(probe, kind)
            target.SetInParent()
            if "port" not in sub:
                self.error((*path, kind), 'missing "port"')
            else:
                port = self.port(sub["port"], (*path, kind, "port"))
                if port is not None:
                    target.port = port
            for key in ("host", *extra):
                if key in sub:
                    text = self.string(sub[key], (*path, kind, key))
                    if text is not None:
                        if key == "path" and not text.startswith("/"):
                            self.error((*path, kind, key), 'must start with "/"')
                        setattr(target, key, text)
        for key, target_name in (
            ("period", "period"),
            ("timeout", "timeout"),
            ("initialDelay", "initial_delay"),
        ):
            if key in fields:
                duration = self.duration(
                    fields[key],
                    (*path, key),
                    # A period or timeout of 0 would probe without pause or never succeed.
                    minimum=_TINY if key != "initialDelay" else datetime.timedelta(0),
                    maximum=MAX_PROBE_DURATION,
                )
                if duration is not None:
                    getattr(probe, target_name).CopyFrom(duration)
        if "failureThreshold" in fields:
            threshold = self.integer(
                fields["failureThreshold"],
                (*path, "failureThreshold"),
                minimum=1,
                maximum=_UINT32_MAX,
            )
            if threshold is not None:
                probe.failure_threshold = threshold
        return probe


def _camel(name: str) -> str:
    """A message's field name as the file's key: max_attempts -> maxAttempts."""
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _file_path(field: FieldPath) -> SpecPath:
    return tuple(_camel(part) if isinstance(part, str) else part for part in field)


#: How the mesh's rules write fields and settings in a spec file's messages.
_MESH_SPELLING = Spelling(
    field=lambda field: _render(_file_path(field)),
    setting=lambda field, file_value, _api_value: f"{_render(_file_path(field))}: {file_value}",
    show=_shown,
)


def _quote_hint(value: Any) -> str:
    """For a number or boolean where text belongs: how to write it as text."""
    if isinstance(value, float):
        return " (quote it: YAML reads numbers such as 1.10 as 1.1)"
    if isinstance(value, bool | int):
        return f" (quote it: {json.dumps(json.dumps(value))})"
    return ""


# -- back to the file format -------------------------------------------------------------------
def _duration_text(duration: duration_pb2.Duration) -> str:
    return format_duration(duration_from_proto(duration))


def _memory_text(n: int) -> str | int:
    text = format_memory(n)
    try:
        return text if parse_memory(text) == n else n
    except ValueError:
        return n


def _probe_dict(probe: spec_pb2.Probe) -> dict[str, Any]:
    out: dict[str, Any] = {}
    handler = probe.WhichOneof("handler")
    if handler == "exec":
        out["exec"] = {"command": list(probe.exec.command)}
    elif handler is not None:
        message = getattr(probe, handler)
        sub: dict[str, Any] = {}
        if message.host:
            sub["host"] = message.host
        sub["port"] = message.port
        for key in ("path", "service"):
            if getattr(message, key, ""):
                sub[key] = getattr(message, key)
        out[handler] = sub
    if probe.HasField("period"):
        out["period"] = _duration_text(probe.period)
    if probe.HasField("timeout"):
        out["timeout"] = _duration_text(probe.timeout)
    if probe.failure_threshold:
        out["failureThreshold"] = probe.failure_threshold
    if probe.HasField("initial_delay"):
        out["initialDelay"] = _duration_text(probe.initial_delay)
    return out


def _name_of(choices: Mapping[str, int], number: int) -> str:
    """The file's name of an enum value (its number for one the file has no name for)."""
    for name, value in choices.items():
        if value == number:
            return name
    return str(number)


def spec_to_dict(spec: spec_pb2.ContainerSpec) -> dict[str, Any]:
    """A spec in the file format (camelCase keys, 500m, 256Mi, 30s), leaving out
    what is unset; parse_specs() reads it back to an equal message."""
    out: dict[str, Any] = {"name": spec.name}
    if spec.labels:
        out["labels"] = dict(sorted(spec.labels.items()))
    if spec.runtime:
        out["runtime"] = _name_of(RUNTIMES, spec.runtime)
    if spec.command:
        out["command"] = list(spec.command)
    if spec.env:
        out["env"] = dict(sorted(spec.env.items()))
    if spec.secret_env:
        out["secretEnv"] = sorted(spec.secret_env)
    if spec.working_dir:
        out["workingDir"] = spec.working_dir
    oci = {key: getattr(spec.oci, key) for key in ("rootfs", "bundle", "hostname")}
    if any(oci.values()):
        out["oci"] = {key: text for key, text in oci.items() if text}
    if spec.priority:
        out["priority"] = spec.priority
    resources: dict[str, Any] = {}
    if spec.resources.cpu_millis:
        resources["cpu"] = format_cpu(spec.resources.cpu_millis)
    if spec.resources.memory_bytes:
        resources["memory"] = _memory_text(spec.resources.memory_bytes)
    if resources:
        out["resources"] = resources
    if spec.HasField("grace_period"):
        out["gracePeriod"] = _duration_text(spec.grace_period)
    if spec.restart_policy:
        out["restartPolicy"] = _name_of(RESTART_POLICIES, spec.restart_policy)
    if spec.HasField("restart_backoff"):
        out["restartBackoff"] = _duration_text(spec.restart_backoff)
    if spec.checkpoint_policy:
        out["checkpointPolicy"] = _name_of(CHECKPOINT_POLICIES, spec.checkpoint_policy)
    if spec.replicas:
        out["replicas"] = spec.replicas
    if spec.HasField("liveness_probe"):
        out["livenessProbe"] = _probe_dict(spec.liveness_probe)
    if spec.HasField("readiness_probe"):
        out["readinessProbe"] = _probe_dict(spec.readiness_probe)
    hooks = {
        key: list(getattr(spec.hooks, name))
        for key, name in (
            ("preStop", "pre_stop"),
            ("checkpoint", "checkpoint"),
            ("restore", "restore"),
        )
        if getattr(spec.hooks, name)
    }
    if hooks:
        out["hooks"] = hooks
    if spec.sidecar:
        out["sidecar"] = True
    if spec.HasField("start_timeout"):
        out["startTimeout"] = _duration_text(spec.start_timeout)
    if spec.health_listen:
        out["healthListen"] = spec.health_listen
    if spec.http_listen:
        out["httpListen"] = spec.http_listen
    if spec.log_capacity:
        out["logCapacity"] = spec.log_capacity
    if spec.HasField("service"):
        out["service"] = _service_dict(spec.service)
    if spec.proxy:
        out["proxy"] = _name_of(PROXIES, spec.proxy)
    if spec.HasField("envoy"):
        envoy: dict[str, Any] = {}
        if spec.envoy.inbound_listen:
            envoy["inboundListen"] = spec.envoy.inbound_listen
        if spec.envoy.program_address:
            envoy["programAddress"] = spec.envoy.program_address
        if spec.envoy.upstreams:
            envoy["upstreams"] = [
                {"service": upstream.service, "listen": upstream.listen}
                for upstream in spec.envoy.upstreams
            ]
        out["envoy"] = envoy
    return out


def _set_fields(message: Any, keys: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The scalar fields of ``message`` that are set, under the file's keys;
    durations as text."""
    out: dict[str, Any] = {}
    for key, name in keys:
        if message.DESCRIPTOR.fields_by_name[name].message_type is not None:
            if message.HasField(name):
                out[key] = _duration_text(getattr(message, name))
        elif getattr(message, name):
            out[key] = getattr(message, name)
    return out


def _service_dict(service: mesh_pb2.MeshService) -> dict[str, Any]:
    out = _set_fields(
        service,
        (
            ("name", "name"),
            ("endpoint", "endpoint"),
            ("subset", "subset"),
            ("weight", "weight"),
            ("zone", "zone"),
        ),
    )
    if service.load_balancing:
        out["loadBalancing"] = _name_of(LOAD_BALANCING, service.load_balancing)
    out.update(_set_fields(service, (("hashHeader", "hash_header"), ("timeout", "timeout"))))
    if service.HasField("retry"):
        retry = service.retry
        out["retry"] = {"retryOn": list(retry.retry_on)} if retry.retry_on else {}
        out["retry"].update(
            _set_fields(
                retry,
                (
                    ("maxAttempts", "max_attempts"),
                    ("initialBackoff", "initial_backoff"),
                    ("maxBackoff", "max_backoff"),
                ),
            )
        )
    if service.HasField("outlier_detection"):
        out["outlierDetection"] = _set_fields(
            service.outlier_detection,
            tuple(
                (_camel(f.name), f.name) for f in mesh_pb2.MeshOutlierDetection.DESCRIPTOR.fields
            ),
        )
    out.update(_set_fields(service, (("trafficWeight", "traffic_weight"),)))
    return out

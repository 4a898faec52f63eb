"""The rules of a spec's mesh settings (``service``, ``proxy``, ``envoy``), in
one home for both readers of a spec: spec files (pycontainer.spec, which adds
file:line and writes the file's camelCase keys) and the manager's API
(manager/_validation, INVALID_ARGUMENT naming the field path).

:func:`mesh_problems` checks a ContainerSpec message, so the rules hold for
whatever sent it; a :class:`Spelling` says how the caller writes fields and
values in a message (``sidecar: true`` in a file, ``spec.sidecar = true`` for a
stub; each reader defines its own). What only a file can get wrong (a key of
the wrong type, an explicit 0 where the message's 0 means "the default") stays
with the file's reader.

The defaults below are the contract's (mesh.proto's "0 means ..."): the
messages quote them, and whatever builds xDS resources from a spec applies
them.
"""

from __future__ import annotations

import contextlib
import datetime
import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import Message

from . import limits
from .client._target import TargetError, parse_listen
from .units import duration_field, format_duration
from .v1 import mesh_pb2, spec_pb2

__all__ = [
    "DEFAULT_FAILURE_PERCENTAGE_THRESHOLD",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_EJECTION_PERCENT",
    "DEFAULT_REQUEST_VOLUME",
    "DEFAULT_RETRY_INITIAL_BACKOFF",
    "DEFAULT_SERVICE_ENDPOINT",
    "ENVOY_CA_SECRET",
    "ENVOY_CERTIFICATE_SECRET",
    "MESH_ENDPOINT",
    "RETRY_ON",
    "FieldPath",
    "Problem",
    "Spelling",
    "mesh_problems",
    "name_problem",
]

#: A field of a ContainerSpec: proto field names and list indexes.
FieldPath = tuple[str | int, ...]

#: The endpoint a service is served on when MeshService.endpoint is empty.
DEFAULT_SERVICE_ENDPOINT = "grpc"
#: The endpoint a container with ``proxy: envoy`` advertises for Envoy's
#: inbound listener: what the mesh's clients reach, so never the program's own.
MESH_ENDPOINT = "mesh"
#: The secrets an Envoy beside a program holds (static, in the bootstrap the
#: sidecar writes, from the container's tls.pem and ca.pem): the clusters the
#: manager gives it name them to dial endpoints that serve mutual TLS.
ENVOY_CERTIFICATE_SECRET = "pycontainer-certificate"
ENVOY_CA_SECRET = "pycontainer-ca"
DEFAULT_MAX_ATTEMPTS = 2
DEFAULT_RETRY_INITIAL_BACKOFF = datetime.timedelta(milliseconds=25)
DEFAULT_MAX_EJECTION_PERCENT = 10
DEFAULT_FAILURE_PERCENTAGE_THRESHOLD = 85
DEFAULT_REQUEST_VOLUME = 50
#: The status names a route's retry policy may retry on: the ones grpcio's
#: xDS client honours (gRFC A44; it ignores any other), which Envoy's
#: x-envoy-retry-grpc-on also knows.
RETRY_ON = ("cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable")
# A gRPC metadata key (what a ring hash may hash): lower case, as grpc sends them.
_HEADER = re.compile(r"[0-9a-z_.-]+")


@dataclass(frozen=True)
class Problem:
    """One mistake: the field it is in, what to fix, and the other fields the
    rule read (a reader that already reported a mistake in one of those drops
    this one, which would only repeat it)."""

    path: FieldPath
    message: str
    involves: tuple[FieldPath, ...] = ()


@dataclass(frozen=True)
class Spelling:
    """How a reader of specs writes a field and a setting in a message."""

    #: A field as its reader names it: ``envoy.upstreams[0].listen``.
    field: Callable[[FieldPath], str]
    #: A setting to write: (field, the file's value, the API's value) ->
    #: ``proxy: envoy`` or ``proxy = MESH_PROXY_ENVOY``.
    setting: Callable[[FieldPath, str, str], str]
    #: A value echoed in a message.
    show: Callable[[object], str]


def name_problem(name: str, what: str, show: Callable[[object], str]) -> str | None:
    """Why ``name`` is not a valid mesh name (a DNS label), None when it is."""
    if len(name) > limits.MAX_DNS_LABEL_LENGTH:
        return f"must be at most {limits.MAX_DNS_LABEL_LENGTH} characters (a DNS label)"
    if not limits.DNS_LABEL_PATTERN.fullmatch(name):
        return (
            f"{show(name)} is not a valid {what} (a DNS label: lower-case letters, digits "
            "and '-', starting and ending with a letter or digit)"
        )
    return None


class _Rules:
    def __init__(self, spec: spec_pb2.ContainerSpec, spelling: Spelling) -> None:
        self.spec = spec
        self.spelling = spelling
        self.problems: list[Problem] = []

    def add(self, path: FieldPath, message: str, *involves: FieldPath) -> None:
        self.problems.append(Problem(path, message, involves))

    def name(self, value: str, path: FieldPath, what: str) -> None:
        problem = name_problem(value, what, self.spelling.show)
        if problem is not None:
            self.add(path, problem)

    def at_most(self, value: int, maximum: int, path: FieldPath, why: str) -> None:
        if value > maximum:
            self.add(path, f"must be at most {maximum}, got {value} ({why})")

    def positive(self, message: Message, field: str, path: FieldPath, why: str) -> None:
        """A Duration field that, when set, must be more than 0."""
        duration = duration_field(message, field)
        if duration is not None and duration <= datetime.timedelta(0):
            shown = self.spelling.show(format_duration(duration))
            self.add((*path, field), f"{shown} is too short: must be more than 0s ({why})")

    # -- service -------------------------------------------------------------------------------
    def service(self) -> None:
        spec, at = self.spec, ("service",)
        if not spec.HasField("service"):
            return
        service = spec.service
        if not service.name:
            self.add((*at, "name"), "is required: the service's name, such as orders")
        else:
            self.name(service.name, (*at, "name"), "service name")
        if len(service.endpoint) > limits.MAX_ENDPOINT_NAME_LENGTH:
            self.add(
                (*at, "endpoint"),
                f"is {len(service.endpoint)} characters, over the limit of "
                f"{limits.MAX_ENDPOINT_NAME_LENGTH} (pycontainer.limits.MAX_ENDPOINT_NAME_LENGTH)",
            )
        elif spec.proxy == mesh_pb2.MESH_PROXY_ENVOY and service.endpoint == MESH_ENDPOINT:
            self.add(
                (*at, "endpoint"),
                f"\"{MESH_ENDPOINT}\" is Envoy's own inbound listener: name the program's "
                f"endpoint that Envoy forwards to (empty means {DEFAULT_SERVICE_ENDPOINT})",
                ("proxy",),
            )
        if service.subset:
            self.name(service.subset, (*at, "subset"), "subset name")
        if service.zone:
            self.name(service.zone, (*at, "zone"), "zone name")
        self.at_most(
            service.weight,
            limits.MAX_MESH_ENDPOINT_WEIGHT,
            (*at, "weight"),
            "weights are relative; pycontainer.limits.MAX_MESH_ENDPOINT_WEIGHT",
        )
        self.at_most(
            service.traffic_weight,
            limits.MAX_MESH_TRAFFIC_WEIGHT,
            (*at, "traffic_weight"),
            "a share of the service's traffic beside the other subsets' shares; "
            "pycontainer.limits.MAX_MESH_TRAFFIC_WEIGHT",
        )
        if service.hash_header:
            self._hash_header(service)
        self.positive(service, "timeout", at, "the deadline of each call; leave it unset for none")
        if service.HasField("retry"):
            self._retry(service.retry, (*at, "retry"))
        if service.HasField("outlier_detection"):
            self._outlier_detection(service.outlier_detection, (*at, "outlier_detection"))

    def _hash_header(self, service: mesh_pb2.MeshService) -> None:
        path = ("service", "hash_header")
        header = service.hash_header
        if service.load_balancing != mesh_pb2.LOAD_BALANCING_POLICY_RING_HASH:
            ring_hash = self.spelling.setting(
                ("service", "load_balancing"), "RingHash", "LOAD_BALANCING_POLICY_RING_HASH"
            )
            self.add(
                path,
                f"only a ring hash hashes a header: add {ring_hash}, or leave it out",
                ("service", "load_balancing"),
            )
        if not _HEADER.fullmatch(header):
            lowered = header.lower()
            hint = f" (write {self.spelling.show(lowered)})" if _HEADER.fullmatch(lowered) else ""
            self.add(
                path,
                f"{self.spelling.show(header)} is not a gRPC metadata key (lower-case letters, "
                f"digits, '-', '_' and '.'){hint}",
            )
        elif header.endswith("-bin") or header.startswith("grpc-"):
            self.add(
                path,
                f"{self.spelling.show(header)}: binary (-bin) and grpc- headers are never "
                "hashed (gRFC A42): name a text header the callers send",
            )

    def _retry(self, retry: mesh_pb2.MeshRetryPolicy, at: FieldPath) -> None:
        seen: dict[str, int] = {}
        for index, code in enumerate(retry.retry_on):
            path = (*at, "retry_on", index)
            if code in seen:
                self.add(path, f"{self.spelling.show(code)} is listed twice")
            elif code not in RETRY_ON:
                normal = code.strip().lower().replace("_", "-")
                close = difflib.get_close_matches(normal, RETRY_ON, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]}?)" if close else ""
                self.add(
                    path,
                    f"{self.spelling.show(code)} is not one of {', '.join(RETRY_ON)}{hint}",
                )
            seen.setdefault(code, index)
        self.at_most(
            retry.max_attempts,
            limits.MAX_MESH_RETRY_ATTEMPTS,
            (*at, "max_attempts"),
            "attempts in all, the first included: grpcio makes at most "
            f"{limits.MAX_MESH_RETRY_ATTEMPTS}",
        )
        why = "the wait between attempts; leave it unset for the default"
        self.positive(retry, "initial_backoff", at, why)
        self.positive(retry, "max_backoff", at, why)
        initial = duration_field(retry, "initial_backoff")
        longest = duration_field(retry, "max_backoff")
        if longest is not None and longest > datetime.timedelta(0):
            first = initial if initial is not None else DEFAULT_RETRY_INITIAL_BACKOFF
            if longest < first:
                given = (
                    f"{self.spelling.field((*at, 'initial_backoff'))}"
                    if initial is not None
                    else "the default first backoff"
                )
                self.add(
                    (*at, "max_backoff"),
                    f"{format_duration(longest)} is shorter than {given}, "
                    f"{format_duration(first)}: the backoff grows from the first to the longest",
                    (*at, "initial_backoff"),
                )

    def _outlier_detection(self, detection: mesh_pb2.MeshOutlierDetection, at: FieldPath) -> None:
        self.positive(detection, "interval", at, "how often endpoints are judged")
        self.positive(detection, "base_ejection_time", at, "how long a first ejection lasts")
        self.at_most(
            detection.max_ejection_percent, 100, (*at, "max_ejection_percent"), "a percentage"
        )
        self.at_most(
            detection.failure_percentage_threshold,
            100,
            (*at, "failure_percentage_threshold"),
            "a percentage of an endpoint's calls",
        )

    # -- proxy and envoy -------------------------------------------------------------------
    def proxy(self) -> None:
        spec = self.spec
        envoy_proxy = self.spelling.setting(("proxy",), "envoy", "MESH_PROXY_ENVOY")
        sidecar = self.spelling.setting(("sidecar",), "true", "true")
        if spec.proxy == mesh_pb2.MESH_PROXY_ENVOY and not spec.sidecar:
            self.add(
                ("proxy",),
                f"Envoy runs beside the program under the pycontainer sidecar: add {sidecar}",
                ("sidecar",),
            )
        if not spec.HasField("envoy"):
            return
        if spec.proxy != mesh_pb2.MESH_PROXY_ENVOY:
            also = "" if spec.sidecar else f" (and {sidecar})"
            self.add(
                ("envoy",),
                f"settings of an Envoy proxy, which this spec does not have: add "
                f"{envoy_proxy}{also}, or leave it out",
                ("proxy",),
            )
        self._envoy(spec.envoy)

    def _envoy(self, envoy: mesh_pb2.EnvoySettings) -> None:
        spec, show = self.spec, self.spelling.show
        # Each fixed port and the field that takes it: one listener a port.
        ports: dict[int, FieldPath] = {}

        def take(address: str, path: FieldPath) -> None:
            port = int(address.rsplit(":", 1)[1])
            if port == 0:
                return
            if port in ports:
                self.add(path, f"port {port} is also taken by {self.spelling.field(ports[port])}")
            else:
                ports[port] = path

        if spec.health_listen:
            with contextlib.suppress(TargetError):  # its own mistake, reported where checked
                take(parse_listen(spec.health_listen), ("health_listen",))
        if spec.http_listen:
            with contextlib.suppress(TargetError):  # its own mistake, reported where checked
                take(parse_listen(spec.http_listen), ("http_listen",))
        if envoy.inbound_listen:
            path: FieldPath = ("envoy", "inbound_listen")
            address = self._listen(envoy.inbound_listen, path)
            if not spec.HasField("service"):
                self.add(
                    path,
                    "takes the service's inbound traffic, and this spec has no service: "
                    "give service too, or leave it out",
                    ("service",),
                )
            if address is not None:
                if spec.replicas > 1 and not address.endswith(":0"):
                    self.add(
                        path,
                        f"a fixed port serves one replica per machine, not {spec.replicas} "
                        "(write port 0 for a free one each, or leave it out)",
                        ("replicas",),
                    )
                take(address, path)
        if envoy.program_address:
            self._program_address(envoy.program_address, take)
        if len(envoy.upstreams) > limits.MAX_MESH_UPSTREAMS:
            self.add(
                ("envoy", "upstreams"),
                f"{len(envoy.upstreams)} upstreams, over the limit of "
                f"{limits.MAX_MESH_UPSTREAMS} (pycontainer.limits.MAX_MESH_UPSTREAMS)",
            )
            return
        services: dict[str, int] = {}
        for index, upstream in enumerate(envoy.upstreams):
            at: FieldPath = ("envoy", "upstreams", index)
            if not upstream.service:
                self.add((*at, "service"), "is required: the service the program calls")
            elif upstream.service in services:
                first = self.spelling.field(("envoy", "upstreams", services[upstream.service]))
                self.add(
                    (*at, "service"),
                    f"{show(upstream.service)} has a listener already, at {first}",
                )
            else:
                services[upstream.service] = index
                self.name(upstream.service, (*at, "service"), "service name")
            if not upstream.listen:
                self.add(
                    (*at, "listen"),
                    "is required: the HOST:PORT the program dials, such as 127.0.0.1:9001",
                )
                continue
            address = self._listen(upstream.listen, (*at, "listen"))
            if address is None:
                continue
            if address.endswith(":0"):
                # Several replicas may share a fixed port here: every one of
                # their Envoys forwards it to the same service (the listeners
                # are bound with SO_REUSEPORT, Envoy's default on Linux).
                self.add(
                    (*at, "listen"),
                    f"{show(upstream.listen)}: the program dials this address, so it needs a "
                    "fixed port (such as 127.0.0.1:9001)",
                )
                continue
            take(address, (*at, "listen"))

    def _program_address(self, text: str, take: Callable[[str, FieldPath], None]) -> None:
        """Where the program serves (Envoy's inbound listener forwards there):
        a fixed port, one replica per machine."""
        spec, path = self.spec, ("envoy", "program_address")
        address = self._listen(text, path)
        if address is None:
            return
        if address.endswith(":0"):
            self.add(
                path,
                f"{self.spelling.show(text)}: Envoy forwards to the program here, so it needs "
                "the program's own fixed port (such as 127.0.0.1:8080)",
            )
            return
        if spec.replicas > 1:
            self.add(
                path,
                f"a fixed port serves one replica per machine, not {spec.replicas} "
                "(one spec per program port)",
                ("replicas",),
            )
        take(address, path)

    def _listen(self, text: str, path: FieldPath) -> str | None:
        if len(text) > limits.MAX_ADDRESS_LENGTH:
            self.add(
                path,
                f"is {len(text)} characters, over the limit of {limits.MAX_ADDRESS_LENGTH} "
                "(pycontainer.limits.MAX_ADDRESS_LENGTH)",
            )
            return None
        try:
            return parse_listen(text)
        except TargetError as exc:
            self.add(path, str(exc))
            return None


def mesh_problems(spec: spec_pb2.ContainerSpec, spelling: Spelling) -> list[Problem]:
    """Every mistake in ``spec``'s mesh settings (service, proxy, envoy), in
    the order of the fields; none when they are fine or unset."""
    rules = _Rules(spec, spelling)
    rules.service()
    rules.proxy()
    return rules.problems

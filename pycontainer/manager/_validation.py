"""Checks of what the network hands the manager, before anything uses it:
enum values the contract defines, durations a timedelta can hold, resources
that are not negative, priorities in bounds, and names, labels, endpoints and
versions within pycontainer.limits. Each failure is INVALID_ARGUMENT naming
the field, the limit and, for enums, the valid names; values are echoed cut
short (pycontainer._errors.echo).

Spec files get friendlier checks of their own (pycontainer.spec); these are
the API's, for any client (a raw gRPC call included)."""

from __future__ import annotations

import datetime
from collections.abc import Mapping

from google.protobuf import duration_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from .. import limits
from .._errors import echo, invalid_argument
from .._meshrules import FieldPath, Spelling, mesh_problems
from ..client._target import TargetError, parse_listen
from ..spec import MAX_REPLICAS
from ..v1 import container_pb2, lifecycle_pb2, spec_pb2

_ENUM = FieldDescriptor.TYPE_ENUM
_MESSAGE = FieldDescriptor.TYPE_MESSAGE
# timedelta's own bound (about 2.7 million years), in seconds.
_MAX_DURATION_SECONDS = int(datetime.timedelta.max.total_seconds())


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def check_message(message: Message, path: str) -> None:
    """Every enum value in ``message`` (nested messages included) is one the
    contract names, and every Duration fits a timedelta."""
    if isinstance(message, duration_pb2.Duration):
        if abs(message.seconds) > _MAX_DURATION_SECONDS or abs(message.nanos) >= 1_000_000_000:
            raise invalid_argument(
                path,
                f"duration of {echo(message.seconds)}s is out of range "
                f"(at most {_MAX_DURATION_SECONDS}s; the field's own bound is lower)",
            )
        return
    for field, value in message.ListFields():
        where = _join(path, field.name)
        if field.type == _ENUM and field.enum_type is not None:
            enum = field.enum_type
            # A singular enum is an int; a repeated one, a sequence of them.
            for number in [value] if isinstance(value, int) else list(value):
                if enum.values_by_number.get(number) is None:
                    names = ", ".join(v.name for v in enum.values)
                    raise invalid_argument(
                        where, f"unknown {enum.name} {echo(number)}: one of {names}"
                    )
        elif field.type == _MESSAGE and field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                entry_value = field.message_type.fields_by_name["value"]
                if entry_value.type == _MESSAGE:
                    for key, item in value.items():
                        check_message(item, f"{where}[{echo(key)}]")
                continue
            items = [value] if isinstance(value, Message) else list(value)
            for index, item in enumerate(items):
                check_message(item, f"{where}[{index}]" if len(items) != 1 else where)


def check_name(
    value: str,
    field: str,
    limit: int = limits.MAX_NAME_LENGTH,
    constant: str = "MAX_NAME_LENGTH",
) -> None:
    """A container name or id: 1..MAX_NAME_LENGTH characters of NAME_PATTERN."""
    if not value:
        raise invalid_argument(field, "is required")
    if len(value) > limit:
        raise invalid_argument(
            field,
            f"is {len(value)} characters, over the limit of {limit} "
            f"(pycontainer.limits.{constant}): use a shorter one",
        )
    if not limits.NAME_PATTERN.fullmatch(value):
        raise invalid_argument(
            field,
            f"{echo(value)} must be letters, digits, '-', '_' or '.', starting and "
            "ending with a letter or digit",
        )


def check_labels(labels: Mapping[str, str], field: str) -> None:
    """At most MAX_LABELS labels, keys and values within their lengths."""
    items = dict(labels)
    if len(items) > limits.MAX_LABELS:
        raise invalid_argument(
            field,
            f"{len(items)} labels, over the limit of {limits.MAX_LABELS} "
            "(pycontainer.limits.MAX_LABELS)",
        )
    for key, value in items.items():
        if not key or len(key) > limits.MAX_LABEL_KEY_LENGTH:
            raise invalid_argument(
                field,
                f"key {echo(key)} must be 1 to {limits.MAX_LABEL_KEY_LENGTH} characters "
                "(pycontainer.limits.MAX_LABEL_KEY_LENGTH: [prefix/]name as Kubernetes)",
            )
        if len(value) > limits.MAX_LABEL_VALUE_LENGTH:
            raise invalid_argument(
                f"{field}[{echo(key)}]",
                f"value of {len(value)} characters, over the limit of "
                f"{limits.MAX_LABEL_VALUE_LENGTH} (pycontainer.limits.MAX_LABEL_VALUE_LENGTH)",
            )


def check_priority(priority: int, field: str) -> None:
    if not limits.MIN_PRIORITY <= priority <= limits.MAX_PRIORITY:
        raise invalid_argument(
            field,
            f"{priority} is outside {limits.MIN_PRIORITY}..{limits.MAX_PRIORITY} "
            "(pycontainer.limits.MIN_PRIORITY/MAX_PRIORITY, as Kubernetes' user priorities)",
        )


def check_resources(resources: container_pb2.ResourceRequirements, field: str) -> None:
    if resources.cpu_millis < 0:
        raise invalid_argument(
            f"{field}.cpu_millis", f"must be 0 or more, got {resources.cpu_millis}"
        )
    if resources.memory_bytes < 0:
        raise invalid_argument(
            f"{field}.memory_bytes", f"must be 0 or more, got {resources.memory_bytes}"
        )


def _check_length(value: str, limit: int, field: str, constant: str) -> None:
    if len(value) > limit:
        raise invalid_argument(
            field,
            f"is {len(value)} characters, over the limit of {limit} "
            f"(pycontainer.limits.{constant})",
        )


def check_identity(identity: container_pb2.ContainerIdentity, field: str) -> None:
    """A container's identity as it registers itself."""
    check_message(identity, field)
    check_name(identity.id, f"{field}.id")
    check_name(identity.name, f"{field}.name")
    _check_length(
        identity.version, limits.MAX_VERSION_LENGTH, f"{field}.version", "MAX_VERSION_LENGTH"
    )
    check_labels(identity.labels, f"{field}.labels")
    check_priority(identity.priority, f"{field}.priority")
    check_resources(identity.resources, f"{field}.resources")
    if len(identity.endpoints) > limits.MAX_ENDPOINTS:
        raise invalid_argument(
            f"{field}.endpoints",
            f"{len(identity.endpoints)} endpoints, over the limit of {limits.MAX_ENDPOINTS} "
            "(pycontainer.limits.MAX_ENDPOINTS)",
        )
    for index, endpoint in enumerate(identity.endpoints):
        where = f"{field}.endpoints[{index}]"
        _check_length(
            endpoint.name,
            limits.MAX_ENDPOINT_NAME_LENGTH,
            f"{where}.name",
            "MAX_ENDPOINT_NAME_LENGTH",
        )
        _check_length(
            endpoint.address, limits.MAX_ADDRESS_LENGTH, f"{where}.address", "MAX_ADDRESS_LENGTH"
        )
    if identity.HasField("grace_period") and identity.grace_period.seconds < 0:
        raise invalid_argument(f"{field}.grace_period", "must be 0 or more")


def check_registration(registration: lifecycle_pb2.Registration) -> None:
    """A Lifecycle registration: its state a LifecycleState, its identity bounded."""
    check_message(registration, "register")
    check_identity(registration.identity, "register.identity")
    _check_length(registration.error, limits.MAX_ERROR_LENGTH, "register.error", "MAX_ERROR_LENGTH")


def check_spec(spec: spec_pb2.ContainerSpec, field: str) -> None:
    """A ContainerSpec as the API receives it (RunContainer, ApplySpecs)."""
    check_message(spec, field)
    if spec.name:  # a missing name is the launcher's to report, as before
        check_name(spec.name, f"{field}.name", limits.MAX_SPEC_NAME_LENGTH, "MAX_SPEC_NAME_LENGTH")
    check_labels(spec.labels, f"{field}.labels")
    check_priority(spec.priority, f"{field}.priority")
    check_resources(spec.resources, f"{field}.resources")
    check_replicas(spec.replicas, f"{field}.replicas")
    if spec.health_listen:
        check_listen(spec.health_listen, f"{field}.health_listen")
    if spec.http_listen:
        check_listen(spec.http_listen, f"{field}.http_listen")
    check_log_capacity(spec.log_capacity, f"{field}.log_capacity")
    check_mesh(spec, field)


def _field_path(path: FieldPath) -> str:
    out = ""
    for part in path:
        out = f"{out}[{part}]" if isinstance(part, int) else _join(out, part)
    return out


def check_mesh(spec: spec_pb2.ContainerSpec, field: str) -> None:
    """A spec's service, proxy and envoy: the rules spec files follow too
    (pycontainer._meshrules), the first mistake as INVALID_ARGUMENT."""

    def named(path: FieldPath) -> str:
        return _join(field, _field_path(path))

    spelling = Spelling(
        field=named,
        setting=lambda path, _file_value, api_value: f"{named(path)} = {api_value}",
        show=echo,
    )
    for problem in mesh_problems(spec, spelling):
        raise invalid_argument(named(problem.path), problem.message)


def check_log_capacity(capacity: int, field: str) -> None:
    """0 (the default) to MAX_LOG_CAPACITY log entries."""
    if not 0 <= capacity <= limits.MAX_LOG_CAPACITY:
        raise invalid_argument(
            field,
            f"must be 0 (the default, {limits.DEFAULT_LOG_CAPACITY:,}) to "
            f"{limits.MAX_LOG_CAPACITY:,} entries (pycontainer.limits.MAX_LOG_CAPACITY), "
            f"got {capacity}",
        )


def check_replicas(replicas: int, field: str) -> None:
    """0..MAX_REPLICAS (pycontainer.spec's bound, spec files' too)."""
    if not 0 <= replicas <= MAX_REPLICAS:
        raise invalid_argument(
            field, f"must be 0 to {MAX_REPLICAS} (pycontainer.spec.MAX_REPLICAS), got {replicas}"
        )


def check_listen(address: str, field: str) -> None:
    """An address to serve on: HOST:PORT (port 0 to 65535), within MAX_ADDRESS_LENGTH."""
    _check_length(address, limits.MAX_ADDRESS_LENGTH, field, "MAX_ADDRESS_LENGTH")
    try:
        parse_listen(address)
    except TargetError as exc:
        raise invalid_argument(field, str(exc)) from None

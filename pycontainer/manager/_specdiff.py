"""What "the spec changed" means for apply, and how a change reads: specs
compared without replicas (scaling is not a change), without a service's
traffic weight (a split of traffic is the mesh's to act on: the running
replicas take a new one in place) and without what the manager adds (the
hash and owner labels; the default runtime spelled out), hashed for the
``pycontainer.dev/spec-hash`` label, and their differences listed in the spec
file's camelCase keys.

Anything else of the mesh (service, proxy, envoy) is a change that replaces
the replicas one at a time: a new service name, subset or endpoint moves them
between clusters, and a replacement drains the old ones while the new ones
become ready; a proxy or its listeners are started with the program."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message

from .._secrets import redact_spec
from ..units import duration_from_proto, format_duration
from ..v1 import spec_pb2

__all__ = [
    "OWNER_LABEL",
    "SPEC_HASH_LABEL",
    "spec_differences",
    "spec_hash",
    "traffic_weight_change",
]

SPEC_HASH_LABEL = "pycontainer.dev/spec-hash"
# Who applied the spec: bookkeeping (what prune looks at), not what runs; a
# new owner adopts the containers, it does not replace them.
OWNER_LABEL = "pycontainer.dev/owner"


def _comparable(spec: spec_pb2.ContainerSpec) -> spec_pb2.ContainerSpec:
    """The spec as "changed" sees it: without replicas (scaling is not a
    change), without the labels apply keeps its books in (spec hash, owner),
    without the service's traffic weight (changed in place), and with the
    default runtime spelled out."""
    out = spec_pb2.ContainerSpec()
    out.CopyFrom(spec)
    out.ClearField("replicas")
    if out.HasField("service"):
        out.service.ClearField("traffic_weight")
    out.labels.pop(SPEC_HASH_LABEL, None)
    out.labels.pop(OWNER_LABEL, None)
    if out.runtime == spec_pb2.RUNTIME_KIND_UNSPECIFIED:
        out.runtime = spec_pb2.RUNTIME_KIND_PROCESS
    return out


def spec_hash(spec: spec_pb2.ContainerSpec, mac: Callable[[bytes], bytes] | None = None) -> str:
    """A short, stable hash of what a spec launches (replicas aside). The
    manager's is keyed (``mac``, the state directory's HMAC): the label is
    public, and a plain hash of a spec whose secrets are all that is unknown
    would let anyone try passwords against it."""
    data = _comparable(spec).SerializeToString(deterministic=True)
    digest = mac(data) if mac is not None else hashlib.sha256(data).digest()
    return digest.hex()[:16]


def _fields(message: Message, prefix: str = "") -> dict[str, str]:
    """Every set field of a message, flattened to "path: value" text (the
    file's camelCase keys; map entries as key.name)."""
    out: dict[str, str] = {}
    for fd, value in message.ListFields():
        key = prefix + fd.json_name
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_field = fd.message_type.fields_by_name["value"]
            for name, item in sorted(value.items()):
                out[f"{key}.{name}"] = _text(value_field, item)
        elif fd.is_repeated:
            out[key] = "[" + ", ".join(_text(fd, item) for item in value) + "]"
        elif (
            fd.message_type is not None and fd.message_type.full_name != "google.protobuf.Duration"
        ):
            out.update(_fields(value, key + "."))
        else:
            out[key] = _text(fd, value)
    return out


def _text(fd: Any, value: Any) -> str:
    if fd.message_type is not None and fd.message_type.full_name == "google.protobuf.Duration":
        return format_duration(duration_from_proto(value))
    if fd.message_type is not None:  # an item of a repeated message (envoy.upstreams)
        return "{" + ", ".join(f"{k}: {v}" for k, v in sorted(_fields(value).items())) + "}"
    if fd.enum_type is not None:
        known = fd.enum_type.values_by_number.get(value)
        return known.name if known is not None else str(value)
    return json.dumps(value)


def spec_differences(old: spec_pb2.ContainerSpec, new: spec_pb2.ContainerSpec) -> list[str]:
    """What differs between two specs, replicas aside: "env.GREETING: "hi" ->
    "hello"", "+workingDir: "/srv"" (added), "-env.DEBUG" (removed); a secret
    env value as "<redacted>" ("env.PASSWORD: "<redacted>" (changed)")."""
    before, after = _fields(_comparable(old)), _fields(_comparable(new))
    # Compared by their values, shown as replies show them (no secret's value).
    shown_before = _fields(_comparable(redact_spec(old)))
    shown_after = _fields(_comparable(redact_spec(new)))
    out: list[str] = []
    for key in sorted(before.keys() | after.keys()):
        if key not in after:
            out.append(f"-{key}")
        elif key not in before:
            out.append(f"+{key}: {shown_after[key]}")
        elif before[key] != after[key]:
            if shown_before[key] == shown_after[key]:
                out.append(f"{key}: {shown_after[key]} (changed)")
            else:
                out.append(f"{key}: {shown_before[key]} -> {shown_after[key]}")
    return out


def traffic_weight_change(old: spec_pb2.ContainerSpec, new: spec_pb2.ContainerSpec) -> str | None:
    """How the service's traffic weight changes ("service.trafficWeight: 90 ->
    10"), None when it does not: what apply changes in place."""
    before, after = old.service.traffic_weight, new.service.traffic_weight
    if before == after:
        return None
    return f"service.trafficWeight: {before} -> {after}"

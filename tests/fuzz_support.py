"""The fuzz test's machinery: which methods there are, the inputs it makes, and
raw generic calls that send bytes and report how each call ended.

Inputs are deterministic (``random.Random`` seeded by FUZZ_SEED and the
method's path), of three kinds:

- ``random``: random bytes, mostly short, some long;
- ``mutated``: a valid serialized request (a plausible or an extreme one)
  with bytes flipped, inserted, deleted, duplicated, or cut short;
- ``extreme``: a valid message built from the request's descriptor with
  values at the edges: int64/uint64 bounds, negative counts, strings up to
  ~1 MB, repeated fields with thousands of items, enum numbers no enum has,
  durations and timestamps at the bounds of int64 seconds.

Regular-expression fields (a log filter's ``pattern``, metric filters) get
literal text only: catastrophic patterns belong to the regex-engine work,
not here.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from pycontainer import _reflection

SEED = int(os.environ.get("FUZZ_SEED", "0"))

INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)
# Extreme integers, by field type: both bounds, around zero, and 2^k edges.
_SIGNED64 = [0, 1, -1, INT64[0], INT64[1], 2**62, -(2**62), 2**31, -(2**31) - 1, 2**53 + 1]
_SIGNED32 = [0, 1, -1, INT32[0], INT32[1], 2**16, -(2**16)]
_UNSIGNED64 = [0, 1, 2**64 - 1, 2**63, 2**32, 2**53 + 1]
_UNSIGNED32 = [0, 1, 2**32 - 1, 2**31, 2**16]
# Fields read as regular expressions: literal text only (see the module doc).
_REGEX_FIELDS = {"pattern", "metric_filters"}
# Names that exist on the servers the test starts, so that some inputs get past
# "not found" and into the code behind it.
NAMES = ["fuzz-target", "fuzz-sync", "fuzz-aio", "db", "db.url", ""]
MEGABYTE = 1 << 20
# The largest request an extreme input is: under gRPC's default 4 MiB receive
# limit, so that it reaches the servers' code rather than that limit.
MESSAGE_BUDGET = 3 * MEGABYTE


def _int_extremes(f: FieldDescriptor) -> list[int]:
    t = f.type
    if t in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return _SIGNED64
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return _UNSIGNED64
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return _UNSIGNED32
    return _SIGNED32


_INT_TYPES = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_FIXED32,
}


@dataclass(frozen=True)
class Method:
    """One RPC, as a raw generic call sees it."""

    service: str
    name: str
    input: Descriptor
    client_streaming: bool
    server_streaming: bool

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"

    @property
    def kind(self) -> str:
        return (
            ("stream" if self.client_streaming else "unary")
            + "-"
            + ("stream" if self.server_streaming else "unary")
        )

    def message_class(self) -> type[Message]:
        cls: type[Message] = message_factory.GetMessageClass(self.input)
        return cls


def generated_services() -> set[str]:
    """Every service the project's generated code and its grpc dependencies
    define (pycontainer.v1's *_pb2 modules, grpc.health.v1, reflection, and
    the manager's xDS server and admin services: ADS, CSDS, channelz)."""
    import importlib
    import pkgutil

    from envoy.service.discovery.v3 import ads_pb2
    from envoy.service.status.v3 import csds_pb2
    from grpc_channelz.v1 import channelz_pb2
    from grpc_health.v1 import health_pb2
    from grpc_reflection.v1alpha import reflection_pb2

    import pycontainer.v1 as v1

    names: set[str] = set()
    for info in pkgutil.iter_modules(v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"pycontainer.v1.{info.name}")
            names.update(s.full_name for s in module.DESCRIPTOR.services_by_name.values())
    for module in (health_pb2, reflection_pb2, ads_pb2, csds_pb2, channelz_pb2):
        names.update(s.full_name for s in module.DESCRIPTOR.services_by_name.values())
    names.add(_reflection.REFLECTION_V1)  # v1alpha's messages under v1's name
    return names


def methods_of(service: str) -> list[Method]:
    """The methods of a service, from the pool reflection serves (the generated
    descriptors, plus health's List and reflection v1)."""
    generated_services()  # imports the generated modules: their files join the pool
    pool: descriptor_pool.DescriptorPool = _reflection.reflection_pool()
    descriptor: ServiceDescriptor = pool.FindServiceByName(service)
    return [
        Method(
            service,
            m.name,
            m.input_type,
            bool(m.client_streaming),
            bool(m.server_streaming),
        )
        for m in descriptor.methods
    ]


# -- inputs ----------------------------------------------------------------------------------


def hexdump(data: bytes, limit: int = 96) -> str:
    shown = data[:limit].hex()
    return shown + (f"... ({len(data)} bytes)" if len(data) > limit else f" ({len(data)} bytes)")


def rng_for(method: Method, salt: str = "") -> random.Random:
    return random.Random(f"{SEED}:{method.path}:{salt}")


def random_bytes(rng: random.Random) -> bytes:
    size = rng.choice([0, 1, 2, 3, 5, 8, 13, 32, 64, 200, 1000, 5000])
    return rng.randbytes(size)


def mutate(data: bytes, rng: random.Random) -> bytes:
    """``data`` with one to four random edits."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:  # flip a bit
            i = min(pos, len(buf) - 1)
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # insert bytes
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 2 and buf:  # delete bytes
            del buf[pos : pos + rng.randint(1, 8)]
        elif op == 3:  # truncate
            del buf[pos:]
        elif op == 4 and buf:  # duplicate a chunk (repeats fields, breaks lengths)
            end = min(len(buf), pos + rng.randint(1, 32))
            buf[pos:pos] = buf[pos:end]
        elif op == 5 and buf:  # an extreme byte: a varint that never ends, a max length
            i = min(pos, len(buf) - 1)
            buf[i] = rng.choice([0x00, 0x7F, 0x80, 0xFF])
        elif op == 6:  # a field with an unknown number or wire type
            buf[pos:pos] = bytes([rng.randrange(256), rng.randrange(256)])
    return bytes(buf)


def _literal(text: str) -> str:
    return re.escape(text)


# Extreme strings, made only when chosen (some are large).
_EXTREME_STRINGS: list[Any] = [
    lambda rng: "",
    lambda rng: "\x00",
    lambda rng: "\ufffd\u202e\u0301",  # a replacement character, a bidi override, a lone accent
    lambda rng: "é" * 1000,
    lambda rng: "a" * rng.choice([4096, 70_000, MEGABYTE]),
    lambda rng: "app in (x,y),!z,a!=b,=,==,in",
    lambda rng: "../../../../etc/passwd",
    lambda rng: "%s%n%x{0}",
    lambda rng: "🙂" * 500,
    lambda rng: "".join(chr(rng.randrange(1, 0xD7FF)) for _ in range(200)),
    lambda rng: rng.choice(NAMES),
]


def _string(rng: random.Random, f: FieldDescriptor, extreme: bool) -> str:
    if not extreme:
        value = rng.choice([*NAMES, "app=fuzz", "info", "x", "0.1s"])
    else:
        value = rng.choice(_EXTREME_STRINGS)(rng)
    if f.name in _REGEX_FIELDS:
        return _literal(value)
    return value


def _bytes(rng: random.Random, extreme: bool) -> bytes:
    if not extreme:
        return rng.randbytes(rng.randint(0, 16))
    return rng.choice([b"", b"\x00" * 1000, rng.randbytes(rng.choice([10, 70_000, MEGABYTE]))])


def _well_known(msg: Message, rng: random.Random, extreme: bool) -> bool:
    """Durations and timestamps: sane ones, or at the bounds of int64 seconds
    (and past protobuf's own range) with out-of-range nanos."""
    name = msg.DESCRIPTOR.full_name
    if name not in ("google.protobuf.Duration", "google.protobuf.Timestamp"):
        return False
    if not extreme:
        msg.seconds = rng.choice([0, 0, 1]) if name.endswith("Duration") else int(time.time())
        msg.nanos = rng.choice([0, 100_000_000, 250_000_000])
        return True
    msg.seconds = rng.choice(
        [INT64[0], INT64[1], -1, 0, 2**62, 315_576_000_000, -62_135_596_800, 253_402_300_800]
    )
    msg.nanos = rng.choice([0, 1, -1, 999_999_999, 1_000_000_000, INT32[0], INT32[1]])
    return True


def build_request(
    desc: Descriptor, rng: random.Random, *, extreme: bool, opening: bool = False
) -> bytes:
    """A serialized message of type ``desc`` of at most MESSAGE_BUDGET bytes."""
    for _ in range(3):
        data = build(desc, rng, extreme=extreme, opening=opening).SerializeToString()
        if len(data) <= MESSAGE_BUDGET:
            return data
    return build(desc, rng, extreme=False).SerializeToString()


def build(
    desc: Descriptor, rng: random.Random, *, extreme: bool, depth: int = 0, opening: bool = False
) -> Message:
    """A valid message of type ``desc``: plausible values, or extreme ones."""
    msg: Message = message_factory.GetMessageClass(desc)()
    if _well_known(msg, rng, extreme):
        return msg
    fill(msg, rng, extreme=extreme, depth=depth, opening=opening)
    return msg


def fill(
    msg: Message, rng: random.Random, *, extreme: bool, depth: int = 0, opening: bool = False
) -> None:
    """Set some of ``msg``'s fields; of each oneof, one member (the first
    declared for a stream's ``opening`` message: a session's registration)."""
    chosen = {
        oneof.name: (oneof.fields[0] if opening else rng.choice(oneof.fields))
        for oneof in msg.DESCRIPTOR.oneofs
        if oneof.fields and not _synthetic(oneof)
    }
    for f in msg.DESCRIPTOR.fields:
        oneof = f.containing_oneof
        if oneof is not None and not _synthetic(oneof):
            if chosen[oneof.name] is not f:
                continue
        elif rng.random() < 0.35:
            continue
        if f.label == FieldDescriptor.LABEL_REPEATED:
            _fill_repeated(msg, f, rng, extreme=extreme, depth=depth)
        elif f.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 4:
                continue
            getattr(msg, f.name).CopyFrom(
                build(f.message_type, rng, extreme=extreme, depth=depth + 1)
            )
        else:
            setattr(msg, f.name, _scalar(f, rng, extreme))


def _synthetic(oneof: Any) -> bool:
    """The oneof protobuf makes for a proto3 ``optional`` field (one member, named _field)."""
    return len(oneof.fields) == 1 and oneof.name == f"_{oneof.fields[0].name}"


def _count(rng: random.Random, extreme: bool, scalar: bool) -> int:
    if not extreme:
        return rng.randint(0, 3)
    return rng.choice([0, 1, 2, 100, 2000] + ([50_000] if scalar else []))


def _fill_repeated(
    msg: Message, f: FieldDescriptor, rng: random.Random, *, extreme: bool, depth: int
) -> None:
    container = getattr(msg, f.name)
    is_map = f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type.GetOptions().map_entry
    if is_map:
        key_f = f.message_type.fields_by_name["key"]
        value_f = f.message_type.fields_by_name["value"]
        entries = min(_count(rng, extreme, scalar=True), 5000)  # a Python loop: keep it cheap
        for i in range(entries):
            key = _scalar(key_f, rng, extreme=False)
            if isinstance(key, str):
                key = f"{key}{i}"
            if value_f.type == FieldDescriptor.TYPE_MESSAGE:
                container[key].CopyFrom(build(value_f.message_type, rng, extreme=False))
            else:
                value = _scalar(value_f, rng, extreme)
                if isinstance(value, str | bytes) and len(value) * entries > MESSAGE_BUDGET:
                    value = value[:64]
                container[key] = value
        return
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        if depth >= 3:
            return
        item = build(f.message_type, rng, extreme=extreme, depth=depth + 1)
        # Many items only at the top: nested thousands multiply into millions
        # of objects in the test's own process.
        n = _count(rng, extreme, scalar=False) if depth == 0 else rng.choice([0, 1, 2, 10])
        n = min(n, MESSAGE_BUDGET // (item.ByteSize() + 2))
        for _ in range(n):  # the same item many times keeps the cost of building low
            container.add().CopyFrom(item)
        return
    n = _count(rng, extreme, scalar=True)
    value = _scalar(f, rng, extreme)
    if isinstance(value, str | bytes) and len(value) * n > 2 * MEGABYTE:
        value = value[:64]
    container.extend([value] * n)


def _scalar(f: FieldDescriptor, rng: random.Random, extreme: bool) -> Any:
    t = f.type
    if t == FieldDescriptor.TYPE_STRING:
        return _string(rng, f, extreme)
    if t == FieldDescriptor.TYPE_BYTES:
        return _bytes(rng, extreme)
    if t == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        if not extreme:
            return rng.choice([0.0, 0.5, 1.0])
        return rng.choice([float("nan"), float("inf"), -float("inf"), -1.0, 1e308, 5e-324])
    if t == FieldDescriptor.TYPE_ENUM:
        numbers = [v.number for v in f.enum_type.values]
        if not extreme:
            return rng.choice(numbers)
        # proto3 enums are open: a number no value has is kept and delivered.
        return rng.choice([-1, max(numbers) + 1, 99, INT32[0], INT32[1]])
    if t in _INT_TYPES:
        if not extreme:
            return rng.choice([0, 1, 2, 5])
        return rng.choice(_int_extremes(f))
    raise AssertionError(f"unhandled field type {t} ({f.full_name})")


@dataclass
class Input:
    kind: str  # random | mutated | extreme
    payloads: list[bytes]  # one for a unary request; a client stream's messages


def inputs(method: Method, counts: dict[str, int]) -> Iterator[Input]:
    """The method's inputs, ``counts[kind]`` of each kind, deterministically."""
    rng = rng_for(method)
    stream = method.client_streaming

    def messages(make: Any) -> list[bytes]:
        """One message, or a client stream's one to three (``make(index)``)."""
        return [make(i) for i in range(rng.randint(1, 3) if stream else 1)]

    def seeds(opening: bool) -> list[bytes]:
        made = [build_request(method.input, rng, extreme=False, opening=opening) for _ in range(8)]
        made += [build_request(method.input, rng, extreme=True, opening=opening) for _ in range(2)]
        return [s[: 64 * 1024] for s in made]

    for _ in range(counts.get("random", 0)):
        yield Input("random", messages(lambda i: random_bytes(rng)))
    # A stream's first message opens it (a session's registration), the
    # others are anything.
    first, later = seeds(opening=stream), seeds(opening=False)
    for _ in range(counts.get("mutated", 0)):
        yield Input("mutated", messages(lambda i: mutate(rng.choice(later if i else first), rng)))
    for _ in range(counts.get("extreme", 0)):
        yield Input(
            "extreme",
            messages(
                lambda i: build_request(method.input, rng, extreme=True, opening=stream and i == 0)
            ),
        )


def asks_to_wait(method: Method, payload: bytes, limit: float) -> bool:
    """Whether the request, decoded, holds a duration of ``limit`` or more (a
    profile's length, a grace period): a call that waits on it is doing as
    asked, not hanging."""
    try:
        msg = method.message_class().FromString(payload)
    except DecodeError:
        return False
    return _has_long_duration(msg, limit)


def _has_long_duration(msg: Message, limit: float) -> bool:
    if msg.DESCRIPTOR.full_name == "google.protobuf.Duration":
        seconds: int = msg.seconds  # type: ignore[attr-defined]
        return seconds + 1 >= limit
    for f, value in msg.ListFields():
        if f.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        items = value if f.label == FieldDescriptor.LABEL_REPEATED else [value]
        if f.message_type.GetOptions().map_entry:
            items = [v for v in value.values() if isinstance(v, Message)]
        if any(_has_long_duration(item, limit) for item in items):
            return True
    return False


# -- calls -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    method: Method
    input: Input
    code: grpc.StatusCode
    details: str
    responses: int
    seconds: float
    cancelled_by_us: bool = False

    def describe(self) -> str:
        payloads = ", ".join(hexdump(p) for p in self.input.payloads)
        return (
            f"{self.method.path} ({self.method.kind}) {self.input.kind} input [{payloads}] "
            f"-> {self.code.name} after {self.seconds:.2f}s, {self.responses} responses: "
            f"{self.details[:300]!r}"
        )


@dataclass
class Limits:
    unary_deadline: float = 5.0
    stream_deadline: float = 1.5
    max_responses: int = 2


def call(channel: grpc.Channel, method: Method, given: Input, limits: Limits) -> Outcome:
    """One raw generic call (bytes in, bytes out), ended within its deadline."""
    start = time.monotonic()
    responses = 0
    streaming = method.server_streaming
    deadline = limits.stream_deadline if streaming else limits.unary_deadline
    request: Any = given.payloads[0] if not method.client_streaming else iter(given.payloads)
    try:
        if method.kind == "unary-unary":
            channel.unary_unary(method.path)(request, timeout=deadline)
            return Outcome(method, given, grpc.StatusCode.OK, "", 1, time.monotonic() - start)
        if method.kind == "stream-unary":
            channel.stream_unary(method.path)(request, timeout=deadline)
            return Outcome(method, given, grpc.StatusCode.OK, "", 1, time.monotonic() - start)
        if method.kind == "unary-stream":
            stream = channel.unary_stream(method.path)(request, timeout=deadline)
        else:
            stream = channel.stream_stream(method.path)(request, timeout=deadline)
        for _ in stream:
            responses += 1
            if responses >= limits.max_responses:
                stream.cancel()
                return Outcome(
                    method,
                    given,
                    grpc.StatusCode.OK,
                    "",
                    responses,
                    time.monotonic() - start,
                    cancelled_by_us=True,
                )
        return Outcome(method, given, grpc.StatusCode.OK, "", responses, time.monotonic() - start)
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = (exc.details() if isinstance(exc, grpc.Call) else str(exc)) or ""
        return Outcome(method, given, code, details, responses, time.monotonic() - start)


@dataclass
class Tally:
    """What one method's fuzzing saw."""

    inputs: dict[str, int] = field(default_factory=dict)
    codes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    broke: bool = False  # an input froze or killed the server

    def add(self, outcome: Outcome, note: str = "") -> None:
        self.inputs[outcome.input.kind] = self.inputs.get(outcome.input.kind, 0) + 1
        name = outcome.code.name + ("(cancelled by us)" if outcome.cancelled_by_us else "") + note
        self.codes[name] = self.codes.get(name, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.inputs.values())

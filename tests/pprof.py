"""An independent parser of pprof profiles: perftools.profiles message types
built from the field numbers of pprof's profile.proto, parsed by protobuf."""

from __future__ import annotations

import gzip
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory


def pprof_types() -> dict[str, Any]:
    """perftools.profiles message classes, built from pprof's profile.proto."""
    f = descriptor_pb2.FieldDescriptorProto
    i64, u64, str_, bool_ = f.TYPE_INT64, f.TYPE_UINT64, f.TYPE_STRING, f.TYPE_BOOL
    rep, opt = f.LABEL_REPEATED, f.LABEL_OPTIONAL
    # name -> [(field, number, type or message name, label)]
    messages: dict[str, list[tuple[str, int, Any, int]]] = {
        "Profile": [
            ("sample_type", 1, "ValueType", rep),
            ("sample", 2, "Sample", rep),
            ("mapping", 3, "Mapping", rep),
            ("location", 4, "Location", rep),
            ("function", 5, "Function", rep),
            ("string_table", 6, str_, rep),
            ("drop_frames", 7, i64, opt),
            ("keep_frames", 8, i64, opt),
            ("time_nanos", 9, i64, opt),
            ("duration_nanos", 10, i64, opt),
            ("period_type", 11, "ValueType", opt),
            ("period", 12, i64, opt),
            ("comment", 13, i64, rep),
            ("default_sample_type", 14, i64, opt),
            ("doc_url", 15, i64, opt),
        ],
        "ValueType": [("type", 1, i64, opt), ("unit", 2, i64, opt)],
        "Sample": [
            ("location_id", 1, u64, rep),
            ("value", 2, i64, rep),
            ("label", 3, "Label", rep),
        ],
        "Label": [
            ("key", 1, i64, opt),
            ("str", 2, i64, opt),
            ("num", 3, i64, opt),
            ("num_unit", 4, i64, opt),
        ],
        "Mapping": [
            ("id", 1, u64, opt),
            ("memory_start", 2, u64, opt),
            ("memory_limit", 3, u64, opt),
            ("file_offset", 4, u64, opt),
            ("filename", 5, i64, opt),
            ("build_id", 6, i64, opt),
            ("has_functions", 7, bool_, opt),
            ("has_filenames", 8, bool_, opt),
            ("has_line_numbers", 9, bool_, opt),
            ("has_inline_frames", 10, bool_, opt),
        ],
        "Location": [
            ("id", 1, u64, opt),
            ("mapping_id", 2, u64, opt),
            ("address", 3, u64, opt),
            ("line", 4, "Line", rep),
            ("is_folded", 5, bool_, opt),
        ],
        "Line": [("function_id", 1, u64, opt), ("line", 2, i64, opt), ("column", 3, i64, opt)],
        "Function": [
            ("id", 1, u64, opt),
            ("name", 2, i64, opt),
            ("system_name", 3, i64, opt),
            ("filename", 4, i64, opt),
            ("start_line", 5, i64, opt),
        ],
    }
    file = descriptor_pb2.FileDescriptorProto(
        name="test_pprof_profile.proto", package="perftools.profiles", syntax="proto3"
    )
    for name, fields in messages.items():
        m = file.message_type.add(name=name)
        for field_name, number, type_, label in fields:
            fd = m.field.add(name=field_name, number=number, label=label)
            if isinstance(type_, str):
                fd.type = f.TYPE_MESSAGE
                fd.type_name = f".perftools.profiles.{type_}"
            else:
                fd.type = type_
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"perftools.profiles.{name}")
        )
        for name in messages
    }


def parse_pprof(data: bytes) -> Any:
    """A gzipped pprof profile as a perftools.profiles.Profile message."""
    profile = pprof_types()["Profile"]()
    profile.ParseFromString(gzip.decompress(data))
    return profile


def function_samples(profile: Any) -> dict[str, int]:
    """Samples per function, inclusive: a sample counts for every function on
    its stack."""
    strings = profile.string_table
    functions = {f.id: strings[f.name] for f in profile.function}
    locations = {
        loc.id: [functions[line.function_id] for line in loc.line] for loc in profile.location
    }
    counts: dict[str, int] = {}
    for sample in profile.sample:
        names = {n for lid in sample.location_id for n in locations[lid]}
        for name in names:
            counts[name] = counts.get(name, 0) + sample.value[0]
    return counts

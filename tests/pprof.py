"""Reading pprof profiles in tests, with the perftools.profiles messages
generated from the vendored profile.proto (protos/third_party)."""

from __future__ import annotations

import gzip

from pycontainer.pprof.profile_pb2 import Profile


def parse_pprof(data: bytes) -> Profile:
    """A gzipped pprof profile as a perftools.profiles.Profile message."""
    profile = Profile()
    profile.ParseFromString(gzip.decompress(data))
    return profile


def function_samples(profile: Profile) -> dict[str, int]:
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

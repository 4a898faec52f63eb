"""CPU samples as files that profilers read: pprof's gzipped Profile (built
with the generated perftools.profiles messages) and collapsed stacks."""

from __future__ import annotations

import gzip
from collections import Counter

from pycontainer.pprof import profile_pb2 as pprof

from ._cpu import CpuSamples
from ._frames import Frame

__all__ = ["to_collapsed", "to_pprof"]


class _Strings:
    """pprof's string table: every string once, referred to by index."""

    def __init__(self) -> None:
        self.table: list[str] = [""]  # pprof requires "" at index 0
        self._index: dict[str, int] = {"": 0}

    def __call__(self, s: str) -> int:
        i = self._index.get(s)
        if i is None:
            i = self._index[s] = len(self.table)
            self.table.append(s)
        return i


def to_pprof(samples: CpuSamples) -> bytes:
    """The samples as a gzipped pprof ``perftools.profiles.Profile``.

    Sample values are [samples/count, cpu/nanoseconds]; each sample carries a
    ``thread`` label.
    """
    s = _Strings()
    profile = pprof.Profile(
        sample_type=[
            pprof.ValueType(type=s("samples"), unit=s("count")),
            pprof.ValueType(type=s("cpu"), unit=s("nanoseconds")),
        ],
        time_nanos=samples.start_time_ns,
        duration_nanos=samples.duration_ns,
        period_type=pprof.ValueType(type=s("cpu"), unit=s("nanoseconds")),
        period=samples.period_ns,
    )
    functions: dict[tuple[str, str], int] = {}
    locations: dict[Frame, int] = {}
    thread_key = s("thread")
    for key, count in samples.counts.items():
        thread, stack = key
        ids = []
        for frame in reversed(stack):  # pprof lists the leaf first
            loc = locations.get(frame)
            if loc is None:
                functions.setdefault(frame[:2], len(functions) + 1)
                loc = locations[frame] = len(locations) + 1
            ids.append(loc)
        profile.sample.add(
            location_id=ids,
            value=[count, samples.cpu_ns[key]],
            label=[pprof.Label(key=thread_key, str=s(thread))],
        )
    for frame, loc in locations.items():
        line = pprof.Line(function_id=functions[frame[:2]], line=frame[2])
        profile.location.add(id=loc, line=[line])
    for (name, filename), fn in functions.items():
        system_name = name.rsplit(".", 1)[-1]  # the code object's own name
        profile.function.add(id=fn, name=s(name), system_name=s(system_name), filename=s(filename))
    # File names may carry surrogate escapes of undecodable bytes, which a
    # string field cannot hold.
    profile.string_table.extend(t.encode("utf-8", "replace").decode("utf-8") for t in s.table)
    return gzip.compress(profile.SerializeToString(), mtime=0)


def to_collapsed(samples: CpuSamples) -> bytes:
    """The samples as collapsed stacks, root first, as flamegraph.pl reads."""
    merged: Counter[str] = Counter()
    for (_, stack), count in samples.counts.items():
        merged[";".join(_collapsed_frame(f) for f in stack)] += count
    text = "".join(f"{line} {n}\n" for line, n in sorted(merged.items()))
    return text.encode("utf-8", "replace")


def _collapsed_frame(frame: Frame) -> str:
    function, file, line = frame
    # ';' separates frames and a line ends the stack.
    text = f"{function} ({file}:{line})"
    return text.replace(";", ":").replace("\n", " ")

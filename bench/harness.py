"""The benchmark harness: every row measured in rounds against bare grpcio (or
the bare Python equivalent) in the same run, written to bench/RESULTS.md.

    make bench                 # the full run (about 18 minutes on 2 cores)
    make bench QUICK=1         # the quick run (about 3¼ minutes)
    .venv/bin/python -m bench --quick [--rows p1-sync,p3d] [--out FILE]

A row is a function that takes a :class:`Context` and returns one
:class:`Sample` per round (it alternates pycontainer and bare within each
round, so both see the same noise). A row that raises is reported as failed,
with the reason, and the run goes on: a slow machine never fails a benchmark.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import platform
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
MIN_ROUNDS = 3


@dataclasses.dataclass(frozen=True)
class Context:
    """How long and how big a run is: ``seconds`` per rate measurement, a
    scale for counts (1.0 full, smaller quick), and the number of rounds."""

    seconds: float
    rounds: int
    quick: bool
    scale: float

    def count(self, full: int, minimum: int = 1) -> int:
        """``full`` scaled to this run, at least ``minimum``."""
        return max(minimum, int(full * self.scale))


@dataclasses.dataclass
class Sample:
    """One round of a row: the headline figure of pycontainer and of the bare
    baseline, and for a latency row the individual latencies (seconds)."""

    ours: float
    bare: float
    ours_latencies: list[float] = dataclasses.field(default_factory=list)
    bare_latencies: list[float] = dataclasses.field(default_factory=list)
    note: str = ""
    # pycontainer ÷ bare unless the row says otherwise (say, of the times
    # around the figures when the figures are offsets near zero).
    ratio: float | None = None


@dataclasses.dataclass(frozen=True)
class Row:
    key: str
    target: str  # the id (P1..P8), or "" for a context figure
    goal: str  # the target for the ratio or the figure
    what: str  # what is measured
    bare_is: str  # what the baseline is
    unit: str
    higher_is_better: bool
    measure: Callable[[Context], list[Sample]]
    latency: bool = False  # show p50/p99
    scale: float = 1.0  # converts a figure (seconds) into ``unit`` (1e3: ms)


@dataclasses.dataclass
class Outcome:
    row: Row
    samples: list[Sample]
    seconds: float
    error: str = ""


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1): the smallest value with at least
    q of the values at or below it."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def run_rows(rows: Sequence[Row], ctx: Context, log: Callable[[str], None]) -> list[Outcome]:
    outcomes = []
    for row in rows:
        t0 = time.perf_counter()
        log(f"{row.key}: {row.what} ...")
        try:
            samples = row.measure(ctx)
            if len(samples) < MIN_ROUNDS:
                raise RuntimeError(f"{len(samples)} rounds measured, {MIN_ROUNDS} needed")
            outcome = Outcome(row, samples, time.perf_counter() - t0)
        except Exception as exc:  # a failed row is reported; the run goes on
            reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
            log(f"{row.key}: FAILED {reason}\n{traceback.format_exc()}")
            outcome = Outcome(row, [], time.perf_counter() - t0, error=reason)
        outcomes.append(outcome)
        log(f"{row.key}: {_summary(outcome)} ({outcome.seconds:.1f} s)")
    return outcomes


# -- formatting ------------------------------------------------------------------------
def _num(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _spread(values: Sequence[float], fmt: Callable[[float], str] = _num) -> str:
    """median [min .. max]"""
    return f"{fmt(statistics.median(values))} [{fmt(min(values))} .. {fmt(max(values))}]"


def _ratios(samples: Sequence[Sample]) -> list[float]:
    return [
        s.ratio if s.ratio is not None else s.ours / s.bare if s.bare else float("nan")
        for s in samples
    ]


def _ratio(value: float) -> str:
    return f"{value:.2f}"


def _tails(latencies: Sequence[float], scale: float) -> str:
    if not latencies:
        return "-"
    return (
        f"{_num(percentile(latencies, 0.5) * scale)} / {_num(percentile(latencies, 0.99) * scale)}"
    )


def _summary(o: Outcome) -> str:
    if o.error:
        return f"FAILED: {o.error}"
    r = o.row
    ours = [s.ours * r.scale for s in o.samples]
    bare = [s.bare * r.scale for s in o.samples]
    return (
        f"{_spread(ours)} {r.unit} vs bare {_spread(bare)}; ratio "
        f"{_spread(_ratios(o.samples), _ratio)}"
    )


def machine() -> list[tuple[str, str]]:
    import google.protobuf
    import grpc
    from google.protobuf.internal import api_implementation

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    return [
        ("cores", f"{os.cpu_count()} (usable: {len(os.sched_getaffinity(0))})"),
        ("CPU", model or "unknown"),
        ("kernel", platform.platform()),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("grpcio", grpc.__version__),
        ("protobuf", f"{google.protobuf.__version__} (backend: {api_implementation.Type()})"),
    ]


def render(outcomes: Sequence[Outcome], ctx: Context, command: str, started: str) -> str:
    total = sum(o.seconds for o in outcomes)
    lines = [
        "# Benchmark results",
        "",
        "Written by `bench/harness.py` (see its docstring); each figure against bare grpcio "
        "(or the bare Python equivalent) measured in the same run, in alternating rounds.",
        "",
        f"- date: {started}",
        f"- command: `{command}`",
        f"- mode: {'quick' if ctx.quick else 'full'}: {ctx.rounds} rounds, {ctx.seconds:g} s "
        f"per rate measurement, counts scaled by {ctx.scale:g}; {total:.0f} s in all",
    ]
    lines += [f"- {name}: {value}" for name, value in machine()]
    lines += [
        "",
        "Figures are the median of the rounds with their range [min .. max]; the ratio is "
        "pycontainer ÷ bare per round (for a rate, higher is better; for a time or a "
        "latency, lower is better: see the unit). p50 / p99 pool every latency of "
        "every round.",
        "",
        "| target | key | what is measured | unit | pycontainer | bare | ratio | "
        "p50 / p99 ours | p50 / p99 bare | goal | baseline is | row took |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        r = o.row
        arrow = "↑" if r.higher_is_better else "↓"
        head = f"| {r.target or '-'} | {r.key} | {r.what} | {r.unit} ({arrow}) |"
        if o.error:
            lines.append(
                f"{head} FAILED | - | - | - | - | {r.goal} | {o.error} | {o.seconds:.0f} s |"
            )
            continue
        ours = [s.ours * r.scale for s in o.samples]
        bare = [s.bare * r.scale for s in o.samples]
        notes = "; ".join(dict.fromkeys(s.note for s in o.samples if s.note))
        ours_lat = [v for s in o.samples for v in s.ours_latencies]
        bare_lat = [v for s in o.samples for v in s.bare_latencies]
        lines.append(
            f"{head} {_spread(ours)} | {_spread(bare)} | {_spread(_ratios(o.samples), _ratio)} | "
            f"{_tails(ours_lat, r.scale) if r.latency else '-'} | "
            f"{_tails(bare_lat, r.scale) if r.latency else '-'} | {r.goal} | "
            f"{r.bare_is}{'; ' + notes if notes else ''} | {o.seconds:.0f} s |"
        )
    failed = [o.row.key for o in outcomes if o.error]
    lines += [
        "",
        f"{len(outcomes) - len(failed)} rows measured, {len(failed)} failed"
        + (f" ({', '.join(failed)})" if failed else "")
        + ".",
    ]
    return "\n".join(lines) + "\n"


# -- the command -----------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="pycontainer's benchmarks, written to RESULTS.md"
    )
    parser.add_argument("--quick", action="store_true", help="the quick run (about 3¼ minutes)")
    parser.add_argument("--rows", help="comma-separated row keys (default: all); --list shows them")
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    parser.add_argument("--seconds", type=float, help="time per rate measurement")
    parser.add_argument("--rounds", type=int, help=f"rounds per row (at least {MIN_ROUNDS})")
    parser.add_argument("--scale", type=float, help="scale of counts (1.0 full)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write (RESULTS.md)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from .rows import ROWS

    args = parse_args(argv)
    if args.list:
        for row in ROWS:
            print(f"{row.key:22} {row.target or '-':3} {row.what}")
        return 0
    ctx = Context(
        seconds=args.seconds or (0.5 if args.quick else 2.0),
        rounds=max(MIN_ROUNDS, args.rounds or (3 if args.quick else 5)),
        quick=args.quick,
        scale=args.scale or (0.1 if args.quick else 1.0),
    )
    rows = list(ROWS)
    if args.rows:
        wanted = [k.strip() for k in args.rows.split(",") if k.strip()]
        known = {r.key: r for r in ROWS}
        unknown = [k for k in wanted if k not in known]
        if unknown:
            print(f"unknown rows: {', '.join(unknown)}; known: {', '.join(known)}", file=sys.stderr)
            return 2
        rows = [known[k] for k in wanted]
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(sys.orig_argv)
    outcomes = run_rows(rows, ctx, lambda text: print(text, file=sys.stderr, flush=True))
    text = render(outcomes, ctx, command, started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"written to {args.out}", file=sys.stderr)
    return 0

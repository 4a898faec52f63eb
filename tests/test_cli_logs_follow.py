"""`pycontainer logs -f` of a sidecar-run program, end to end (the program's
stdout, the sidecar, the manager's proxy, the real CLI in a subprocess): every
line arrives, in order; a reader that falls behind a ring too small for it is
told how many entries it missed; `--log-capacity` is validated; the CLI's
plain format is what it was."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from rich.console import Console
from support import ManagerHost, wait_container, wait_until

from pycontainer._errors import RequestError
from pycontainer.cli import main
from pycontainer.cli._logs import LogPrinter, MissedEntries
from pycontainer.logtext import INFO, Severities, parse_rule
from pycontainer.manager._logstreams import CUT
from pycontainer.manager._validation import check_spec
from pycontainer.sidecar import build_parser, settings_from_args
from pycontainer.spec import SpecError, parse_specs
from pycontainer.v1 import container_pb2, logs_pb2, manager_pb2, spec_pb2

# Prints "ready", waits for its go file, then its lines in bursts (argv: the
# count, the burst, the go file, a file made once all is printed, how long to
# stay after), then "done".
PRINTER = """\
import os, sys, time
total, burst, go, printed = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.01)
write = sys.stdout.write
for start in range(0, total, burst):
    for i in range(start, min(total, start + burst)):
        write(f"line id={i} of the printer\\n")
    sys.stdout.flush()
    time.sleep(0.005)
open(printed, "w").close()
print("done", flush=True)
time.sleep(float(sys.argv[5]))
"""
CLI = (sys.executable, "-m", "pycontainer.cli")
LINE = re.compile(r"line id=(\d+) of the printer$", re.MULTILINE)
DONE = re.compile(r"INFO    stdout: done$", re.MULTILINE)
MISSED = re.compile(r"note: (\d+) entries missed \(the container's log buffer wrapped")


class Printer:
    """The sidecar-run printer, launched by the manager, and a `logs -f` of it."""

    def __init__(
        self,
        manager: ManagerHost,
        tmp_path: Path,
        total: int,
        burst: int,
        capacity: int,
        stay: float = 120,
    ) -> None:
        self.manager, self.total = manager, total
        self.go, self.printed = tmp_path / "go", tmp_path / "printed"
        self.stay = stay
        program = tmp_path / "printer.py"
        program.write_text(PRINTER)
        spec = spec_pb2.ContainerSpec(
            name="printer",
            runtime=spec_pb2.RUNTIME_KIND_PROCESS,
            command=[sys.executable, str(program), *(str(total), str(burst)), *self._files()],
            sidecar=True,
            log_capacity=capacity,
        )
        manager.stub.RunContainer(manager_pb2.RunContainerRequest(spec=spec), timeout=30)
        wait_container(
            manager.stub,
            "printer",
            lambda c: c.state == container_pb2.LIFECYCLE_STATE_RUNNING and c.identity.endpoints,
            "running with its Management endpoint",
        )
        self.out, self.err = tmp_path / "cli.out", tmp_path / "cli.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.cli = subprocess.Popen(
                [*CLI, "logs", "-f", "printer", "--manager", manager.address],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        wait_until(lambda: "stdout: ready" in self.text(), 30, "the CLI showing 'ready'")

    def _files(self) -> list[str]:
        return [str(self.go), str(self.printed), str(self.stay)]

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def ids(self) -> list[int]:
        return [int(i) for i in LINE.findall(self.text())]

    def missed(self) -> list[int]:
        return [int(n) for n in MISSED.findall(self.err.read_text())]

    def wait_done(self) -> None:
        wait_until(lambda: DONE.search(self.text()) is not None, 120, "the CLI showing 'done'")

    def close(self) -> None:
        if self.cli.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.cli.pid, signal.SIGCONT)
            self.cli.terminate()
            try:
                self.cli.wait(10)
            except subprocess.TimeoutExpired:
                self.cli.kill()
                self.cli.wait(10)
        request = manager_pb2.StopContainerRequest(container="printer")
        request.grace_period.FromSeconds(5)
        with contextlib.suppress(grpc.RpcError):
            self.manager.stub.StopContainer(request, timeout=30)
        runtime = self.manager.manager.runtimes[spec_pb2.RUNTIME_KIND_PROCESS]
        with contextlib.suppress(Exception):
            self.manager.call(runtime.close)


@pytest.fixture
def printers() -> Iterator[list[Printer]]:
    made: list[Printer] = []
    yield made
    for printer in made:
        printer.close()


def test_every_line_arrives_in_order_through_the_manager_and_the_cli(
    manager: ManagerHost, tmp_path: Path, printers: list[Printer]
) -> None:
    # Bursts of 1,000 lines every few milliseconds; a ring that holds them all,
    # so that nothing may be lost however slow the machine is.
    total = 30_000
    printer = Printer(manager, tmp_path, total, burst=1_000, capacity=total + 1_000)
    printers.append(printer)
    printer.go.touch()
    printer.wait_done()
    assert printer.ids() == list(range(total))
    assert printer.missed() == []
    assert printer.cli.poll() is None  # still following


def test_a_reader_behind_a_small_ring_is_told_how_many_it_missed(
    manager: ManagerHost, tmp_path: Path, printers: list[Printer]
) -> None:
    total = 20_000
    printer = Printer(manager, tmp_path, total, burst=5_000, capacity=10)
    printers.append(printer)
    # The reader stops reading (its stream backs up to the container's server)
    # while the program prints 2,000 times what the ring holds.
    os.kill(printer.cli.pid, signal.SIGSTOP)
    printer.go.touch()
    wait_until(printer.printed.exists, 60, "the program to print everything")
    wait_until(lambda: _sidecar_has(manager, "done"), 30, "the sidecar to read the last line")
    os.kill(printer.cli.pid, signal.SIGCONT)
    printer.wait_done()
    ids, missed = printer.ids(), printer.missed()
    assert missed, printer.err.read_text()
    assert ids == sorted(set(ids))
    assert len(ids) < total
    # Every entry is shown or counted (the sidecar's own entries aside: a few).
    assert total - len(ids) <= sum(missed) <= total - len(ids) + 10


_ENDED = (container_pb2.LIFECYCLE_STATE_STOPPED, container_pb2.LIFECYCLE_STATE_FAILED)


def test_a_reader_behind_when_the_container_ends_gets_every_line_its_ring_held(
    manager: ManagerHost, tmp_path: Path, printers: list[Printer]
) -> None:
    # Far more than the streams' buffers hold, printed while the reader reads
    # nothing; then the program exits, and the sidecar with it: the sidecar
    # lets its followers drain the ring (which holds every line) first.
    # 100,000: about three times what the manager's relay queue and the
    # streams' windows hold, printed fast enough that the frozen reader's
    # connection outlives it. (300,000 took long enough on a loaded machine
    # for the manager's keepalive, 20 s of pings unanswered plus 10, to drop
    # the frozen reader's connection: as it should a dead client's.)
    total = 100_000
    printer = Printer(manager, tmp_path, total, burst=20_000, capacity=total + 1_000, stay=0)
    printers.append(printer)
    os.kill(printer.cli.pid, signal.SIGSTOP)
    printer.go.touch()
    wait_container(manager.stub, "printer", lambda c: c.state in _ENDED, "to end", 60)
    # Still behind past a server's stop grace (2 s), when a sidecar used to
    # cut its streams and exit.
    time.sleep(3)
    os.kill(printer.cli.pid, signal.SIGCONT)
    assert printer.cli.wait(60) == 0, printer.err.read_text()
    assert printer.ids() == list(range(total))
    assert DONE.search(printer.text()) is not None
    last = printer.text().splitlines()[-1]
    assert last.startswith("[printer] container stopped")
    assert not last.endswith(CUT), last
    assert printer.missed() == []


def _sidecar_has(manager: ManagerHost, message: str) -> bool:
    """Whether the newest entry of the printer's log is ``message`` (asked of
    its Management server directly)."""
    from pycontainer.v1 import management_pb2, management_pb2_grpc

    got = manager.stub.GetContainer(
        manager_pb2.GetContainerRequest(container="printer"), timeout=10
    ).container
    [endpoint] = got.identity.endpoints
    with grpc.insecure_channel(endpoint.address) as channel:
        stub = management_pb2_grpc.ManagementStub(channel)
        request = management_pb2.StreamLogsRequest(tail=1, logger="stdout")
        return [e.message for r in stub.StreamLogs(request, timeout=10) for e in r.entries] == [
            message
        ]


# -- --log-capacity ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("0", "'0': must be from 1 to 10,000,000 log entries"),
        ("-5", "'-5': must be from 1 to 10,000,000 log entries"),
        ("10000001", "'10000001': must be from 1 to 10,000,000 log entries"),
        ("lots", "'lots' is not a whole number of log entries"),
    ],
)
def test_a_bad_log_capacity_says_what_to_write(value: str, says: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = main(["run", f"--log-capacity={value}", "--", "true"], stdout=out, stderr=err)
    assert code != 0
    assert f"argument --log-capacity: {says}" in err.getvalue()
    assert "Traceback" not in err.getvalue()


def test_the_log_capacity_reaches_the_spec_and_the_sidecars_ring() -> None:
    args = build_parser().parse_args(["--log-capacity", "250_000", "--", "prog"])
    settings = settings_from_args(args, environ={})
    assert settings.container.log_capacity == 250_000
    default = settings_from_args(build_parser().parse_args(["--", "prog"]), environ={})
    assert default.container.log_capacity == 10_000
    [spec] = parse_specs("name: web\ncommand: [prog]\nlogCapacity: 50000\n")
    assert spec.log_capacity == 50_000
    with pytest.raises(SpecError, match="logCapacity: must be 1 or more log entries, got 0"):
        parse_specs("name: web\ncommand: [prog]\nlogCapacity: 0\n")
    with pytest.raises(RequestError, match=r"spec\.log_capacity: must be 0 .* got -1"):
        check_spec(spec_pb2.ContainerSpec(name="web", log_capacity=-1), "spec")


def test_the_manager_refuses_a_spec_with_a_bad_log_capacity(manager: ManagerHost) -> None:
    spec = spec_pb2.ContainerSpec(
        name="web", command=["true"], runtime=spec_pb2.RUNTIME_KIND_PROCESS, sidecar=True
    )
    spec.log_capacity = 10_000_001
    with pytest.raises(grpc.RpcError) as refused:
        manager.stub.RunContainer(manager_pb2.RunContainerRequest(spec=spec), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "log_capacity" in (refused.value.details() or "")
    assert "MAX_LOG_CAPACITY" in (refused.value.details() or "")


# -- the CLI's format ---------------------------------------------------------------------
def _entry(seq: int, severity: int, text: str, logger: str, message: str) -> logs_pb2.LogEntry:
    entry = logs_pb2.LogEntry(
        sequence=seq,
        severity=severity,  # type: ignore[arg-type]
        severity_text=text,
        logger=logger,
        message=message,
    )
    entry.time.FromNanoseconds(1_764_576_001_123_456_789)  # 2025-12-01T08:00:01.123Z
    return entry


def test_plain_lines_name_the_container_of_the_response() -> None:
    out = io.StringIO()
    printer = LogPrinter(Console(file=out, color_system=None), {"web-1": "web"}, prefix=True)
    printer.expect(["web", "api"])
    entries = [
        _entry(1, logs_pb2.SEVERITY_WARN, "WARNING", "app.worker", "disk\r almost full"),
        _entry(2, 0, "NOTICE", "", "no logger"),
    ]
    clock = time.strftime("%H:%M:%S", time.localtime(1_764_576_001))
    if time.localtime(1_764_576_001)[:3] != time.localtime()[:3]:
        clock = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1_764_576_001))
    assert printer.format(entries, "web-1") == (
        f"web | {clock}.123 WARN    app.worker: disk almost full\n"
        f"web | {clock}.123 NOTICE  no logger\n"
    )


def test_missed_entries_are_the_gaps_in_each_containers_sequence() -> None:
    def response(cid: str, *seqs: int, missed: int = 0) -> manager_pb2.ManagerStreamLogsResponse:
        return manager_pb2.ManagerStreamLogsResponse(
            entries=[_entry(s, 9, "INFO", "x", "m") for s in seqs],
            container_id=cid,
            missed=missed,
        )

    counting = MissedEntries(filtered=False)
    assert counting.count(response("a", 5, 6, 7)) == 0  # where a reader starts is no gap
    assert counting.count(response("b", 1, 2)) == 0
    assert counting.count(response("a", 10, 11, missed=2)) == 2  # the gap, not the server's sum
    assert counting.count(response("b", 3, 9)) == 5
    assert counting.count(response("a", 1, 2)) == 0  # a new run, numbered from 1
    # With filters, gaps are what the filter left out: the servers' count says.
    filtered = MissedEntries(filtered=True)
    assert filtered.count(response("a", 1, 50, missed=3)) == 3


def test_bulk_classification_answers_as_each_line_would() -> None:
    lines = [
        "processed request id=1",
        "ERROR something broke",
        "2024-05-01 12:00:00 DEBUG x",
        "a line with level=warn in it",
        "informational, not info",
        "[Crit] disk",
        "",
        "caf\u00e9 error",  # outside ASCII: line by line
        "errors are counted",
        "heartbeat 3",
    ]
    for severities in (
        Severities(),
        Severities(defaults=False),
        Severities([parse_rule("^heartbeat=debug")]),
    ):
        expected = [severities.classify(line, INFO) for line in lines]
        assert severities.classify_all(lines, INFO) == expected
        ascii_only = [line for line in lines if line.isascii()]
        assert severities.classify_all(ascii_only, INFO) == [
            severities.classify(line, INFO) for line in ascii_only
        ]

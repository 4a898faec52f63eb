"""Logs that outlive their process: what launched programs print is kept by
the manager (never written to its terminal), served by Manager.StreamLogs
after the program has exited, for the run before a restart (previous),
merged by time across containers, and a followed container that stops ends
its part with a note."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from support import ManagerHost, make_container, start_sync_host, wait_until

from pycontainer.cli import main
from pycontainer.manager import LogStore, _logrelay
from pycontainer.v1 import container_pb2, logs_pb2, manager_pb2, manager_pb2_grpc, spec_pb2

ROOT = Path(__file__).resolve().parent.parent
S = container_pb2
RUNNING = S.LIFECYCLE_STATE_RUNNING
MANAGER = [sys.executable, "-m", "pycontainer.cli", "manager"]


def _program(tmp_path: Path, name: str, source: str) -> list[str]:
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    return [sys.executable, str(path)]


def _run(
    manager: ManagerHost, name: str, command: list[str], **spec: object
) -> manager_pb2.Container:
    spec.setdefault("runtime", spec_pb2.RUNTIME_KIND_PROCESS)
    request = manager_pb2.RunContainerRequest(
        spec=spec_pb2.ContainerSpec(name=name, command=command, **spec)  # type: ignore[arg-type]
    )
    [container] = manager.stub.RunContainer(request, timeout=30).containers
    return container


def _get(manager: ManagerHost, name: str) -> manager_pb2.Container:
    return manager.stub.GetContainer(
        manager_pb2.GetContainerRequest(container=name), timeout=5
    ).container


def _registered(manager: ManagerHost, name: str) -> manager_pb2.Container | None:
    listed = manager.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=5)
    return next((c for c in listed.containers if c.identity.name == name), None)


def _exited(manager: ManagerHost, name: str) -> None:
    wait_until(lambda: _get(manager, name).HasField("exit_code"), 20, f"{name} to exit")


def _logs(
    manager: ManagerHost, *names: str, selector: str = "", **filters: object
) -> list[manager_pb2.ManagerStreamLogsResponse]:
    request = manager_pb2.ManagerStreamLogsRequest(
        containers=names, label_selector=selector, filter=manager_pb2.StreamLogsFilter(**filters)
    )
    return list(manager.stub.StreamLogs(request, timeout=20))


def _messages(responses: list[manager_pb2.ManagerStreamLogsResponse]) -> list[str]:
    return [e.message for r in responses for e in r.entries]


CHATTY = """
import sys
print("hello from stdout", flush=True)
print("trouble on stderr", file=sys.stderr, flush=True)
for i in range(5):
    print(f"line {i}", flush=True)
sys.exit(3)
"""


def test_an_exited_programs_output_is_served_with_the_filters(
    manager: ManagerHost, tmp_path: Path
) -> None:
    launched = _run(manager, "chatty", _program(tmp_path, "chatty", CHATTY))
    _exited(manager, "chatty")
    responses = _logs(manager, "chatty")
    entries = [e for r in responses for e in r.entries]
    # Each stream in its order (two pipes: their interleaving is the relay's).
    by_stream = {
        name: [e.message for e in entries if e.attributes["log.iostream"] == name]
        for name in ("stdout", "stderr")
    }
    assert by_stream == {
        "stdout": ["hello from stdout", *(f"line {i}" for i in range(5))],
        "stderr": ["trouble on stderr"],
    }
    assert {e.container_id for e in entries} == {launched.identity.id}
    assert manager.manager.logs.ended(launched.identity.id)  # the relay wrote it all
    assert {e.logger for e in entries} == {""}  # plain lines name no logger
    [err] = [e for e in entries if e.attributes["log.iostream"] == "stderr"]
    assert err.severity == logs_pb2.SEVERITY_WARN
    assert entries[0].severity == logs_pb2.SEVERITY_INFO
    assert [e.sequence for e in entries] == list(range(1, 8))
    times = [e.time.ToNanoseconds() for e in entries]
    assert times == sorted(times)
    assert times[0] > 0

    everything = [e.message for e in entries]
    assert _messages(_logs(manager, "chatty", tail=2)) == everything[-2:]
    assert _messages(_logs(manager, "chatty", tail=0)) == []
    assert _messages(_logs(manager, "chatty", min_severity=logs_pb2.SEVERITY_WARN)) == [
        "trouble on stderr"
    ]
    assert _messages(_logs(manager, "chatty", contains="from")) == ["hello from stdout"]
    assert _messages(_logs(manager, "chatty", pattern=r"line [13]$")) == ["line 1", "line 3"]
    later = manager_pb2.StreamLogsFilter()
    later.since.FromNanoseconds(times[-1] + 1)
    assert _messages(_logs(manager, "chatty", since=later.since)) == []
    with pytest.raises(grpc.RpcError) as info:
        _logs(manager, "chatty", pattern="(")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # Followed after it ended: the history, then its end, and a clean finish.
    followed = _logs(manager, "chatty", follow=True, tail=1)
    assert _messages(followed) == everything[-1:]
    [end] = [end for r in followed for end in r.ended]
    assert end.container_id == launched.identity.id
    assert end.container_name == "chatty"
    assert end.message.endswith("(exit status 3)")


GATED = """
import os, sys, time
gate = sys.argv[1]
print("before the gate", flush=True)
while not os.path.exists(gate):
    time.sleep(0.02)
print("after the gate", flush=True)
"""


def test_a_followed_program_that_exits_ends_its_part_with_a_note(
    manager: ManagerHost, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    _run(manager, "gated", [*_program(tmp_path, "gated", GATED), str(gate)])
    request = manager_pb2.ManagerStreamLogsRequest(
        containers=["gated"], filter=manager_pb2.StreamLogsFilter(follow=True)
    )
    stream = manager.stub.StreamLogs(request, timeout=30)
    seen: list[str] = []
    ends: list[manager_pb2.LogStreamEnd] = []
    for response in stream:
        seen += [e.message for e in response.entries]
        ends += response.ended
        if seen == ["before the gate"]:
            gate.touch()
    assert seen == ["before the gate", "after the gate"]
    [end] = ends
    assert end.container_name == "gated"
    assert end.message.endswith("(exit status 0)"), end.message


RESTARTING = """
import os, sys, time
count = sys.argv[1]
runs = int(open(count).read()) + 1 if os.path.exists(count) else 1
open(count, "w").write(str(runs))
print(f"run {runs} says hello", flush=True)
if runs == 1:
    print("run 1 last words", file=sys.stderr, flush=True)
    sys.exit(1)
time.sleep(60)
"""


def test_previous_serves_the_run_before_the_last_restart(
    manager: ManagerHost, tmp_path: Path
) -> None:
    spec_backoff = spec_pb2.ContainerSpec()
    spec_backoff.restart_backoff.FromMilliseconds(50)
    _run(
        manager,
        "phoenix",
        [*_program(tmp_path, "phoenix", RESTARTING), str(tmp_path / "count")],
        restart_policy=spec_pb2.RESTART_POLICY_ON_FAILURE,
        restart_backoff=spec_backoff.restart_backoff,
    )
    wait_until(
        lambda: (
            _messages(_logs(manager, "phoenix")) == ["run 2 says hello"]
            if _get(manager, "phoenix").restarts == 1
            else False
        ),
        30,
        "the second run's output",
    )
    assert _messages(_logs(manager, "phoenix", previous=True)) == [
        "run 1 says hello",
        "run 1 last words",
    ]
    # A previous run is over: following it just ends.
    assert _messages(_logs(manager, "phoenix", previous=True, follow=True, tail=1)) == [
        "run 1 last words"
    ]


def test_previous_without_a_restart_says_so(manager: ManagerHost, tmp_path: Path) -> None:
    _run(manager, "once", _program(tmp_path, "once", "print('only run')\n"))
    _exited(manager, "once")
    with pytest.raises(grpc.RpcError) as info:
        _logs(manager, "once", previous=True)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no previous run" in (info.value.details() or "")


PING = """
import os, sys, time
logs, me, lines = sys.argv[1], sys.argv[2], sys.argv[3:]
mine = os.path.join(logs, os.environ["PYCONTAINER_CONTAINER_ID"], "current.log")
for line in lines:
    wait, say, then = line.split(":")
    while wait and not os.path.exists(wait):
        time.sleep(0.01)
    print(f"{me} {say}", flush=True)
    # The relay stamps a line when it reads it: the next one is printed
    # once this one is stamped (in the log store).
    while f"{me} {say}" not in open(mine).read():
        time.sleep(0.01)
    if then:
        open(then, "w").close()
time.sleep(60)
"""


def test_a_selector_merges_containers_by_time(manager: ManagerHost, tmp_path: Path) -> None:
    a, b, c = (str(tmp_path / n) for n in ("a", "b", "c"))
    program = [*_program(tmp_path, "ping", PING), str(tmp_path / "state" / "logs")]
    labels = {"app": "pingpong"}
    # ping 1, pong 1, ping 2, pong 2: each waits for the other's file.
    _run(manager, "ping", [*program, "ping", f":1:{a}", f"{b}:2:{c}"], labels=labels)
    _run(manager, "pong", [*program, "pong", f"{a}:1:{b}", f"{c}:2:"], labels=labels)
    want = ["ping 1", "pong 1", "ping 2", "pong 2"]
    wait_until(
        lambda: len(_messages(_logs(manager, selector="app=pingpong"))) == 4, 20, "four lines"
    )
    responses = _logs(manager, selector="app=pingpong")
    assert _messages(responses) == want
    assert _messages(_logs(manager, selector="app=pingpong", tail=1)) == ["ping 2", "pong 2"]


def test_an_app_without_a_management_endpoint_fails_at_once(manager: ManagerHost) -> None:
    container = make_container("silent")
    container.connect(manager.address)
    try:
        wait_until(lambda: getattr(_registered(manager, "silent"), "connected", False), 10, "in")
        started = time.monotonic()
        for follow in (False, True):
            with pytest.raises(grpc.RpcError) as info:
                _logs(manager, "silent", follow=follow)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "advertises no Management endpoint" in (info.value.details() or "")
        with pytest.raises(grpc.RpcError) as metrics:
            list(
                manager.stub.WatchMetrics(
                    manager_pb2.ManagerWatchMetricsRequest(containers=["silent"]), timeout=10
                )
            )
        assert metrics.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert time.monotonic() - started < 5
    finally:
        container.close()


def test_a_followed_connected_container_that_stops_ends_with_a_note(
    manager: ManagerHost,
) -> None:
    container = make_container("talker")
    host = start_sync_host(container)
    container.add_endpoint("management", host.target, kind="management")
    container.connect(manager.address)
    try:
        wait_until(
            lambda: (
                getattr(_registered(manager, "talker"), "state", 0) == S.LIFECYCLE_STATE_RUNNING
            ),
            10,
            "running",
        )
        container.logs.append(logs_pb2.SEVERITY_INFO, "INFO", "app", "first words")
        request = manager_pb2.ManagerStreamLogsRequest(
            containers=["talker"],
            filter=manager_pb2.StreamLogsFilter(follow=True, contains="words"),
        )
        responses: list[manager_pb2.ManagerStreamLogsResponse] = []
        done = threading.Event()

        def read() -> None:
            try:
                responses.extend(manager.stub.StreamLogs(request, timeout=30))
            finally:
                done.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_until(lambda: _messages(responses) == ["first words"], 10, "the history")
        container.logs.append(logs_pb2.SEVERITY_INFO, "INFO", "app", "more words")
        wait_until(lambda: "more words" in _messages(responses), 10, "a live entry")
        manager.stub.StopContainer(manager_pb2.StopContainerRequest(container="talker"), timeout=20)
        assert done.wait(15), "the stream did not end after the stop"
        reader.join(5)
        assert _messages(responses) == ["first words", "more words"]
        [end] = [end for r in responses for end in r.ended]
        assert end.message.startswith("container stopped")
    finally:
        container.close()
        host.stop()


# -- the store: rotation and purge --------------------------------------------------------
def test_a_run_rotates_at_its_size_cap_and_a_tail_follows_across(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_logrelay, "MAX_FILE_BYTES", 2_000)
    store = LogStore(tmp_path / "logs")
    directory = store.new_run("c1")
    log = _logrelay.RunLog(str(directory))
    for i in range(10):
        log.write("stdout", f"early {i}".encode())
    entries, tail = store.read("c1")
    assert [e.message for e in entries] == [f"early {i}" for i in range(10)]
    for i in range(20):  # past the cap once: one rotation
        log.write("stderr", f"later {i}".encode())
    assert sorted(p.name for p in directory.iterdir()) == ["current.log", "current.log.1"]
    assert [e.message for e in tail.read()] == [f"later {i}" for i in range(20)]
    assert [e.message for e in store.read("c1")[0]] == [
        *(f"early {i}" for i in range(10)),
        *(f"later {i}" for i in range(20)),
    ]
    for i in range(200):  # bounded: two files of at most the cap
        log.write("stderr", f"much later {i}".encode())
    log.close()
    assert sorted(p.name for p in directory.iterdir()) == ["current.log", "current.log.1"]
    assert all(p.stat().st_size <= 2_000 for p in directory.iterdir())
    kept = [e.message for e in store.read("c1")[0]]
    assert kept[-1] == "much later 199"
    assert "early 0" not in kept

    # A new run: the current one becomes the previous one.
    store.new_run("c1")
    assert store.has_run("c1", previous=True)
    assert store.read("c1")[0] == []
    assert [e.message for e in store.read("c1", previous=True)[0]] == kept

    store.purge("c1")
    assert not (tmp_path / "logs" / "c1").exists()
    assert not store.has_run("c1", previous=True)
    with pytest.raises(ValueError, match="not a container id"):
        store.directory("../escape")


def test_a_traceback_is_read_with_its_record_across_reads(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "logs")
    log = _logrelay.RunLog(str(store.new_run("c1")))
    log.write("stderr", b"ERROR:app.jobs:job 7 failed")
    log.write("stdout", b"a print between")  # the other stream: no matter
    entries, tail = store.read("c1")
    log.write("stderr", b"Traceback (most recent call last):")
    log.write("stderr", b'  File "job.py", line 3, in run')
    log.write("stderr", b"ValueError: bad job")
    log.write("stderr", b"after it")
    log.close()
    entries += tail.read()  # a later read goes on where the last one was
    assert [(e.severity_text, e.logger, e.message) for e in entries] == [
        ("ERROR", "app.jobs", "job 7 failed"),
        ("INFO", "", "a print between"),
        ("ERROR", "app.jobs", "Traceback (most recent call last):"),
        ("ERROR", "app.jobs", '  File "job.py", line 3, in run'),
        ("ERROR", "app.jobs", "ValueError: bad job"),
        ("WARN", "", "after it"),
    ]
    assert [e.message for e in store.read("c1")[0]] == [e.message for e in entries]
    assert [e.logger for e in store.read("c1")[0]] == [e.logger for e in entries]


# -- the manager's terminal and the CLI ---------------------------------------------------
def _manager_process(tmp_path: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    out = tmp_path / "manager.out"
    with open(out, "wb") as sink:
        proc = subprocess.Popen(
            [*MANAGER, "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path / "state")],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    address = ""

    def serving() -> bool:
        nonlocal address
        text = out.read_text()
        if "serving on " in text:
            address = text.split("serving on ", 1)[1].split()[0]
        return bool(address) or proc.poll() is not None

    wait_until(serving, 20, "the manager to serve")
    assert address, out.read_text()
    return proc, address, out


def test_launched_programs_never_write_to_the_managers_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proc, address, out = _manager_process(tmp_path)
    try:
        with grpc.insecure_channel(address) as channel:
            stub = manager_pb2_grpc.ManagerStub(channel)
            program = _program(
                tmp_path,
                "shout",
                "import sys\nprint('SHOUT-OUT')\n"
                "print('SHOUT-ERR', file=sys.stderr)\nsys.exit(0)\n",
            )
            stub.RunContainer(
                manager_pb2.RunContainerRequest(
                    spec=spec_pb2.ContainerSpec(
                        name="shout", runtime=spec_pb2.RUNTIME_KIND_PROCESS, command=program
                    )
                ),
                timeout=30,
            )
            wait_until(
                lambda: stub.GetContainer(
                    manager_pb2.GetContainerRequest(container="shout"), timeout=5
                ).container.HasField("exit_code"),
                20,
                "the program to exit",
            )
        code = main(["logs", "shout", "--timestamps", "--manager", address])
        printed = capsys.readouterr().out.splitlines()
        assert code == 0
        assert [line.split(" ", 1)[1] for line in printed] == [
            "INFO    SHOUT-OUT",
            "WARN    SHOUT-ERR",
        ]
        stamp = printed[0].split(" ", 1)[0]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", stamp)  # RFC 3339

        code = main(["logs", "shout", "-f", "--manager", address])
        printed = capsys.readouterr().out.splitlines()
        assert code == 0
        assert printed[-1].startswith("[shout] container ")
        assert printed[-1].endswith("(exit status 0)")
    finally:
        proc.terminate()
        proc.wait(20)
    text = out.read_text()
    assert "SHOUT" not in text, text


MANY = """
import os, sys, time
count = sys.argv[1]
first = not os.path.exists(count)
open(count, "w").close()
for i in range(15):
    print(f"n{i}", flush=True)
if first:
    sys.exit(1)  # restarted once; the second run stays
time.sleep(60)
"""


def test_cli_logs_previous_and_the_selector_default_tail(
    manager: ManagerHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    many = MANY
    spec = spec_pb2.ContainerSpec()
    spec.restart_backoff.FromMilliseconds(50)
    _run(
        manager,
        "many",
        [*_program(tmp_path, "many", many), str(tmp_path / "many-count")],
        labels={"tier": "many"},
        restart_policy=spec_pb2.RESTART_POLICY_ON_FAILURE,
        restart_backoff=spec.restart_backoff,
    )
    wait_until(lambda: _get(manager, "many").restarts >= 1, 20, "a restart")
    wait_until(lambda: len(_messages(_logs(manager, "many"))) == 15, 20, "the rerun's output")
    capsys.readouterr()
    assert main(["logs", "many", "--previous", "--manager", manager.address]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.rsplit(" ", 1)[1] for line in lines] == [f"n{i}" for i in range(15)]
    # With a selector, the last 10 lines of each container, as kubectl.
    assert main(["logs", "-l", "tier=many", "--manager", manager.address]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.rsplit(" ", 1)[1] for line in lines] == [f"n{i}" for i in range(5, 15)]
    assert all(line.startswith("many | ") for line in lines)


def test_logs_of_a_program_are_kept_after_the_manager_restarts(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    first = ManagerHost(state)
    try:
        _run(first, "early", _program(tmp_path, "early", "print('said early')\n"))
        _exited(first, "early")
    finally:
        first.stop()
    second = ManagerHost(state)
    try:
        assert _messages(_logs(second, "early")) == ["said early"]
        assert os.path.isdir(Path(state) / "logs")
    finally:
        second.stop()


# -- runc containers go to the same store ---------------------------------------------------
def _require_runc() -> None:
    if shutil.which("runc") is None or os.geteuid() != 0:
        pytest.skip("the runc runtime needs runc and root")


def test_a_runc_containers_output_is_retained(manager: ManagerHost) -> None:
    _require_runc()
    script = "echo from-runc; echo err-runc >&2; exit 2"
    _run(
        manager,
        "boxed",
        ["/bin/sh", "-c", script],
        runtime=spec_pb2.RUNTIME_KIND_RUNC,
    )
    _exited(manager, "boxed")
    entries = [e for r in _logs(manager, "boxed") for e in r.entries]
    assert sorted((e.attributes["log.iostream"], e.message) for e in entries) == [
        ("stderr", "err-runc"),
        ("stdout", "from-runc"),
    ]


async def test_runcs_own_errors_come_back_through_the_store(tmp_path: Path) -> None:
    _require_runc()
    from pycontainer.manager import Launch, RuncRuntime

    store = LogStore(tmp_path / "logs")
    runtime = RuncRuntime(tmp_path / "runc", logs=store)
    spec = spec_pb2.ContainerSpec(name="x", command=["/no-such-program"])
    try:
        with pytest.raises(OSError, match="no-such-program"):
            await runtime.launch(Launch("x-1", spec, "127.0.0.1:1"))
    finally:
        await runtime.close()


def test_logs_of_an_embedded_app_after_it_stopped(
    manager: ManagerHost, capsys: pytest.CaptureFixture[str]
) -> None:
    app = str(ROOT / "tests" / "apps" / "connected_app.py")
    _run(manager, "embedded", ["python", app, "--name", "embedded"], working_dir=str(ROOT))
    wait_until(
        lambda: _get(manager, "embedded").state == RUNNING and _get(manager, "embedded").connected,
        20,
        "running",
    )
    manager.stub.StopContainer(manager_pb2.StopContainerRequest(container="embedded"), timeout=30)
    _exited(manager, "embedded")
    # Its Management API is gone with it; what it printed is still there.
    assert "on_stop done" in _messages(_logs(manager, "embedded"))
    assert main(["logs", "embedded", "--manager", manager.address]) == 0
    assert "INFO    on_stop done" in capsys.readouterr().out


# -- retained lines read as the app's logging made them -------------------------------------
# Logs in the formats of Python's logging: the examples' ("%(asctime)s %(levelname)s
# %(name)s %(message)s") and logging.BASIC_FORMAT (its own handler), both on stderr
# (one pipe: the order is kept; two pipes' interleaving is the relay's), and plain
# prints. The agent captures each record once, live.
LOGGING_APP = """
import asyncio, logging, os, sys
import pycontainer

logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                    format="%(asctime)s %(levelname)s %(name)s %(message)s")
logging.root.handlers[0].addFilter(lambda r: not r.name.startswith("tryout.basic"))
basic = logging.StreamHandler(sys.stderr)
basic.setFormatter(logging.Formatter(logging.BASIC_FORMAT))
logging.getLogger("tryout.basic").addHandler(basic)

async def on_start():
    logging.getLogger("tryout").info("workers started")
    logging.getLogger("tryout.db").info("pool of %d", 4)
    logging.getLogger("tryout").warning("queue is long: 12 jobs")
    logging.getLogger("tryout.basic").error("lost a job")
    logging.getLogger("tryoutx").critical("not under tryout")
    logging.getLogger("tryout.db").info("workers stopped")
    print("plain stdout line", flush=True)
    print("plain stderr line", file=sys.stderr, flush=True)
    for h in (*logging.root.handlers, basic):
        h.flush()

container = pycontainer.Container(
    pycontainer.ContainerSettings(name="logging-app"), hooks=pycontainer.Hooks(on_start=on_start)
)
asyncio.run(pycontainer.serve(container, "127.0.0.1:0", manager=os.environ["PYCONTAINER_MANAGER"]))
"""

FILTERS: list[dict[str, object]] = [
    {"logger": "tryout"},
    {"logger": "tryout.db"},
    {"logger": "tryout", "min_severity": logs_pb2.SEVERITY_WARN},
    {"logger": "tryout", "contains": "workers"},
    {"logger": "tryout", "tail": 2},
    {"logger": "tryout", "min_severity": logs_pb2.SEVERITY_INFO, "tail": 1},
]


def _seen(
    manager: ManagerHost, name: str, filters: dict[str, object]
) -> list[tuple[int, str, str, str]]:
    return [
        (e.severity, e.severity_text, e.logger, e.message)
        for r in _logs(manager, name, **filters)
        for e in r.entries
    ]


def test_retained_logging_output_reads_as_the_live_logs(
    manager: ManagerHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _run(manager, "logging-app", _program(tmp_path, "logging_app", LOGGING_APP))
    wait_until(
        lambda: (
            _get(manager, "logging-app").connected
            and len(_seen(manager, "logging-app", {"logger": "tryout"})) == 5
        ),
        30,
        "its logs, live",
    )
    live = [_seen(manager, "logging-app", f) for f in FILTERS]
    assert live[0] == [
        (logs_pb2.SEVERITY_INFO, "INFO", "tryout", "workers started"),
        (logs_pb2.SEVERITY_INFO, "INFO", "tryout.db", "pool of 4"),
        (logs_pb2.SEVERITY_WARN, "WARNING", "tryout", "queue is long: 12 jobs"),
        (logs_pb2.SEVERITY_ERROR, "ERROR", "tryout.basic", "lost a job"),
        (logs_pb2.SEVERITY_INFO, "INFO", "tryout.db", "workers stopped"),
    ]
    manager.stub.StopContainer(
        manager_pb2.StopContainerRequest(container="logging-app"), timeout=30
    )
    _exited(manager, "logging-app")
    # Stopped: the same entries, from what the manager retained.
    retained = [_seen(manager, "logging-app", f) for f in FILTERS]
    for f, want, got in zip(FILTERS, live, retained, strict=True):
        assert got == want, f

    entries = [e for r in _logs(manager, "logging-app") for e in r.entries]
    by_message = {e.message: e for e in entries}
    # The line's own time (asctime, to the millisecond), its stream kept.
    started = by_message["workers started"]
    assert started.time.ToNanoseconds() % 1_000_000 == 0
    assert started.attributes["log.iostream"] == "stderr"
    assert by_message["plain stdout line"].attributes["log.iostream"] == "stdout"
    # Plain lines: the stream's level, no logger.
    plain = {
        m: (by_message[m].severity, by_message[m].logger)
        for m in ("plain stdout line", "plain stderr line")
    }
    assert plain == {
        "plain stdout line": (logs_pb2.SEVERITY_INFO, ""),
        "plain stderr line": (logs_pb2.SEVERITY_WARN, ""),
    }
    [fatal] = _seen(manager, "logging-app", {"logger": "tryoutx"})
    assert fatal == (logs_pb2.SEVERITY_FATAL, "CRITICAL", "tryoutx", "not under tryout")

    # As the tryout asked: one level, one logger, one timestamp (the line's).
    capsys.readouterr()
    command = ["logs", "logging-app", "--level", "warn", "--logger", "tryout", "--tail", "4"]
    assert main([*command, "--manager", manager.address]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(" ", 1)[1] for line in printed] == [
        "WARN    tryout: queue is long: 12 jobs",  # the CLI's one spelling: the proto's
        "ERROR   tryout.basic: lost a job",
    ]


def test_a_part_whose_server_does_not_answer_fails_the_merged_stream_in_time(
    manager: ManagerHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merged stream sends nothing before every part's history is in: a
    container whose Management server takes the call and never answers fails
    it UNAVAILABLE, naming the container, instead of silencing it until the
    caller's deadline."""
    from pycontainer.manager import _logstreams

    monkeypatch.setattr(_logstreams, "_HISTORY_SECONDS", 1.0)
    mute_listener = socket.create_server(("127.0.0.1", 0))  # accepts, never speaks
    talker = make_container("talker2")
    host = start_sync_host(talker)
    talker.add_endpoint("management", host.target, kind="management")
    mute = make_container("mute")
    mute.add_endpoint(
        "management", f"127.0.0.1:{mute_listener.getsockname()[1]}", kind="management"
    )
    try:
        for container in (talker, mute):
            container.connect(manager.address)
        for name in ("talker2", "mute"):
            wait_until(
                lambda n=name: getattr(_registered(manager, n), "connected", False), 10, name
            )
        talker.logs.append(logs_pb2.SEVERITY_INFO, "INFO", "app", "words")
        started = time.monotonic()
        for follow in (False, True):
            request = manager_pb2.ManagerStreamLogsRequest(
                containers=["talker2", "mute"], filter=manager_pb2.StreamLogsFilter(follow=follow)
            )
            with pytest.raises(grpc.RpcError) as info:
                list(manager.stub.StreamLogs(request, timeout=30))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
            assert "did not send its log history within 1 s" in (info.value.details() or "")
            assert (info.value.details() or "").startswith("mute-")
        assert time.monotonic() - started < 15
    finally:
        talker.close()
        mute.close()
        host.stop()
        mute_listener.close()

"""The pycontainer command against a real manager with real containers:
listings in every format, commands that change state, logs (filters, follow,
interleaved prefixes), events, top, profile, apply, and the errors an
operator sees (one line, the right exit status, never a traceback)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from pprof import parse_pprof
from support import Host, connected_container, wait_until

import pycontainer
from pycontainer.cli import main
from pycontainer.cli._logs import PALETTE, colour_for
from pycontainer.testing import ManagerHost
from pycontainer.v1 import container_pb2, logs_pb2, manager_pb2

S = container_pb2
REPO = Path(__file__).resolve().parent.parent
CLI_APP = REPO / "tests" / "apps" / "cli_app.py"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


# -- fixtures and helpers ----------------------------------------------------------------------
# `manager` is pycontainer.testing's (tests/conftest.py): a real manager on a
# fresh state directory, with an in-process runtime.


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    started: list[Host] = []
    yield started
    for host in started:
        with contextlib.suppress(Exception):
            host.stop()


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


def cli(manager: ManagerHost | str, *argv: str) -> Run:
    """main(argv) in this process, with the manager's client (or --manager
    ADDRESS) and StringIO streams; what it printed."""
    out, err = io.StringIO(), io.StringIO()
    if isinstance(manager, str):
        code = main([*argv, "--manager", manager], stdout=out, stderr=err)
    else:
        code = main(argv, client=manager.client, stdout=out, stderr=err)
    return Run(code, out.getvalue(), err.getvalue())


def _get(manager: ManagerHost, name: str) -> manager_pb2.Container:
    return manager.stub.GetContainer(
        manager_pb2.GetContainerRequest(container=name), timeout=5
    ).container


def _state(manager: ManagerHost, name: str) -> int:
    try:
        return _get(manager, name).state
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:  # not registered yet
            return S.LIFECYCLE_STATE_UNSPECIFIED
        raise


def _running(manager: ManagerHost, *names: str) -> None:
    for name in names:
        wait_until(
            lambda name=name: _state(manager, name) == S.LIFECYCLE_STATE_RUNNING,  # type: ignore[misc]
            what=f"{name} running",
        )


def _start(
    manager: ManagerHost, hosts: list[Host], name: str, **kwargs: Any
) -> pycontainer.Container:
    container, host = connected_container(manager, name, **kwargs)
    hosts.append(host)
    _running(manager, name)
    return container


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- ps and describe ----------------------------------------------------------------------------
def test_ps_and_describe_in_table_json_and_yaml(manager: ManagerHost, hosts: list[Host]) -> None:
    web = _start(manager, hosts, "web", priority=3, cpu_millis=500, memory_bytes=256 << 20)
    api = _start(manager, hosts, "api")

    run = cli(manager, "ps")
    assert run.code == 0, run.err
    header, *rows = run.lines
    assert header.split()[:4] == ["NAME", "ID", "STATE", "CONNECTED"]
    assert [r.split()[0] for r in rows] == ["api", "web"]
    web_row = rows[1].split()
    assert web_row[1:8] == [web.id, "RUNNING", "yes", "3", "500m", "256Mi", str(os.getpid())]

    listed = json.loads(cli(manager, "ps", "-o", "json").out)
    assert [c["identity"]["name"] for c in listed["containers"]] == ["api", "web"]
    assert listed["containers"][1]["state"] == "LIFECYCLE_STATE_RUNNING"
    # Containers that dialled in on their own have no spec to print as a file.
    specs = cli(manager, "ps", "-o", "yaml")
    assert (specs.code, specs.out) == (0, "")
    assert f"note: web ({web.id}) has no spec (it dialled in on its own)" in specs.err
    assert cli(manager, "ps", "-o", "name").lines == ["api", "web"]
    wide_header, *wide_rows = cli(manager, "ps", "-o", "wide").lines
    assert wide_header.split()[-4:] == ["VERSION", "MANAGEMENT", "REASON", "LABELS"]
    reason = _get(manager, "web").reason or "-"
    assert re.split(r"\s{2,}", wide_rows[1])[-4:] == ["1.2.3", hosts[0].target, reason, "app=web"]

    assert cli(manager, "ps", "-l", "app=web", "-o", "id").lines == [web.id]
    assert cli(manager, "ps", "-l", "app!=web", "-o", "id").lines == [api.id]
    paused = cli(manager, "ps", "--state", "paused,stopped")
    assert (paused.code, paused.out, paused.err.strip()) == (0, "", "no containers")
    assert "app=web" in cli(manager, "ps", "--show-labels").out

    run = cli(manager, "describe", "web")
    assert run.code == 0, run.err
    fields = dict(
        re.split(r":\s+", line.strip(), maxsplit=1)
        for line in run.lines
        if re.match(r"^[A-Z][A-Za-z -]*:\s+\S", line)
    )
    assert fields["Name"] == "web"
    assert fields["ID"] == web.id
    assert fields["State"] == "RUNNING"
    assert fields["Version"] == "1.2.3"
    assert fields["Priority"] == "3"
    assert fields["Resources"] == "cpu 500m, memory 256Mi"
    assert fields["Labels"] == "app=web"
    assert "management" in run.out
    assert hosts[0].target in run.out
    assert "dialled in on its own" in run.out

    described = json.loads(cli(manager, "describe", web.id, "-o", "json").out)
    assert described["identity"]["name"] == "web"
    assert described["connected"] is True
    assert yaml.safe_load(cli(manager, "describe", "web", "-o", "yaml").out) == described


# -- commands -----------------------------------------------------------------------------------
def test_pause_resume_checkpoint_restore_stop_evict_change_the_state(
    manager: ManagerHost, hosts: list[Host]
) -> None:
    restored: list[bytes] = []
    stops: list[str] = []
    hooks = pycontainer.Hooks(
        on_checkpoint=lambda: b"counter-42",
        on_restore=restored.append,
        on_stop=lambda reason, deadline: stops.append(reason),
    )
    web = _start(manager, hosts, "web", hooks=hooks)
    api = _start(manager, hosts, "api")
    batch = _start(
        manager,
        hosts,
        "batch",
        hooks=pycontainer.Hooks(on_stop=lambda reason, deadline: stops.append(reason)),
    )

    run = cli(manager, "pause", "web", "api")
    assert run.code == 0, run.err
    assert run.lines == [f"web ({web.id}): PAUSED", f"api ({api.id}): PAUSED"]
    assert {web.state, api.state} == {pycontainer.State.PAUSED}

    again = cli(manager, "pause", "web")
    assert again.code == 1
    assert again.err.startswith("error: web: FAILED_PRECONDITION: ")
    assert len(again.err.strip().splitlines()) == 1

    run = cli(manager, "resume", "web", api.id)
    assert run.code == 0, run.err
    assert {web.state, api.state} == {pycontainer.State.RUNNING}

    run = cli(manager, "checkpoint", "web")
    assert run.code == 0, run.err
    fields = dict(line.split(":", 1) for line in run.lines)
    checkpoint_id = fields["Checkpoint"].strip()
    assert fields["Size"].strip() == "10 bytes"
    assert fields["SHA-256"].strip() == hashlib.sha256(b"counter-42").hexdigest()
    assert _get(manager, "web").last_checkpoint_id == checkpoint_id
    taken = json.loads(cli(manager, "checkpoint", "web", "-o", "json").out)
    assert taken["sizeBytes"] == "10"
    assert taken["checkpointId"] not in ("", checkpoint_id)

    run = cli(manager, "restore", "web", "--checkpoint", checkpoint_id)
    assert run.code == 0, run.err
    assert run.out.strip() == f"web ({web.id}): restored from checkpoint {checkpoint_id} (RUNNING)"
    run = cli(manager, "restore", "web")
    assert "restored from its newest checkpoint" in run.out
    assert restored == [b"counter-42", b"counter-42"]

    run = cli(manager, "stop", "--grace", "5s", "--reason", "done", "web", "api")
    assert run.code == 0, run.err
    assert run.lines == [f"web ({web.id}): STOPPED", f"api ({api.id}): STOPPED"]
    assert {web.state, api.state} == {pycontainer.State.STOPPED}
    assert stops == ["requested"]

    run = cli(manager, "evict", "batch", "--grace", "2s")
    assert run.code == 0, run.err
    assert run.out.strip() == f"batch ({batch.id}): STOPPED (evicted)"
    assert batch.state == pycontainer.State.STOPPED
    assert stops == ["requested", "evicted"]


def test_ps_shows_live_containers_unless_a_and_verbs_take_selectors(
    manager: ManagerHost, hosts: list[Host]
) -> None:
    web = _start(manager, hosts, "web")
    api = _start(manager, hosts, "api")
    db = _start(manager, hosts, "db")

    run = cli(manager, "pause", "-l", "app!=web")
    assert run.code == 0, run.err
    assert run.lines == [f"api ({api.id}): PAUSED", f"db ({db.id}): PAUSED"]
    assert web.state == pycontainer.State.RUNNING
    run = cli(manager, "resume", "--all")  # web is RUNNING already: refused, the others resume
    assert run.code == 1
    assert run.lines == [f"api ({api.id}): RUNNING", f"db ({db.id}): RUNNING"]
    assert run.err.startswith("error: " + web.id + ": FAILED_PRECONDITION: ")

    run = cli(manager, "stop", "-l", "app=db", "--grace", "2s")
    assert run.code == 0, run.err
    assert run.lines == [f"db ({db.id}): STOPPED"]
    assert cli(manager, "ps", "-o", "name").lines == ["api", "web"]  # live ones only
    assert cli(manager, "ps", "-a", "-o", "name").lines == ["api", "db", "web"]
    assert cli(manager, "ps", "--state", "stopped", "-o", "name").lines == ["db"]
    none = cli(manager, "stop", "-l", "app=ghost")
    assert (none.code, none.out, none.err) == (0, "", "no live containers match\n")

    run = cli(manager, "stop", "--all")
    assert run.code == 0, run.err
    assert sorted(run.lines) == [f"api ({api.id}): STOPPED", f"web ({web.id}): STOPPED"]
    empty = cli(manager, "ps")
    assert (empty.code, empty.out) == (0, "")
    assert empty.err == "no containers (-a shows stopped ones too)\n"


def test_ps_o_yaml_is_a_spec_file_to_apply_again(manager: ManagerHost, tmp_path: Path) -> None:
    from pycontainer.spec import parse_specs

    spec = tmp_path / "kv.yaml"
    spec.write_text(
        "name: kv\n"
        "runtime: in-process\n"
        "labels: {app: kv, tier: cache}\n"
        "priority: 4\n"
        "resources: {cpu: 250m, memory: 64Mi}\n"
        "gracePeriod: 12s\n"
        "restartPolicy: OnFailure\n"
    )
    run = cli(manager, "apply", "-f", str(spec), "--wait", "--timeout", "20s")
    assert run.code == 0, run.err
    applied = _get(manager, "kv").spec

    printed = cli(manager, "ps", "-o", "yaml")
    assert printed.code == 0, printed.err
    document = yaml.safe_load(printed.out)
    # The file's own keys and units, not the API's JSON (cpuMillis: '250', RESTART_POLICY_...).
    assert document["resources"] == {"cpu": "250m", "memory": "64Mi"}
    assert document["restartPolicy"] == "OnFailure"
    assert document["gracePeriod"] == "12s"
    assert parse_specs(printed.out) == [applied]

    # Applied again (once the first is gone): the same spec runs.
    assert cli(manager, "stop", "kv").code == 0
    again = tmp_path / "again.yaml"
    again.write_text(printed.out)
    run = cli(manager, "apply", "-f", str(again), "--wait", "--timeout", "20s")
    assert run.code == 0, run.err
    [live] = [
        c
        for c in manager.client.list_containers().containers
        if c.state == S.LIFECYCLE_STATE_RUNNING
    ]
    assert live.spec == applied


def test_stop_grace_0_means_no_grace(manager: ManagerHost, hosts: list[Host]) -> None:
    deadlines: list[float] = []

    def on_stop(reason: str, deadline: float) -> None:
        deadlines.append(deadline - time.monotonic())

    _start(manager, hosts, "web", hooks=pycontainer.Hooks(on_stop=on_stop))
    run = cli(manager, "stop", "--grace", "0", "web")
    assert run.code == 0, run.err
    [left] = deadlines
    assert left < 1.0


def test_apply_and_scale_in_process_containers(manager: ManagerHost, tmp_path: Path) -> None:
    spec = tmp_path / "kv.yaml"
    spec.write_text("name: kv\nruntime: in-process\npriority: 4\nlabels: {app: kv}\n")
    run = cli(manager, "apply", "-f", str(spec), "--wait", "--timeout", "20s")
    assert run.code == 0, run.err
    created, running = run.lines
    assert created == "kv: created (1 replica)"
    cid = running.split(":")[0]
    assert cid.startswith("kv-")
    assert running == f"{cid}: RUNNING"
    assert _get(manager, cid).pid == os.getpid()

    again = cli(manager, "apply", "-f", str(spec))
    assert (again.code, again.lines) == (0, ["kv: unchanged (1 replica)"]), again.err

    run = cli(manager, "scale", "kv", "--replicas", "3")
    assert run.code == 0, run.err
    assert [line.split()[0] for line in run.lines[1:]] == ["kv"] * 3

    def live() -> list[manager_pb2.Container]:
        return [
            c
            for c in manager.stub.ListContainers(
                manager_pb2.ListContainersRequest(label_selector="app=kv"), timeout=5
            ).containers
            if c.state not in (S.LIFECYCLE_STATE_STOPPED, S.LIFECYCLE_STATE_FAILED)
        ]

    wait_until(lambda: len(live()) == 3, what="3 replicas")
    wait_until(
        lambda: all(c.state == S.LIFECYCLE_STATE_RUNNING for c in live()), what="all running"
    )
    scaled = json.loads(cli(manager, "scale", cid, "--replicas", "1", "-o", "json").out)
    assert [c["identity"]["id"] for c in scaled["containers"]] == [cid]  # the oldest stays
    assert [c.identity.id for c in live()] == [cid]


def test_apply_launches_a_python_program_that_reaches_running(
    manager: ManagerHost, tmp_path: Path
) -> None:
    spec = tmp_path / "app.yaml"
    spec.write_text(
        f"""
# Two of them at once: a stream of documents.
name: cli-app
command: [python, {json.dumps(str(CLI_APP))}]
priority: 2
gracePeriod: 5s
---
name: other
command: [python, {json.dumps(str(CLI_APP))}]
resources: {{cpu: 10m, memory: 1Mi}}
"""
    )
    run = cli(manager, "apply", "-f", str(spec), "--wait", "--timeout", "60s")
    assert run.code == 0, run.err
    assert run.lines[:2] == ["cli-app: created (1 replica)", "other: created (1 replica)"]
    assert [line.split(":")[1].strip() for line in run.lines[2:]] == ["RUNNING", "RUNNING"]
    app = _get(manager, "cli-app")
    assert app.state == S.LIFECYCLE_STATE_RUNNING
    assert app.connected
    assert app.spec.priority == 2
    assert app.pid != os.getpid()

    # Its own logging, through the manager's proxy.
    wait_until(
        lambda: "cli app has nothing to do" in cli(manager, "logs", "cli-app").out,
        what="the app's warning",
    )
    run = cli(manager, "logs", "cli-app", "--level", "warn")
    assert [line.split(None, 2)[1:] for line in run.lines] == [
        ["WARN", "cli_app: cli app has nothing to do"]  # the proto's name, not logging's
    ]

    run = cli(manager, "stop", "cli-app", "other")
    assert run.code == 0, run.err
    assert [line.rsplit(" ", 1)[1] for line in run.lines] == ["STOPPED", "STOPPED"]
    wait_until(lambda: _get(manager, "cli-app").HasField("exit_code"), what="the app exited")
    assert _get(manager, "cli-app").exit_code == 0


def test_apply_reports_every_spec_mistake_and_launches_nothing(
    manager: ManagerHost, tmp_path: Path
) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("name: fine\ncommand: [python, app.py]\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "containers:\n"
        "  - name: web\n"
        "    command: [python, app.py]\n"
        "    resources: {cpu: lots}\n"
        "  - name: web\n"
        "    replicas: -2\n"
        "    restartPolicy: Sometimes\n"
    )
    run = cli(manager, "apply", "-f", str(good), "-f", str(bad))
    assert run.code == 1
    assert run.out == ""
    assert run.err.splitlines() == [
        f'{bad}:4: containers[0].resources.cpu: "lots" is not a CPU quantity (use 500m or 2)',
        f'{bad}:5: containers[1]: missing "command" (the program and its arguments, such as '
        "[python, app.py])",
        f'{bad}:5: containers[1].name: duplicate name "web" (also at containers[0])',
        f"{bad}:6: containers[1].replicas: must be 1 or more, got -2 (to run none, leave the "
        "container out or scale it to 0)",
        f'{bad}:7: containers[1].restartPolicy: "Sometimes" is not one of Always, OnFailure, Never',
    ]
    assert not manager.stub.ListContainers(manager_pb2.ListContainersRequest()).containers

    dry = cli(manager, "apply", "--dry-run", "-f", str(REPO / "examples" / "demo.yaml"))
    assert dry.code == 0, dry.err
    assert [line.split(":")[0] for line in dry.lines] == [
        "sync-worker",
        "async-pipeline",
        "ticker",
        "oci-worker",
    ]
    assert not manager.stub.ListContainers(manager_pb2.ListContainersRequest()).containers


# -- logs ---------------------------------------------------------------------------------------
def _log(
    container: pycontainer.Container, severity: int, text: str, message: str, **kw: Any
) -> None:
    container.logs.append(severity, text, "clitest", message, **kw)


def test_logs_tail_level_grep_since_and_interleaved_prefixes(
    manager: ManagerHost,
    hosts: list[Host],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    web = _start(manager, hosts, "web")
    api = _start(manager, hosts, "api")
    two_hours_ago = time.time_ns() - 2 * 3600 * 10**9
    _log(web, logs_pb2.SEVERITY_INFO, "INFO", "ancient history", time_ns=two_hours_ago)
    _log(web, logs_pb2.SEVERITY_INFO, "INFO", "alpha 1")
    _log(api, logs_pb2.SEVERITY_INFO, "INFO", "api hello")
    _log(web, logs_pb2.SEVERITY_WARN, "WARNING", "disk almost full")
    _log(api, logs_pb2.SEVERITY_WARN, "WARNING", "api slow")
    _log(
        web,
        logs_pb2.SEVERITY_ERROR,
        "ERROR",
        "boom",
        attributes={"exception.stacktrace": "Traceback (most recent call last):\nValueError: x\n"},
    )

    def messages(run: Run) -> list[str]:
        assert run.code == 0, run.err
        return [line.split("clitest: ", 1)[1] for line in run.lines if "clitest: " in line]

    base = ("--logger", "clitest")
    assert messages(cli(manager, "logs", "web", *base)) == [
        "ancient history",
        "alpha 1",
        "disk almost full",
        "boom",
    ]
    one = cli(manager, "logs", "web", *base, "--tail", "1")
    assert messages(one) == ["boom"]
    # One container: no prefix; the stack trace follows its entry.
    assert re.match(r"^\d\d:\d\d:\d\d\.\d{3} ERROR   clitest: boom$", one.lines[0])
    assert one.lines[1:] == ["Traceback (most recent call last):", "ValueError: x"]
    assert messages(cli(manager, "logs", "web", *base, "--level", "warn")) == [
        "disk almost full",
        "boom",
    ]
    assert messages(cli(manager, "logs", "web", *base, "--grep", "disk.*full")) == [
        "disk almost full"
    ]
    assert messages(cli(manager, "logs", "web", *base, "--since", "1h")) == [
        "alpha 1",
        "disk almost full",
        "boom",
    ]
    assert messages(cli(manager, "logs", "web", *base, "--contains", "alpha")) == ["alpha 1"]

    # Two containers: interleaved, each line prefixed by its name, padded alike.
    both = cli(manager, "logs", "web", "api", *base, "--level", "warn")
    assert both.code == 0, both.err
    prefixed = sorted(line for line in both.lines if "clitest: " in line)
    assert [(line[:6], line.split("clitest: ")[1]) for line in prefixed] == [
        ("api | ", "api slow"),
        ("web | ", "boom"),
        ("web | ", "disk almost full"),
    ]
    assert not ANSI.search(both.out)  # not a terminal: no colour
    selected = cli(manager, "logs", "-l", "app", *base, "--tail", "1")
    assert sorted(messages(selected)) == ["api slow", "boom"]
    assert {line[:3] for line in selected.lines if "clitest: " in line} == {"web", "api"}

    # On a terminal (forced here): a stable colour per container, distinct ones
    # for the containers of one output; --no-color turns it off.
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    coloured = [cli(manager, "logs", "web", "api", *base).out for _ in range(2)]
    # (interleaved as they arrive: the order of the two may differ)
    assert sorted(coloured[0].splitlines()) == sorted(coloured[1].splitlines())
    assert ANSI.search(coloured[0])
    codes: dict[str, set[str]] = {}
    for line in coloured[0].splitlines():
        found = re.match(r"(\x1b\[[0-9;]*m)(web|api)\x1b", line)
        if found:
            codes.setdefault(found[2], set()).add(found[1])
    assert len(codes["web"]) == len(codes["api"]) == 1  # one colour each...
    assert codes["web"] != codes["api"]  # ...and not the same one
    plain = cli(manager, "logs", "web", "api", *base, "--no-color")
    assert not ANSI.search(plain.out)

    as_json = cli(manager, "logs", "api", *base, "-o", "json")
    entries = [json.loads(line) for line in as_json.lines]
    assert [(e["containerName"], e["message"]) for e in entries] == [
        ("api", "api hello"),
        ("api", "api slow"),
    ]
    assert entries[0]["containerId"] == api.id


def test_logs_follow_in_a_subprocess(manager: ManagerHost, hosts: list[Host]) -> None:
    web = _start(manager, hosts, "web")
    api = _start(manager, hosts, "api")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pycontainer.cli",
            "logs",
            "-f",
            "--tail",
            "0",
            "--logger",
            "clitest",
            "web",
            "api",
        ],
        env={**os.environ, "PYCONTAINER_MANAGER": manager.address},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 30
        number = 0
        while not ({"web | live", "api | live"} <= {s[:6] + s[-4:] for s in seen}):
            assert time.monotonic() < deadline, (seen, proc.poll())
            number += 1
            _log(web, logs_pb2.SEVERITY_INFO, "INFO", f"{number} live")
            _log(api, logs_pb2.SEVERITY_INFO, "INFO", f"{number} live")
            with contextlib.suppress(queue.Empty):
                while True:
                    seen.append(lines.get(timeout=0.2))
        assert proc.poll() is None  # still following
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert all(line[:6] in ("web | ", "api | ") for line in seen), seen
    assert not any(ANSI.search(line) for line in seen)
    reader.join(5)  # at the end of its output, so its pipe can be closed
    assert proc.stdout is not None
    assert proc.stderr is not None
    with proc.stdout, proc.stderr:
        assert "Traceback" not in proc.stderr.read()


# -- events, top, profile ---------------------------------------------------------------------
def test_events_history(manager: ManagerHost, hosts: list[Host]) -> None:
    web = _start(manager, hosts, "web")
    api = _start(manager, hosts, "api")
    manager.stub.PauseContainer(manager_pb2.PauseContainerRequest(container="web"), timeout=10)

    run = cli(manager, "events")
    assert run.code == 0, run.err
    assert run.lines[0].split() == ["TIME", "TYPE", "CONTAINER", "MESSAGE"]
    # Named by name and short id (replicas share a name), in the table's state words.
    web_subject, api_subject = f"web/{web.id[-8:]}", f"api/{api.id[-8:]}"
    kinds = {(line.split()[1], line.split()[2]) for line in run.lines[1:]}
    assert {
        ("REGISTERED", web_subject),
        ("REGISTERED", api_subject),
        ("COMMAND_SENT", web_subject),
    } <= kinds
    assert any(line.endswith("PAUSING -> PAUSED") for line in run.lines), run.out
    assert "LIFECYCLE_STATE_" not in run.out

    only = json.loads(cli(manager, "events", "web", "-o", "json").out)["events"]
    assert {e["containerName"] for e in only} == {"web"}
    assert any(e["message"].endswith("-> LIFECYCLE_STATE_PAUSED") for e in only)
    sequences = [int(e["sequence"]) for e in only]
    assert sequences == sorted(sequences)

    ghost = cli(manager, "events", "ghost")
    assert ghost.code == 1
    assert ghost.err.startswith("error: NOT_FOUND: ")


def test_top_once(manager: ManagerHost, hosts: list[Host]) -> None:
    _start(manager, hosts, "web")
    _start(manager, hosts, "api")
    run = cli(manager, "top", "--once", "--sort", "name", "--interval", "200ms")
    assert run.code == 0, run.err
    header, *rows = run.lines
    assert header.split() == [
        "NAME",
        "ID",
        "STATE",
        "CPU%",
        "MEMORY",
        "THREADS",
        "FILES",
        "RPC/S",
        "UPTIME",
    ]
    assert [r.split()[0] for r in rows] == ["api", "web"]
    for row in rows:
        _, _, state, cpu, memory, threads, files, rate, uptime = row.split()
        assert state == "RUNNING"
        assert re.fullmatch(r"(\d+[hm])*\d+s", uptime)
        assert float(cpu) >= 0
        assert memory.endswith(("Ki", "Mi", "Gi"))
        assert int(threads) > 1
        assert int(files) > 0
        assert float(rate) >= 0

    data = json.loads(cli(manager, "top", "--once", "web", "-o", "json").out)
    [only] = data["containers"]
    assert only["container"]["name"] == "web"
    assert only["snapshot"]["process"]["pid"] == os.getpid()

    ghost = cli(manager, "top", "--once", "ghost")
    assert ghost.code == 1
    assert "NOT_FOUND" in ghost.err


def test_profile_writes_a_pprof_file(
    manager: ManagerHost,
    hosts: list[Host],
    tmp_path: Path,
) -> None:
    _start(manager, hosts, "web")
    lock = pycontainer.TrackedLock("cli-test-lock")
    with lock:
        pass
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            sum(i * i for i in range(1000))

    worker = threading.Thread(target=busy, name="cli-busy", daemon=True)
    worker.start()
    out = tmp_path / "web.pb.gz"
    try:
        run = cli(manager, "profile", "web", "--cpu", "500ms", "-o", str(out))
    finally:
        stop.set()
        worker.join(5)
    assert run.code == 0, run.err
    assert "Threads:" in run.out
    assert "cli-busy" in run.out
    assert "cli-test-lock" in run.out
    assert f"written to {out}" in run.out
    data = out.read_bytes()
    assert data[:2] == b"\x1f\x8b"  # gzipped
    profile = parse_pprof(data)
    assert len(profile.sample) > 0

    folded = tmp_path / "web.folded"
    run = cli(
        manager,
        "profile",
        "web",
        "--cpu",
        "200ms",
        "--format",
        "collapsed",
        "-o",
        str(folded),
    )
    assert run.code == 0, run.err
    text = folded.read_text()
    assert all(re.fullmatch(r".+ \d+", line) for line in text.splitlines())

    run = cli(manager, "profile", "web")  # no CPU profile: nothing written
    assert run.code == 0, run.err
    assert "CPU profile" not in run.out


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["ps"],
        ["describe", "web"],
        ["stop", "web"],
        ["pause", "web"],
        ["checkpoint", "web"],
        ["scale", "web", "--replicas", "2"],
        ["logs", "web"],
        ["events"],
        ["top", "--once"],
        ["profile", "web"],
        ["apply", "-f", str(REPO / "examples" / "demo.yaml")],
    ],
)
def test_an_unreachable_manager_is_one_line_and_exit_2(argv: list[str]) -> None:
    address = f"127.0.0.1:{_free_port()}"
    run = cli(address, *argv)
    assert run.code == 2
    assert run.out == ""
    assert run.err.startswith(f"error: cannot reach the manager at {address}: ")
    assert len(run.err.strip().splitlines()) == 1
    assert "Traceback" not in run.err


def test_refusals_and_usage_errors(
    manager: ManagerHost,
    hosts: list[Host],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = cli(manager, "describe", "ghost")
    assert run.code == 1
    assert run.err == "error: NOT_FOUND: container: no container with id or name 'ghost'\n"
    run = cli(manager, "stop", "ghost")
    assert run.code == 1
    assert run.err.startswith("error: ghost: NOT_FOUND: ")
    run = cli(manager, "ps", "-l", "a b=c")  # a usage error, before any call
    assert run.code == 1
    assert "argument -l/--selector: bad label selector: " in run.err
    run = cli(manager, "logs")
    assert (run.code, run.err) == (1, "error: give container ids or names, or -l SELECTOR\n")

    for argv, message in [
        (["stop", "--grace", "10x", "web"], "argument --grace: '10x' is not a duration"),
        (["stop", "--grace", "10", "web"], "argument --grace: '10' has no unit: write 10s"),
        (["logs", "web", "--since", "soon"], "argument --since: 'soon' is not a duration"),
        (["logs", "web", "--level", "loud"], "unknown level 'loud'"),
        (["logs", "web", "--grep", "("], "'(' is not a regular expression"),
        (["ps", "--state", "sleeping"], "unknown state 'sleeping'"),
        (["scale", "web", "--replicas", "-1"], "must be 0 or more, got -1"),
        (["top", "--interval", "1ms"], "must be from 100ms to 1h"),
    ]:
        run = cli(manager, *argv)
        assert run.code == 1, argv
        assert "usage: pycontainer" in run.err
        assert message in run.err, (argv, run.err)
        assert "Traceback" not in run.err

    # $PYCONTAINER_MANAGER when --manager is not given; --manager before the verb too.
    web = _start(manager, hosts, "web")
    monkeypatch.setenv("PYCONTAINER_MANAGER", manager.address)
    capsys.readouterr()
    assert main(["ps", "-o", "id"]) == 0
    assert capsys.readouterr().out.split() == [web.id]
    monkeypatch.setenv("PYCONTAINER_MANAGER", "127.0.0.1:1")
    assert main(["--manager", manager.address, "ps", "-o", "id"]) == 0
    assert capsys.readouterr().out.split() == [web.id]
    assert main(["--help"]) == 0
    assert "PYCONTAINER_MANAGER" in capsys.readouterr().out


def test_a_verb_runs_with_an_injected_client_and_streams(
    manager: ManagerHost, hosts: list[Host]
) -> None:
    """What an embedder (or a test) does: the verb's run, a client, StringIO."""
    from pycontainer.cli import Context
    from pycontainer.cli._containers import run_ps
    from pycontainer.cli._parser import build_parser

    web = _start(manager, hosts, "web")
    out, err = io.StringIO(), io.StringIO()
    args = build_parser().parse_args(["ps", "-o", "id"])
    assert run_ps(args, Context(stdout=out, stderr=err, client=manager.client)) == 0
    assert (out.getvalue(), err.getvalue()) == (f"{web.id}\n", "")
    # The client was lent, not given: it still works.
    assert manager.client.get_container(manager_pb2.GetContainerRequest(container="web"))


def test_version_of_the_command_and_of_the_manager(manager: ManagerHost) -> None:
    import grpc as grpc_module

    run = cli(manager, "version")
    assert run.code == 0, run.err
    client, served = run.lines
    assert client.startswith(f"Client Version: {pycontainer.__version__} (Python ")
    assert f"grpcio {grpc_module.__version__}" in client
    assert served.startswith(f"Manager Version: {pycontainer.__version__} (Python ")
    data = json.loads(cli(manager, "version", "-o", "json").out)
    assert data["client"]["version"] == data["manager"]["version"] == pycontainer.__version__

    # --client needs no manager; without it an unreachable one is the usual line, after ours.
    address = f"127.0.0.1:{_free_port()}"
    alone = cli(address, "version", "--client")
    assert (alone.code, alone.lines) == (0, [client])
    gone = cli(address, "version")
    assert gone.code == 2
    assert gone.lines == [client]
    assert gone.err.startswith(f"error: cannot reach the manager at {address}: ")


def test_the_command_as_a_subprocess(manager: ManagerHost, hosts: list[Host]) -> None:
    web = _start(manager, hosts, "web")

    def run(*argv: str, address: str = manager.address) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pycontainer.cli", *argv, "--manager", address],
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = run("ps", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert [c["identity"]["id"] for c in json.loads(listed.stdout)["containers"]] == [web.id]
    paused = run("pause", "web")
    assert paused.returncode == 0, paused.stderr
    assert web.state == pycontainer.State.PAUSED
    gone = run("ps", address=f"127.0.0.1:{_free_port()}")
    assert gone.returncode == 2
    assert gone.stdout == ""
    assert gone.stderr.startswith("error: cannot reach the manager at 127.0.0.1:")
    assert len(gone.stderr.splitlines()) == 1
    assert "Traceback" not in gone.stderr


def test_prefix_colours_are_stable_and_distinct_within_an_output() -> None:
    assert colour_for("web") == colour_for("web") in PALETTE
    # crc32 puts web and api on the same colour: the second one moves on.
    taken = {colour_for("web")}
    assert colour_for("api", taken) not in taken
    assert colour_for("api", set(PALETTE)) in PALETTE  # more containers than colours


def test_help_everywhere_and_specs_on_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    verbs = ["apply", "ps", "describe", "stop", "pause", "resume", "checkpoint", "restore"]
    verbs += ["evict", "scale", "logs", "top", "events", "profile", "manager", "health"]
    verbs += ["restart", "kill", "rm", "version", "completion"]
    for verb in verbs:
        assert main([verb, "--help"]) == 0, verb
        text = capsys.readouterr().out
        assert text.startswith(f"usage: pycontainer {verb}")
        if verb not in ("manager", "health", "completion"):
            assert "$PYCONTAINER_MANAGER, else 127.0.0.1:50050" in " ".join(text.split())

    monkeypatch.setattr(sys, "stdin", io.StringIO("name: piped\ncommand: [python, x.py]\n"))
    assert main(["apply", "--dry-run=client", "-f", "-", "-o", "json"]) == 0
    specs = json.loads(capsys.readouterr().out)["containers"]
    assert specs == [{"name": "piped", "command": ["python", "x.py"]}]

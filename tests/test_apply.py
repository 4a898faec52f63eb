"""Declarative apply through a real manager and the CLI: create, unchanged on a
second apply, replicas up and down, a rolling replace that keeps a replica
RUNNING throughout (restored from a checkpoint when the spec asks), prune,
diff's exit codes, and a restarted manager bringing the applied replicas back."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
import yaml
from support import Host, ManagerHost, free_address, make_container, start_sync_host, wait_until

import pycontainer
from pycontainer.cli import main
from pycontainer.cli._apply import OWNER_LABEL, derive_owner
from pycontainer.manager import InProcessRuntime, Launch
from pycontainer.manager._apply import OWNER_LABEL as MANAGER_OWNER_LABEL
from pycontainer.manager._specdiff import SPEC_HASH_LABEL, spec_differences
from pycontainer.manager._store import AppliedSpec, SQLiteStore
from pycontainer.testing import manager_host
from pycontainer.v1 import container_pb2, manager_pb2, spec_pb2

S = container_pb2
E = manager_pb2
ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "tests" / "apps" / "connected_app.py"
_LIVE = (S.LIFECYCLE_STATE_STOPPED, S.LIFECYCLE_STATE_FAILED)


class Factory:
    """An InProcessRuntime factory: a container on a sync host per launch."""

    def __init__(self) -> None:
        self.hosts: list[Host] = []
        self.containers: dict[str, pycontainer.Container] = {}

    def __call__(self, launch: Launch) -> Host:
        container = make_container(launch.spec.name, id=launch.container_id)
        if launch.spec.env.get("READY_LATER"):
            # Not ready until the test says so (a pushed readiness check).
            container.add_check("warm", kind=pycontainer.CheckKind.READINESS)
        self.containers[launch.container_id] = container
        host = start_sync_host(container)
        self.hosts.append(host)
        container.add_endpoint("management", host.target, kind="management")
        container.connect(launch.manager_address)
        host.close = host.stop  # type: ignore[attr-defined]  # what the runtime calls
        return host

    def stop_all(self) -> None:
        for host in self.hosts:
            with contextlib.suppress(Exception):
                host.stop()


@pytest.fixture
def factory() -> Iterator[Factory]:
    made = Factory()
    yield made
    made.stop_all()


@pytest.fixture
def manager(tmp_path: Path, factory: Factory) -> Iterator[ManagerHost]:
    runtimes = {spec_pb2.RUNTIME_KIND_IN_PROCESS: InProcessRuntime(factory)}
    with manager_host(tmp_path / "state", runtimes=runtimes) as host:
        yield host


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


def cli(capsys: pytest.CaptureFixture[str], address: str, *argv: str) -> Run:
    capsys.readouterr()
    code = main([*argv, "--manager", address])
    out, err = capsys.readouterr()
    return Run(code, out, err)


def live(manager: ManagerHost, name: str) -> list[manager_pb2.Container]:
    """The live replicas of a name, oldest first."""
    listed = manager.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=5)
    return sorted(
        (c for c in listed.containers if c.identity.name == name and c.state not in _LIVE),
        key=lambda c: c.create_time.ToNanoseconds(),
    )


def running(manager: ManagerHost, name: str) -> list[manager_pb2.Container]:
    return [c for c in live(manager, name) if c.state == S.LIFECYCLE_STATE_RUNNING]


def events(manager: ManagerHost, name: str) -> list[manager_pb2.Event]:
    request = manager_pb2.WatchEventsRequest(include_history=True, history_only=True)
    return [
        r.event
        for r in manager.stub.WatchEvents(request, timeout=10)
        if r.event.container_name == name
    ]


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


KV = "name: kv\nruntime: in-process\nreplicas: {replicas}\nenv: {{GREETING: {greeting}}}\n"


# -- the CLI's apply and diff ------------------------------------------------------------------
def test_apply_creates_then_says_unchanged(
    manager: ManagerHost, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = write(tmp_path / "kv.yaml", KV.format(replicas=1, greeting="hi"))
    diff = cli(capsys, manager.address, "diff", "-f", spec)
    assert (diff.code, diff.lines) == (1, ["kv: would be created (1 replica)"]), diff.err
    assert live(manager, "kv") == []  # diff changes nothing

    run = cli(capsys, manager.address, "apply", "-f", spec, "--wait", "--timeout", "20s")
    assert run.code == 0, run.err
    assert run.lines[0] == "kv: created (1 replica)"
    [kv] = running(manager, "kv")
    assert run.lines[1:] == [f"{kv.identity.id}: RUNNING"]
    owner = derive_owner([spec])
    assert owner.startswith("kv-")
    assert kv.identity.labels[OWNER_LABEL] == owner
    assert len(kv.identity.labels[SPEC_HASH_LABEL]) == 16

    again = cli(capsys, manager.address, "apply", "-f", spec)
    assert (again.code, again.lines) == (0, ["kv: unchanged (1 replica)"]), again.err
    assert [c.identity.id for c in live(manager, "kv")] == [kv.identity.id]
    diff = cli(capsys, manager.address, "diff", "-f", spec)
    assert (diff.code, diff.lines) == (0, ["kv: unchanged (1 replica)"]), diff.err

    as_json = cli(capsys, manager.address, "apply", "-f", spec, "-o", "json")
    assert json.loads(as_json.out) == {
        "changes": [{"name": "kv", "action": "unchanged", "detail": ["1 replica"]}]
    }


def test_what_ps_prints_applies_again_unchanged(
    manager: ManagerHost, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = write(tmp_path / "kv.yaml", KV.format(replicas=2, greeting="hi"))
    assert cli(capsys, manager.address, "apply", "-f", spec, "--wait").code == 0
    printed = cli(capsys, manager.address, "ps", "-o", "yaml")
    assert printed.code == 0, printed.err
    # One document per name, with the owner label: the same owner's apply.
    again = write(tmp_path / "printed.yaml", printed.out)
    assert yaml.safe_load(printed.out)["labels"][OWNER_LABEL] == derive_owner([spec])
    run = cli(capsys, manager.address, "apply", "-f", again)
    assert (run.code, run.lines) == (0, ["kv: unchanged (2 replicas)"]), run.err


def test_replicas_are_reconciled_up_and_down(
    manager: ManagerHost, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "kv.yaml"
    spec = write(path, KV.format(replicas=1, greeting="hi"))
    assert cli(capsys, manager.address, "apply", "-f", spec, "--wait").code == 0
    [first] = live(manager, "kv")

    write(path, KV.format(replicas=3, greeting="hi"))
    diff = cli(capsys, manager.address, "diff", "-f", spec)
    assert (diff.code, diff.lines) == (1, ["kv: would be scaled (replicas 1 -> 3)"])
    run = cli(capsys, manager.address, "apply", "-f", spec, "--wait", "--timeout", "20s")
    assert run.code == 0, run.err
    assert run.lines[0] == "kv: scaled (replicas 1 -> 3)"
    assert len(running(manager, "kv")) == 3
    assert live(manager, "kv")[0].identity.id == first.identity.id  # untouched

    write(path, KV.format(replicas=1, greeting="hi"))
    run = cli(capsys, manager.address, "apply", "-f", spec)
    assert (run.code, run.lines) == (0, ["kv: scaled (replicas 3 -> 1)"]), run.err
    assert [c.identity.id for c in live(manager, "kv")] == [first.identity.id]  # the oldest stays
    assert cli(capsys, manager.address, "apply", "-f", spec).lines == ["kv: unchanged (1 replica)"]


def test_a_changed_spec_is_replaced_one_replica_at_a_time(
    manager: ManagerHost, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "kv.yaml"
    spec = write(path, KV.format(replicas=2, greeting="hi"))
    assert cli(capsys, manager.address, "apply", "-f", spec, "--wait").code == 0
    old = {c.identity.id for c in live(manager, "kv")}
    assert len(old) == 2

    write(path, KV.format(replicas=2, greeting="hello"))
    diff = cli(capsys, manager.address, "diff", "-f", spec)
    assert diff.code == 1, diff.err
    assert diff.lines == ["kv: would be replaced", '  env.GREETING: "hi" -> "hello"']
    run = cli(capsys, manager.address, "apply", "-f", spec)
    assert (run.code, run.lines) == (0, ['kv: replaced (env.GREETING: "hi" -> "hello")']), run.err

    now = live(manager, "kv")
    assert len(now) == 2
    assert not old & {c.identity.id for c in now}
    assert all(c.spec.env["GREETING"] == "hello" for c in now)
    assert all(c.state == S.LIFECYCLE_STATE_RUNNING for c in now)

    # Replay the events: from the first RUNNING on, never no replica RUNNING;
    # every old replica asked to stop only after one more new one was RUNNING.
    states: dict[str, int] = {}
    new_running: set[str] = set()
    stops = 0
    seen_running = False
    for event in events(manager, "kv"):
        if event.type in (E.EVENT_TYPE_STATE_CHANGED, E.EVENT_TYPE_REGISTERED):
            states[event.container_id] = event.state
        if event.container_id not in old and event.state == S.LIFECYCLE_STATE_RUNNING:
            new_running.add(event.container_id)
        if (
            event.container_id in old
            and event.type == E.EVENT_TYPE_STATE_CHANGED
            and event.state == S.LIFECYCLE_STATE_STOPPING
        ):
            stops += 1
            assert len(new_running) >= stops, (
                f"{event.container_id} stopped before its successor ran"
            )
        count = sum(1 for s in states.values() if s == S.LIFECYCLE_STATE_RUNNING)
        seen_running = seen_running or count > 0
        assert not seen_running or count > 0, f"no replica RUNNING after event {event}"
    assert stops == 2, "\n".join(
        f"{e.container_id} {e.type} {e.message}" for e in events(manager, "kv")
    )

    again = cli(capsys, manager.address, "apply", "-f", spec)
    assert again.lines == ["kv: unchanged (2 replicas)"]


def test_prune_stops_only_what_the_owner_no_longer_lists(
    manager: ManagerHost, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "set.yaml"
    both = "name: a\nruntime: in-process\n---\nname: b\nruntime: in-process\n"
    spec = write(path, both)
    other = write(tmp_path / "other.yaml", "name: c\nruntime: in-process\n")
    assert cli(capsys, manager.address, "apply", "-f", spec, "--owner", "team").code == 0
    assert cli(capsys, manager.address, "apply", "-f", other, "--owner", "else").code == 0

    write(path, "name: a\nruntime: in-process\n")
    run = cli(capsys, manager.address, "apply", "-f", spec, "--owner", "team")
    assert run.lines == ["a: unchanged (1 replica)"]  # without --prune, b stays
    assert len(live(manager, "b")) == 1

    diff = cli(capsys, manager.address, "diff", "-f", spec, "--owner", "team", "--prune")
    assert (diff.code, diff.lines) == (
        1,
        ["a: unchanged (1 replica)", "b: would be pruned (1 replica)"],
    )
    run = cli(capsys, manager.address, "apply", "-f", spec, "--owner", "team", "--prune")
    assert run.code == 0, run.err
    assert run.lines == ["a: unchanged (1 replica)", "b: pruned (1 replica)"]
    assert live(manager, "b") == []
    assert len(live(manager, "a")) == 1
    assert len(live(manager, "c")) == 1
    names = [a.name for a in manager.manager.store.list_applied_specs()]
    assert names == ["a", "c"]  # b is no longer desired: a restart does not bring it back
    again = cli(capsys, manager.address, "diff", "-f", spec, "--owner", "team", "--prune")
    assert (again.code, again.lines) == (0, ["a: unchanged (1 replica)"])


def test_diff_exit_codes_and_errors(
    manager: ManagerHost, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = write(tmp_path / "bad.yaml", "name: x\nruntime: in-process\nreplicas: lots\n")
    run = cli(capsys, manager.address, "diff", "-f", bad)
    assert run.code == 2
    assert run.out == ""
    assert "replicas" in run.err
    good = write(tmp_path / "good.yaml", "name: x\nruntime: in-process\n")
    unreachable = cli(capsys, free_address(), "diff", "-f", good)
    assert unreachable.code == 2
    assert unreachable.err.startswith("error: cannot reach the manager")
    refused = cli(capsys, manager.address, "diff", "-f", good, "--owner", "not ok")
    assert refused.code == 2
    assert "owner: 'not ok' is not a label value" in refused.err


def test_apply_specs_refuses_bad_requests(manager: ManagerHost) -> None:
    spec = spec_pb2.ContainerSpec(name="x", runtime=spec_pb2.RUNTIME_KIND_IN_PROCESS)
    cases = [
        (
            manager_pb2.ApplySpecsRequest(specs=[spec, spec]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "specs[1].name: 'x' is listed twice",
        ),
        (
            manager_pb2.ApplySpecsRequest(specs=[spec_pb2.ContainerSpec()]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "specs[0].name: a container needs a name",
        ),
        (
            manager_pb2.ApplySpecsRequest(
                specs=[spec_pb2.ContainerSpec(name="y", runtime=spec_pb2.RuntimeKind.ValueType(9))]
            ),
            # Not a RuntimeKind at all (pycontainer.manager._validation).
            grpc.StatusCode.INVALID_ARGUMENT,
            "specs[0].runtime: unknown RuntimeKind 9",
        ),
    ]
    for request, code, message in cases:
        with pytest.raises(grpc.RpcError) as info:
            manager.stub.ApplySpecs(request, timeout=10)
        assert info.value.code() == code
        assert message in (info.value.details() or "")
    assert manager.stub.ListContainers(manager_pb2.ListContainersRequest()).containers == []
    # A dry run launches nothing and keeps nothing.
    dry = manager.stub.ApplySpecs(
        manager_pb2.ApplySpecsRequest(specs=[spec], dry_run=True), timeout=10
    )
    assert [(c.name, c.action) for c in dry.changes] == [("x", E.APPLY_ACTION_CREATED)]
    assert manager.manager.store.list_applied_specs() == []
    assert manager.stub.ListContainers(manager_pb2.ListContainersRequest()).containers == []


def test_owner_labels_agree_and_differences_read_like_the_file() -> None:
    assert OWNER_LABEL == MANAGER_OWNER_LABEL
    old = spec_pb2.ContainerSpec(name="w", command=["python", "a.py"], env={"A": "1", "B": "2"})
    new = spec_pb2.ContainerSpec(name="w", command=["python", "b.py"], env={"A": "1"}, replicas=3)
    new.grace_period.FromSeconds(5)
    assert spec_differences(old, new) == [
        'command: ["python", "a.py"] -> ["python", "b.py"]',
        "-env.B",
        "+gracePeriod: 5s",
    ]
    assert derive_owner(["-"]) == "stdin"
    assert derive_owner(["conf/my web.yaml"]) == derive_owner([os.path.abspath("conf/my web.yaml")])
    assert derive_owner(["conf/my web.yaml"]).startswith("my-web-")


def test_applied_specs_survive_reopening_the_store(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "manager.db")
    store.put_applied_spec(AppliedSpec("b", "o", b"\x0a\x01b", "h1", 1.0))
    store.put_applied_spec(AppliedSpec("a", "o", b"\x0a\x01a", "h2", 2.0))
    store.put_applied_spec(AppliedSpec("a", "p", b"\x0a\x01a", "h3", 3.0))  # replaces
    store.delete_applied_spec("b")
    store.delete_applied_spec("nothing")
    store.close()
    again = SQLiteStore(tmp_path / "manager.db")
    assert again.list_applied_specs() == [AppliedSpec("a", "p", b"\x0a\x01a", "h3", 3.0)]
    again.close()


def test_a_store_from_before_apply_gains_its_table(tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "manager.db").close()
    with contextlib.closing(sqlite3.connect(tmp_path / "manager.db")) as db:
        db.execute("DROP TABLE applied_specs")  # as version 1 wrote it before apply
        db.commit()
    store = SQLiteStore(tmp_path / "manager.db")
    assert store.list_applied_specs() == []
    store.put_applied_spec(AppliedSpec("a", "o", b"", "h", 1.0))
    assert [a.name for a in store.list_applied_specs()] == ["a"]
    store.close()


def test_diff_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: pycontainer diff")
    assert "0 no change, 1 changes, 2 or more when it could not tell" in text


# -- processes: checkpoint handover and a restarted manager ------------------------------------
def _app_spec(name: str, state_file: Path, *, replicas: int = 1) -> str:
    return (
        f"name: {name}\n"
        f"command: [python, {json.dumps(str(APP))}, --state-file, {json.dumps(str(state_file))}]\n"
        f"workingDir: {json.dumps(str(ROOT))}\n"
        f"replicas: {replicas}\n"
        "gracePeriod: 10s\n"
        "restartPolicy: Never\n"
        "checkpointPolicy: OnStop\n"
    )


def _kill(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def test_a_replaced_replica_is_restored_from_the_old_ones_checkpoint(
    manager: ManagerHost, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "app.yaml"
    spec = write(path, _app_spec("keeper", tmp_path / "old.json"))
    run = cli(capsys, manager.address, "apply", "-f", spec, "--wait", "--timeout", "60s")
    assert run.code == 0, run.err
    [old] = live(manager, "keeper")

    write(path, _app_spec("keeper", tmp_path / "new.json"))
    run = cli(capsys, manager.address, "apply", "-f", spec)
    assert run.code == 0, run.err
    assert run.lines[0].startswith("keeper: replaced (command: ")
    [new] = live(manager, "keeper")
    assert new.identity.id != old.identity.id
    old_state = json.loads((tmp_path / "old.json").read_text())
    new_state = json.loads((tmp_path / "new.json").read_text())
    assert old_state["calls"].get("checkpoint") == 1
    assert new_state["calls"].get("restore") == 1  # restored before it started
    # The new one goes on from the old one's count at its checkpoint.
    store = manager.manager.store
    latest = store.latest_checkpoint("keeper")
    assert latest is not None
    assert latest.container_id == old.identity.id
    counted = int(store.get_checkpoint(latest.id)[1])
    assert new_state["counter"] >= counted > 1
    kinds = [e.type for e in events(manager, "keeper") if e.container_id == old.identity.id]
    assert E.EVENT_TYPE_CHECKPOINTED in kinds


def test_a_restarted_manager_brings_the_applied_replicas_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = free_address()
    state = str(tmp_path / "state")
    spec = write(tmp_path / "app.yaml", _app_spec("pair", tmp_path / "pair.json", replicas=2))
    window = timedelta(seconds=5)  # the survivor reconnects well within it
    pids: set[int] = set()
    first = ManagerHost(state, listen=address, reconnect_window=window)
    try:
        run = cli(capsys, address, "apply", "-f", spec, "--wait", "--timeout", "60s")
        assert run.code == 0, run.err
        survivor, victim = live(first, "pair")
        pids |= {survivor.pid, victim.pid}
    finally:
        first.stop()  # the containers outlive it
    os.killpg(victim.pid, signal.SIGKILL)  # gone while no manager watches

    second = ManagerHost(state, listen=address, reconnect_window=window)
    try:

        def back() -> bool:
            now = [c for c in running(second, "pair") if c.connected]
            pids.update(c.pid for c in now)
            return len(now) == 2

        wait_until(back, 60, "two replicas of pair again")
        now = {c.identity.id for c in live(second, "pair")}
        assert survivor.identity.id in now
        assert victim.identity.id not in now
        gone = second.stub.GetContainer(
            manager_pb2.GetContainerRequest(container=victim.identity.id), timeout=5
        ).container
        assert gone.state == S.LIFECYCLE_STATE_FAILED
        assert "did not reconnect within 5s" in gone.error
        run = cli(capsys, address, "apply", "-f", spec)
        assert run.lines == ["pair: unchanged (2 replicas)"], run.err
    finally:
        with contextlib.suppress(Exception):
            second.call(second.manager.shutdown_containers)
        second.stop()
        _kill(pids)


def test_a_replacement_that_never_runs_leaves_the_old_replica_running(
    manager: ManagerHost, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "app.yaml"
    spec = write(path, _app_spec("steady", tmp_path / "steady.json"))
    assert cli(capsys, manager.address, "apply", "-f", spec, "--wait", "--timeout", "60s").code == 0
    [old] = live(manager, "steady")
    write(path, "name: steady\ncommand: [python, -c, 'raise SystemExit(3)']\n")
    run = cli(capsys, manager.address, "apply", "-f", spec)
    assert run.code == 1
    [line] = run.err.splitlines()
    assert line.startswith("error: FAILED_PRECONDITION: steady: the new replica steady-")
    assert "ended FAILED: process exited with status 3" in line
    assert line.endswith(
        "the replicas it was to replace keep running (apply again once it is fixed)"
    )
    assert [(c.identity.id, c.state) for c in live(manager, "steady")] == [
        (old.identity.id, S.LIFECYCLE_STATE_RUNNING)
    ]


def test_a_replica_waiting_out_its_restart_backoff_counts_as_present(
    manager: ManagerHost, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = write(
        tmp_path / "app.yaml",
        f"name: phoenix\ncommand: [python, {json.dumps(str(APP))}]\n"
        f"workingDir: {json.dumps(str(ROOT))}\nrestartPolicy: Always\nrestartBackoff: 3s\n",
    )
    assert cli(capsys, manager.address, "apply", "-f", spec, "--wait", "--timeout", "60s").code == 0
    [first] = live(manager, "phoenix")
    os.killpg(first.pid, signal.SIGKILL)

    def restarting() -> bool:
        entry = manager.manager.registry.get(first.identity.id)
        return entry is not None and manager.manager.supervisor.restarting(entry)

    wait_until(restarting, 20, "the crash to be seen and its restart on its way")
    # Its restart policy brings it back: apply does not launch another.
    run = cli(capsys, manager.address, "apply", "-f", spec)
    assert (run.code, run.lines) == (0, ["phoenix: unchanged (1 replica)"]), run.err
    wait_until(
        lambda: (
            [(c.identity.id, c.restarts) for c in running(manager, "phoenix")]
            == [(first.identity.id, 1)]
        ),
        30,
        "the restart",
    )
    listed = manager.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=5)
    assert [c.identity.id for c in listed.containers] == [first.identity.id]


def test_a_rollout_goes_on_when_its_caller_goes_away(
    manager: ManagerHost, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def spec(greeting: str) -> spec_pb2.ContainerSpec:
        return spec_pb2.ContainerSpec(
            name="slow",
            command=["python", str(APP), "--stop-seconds", "1"],
            working_dir=str(ROOT),
            env={"GREETING": greeting},
            replicas=2,
        )

    def apply(greeting: str) -> manager_pb2.ApplySpecsRequest:
        return manager_pb2.ApplySpecsRequest(specs=[spec(greeting)], owner="slow")

    manager.stub.ApplySpecs(apply("hi"), timeout=60)
    wait_until(lambda: len(running(manager, "slow")) == 2, 60, "two replicas")
    old = {c.identity.id for c in live(manager, "slow")}
    call = manager.stub.ApplySpecs.future(apply("hello"), timeout=120)
    wait_until(
        lambda: any(c.state == S.LIFECYCLE_STATE_STOPPING for c in live(manager, "slow")),
        60,
        "the first old replica stopping",
    )
    call.cancel()  # the operator's Ctrl-C

    def done() -> bool:
        now = live(manager, "slow")
        return len(now) == 2 and all(
            c.spec.env["GREETING"] == "hello" and c.state == S.LIFECYCLE_STATE_RUNNING for c in now
        )

    wait_until(done, 60, "the rollout to finish without its caller")
    assert not old & {c.identity.id for c in live(manager, "slow")}
    changes = manager.stub.ApplySpecs(apply("hello"), timeout=60).changes
    assert [(c.name, c.action) for c in changes] == [("slow", E.APPLY_ACTION_UNCHANGED)]


def test_an_old_replica_stops_only_once_its_successor_is_ready(
    manager: ManagerHost, factory: Factory, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "kv.yaml"
    spec = write(path, KV.format(replicas=1, greeting="hi"))
    assert cli(capsys, manager.address, "apply", "-f", spec, "--wait").code == 0
    [old] = live(manager, "kv")
    write(path, "name: kv\nruntime: in-process\nenv: {GREETING: hi, READY_LATER: '1'}\n")
    request = manager_pb2.ApplySpecsRequest(
        specs=pycontainer_specs(path), owner=derive_owner([spec])
    )
    call = manager.stub.ApplySpecs.future(request, timeout=60)
    wait_until(lambda: len(running(manager, "kv")) == 2, 20, "the new replica RUNNING")
    [new] = [c for c in live(manager, "kv") if c.identity.id != old.identity.id]
    # RUNNING, not ready: the old one keeps serving.
    assert not call.done()
    assert [c.identity.id for c in running(manager, "kv")] == [old.identity.id, new.identity.id]
    factory.containers[new.identity.id].set_check("warm", True)
    changes = call.result(30).changes
    assert [(c.name, c.action) for c in changes] == [("kv", E.APPLY_ACTION_REPLACED)]
    assert [c.identity.id for c in live(manager, "kv")] == [new.identity.id]


def pycontainer_specs(path: Path) -> list[spec_pb2.ContainerSpec]:
    from pycontainer.spec import load_specs

    return load_specs(str(path))


def test_a_listing_of_two_owners_applies_back_as_each_owners_own(
    manager: ManagerHost,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = write(tmp_path / "first.yaml", "name: a\nruntime: in-process\n")
    second = write(tmp_path / "second.yaml", "name: b\nruntime: in-process\nreplicas: 2\n")
    for path in (first, second):
        assert cli(capsys, manager.address, "apply", "-f", path, "--wait").code == 0
    owners = {"a": derive_owner([first]), "b": derive_owner([second])}
    printed = cli(capsys, manager.address, "ps", "-o", "yaml")
    assert printed.code == 0, printed.err

    def piped(*argv: str) -> Run:
        monkeypatch.setattr("sys.stdin", io.StringIO(printed.out))
        return cli(capsys, manager.address, *argv, "-f", "-")

    diff = piped("diff")
    assert (diff.code, diff.lines) == (
        0,
        ["a: unchanged (1 replica)", "b: unchanged (2 replicas)"],
    ), diff.err
    dry = piped("apply", "--dry-run")
    assert dry.code == 0, dry.err
    assert dry.lines == [
        "a: valid (in-process, 1 replica, priority 0); unchanged (1 replica); "
        "nothing changed (--dry-run)",
        "b: valid (in-process, 2 replicas, priority 0); unchanged (2 replicas); "
        "nothing changed (--dry-run)",
    ]
    run = piped("apply", "--wait")
    assert run.code == 0, run.err
    assert run.lines[:2] == ["a: unchanged (1 replica)", "b: unchanged (2 replicas)"]
    for name, owner in owners.items():
        assert {c.identity.labels[OWNER_LABEL] for c in live(manager, name)} == {owner}
    applied = {a.name: a.owner for a in manager.manager.store.list_applied_specs()}
    assert applied == owners
    for path, name, replicas in ((first, "a", "1 replica"), (second, "b", "2 replicas")):
        again = cli(capsys, manager.address, "diff", "-f", path)
        assert (again.code, again.lines) == (0, [f"{name}: unchanged ({replicas})"]), again.err

    # Every owner's specs are checked before any is applied: b's refusal
    # leaves a's change undone.
    changed = list(yaml.safe_load_all(printed.out))
    changed[0]["env"] = {"GREETING": "hello"}
    changed[1]["env"] = {"NEW_TOKEN": "<redacted>"}
    printed_before, printed.out = printed.out, yaml.safe_dump_all(changed)
    refused = piped("apply")
    assert (refused.code, refused.out) == (1, ""), refused
    assert refused.err.startswith(
        f"error: the specs of owner {owners['b']} (b): INVALID_ARGUMENT: "
        "specs[0].env['NEW_TOKEN']: <redacted> means"
    ), refused.err
    assert "GREETING" not in live(manager, "a")[0].spec.env
    printed.out = printed_before

    # Prune over several owners' listing is refused: it would stop what the
    # listing merely leaves out. Nothing changes.
    for verb in (("apply",), ("diff",)):
        refused = piped(*verb, "--prune")
        assert refused.code == (1 if verb == ("apply",) else 2), refused
        assert refused.out == ""
        assert refused.err.startswith(
            f"--prune with specs of 2 owners ({owners['a']}: a; {owners['b']}: b): "
        ), refused.err
        assert "prune one owner at a time" in refused.err
    assert len(live(manager, "a")) == 1
    assert len(live(manager, "b")) == 2
    # One owner's listing prunes as that owner's file would.
    only_a = cli(capsys, manager.address, "ps", "-o", "yaml", "-l", f"{OWNER_LABEL}={owners['a']}")
    monkeypatch.setattr("sys.stdin", io.StringIO(only_a.out))
    pruned = cli(capsys, manager.address, "diff", "--prune", "-f", "-")
    assert (pruned.code, pruned.lines) == (0, ["a: unchanged (1 replica)"]), pruned.err


def test_a_dry_run_refuses_what_apply_refuses(
    manager: ManagerHost, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "vault.yaml"
    spec = write(path, "name: vault\nruntime: in-process\nenv: {DB_TOKEN: s3cret}\n")
    assert cli(capsys, manager.address, "apply", "-f", spec, "--wait").code == 0
    [before] = live(manager, "vault")
    write(
        path, "name: vault\nruntime: in-process\nenv: {DB_TOKEN: s3cret, NEW_TOKEN: <redacted>}\n"
    )
    expected = (
        "error: INVALID_ARGUMENT: specs[0].env['NEW_TOKEN']: <redacted> means \"keep the value "
        'the manager has stored", and the stored specs of "vault" have no "NEW_TOKEN": '
        "write the value itself"
    )
    for argv in (("apply",), ("apply", "--dry-run"), ("apply", "--dry-run=server")):
        refused = cli(capsys, manager.address, *argv, "-f", spec)
        assert (refused.code, refused.out, refused.err.strip()) == (1, "", expected), argv
    diff = cli(capsys, manager.address, "diff", "-f", spec)
    assert (diff.code, diff.err.strip()) == (2, expected)
    # A name the manager has nothing of: the marker has no value behind it.
    fresh = write(
        tmp_path / "fresh.yaml", "name: fresh\nruntime: in-process\nenv: {X_TOKEN: <redacted>}\n"
    )
    dry = cli(capsys, manager.address, "apply", "--dry-run", "-f", fresh, "-o", "json")
    assert dry.code == 1
    assert dry.out == ""
    assert 'the manager has no container or applied spec named "fresh"' in dry.err
    unreachable = cli(capsys, free_address(), "apply", "--dry-run", "-f", spec)
    assert unreachable.code == 2
    assert unreachable.err.startswith("error: cannot reach the manager")
    assert unreachable.err.endswith("(--dry-run=client checks the files without a manager)\n")
    # --dry-run=client checks the file alone and says what it did not check.
    client = cli(capsys, manager.address, "apply", "--dry-run=client", "-f", spec)
    assert (client.code, client.lines) == (
        0,
        [
            "vault: valid (in-process, 1 replica, priority 0); not launched "
            "(--dry-run=client); <redacted> in env NEW_TOKEN not checked "
            "(--dry-run=server checks it)"
        ],
    )
    # The stored value kept: the dry run restores the marker as apply does.
    write(path, "name: vault\nruntime: in-process\nenv: {DB_TOKEN: <redacted>}\n")
    kept = cli(capsys, manager.address, "apply", "--dry-run", "-f", spec)
    assert kept.lines == [
        "vault: valid (in-process, 1 replica, priority 0); unchanged (1 replica); "
        "nothing changed (--dry-run)"
    ], kept.err
    assert [c.identity.id for c in live(manager, "vault")] == [before.identity.id]


def test_ps_takes_names_and_ids(
    manager: ManagerHost, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = write(tmp_path / "kv.yaml", KV.format(replicas=2, greeting="hi"))
    other = write(tmp_path / "other.yaml", "name: other\nruntime: in-process\n")
    for path in (spec, other):
        assert cli(capsys, manager.address, "apply", "-f", path, "--wait").code == 0
    first, second = live(manager, "kv")

    named = cli(capsys, manager.address, "ps", "kv", "-o", "name")
    assert (named.code, named.lines, named.err) == (0, ["kv", "kv"], "")
    as_yaml = cli(capsys, manager.address, "ps", "-o", "yaml", "kv")
    assert as_yaml.code == 0, as_yaml.err
    assert [d["name"] for d in yaml.safe_load_all(as_yaml.out)] == ["kv"]
    by_id = cli(capsys, manager.address, "ps", second.identity.id, "other", "-o", "id")
    assert sorted(by_id.lines) == sorted([second.identity.id, *ids(manager, "other")])
    table = cli(capsys, manager.address, "ps", "other")
    assert [row.split()[0] for row in table.lines[1:]] == ["other"]

    unknown = cli(capsys, manager.address, "ps", "kv", "nosuch", "-o", "name")
    assert (unknown.code, unknown.lines) == (1, ["kv", "kv"])
    assert unknown.err == "error: NOT_FOUND: no container with id or name 'nosuch'\n"
    alone = cli(capsys, manager.address, "ps", "nosuch")
    assert (alone.code, alone.out) == (1, "")
    assert alone.err == "error: NOT_FOUND: no container with id or name 'nosuch'\n"

    assert cli(capsys, manager.address, "stop", "other").code == 0
    stopped = cli(capsys, manager.address, "ps", "other", "-o", "name")
    assert (stopped.code, stopped.out) == (1, "")
    assert stopped.err == (
        "error: NOT_FOUND: no live container with id or name 'other' (STOPPED: -a shows it)\n"
    )
    shown = cli(capsys, manager.address, "ps", "-a", "other", "-o", "name")
    assert (shown.code, shown.lines) == (0, ["other"]), shown.err
    assert first.identity.id in cli(capsys, manager.address, "ps", "-a", "kv").out


def ids(manager: ManagerHost, name: str) -> list[str]:
    return [c.identity.id for c in live(manager, name)]

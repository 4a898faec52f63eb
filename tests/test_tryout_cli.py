"""What a new user's tryout of the command line found: each fixed, each here."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from support import Host, connected_container, wait_until

import pycontainer
from pycontainer._selectors import parse_selector
from pycontainer.cli import main
from pycontainer.testing import ManagerHost
from pycontainer.v1 import container_pb2, manager_pb2

S = container_pb2


@dataclass
class Run:
    code: int
    out: str
    err: str


def cli(manager: ManagerHost | None, *argv: str) -> Run:
    out, err = io.StringIO(), io.StringIO()
    client = manager.client if manager is not None else None
    code = main(argv, client=client, stdout=out, stderr=err)
    return Run(code, out.getvalue(), err.getvalue())


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    started: list[Host] = []
    yield started
    for host in started:
        with contextlib.suppress(Exception):
            host.stop()


def _state(manager: ManagerHost, name: str) -> int:
    try:
        return manager.stub.GetContainer(
            manager_pb2.GetContainerRequest(container=name), timeout=5
        ).container.state
    except grpc.RpcError:
        return S.LIFECYCLE_STATE_UNSPECIFIED


def _running_named(manager: ManagerHost, name: str) -> int:
    """How many containers named ``name`` are RUNNING."""
    listed = manager.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=5)
    return sum(
        1
        for c in listed.containers
        if c.identity.name == name and c.state == S.LIFECYCLE_STATE_RUNNING
    )


def _start(manager: ManagerHost, hosts: list[Host], name: str) -> None:
    """A container dialled in, labelled app=NAME; returns once it runs (counted
    by name: a second of one name makes the name ambiguous to GetContainer)."""
    before = _running_named(manager, name)
    _, host = connected_container(manager, name)
    hosts.append(host)
    wait_until(lambda: _running_named(manager, name) > before, 30, what=f"{name} running")


# -- 2. label selectors: Kubernetes' grammar, never "match all" on a mistake ------------------
BAD_SELECTORS = {
    "!!!": "expected a label key after '!'",
    "!app=demo": "expected ',' or the end, found '='",
    "app!": "after the label key 'app'",
    "ap*p": "label key 'ap*p' is not valid",
    "app=demo,,": "expected a label key, found ','",
    "a b=c": "found 'b'",
    "app in (a": "expected ',' or ')'",
    "Example.com/app=x": "must be a DNS subdomain",
    "app=" + "v" * 64: "is not valid: a value is empty or at most 63",
}


@pytest.mark.parametrize("text", sorted(BAD_SELECTORS))
def test_a_bad_selector_names_its_mistake(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(BAD_SELECTORS[text])):
        parse_selector(text)


def test_good_selectors_match_as_kubernetes_does() -> None:
    labels = {"app": "demo", "tier": "web", "example.com/team": "a"}

    def match(text: str) -> bool:
        return all(r.matches(labels) for r in parse_selector(text))

    matching = ["", "app=demo", "app==demo", "tier!=db", "app in (demo, other),tier notin (db)"]
    matching += ["example.com/team", "!legacy", "missing!=x", "missing notin (x)"]
    assert [t for t in matching if not match(t)] == []
    others = ["app=other", "!app", "app in (x,y)", "legacy", "app notin (demo)"]
    assert [t for t in others if match(t)] == []


def test_ps_and_stop_refuse_a_bad_selector_and_stop_nothing(
    manager: ManagerHost, hosts: list[Host]
) -> None:
    _start(manager, hosts, "demo")
    for verb in ("ps", "stop", "logs", "top", "restart", "rm"):
        run = cli(manager, verb, "-l", "!!!")
        assert run.code == 1, (verb, run)
        assert "argument -l/--selector: bad label selector: expected a label key" in run.err
    run = cli(manager, "stop", "-l", " ")  # blank is no selector, not everything
    assert (run.code, run.err) == (
        1,
        "error: stop: give container ids or names, -l SELECTOR or --all\n",
    )
    listed = cli(manager, "ps", "-o", "name")
    assert listed.out.split() == ["demo"], cli(manager, "ps", "-a").out  # nothing was stopped
    # The manager refuses it too (clients other than this command).
    with pytest.raises(grpc.RpcError) as info:
        manager.stub.ListContainers(
            manager_pb2.ListContainersRequest(label_selector="app=demo,,"), timeout=5
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected a label key, found ','" in (info.value.details() or "")
    # A set-based selector works end to end.
    run = cli(manager, "ps", "-o", "name", "-l", "app in (demo, web)")
    assert (run.code, run.out.split()) == (0, ["demo"])
    run = cli(manager, "ps", "-o", "name", "-l", "app notin (demo)")
    assert (run.code, run.out.split()) == (0, [])


# -- 3. a negative duration after its option is read as its value --------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ("stop", "--grace", "-1s", "sync-worker"),
        ("stop", "--grace=-1s", "sync-worker"),
        ("restart", "--grace", "-2m", "x"),
        ("top", "--interval", "-5ms"),
        ("logs", "x", "--since", "-1h"),
    ],
)
def test_a_negative_duration_is_called_negative(argv: tuple[str, ...]) -> None:
    run = cli(None, *argv)
    assert run.code == 1
    value = next(a for a in argv if a.lstrip("-")[:1].isdigit() or "=-" in a).split("=")[-1]
    assert f"'{value}' is negative: a duration must be 0 or more" in run.err
    assert "expected one argument" not in run.err


def test_a_value_after_double_dash_is_left_alone() -> None:
    from pycontainer.cli import _join_negative_durations

    argv = ["stop", "--grace", "-1s", "--", "--grace", "-1s"]
    assert _join_negative_durations(argv, {"--grace"}) == [
        "stop",
        "--grace=-1s",
        "--",
        "--grace",
        "-1s",
    ]


# -- 4. --version, and bare `pycontainer` -----------------------------------------------------
def test_version_needs_no_manager_and_bare_command_lists_the_verbs() -> None:
    import pycontainer

    run = cli(None, "--version")
    assert (run.code, run.out) == (0, f"pycontainer {pycontainer.__version__}\n")
    run = cli(None)
    assert run.code == 1
    assert run.err.startswith("usage: pycontainer")
    for verb in ("apply", "ps", "stop", "logs", "top", "health", "completion"):
        assert f"\n    {verb} " in run.err, verb
    assert "130 interrupted" in run.err


# -- 1, 7. Ctrl-C: the client lets go at once, exit 130; the manager carries on --------------
def _pycontainer(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pycontainer.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # SIGINT to it alone, as a terminal's Ctrl-C would
    )


def test_first_ctrl_c_on_stop_detaches_and_the_stop_goes_on(
    manager: ManagerHost, hosts: list[Host]
) -> None:
    release = threading.Event()

    def on_stop(reason: str, deadline: float) -> None:  # a program slow to stop
        release.wait(60)

    _, host = connected_container(manager, "slow", hooks=pycontainer.Hooks(on_stop=on_stop))
    hosts.append(host)
    try:
        wait_until(lambda: _state(manager, "slow") == S.LIFECYCLE_STATE_RUNNING, what="running")
        proc = _pycontainer(
            "stop", "--grace", "60s", "slow", "--manager", manager.address, "--insecure"
        )
        try:
            wait_until(
                lambda: (
                    _state(manager, "slow") == S.LIFECYCLE_STATE_STOPPING or proc.poll() is not None
                ),
                what="the stop under way",
            )
            assert proc.poll() is None
            sent = time.monotonic()
            proc.send_signal(signal.SIGINT)  # once
            _, err = proc.communicate(timeout=15)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        assert proc.returncode == 130, err
        assert err == (
            "slow is still stopping (the manager finishes it; pycontainer ps shows it)\n"
        ), err
        assert took < 10
        assert _state(manager, "slow") == S.LIFECYCLE_STATE_STOPPING  # it goes on
    finally:
        release.set()
    wait_until(lambda: _state(manager, "slow") == S.LIFECYCLE_STATE_STOPPED, what="stopped")


def test_ctrl_c_on_a_following_verb_exits_130(manager: ManagerHost, hosts: list[Host]) -> None:
    _start(manager, hosts, "follow")
    for argv in (("events", "-w"), ("logs", "-f", "follow")):
        proc = _pycontainer(*argv, "--manager", manager.address, "--insecure")
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()  # it is following: something came
            assert first, argv
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        assert proc.returncode == 130, (argv, err)
        assert "Traceback" not in err


# -- 8. wording -----------------------------------------------------------------------------------
def test_memory_is_shown_as_a_short_number() -> None:
    from pycontainer.units import format_memory, parse_memory

    assert format_memory(23635008 * 1024) == "22.5Gi"
    assert format_memory(1536 << 20) == "1536Mi"  # exact and short: kept exact
    assert parse_memory(format_memory(9999 << 10)) == 9999 << 10
    assert format_memory(10_000 << 10) == "9.8Mi"


@pytest.mark.parametrize("address", ["-", "", " ", ":50050", "*"])
def test_a_target_that_is_no_address_gets_the_example(address: str) -> None:
    run = cli(None, "health", address)
    assert run.code == 1
    assert "write HOST:PORT such as 127.0.0.1:50050" in run.err
    assert "-:PORT" not in run.err


# -- 5. health of a service the server does not have --------------------------------------------
def test_health_of_an_unknown_service_names_it_and_the_known_ones(hosts: list[Host]) -> None:
    from support import make_container, start_sync_host

    host = start_sync_host(make_container("probed"))
    hosts.append(host)
    run = cli(None, "health", host.target, "--service", "nosuch")
    assert run.code == 3, run.err
    assert run.err.startswith("error: no health service named 'nosuch' (it serves ")
    assert "'liveness'" in run.err
    assert "'readiness'" in run.err
    assert (cli(None, "health", host.target, "--service", "liveness").code) == 0


# -- 6. top off a terminal: plain snapshots --------------------------------------------------------
def test_top_piped_prints_a_snapshot_every_interval(
    manager: ManagerHost, hosts: list[Host]
) -> None:
    _start(manager, hosts, "topped")
    proc = _pycontainer("top", "--interval", "200ms", "--manager", manager.address, "--insecure")
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while sum(line.startswith("pycontainer top: ") for line in lines) < 2:
            line = proc.stdout.readline()
            assert line, (lines, proc.poll())
            lines.append(line)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 130, err
    assert any(line.startswith("NAME") for line in lines), lines
    assert any(line.startswith("topped ") for line in lines), lines
    assert "\x1b[" not in "".join(lines)


# -- 9. completion looks names up with the command that generated it ------------------------------
def test_completion_completes_names_without_the_command_on_path(
    manager: ManagerHost, hosts: list[Host], tmp_path: Path
) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not installed")
    executable = Path(sys.executable).parent / "pycontainer"  # the venv's, as the README runs it
    script = subprocess.run(
        [str(executable), "completion", "bash"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=True,
    ).stdout
    assert f"$({executable.absolute()} ps -a -o name" in script
    # Two records of one name (a re-run leaves the old one): offered once.
    _start(manager, hosts, "completable")
    _start(manager, hosts, "completable")
    program = (
        f"{script}\nCOMP_WORDS=(pycontainer stop comp); COMP_CWORD=2; "
        "PATH=/nonexistent _pycontainer; printf '%s\\n' \"${COMPREPLY[@]}\""
    )
    env = {"PYCONTAINER_MANAGER": manager.address, "PYCONTAINER_INSECURE": "1"}
    result = subprocess.run(
        [bash, "--norc", "-c", program], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.stdout.split() == ["completable"], result.stderr


def test_ctrl_c_on_apply_wait_says_the_rollout_goes_on(
    manager: ManagerHost, tmp_path: Path
) -> None:
    spec = tmp_path / "never.yaml"  # a program that never registers: never RUNNING
    spec.write_text("name: never\ncommand: [sleep, '60']\ngracePeriod: 1s\n")
    argv = ("apply", "-f", str(spec), "--wait", "--timeout", "60s")
    proc = _pycontainer(*argv, "--manager", manager.address, "--insecure")
    try:
        wait_until(
            lambda: (
                _state(manager, "never") != S.LIFECYCLE_STATE_UNSPECIFIED or proc.poll() is not None
            ),
            what="the replica launched",
        )
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        manager.kill_launched()
    assert proc.returncode == 130, err
    # Interrupted during the apply call or during the wait after it: either
    # way one line saying the manager carries on.
    assert err.splitlines()[-1] in (
        "the rollout of never goes on "
        "(the manager finishes it; pycontainer ps and pycontainer events show it)",
        "stopped waiting: the replicas are still starting "
        "(the manager finishes them; pycontainer ps shows them)",
    ), err
    assert "Traceback" not in err

"""What a new user's tryout of the command line found: each fixed, each here."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from support import Host, connected_container, wait_until

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


def _start(manager: ManagerHost, hosts: list[Host], name: str) -> None:
    """A container dialled in, labelled app=NAME."""
    _, host = connected_container(manager, name)
    hosts.append(host)

    def running() -> bool:
        try:
            got = manager.stub.GetContainer(
                manager_pb2.GetContainerRequest(container=name), timeout=5
            ).container
        except grpc.RpcError:
            return False
        return got.state == S.LIFECYCLE_STATE_RUNNING

    wait_until(running, what=f"{name} running")


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
    listed = cli(manager, "ps", "-o", "name")
    assert listed.out.split() == ["demo"]  # nothing was stopped
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

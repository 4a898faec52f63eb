"""A client verb's run imports and builds only what it uses: `ps` against a
real manager (plaintext and mutual TLS) imports neither rich, yaml,
cryptography, the OpenTelemetry SDK, the agent nor the manager, and the
grammar it parses with is its own verb's (the same parse and help as the
whole grammar's)."""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Host, connected_container, wait_until

from pycontainer.cli import main
from pycontainer.cli._parser import build_parser, has_verb, verb_in
from pycontainer.testing import ManagerHost
from pycontainer.v1 import manager_pb2

# What a listing off a terminal must not import.
_HEAVY = (
    "rich",
    "yaml",
    "cryptography",
    "opentelemetry.sdk",
    "pycontainer.agent",
    "pycontainer.manager",
)

_IMPORTS_OF = """
import runpy, sys
sys.argv = ["pycontainer", *sys.argv[1:]]
code = 0
try:
    from pycontainer._console import main
    code = main()
except SystemExit as exc:
    code = exc.code
print("MODULES", " ".join(sorted(sys.modules)))
print("EXIT", code)
"""


def _run_ps(*argv: str) -> tuple[str, str, list[str]]:
    result = subprocess.run(
        [sys.executable, "-c", _IMPORTS_OF, *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = result.stdout.splitlines()
    [modules] = [line for line in lines if line.startswith("MODULES ")]
    assert lines[-1] == "EXIT 0", result.stderr
    out = "\n".join(line for line in lines if not line.startswith(("MODULES ", "EXIT ")))
    loaded = modules.split()[1:]
    assert "grpc" in loaded  # (it did call)
    heavy = [m for m in loaded if m in _HEAVY or m.startswith(tuple(f"{h}." for h in _HEAVY))]
    return out, result.stderr, heavy


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    started: list[Host] = []
    yield started
    for host in started:
        with contextlib.suppress(Exception):
            host.stop()


def test_ps_describe_events_plaintext_import_no_renderer_nor_the_sdk(
    manager: ManagerHost, hosts: list[Host]
) -> None:
    _, host = connected_container(manager, "lean-web")
    hosts.append(host)

    def listed() -> bool:
        response = manager.stub.ListContainers(manager_pb2.ListContainersRequest(), timeout=5)
        return any(c.identity.name == "lean-web" for c in response.containers)

    wait_until(listed, what="lean-web listed")
    out, err, heavy = _run_ps("ps", "--manager", manager.address, "--insecure")
    assert not heavy, heavy
    header, row = out.splitlines()
    assert header.split()[:3] == ["NAME", "ID", "STATE"]
    name, container_id, state = row.split()[:3]
    assert (name, state) == ("lean-web", "RUNNING")
    assert container_id.startswith("lean-web")
    assert not err
    # describe (its labelled lines) and events (its table) too.
    out, err, heavy = _run_ps("describe", "lean-web", "--manager", manager.address, "--insecure")
    assert not heavy, heavy
    assert out.splitlines()[0].split() == ["Name:", "lean-web"]
    assert "Endpoints:" in out.splitlines()

    out, err, heavy = _run_ps("events", "--manager", manager.address, "--insecure")
    assert not heavy, heavy
    assert out.splitlines()[0].split() == ["TIME", "TYPE", "CONTAINER", "MESSAGE"]
    assert any("lean-web" in line for line in out.splitlines()[1:])


def test_ps_over_mutual_tls_imports_no_cryptography(tmp_path: Path) -> None:
    state = tmp_path / "state"
    host = ManagerHost(str(state), insecure=False)
    try:
        argv = ("ps", "--manager", host.address, "--cert-dir", str(state / "admin"))
        out, err, heavy = _run_ps(*argv)
    finally:
        host.close()
    assert not heavy, heavy
    assert (out, err) == ("", "no containers (-a shows stopped ones too)\n")


def _verbs() -> dict[str, argparse.ArgumentParser]:
    [verbs] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(verbs.choices)


@pytest.mark.parametrize("verb", sorted(_verbs()))
def test_one_verbs_grammar_has_that_verb_as_the_whole_one_does(verb: str) -> None:
    parser = build_parser(verb)
    assert has_verb(parser, verb)
    [verbs] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(verbs.choices) < set(_verbs())
    assert verbs.choices[verb].format_help() == _verbs()[verb].format_help()


@pytest.mark.parametrize(
    "argv",
    [
        ["ps", "-a", "-o", "wide", "-l", "app=web"],
        ["--manager", "127.0.0.1:1", "--insecure", "ps", "web", "api"],
        ["--cert-dir=d", "describe", "web", "-o", "json"],
        ["stop", "--grace=0", "web"],
        ["stop", "--grace", "1m30s", "--all"],
        ["logs", "-p", "web"],
        ["token", "create", "--uses", "3"],
        ["cert", "create", "user/a", "--out", "d", "--ttl", "2h"],
        ["events", "-w"],
    ],
)
def test_a_verbs_parse_is_the_whole_grammars(argv: list[str]) -> None:
    verb = verb_in(argv)
    assert verb is not None
    assert vars(build_parser(verb).parse_args(argv)) == vars(build_parser().parse_args(argv))


@pytest.mark.parametrize(
    ("argv", "verb"),
    [
        (["ps"], "ps"),
        (["--manager", "h:1", "--insecure", "--tls-dir", "d", "logs", "x"], "logs"),
        (["--manager=h:1", "events"], "events"),
        (["-h", "ps"], None),  # the top-level help lists every verb
        (["--version"], None),
        (["--manager"], None),
        ([], None),
    ],
)
def test_the_verb_is_read_after_global_options_only(argv: list[str], verb: str | None) -> None:
    assert verb_in(argv) == verb


def test_an_unknown_verb_is_told_by_the_whole_grammar() -> None:
    err = io.StringIO()
    assert main(["nope"], stdout=io.StringIO(), stderr=err) == 1
    assert "invalid choice: 'nope'" in err.getvalue()
    assert "'ps'" in err.getvalue()
    assert "'logs'" in err.getvalue()
    out = io.StringIO()
    assert main(["-h", "ps"], stdout=out, stderr=io.StringIO()) == 0
    assert "describe" in out.getvalue()
    assert "certificate" in out.getvalue()

"""The command line's grammar without a manager: `pycontainer --help` needs
neither grpc nor rich, every duration flag takes durations, addresses are
checked with a sentence saying what to write, and shell completion is
generated from the same grammar."""

from __future__ import annotations

import datetime
import io
import shutil
import subprocess
import sys

import pytest

from pycontainer.cli import main
from pycontainer.cli._completion import bash_script
from pycontainer.cli._parser import build_parser

# What the grammar must not import (a namespace package such as bare
# `opentelemetry`, which the console script's extra check finds, is free).
_HEAVY = ("grpc", "rich", "yaml", "opentelemetry.sdk", "pycontainer.agent", "pycontainer.manager")

_IMPORTS_OF = """
import importlib.util, runpy, sys
entry, *argv = sys.argv[1:]
sys.argv = ["pycontainer", *argv]
try:
    if entry == "console" and importlib.util.find_spec("pycontainer._console"):
        from pycontainer._console import main
        main()
    else:
        runpy.run_module("pycontainer.cli", run_name="__main__")
except SystemExit:
    pass
print("MODULES", " ".join(sorted(sys.modules)))
"""


@pytest.mark.parametrize("entry", ["console", "module"])
@pytest.mark.parametrize(
    "argv", [["--help"], ["ps", "--help"], ["completion", "bash"], ["stop", "--grace", "x"]]
)
def test_the_grammar_imports_neither_grpc_nor_rich(entry: str, argv: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _IMPORTS_OF, entry, *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    [line] = [line for line in result.stdout.splitlines() if line.startswith("MODULES ")]
    loaded = line.split()[1:]
    assert "pycontainer.cli._parser" in loaded  # (it did run)
    heavy = [m for m in loaded if m in _HEAVY or m.startswith(tuple(f"{h}." for h in _HEAVY))]
    assert not heavy, heavy


def _usage_error(*argv: str) -> str:
    err = io.StringIO()
    assert main(list(argv), stdout=io.StringIO(), stderr=err) == 1
    assert "Traceback" not in err.getvalue()
    assert "usage: pycontainer" in err.getvalue()
    return err.getvalue()


@pytest.mark.parametrize(
    ("argv", "attribute", "value"),
    [
        (["up", "--duration", "5s"], "duration", datetime.timedelta(seconds=5)),
        (["up", "--grace", "1m30s"], "grace", datetime.timedelta(seconds=90)),
        (["health", "127.0.0.1:1", "--timeout", "2s"], "timeout", datetime.timedelta(seconds=2)),
        (
            ["health", "127.0.0.1:1", "--connect-timeout", "250ms"],
            "connect_timeout",
            datetime.timedelta(milliseconds=250),
        ),
        (["manager", "--heartbeat", "2s"], "heartbeat", datetime.timedelta(seconds=2)),
        (["manager", "--idle-heartbeat", "2m"], "idle_heartbeat", datetime.timedelta(minutes=2)),
        (["stop", "--grace", "0", "web"], "grace", datetime.timedelta(0)),
        (["apply", "-f", "x.yaml", "--timeout", "2m"], "timeout", datetime.timedelta(minutes=2)),
        (["top", "--interval", "500ms"], "interval", datetime.timedelta(milliseconds=500)),
        (["profile", "web", "--cpu", "2s"], "cpu", datetime.timedelta(seconds=2)),
        (["logs", "web", "--since", "1h"], "since", datetime.timedelta(hours=1)),
    ],
)
def test_every_duration_flag_takes_durations(
    argv: list[str], attribute: str, value: datetime.timedelta
) -> None:
    assert getattr(build_parser().parse_args(argv), attribute) == value


@pytest.mark.parametrize(
    "argv",
    [
        ["up", "--duration", "5"],
        ["health", "127.0.0.1:1", "--timeout", "2"],
        ["manager", "--heartbeat", "5"],
    ],
)
def test_a_bare_number_is_refused_with_the_fix(argv: list[str]) -> None:
    number = argv[-1]
    assert f"'{number}' has no unit: write {number}s" in _usage_error(*argv)


def test_addresses_say_what_to_write(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "'127.0.0.1' has no port: write 127.0.0.1:PORT such as 127.0.0.1:50050" in (
        _usage_error("ps", "--manager", "127.0.0.1")
    )
    assert "has a scheme (http://): gRPC addresses have none" in _usage_error(
        "--manager", "http://127.0.0.1:50050", "ps"
    )
    assert "port 99999 is out of range" in _usage_error("manager", "--listen", "127.0.0.1:99999")
    assert "port 99999 is out of range" in _usage_error("up", "--listen", "127.0.0.1:99999")
    assert "has no port" in _usage_error("health", "localhost")
    # From the environment: not a usage error, but the same sentence, naming the variable.
    monkeypatch.setenv("PYCONTAINER_MANAGER", "http://10.0.0.1:50050")
    err = io.StringIO()
    assert main(["ps"], stdout=io.StringIO(), stderr=err) == 1
    assert err.getvalue().startswith("error: --manager: $PYCONTAINER_MANAGER: 'http://10.0.0.1")


def test_stop_pause_resume_need_a_selection() -> None:
    for verb in ("stop", "pause", "resume"):
        err = io.StringIO()
        code = main([verb, "--manager", "127.0.0.1:1"], stdout=io.StringIO(), stderr=err)
        assert (code, err.getvalue()) == (
            1,
            f"error: {verb}: give container ids or names, -l SELECTOR or --all\n",
        )
    err = io.StringIO()
    assert main(["stop", "web", "--all"], stdout=io.StringIO(), stderr=err) == 1
    assert (
        err.getvalue() == "error: give container ids or names, or -l SELECTOR / --all, not both\n"
    )


def test_restart_kill_rm_and_logs_previous_parse() -> None:
    parser = build_parser()
    restart = parser.parse_args(["restart", "-l", "app=web", "--grace", "0"])
    assert (restart.selector, restart.grace) == ("app=web", datetime.timedelta(0))
    kill = parser.parse_args(["kill", "-s", "TERM", "web", "api"])
    assert (kill.containers, kill.signal) == (["web", "api"], "TERM")
    assert parser.parse_args(["kill", "web"]).signal == "KILL"
    rm = parser.parse_args(["rm", "--all", "--purge"])
    assert (rm.all_containers, rm.purge) == (True, True)
    assert parser.parse_args(["logs", "-p", "web"]).previous is True
    for verb in ("restart", "kill", "rm"):
        err = io.StringIO()
        code = main([verb, "--manager", "127.0.0.1:1"], stdout=io.StringIO(), stderr=err)
        assert (code, err.getvalue()) == (
            1,
            f"error: {verb}: give container ids or names, -l SELECTOR or --all\n",
        )


def _complete(script: str, *words: str) -> list[str]:
    """What bash offers after ``words`` (the last one being completed)."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not installed")
    line = " ".join(words)
    program = (
        f"{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
        "PATH=/nonexistent _pycontainer; printf '%s\\n' \"${COMPREPLY[@]}\""
    )
    result = subprocess.run(
        [bash, "--norc", "-c", program], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_completion_from_the_grammar() -> None:
    out = io.StringIO()
    assert main(["completion", "bash"], stdout=out) == 0
    script = out.getvalue()
    assert script == bash_script()
    assert set(_complete(script, "pycontainer", "st")) == {"stop"}
    assert {"-a", "--all", "-o", "--output", "-l"} <= set(
        _complete(script, "pycontainer", "ps", "-")
    )
    assert _complete(script, "pycontainer", "ps", "-o", "") == [
        "table",
        "wide",
        "name",
        "id",
        "json",
        "yaml",
    ]
    assert _complete(script, "pycontainer", "--manager", "x", "lo") == ["logs"]
    assert _complete(script, "pycontainer", "completion", "-") == ["-h", "--help"]

    zsh = io.StringIO()
    assert main(["completion", "zsh"], stdout=zsh) == 0
    assert "bashcompinit" in zsh.getvalue()
    assert zsh.getvalue().endswith(script)


def test_token_uses_must_be_1_to_1000_and_0_is_not_silently_1() -> None:
    for uses in ("0", "-1", "1001"):
        said = _usage_error("token", "create", "--uses", uses)
        assert f"argument --uses: must be from 1 to 1000, got {uses}" in said, said
    assert "'two' is not a whole number" in _usage_error("token", "create", "--uses", "two")
    assert build_parser().parse_args(["token", "create", "--uses", "1000"]).uses == 1000


def test_operation_limit_is_1_to_a_page() -> None:
    for limit in ("0", "-1", "1001"):
        said = _usage_error("operation", "-n", limit)
        assert f"argument -n/--limit: must be from 1 to 1000, got {limit}" in said, said
    assert build_parser().parse_args(["operation", "-n", "1000"]).limit == 1000

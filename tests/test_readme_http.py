"""Every curl line of the README's "The HTTP face" section, run as typed
(the address swapped for a free one) with the real curl against the example
app started as the section says, with $PYCONTAINER_HTTP_LISTEN."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import IN_CI, free_address, wait_until
from test_examples import Example

from pycontainer.agent._settings import HTTP_LISTEN_ENV

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TYPED_ADDRESS = "localhost:8080"


def _section() -> str:
    text = README.read_text()
    return text.partition("\n## The HTTP face\n")[2].partition("\n## ")[0]


def _curl() -> str:
    found = shutil.which("curl")
    if found is None:
        message = "curl not found: apt-get install curl (the Makefile's SYSTEM_TOOLS)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


def test_the_sections_start_line_is_the_one_the_test_runs() -> None:
    section = _section()
    assert (
        f"`PYCONTAINER_HTTP_LISTEN=127.0.0.1:{TYPED_ADDRESS.rsplit(':', 1)[1]} "
        ".venv/bin/python examples/sync_app.py --listen 127.0.0.1:50051`"
    ) in section.replace("\n", " ")


def test_readme_curl_commands_work() -> None:
    curl = _curl()
    commands = [
        line
        for block in re.findall(r"```sh\n(.*?)```", _section(), re.S)
        for line in block.splitlines()
        if line.startswith("curl ")
    ]
    assert len(commands) >= 4
    address = free_address()
    env = {k: v for k, v in os.environ.items() if k != HTTP_LISTEN_ENV}
    env[HTTP_LISTEN_ENV] = address
    example = Example("sync_app.py", env=env)
    try:

        def run(command: str) -> subprocess.CompletedProcess[str]:
            argv = shlex.split(command.replace(TYPED_ADDRESS, address))
            return subprocess.run([curl, *argv[1:]], capture_output=True, text=True, timeout=30)

        # The app starts itself (no manager): ready once RUNNING and its check passes.
        wait_until(lambda: run(commands[0]).returncode == 0, 15, "/readyz 200")
        for command in commands:
            result = run(command)
            assert result.returncode == 0, (command, result.stderr)
            out = result.stdout
            if "/readyz" in command:
                assert out.endswith("readyz check passed\n"), out
                assert "[+]workers ok" in out.splitlines()
            elif "/metrics" in command:
                names = {f.name for f in text_string_to_metric_families(out)}
                assert {"process_cpu_seconds", "pycontainer_container_info"} <= names, names
            elif "/v1/info" in command:
                assert json.loads(out)["state"] == "LIFECYCLE_STATE_RUNNING"
            elif "/v1/config" in command:
                entries = {e["key"]: e for e in json.loads(out)["entries"]}
                assert entries["db.password"]["redacted"]
                assert "example-only" not in out
    finally:
        code, _, err = example.terminate()
    assert code == 0, err

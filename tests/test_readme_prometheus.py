"""The README's Prometheus section as a user runs it: its `pycontainer
manager --http-listen` line (on free ports, in a directory of the test's),
a container named as its curl line names it (tests/apps/connected_app.py),
each curl line as typed against that manager with prometheus-client's parser
reading what it prints, and the scrape configuration's targets and paths."""

from __future__ import annotations

import contextlib
import re
import shlex
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families
from support import require_tool, wait_until

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _section() -> str:
    text = README.read_text()
    return text.split("\n## Prometheus\n", 1)[1].split("\n## ", 1)[0]


def _free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError):
        return False


def test_readme_prometheus_commands(tmp_path: Path) -> None:
    require_tool("curl")  # the README's lines run the user's own curl
    section = _section()
    [block] = re.findall(r"```sh\n(.*?)```", section, re.S)
    lines = block.splitlines()
    [manager_line] = [line for line in lines if line.startswith(".venv/bin/pycontainer manager")]
    curls = [line for line in lines if line.startswith("curl ")]
    assert len(lines) == 1 + len(curls)
    argv = shlex.split(manager_line)
    grpc_address = argv[argv.index("--listen") + 1]
    http_address = argv[argv.index("--http-listen") + 1]
    # The README's addresses, each made a free port of this test's.
    ours = {grpc_address: _free_address(), http_address: _free_address()}

    def typed(line: str) -> list[str]:
        for theirs, mine in ours.items():
            line = line.replace(theirs, mine)
        return shlex.split(line)

    manager_argv = typed(manager_line)
    manager_argv[0] = str(ROOT / manager_argv[0])
    log = (tmp_path / "manager.log").open("w")
    manager = subprocess.Popen(
        manager_argv, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, text=True
    )
    app = None
    try:
        base = f"http://{ours[http_address]}"
        wait_until(lambda: _answers(f"{base}/metrics"), 30, "the manager's /metrics")
        # The container the curl line names, dialled in.
        [named] = {
            m.group(1) for line in curls if (m := re.search(r"/containers/([^/]+)/metrics", line))
        }
        app_argv = [sys.executable, "tests/apps/connected_app.py", "--name", named]
        app = subprocess.Popen(
            [*app_argv, "--manager", ours[grpc_address]],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: _answers(f"{base}/containers/{named}/metrics"), 30, named)
        for line in curls:
            done = subprocess.run(typed(line), capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, (line, done.stderr)
            names = {family.name for family in text_string_to_metric_families(done.stdout)}
            assert names, line
            if urllib.parse.urlsplit(shlex.split(line)[-1]).path == "/metrics":
                assert "pycontainer_manager_containers" in names
            else:  # the container's own, through the manager
                assert {"process_cpu_seconds", "process_resident_memory_bytes"} <= names, line
                assert f'name="{named}"' in done.stdout, line

        # The scrape configuration names the --http-listen address and paths served.
        [config] = re.findall(r"```yaml\n(.*?)```", section, re.S)
        jobs = yaml.safe_load(config)["scrape_configs"]
        assert len(jobs) == 2
        for job in jobs:
            [target] = job["static_configs"][0]["targets"]
            assert target == http_address
            assert _answers(f"{base}{job.get('metrics_path', '/metrics')}"), job
    finally:
        for proc in (app, manager):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(15)
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        log.close()

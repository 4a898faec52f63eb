"""The README's Mesh section, as typed: every line of its sh blocks in bash, in
order, against a real manager serving mutual TLS (as `make run`'s does), from
a directory with that manager's state/ (state/admin: the CLI's certificate),
the clone's examples/, and ``my_app.py`` the section's Python block: a grpcio
program that dials xds:///greeter with the bootstrap `mesh bootstrap` printed."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from support import wait_until

from pycontainer._tls_env import INSECURE_ENV, TLS_DIR_ENV
from pycontainer.testing import ManagerHost, manager_host

ROOT = Path(__file__).resolve().parent.parent


def _section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("\n## Mesh\n", 1)[1].split("\n## ", 1)[0]


def _frontend_synced(manager: ManagerHost) -> bool:
    """The example's frontend subscribed, and acknowledged what it was sent."""
    clients = [c for c in manager.client.get_mesh_status().clients if "frontend" in c.node_id]
    return bool(clients) and all(
        r.acked_version == r.sent_version for c in clients for r in c.resources
    )


def test_readme_mesh_section_runs_as_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    section = _section()
    [my_app] = re.findall(r"```python\n(.*?)```", section, re.S)
    lines = [
        line
        for block in re.findall(r"```sh\n(.*?)```", section, re.S)
        for line in block.splitlines()
        if line.strip()
    ]
    assert len(lines) >= 7
    work = tmp_path / "work"
    work.mkdir()
    (work / ".venv").symlink_to(ROOT / ".venv")
    (work / "examples").symlink_to(ROOT / "examples")
    (work / "my_app.py").write_text(my_app)
    # The launched containers take the manager's environment: not the suite's --insecure.
    monkeypatch.delenv(INSECURE_ENV, raising=False)
    monkeypatch.delenv(TLS_DIR_ENV, raising=False)
    outputs: dict[str, str] = {}
    with manager_host(work / "state", insecure=False, graceful=True) as manager:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYCONTAINER_")}
        env["PYCONTAINER_MANAGER"] = manager.address
        for line in lines:
            if " mesh status" in line:
                # What a user sees a moment after the apply: the frontend's
                # xDS client has connected (it starts once its container runs).
                wait_until(lambda: _frontend_synced(manager), 30, "the frontend's xDS client")
            result = subprocess.run(
                ["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True, timeout=90
            )
            assert result.returncode == 0, (line, result.stdout, result.stderr)
            assert "Traceback" not in result.stderr, line
            outputs[re.sub(r"^\.venv/bin/pycontainer ", "", line)] = result.stdout
    status = outputs["mesh status"]
    assert re.search(r"(?m)^greeter +3 +0 +- ", status), status
    [frontend] = [row for row in status.splitlines() if row.startswith("frontend-")]
    assert frontend.split()[1] == "grpc"
    assert frontend.count("SYNCED") == 4, frontend
    bootstrap = (work / "bootstrap.json").read_text()
    assert '"type": "tls"' in bootstrap
    assert '"id": "my-app"' in bootstrap
    [app_run] = [out for line, out in outputs.items() if "my_app.py" in line]
    answers = app_run.splitlines()
    assert len(answers) == 3, app_run
    assert all(a.startswith("hello, my-app, from greeter-") for a in answers), app_run
    split = outputs["route greeter greeter=90 greeter-canary=10"]
    assert split == "greeter: greeter=90 greeter-canary=10 (route)\n", split
    described = outputs["mesh status greeter -o yaml"]
    assert "greeter-canary: 90" not in described
    assert "greeter: 90" in described, described
    assert outputs["route greeter --clear"].startswith("greeter: no split")

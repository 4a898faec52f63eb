"""The README's Mesh section, as typed: its Python block that runs two subsets
of ``orders`` against a real manager serving mutual TLS (its address made a
free port), then every line of its sh blocks in bash, in order, from a
directory with that manager's state/ (state/admin: the CLI's certificate) and
``my_app.py`` the section's second Python block: a grpcio program that dials
xds:///orders with the bootstrap `mesh bootstrap` printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support import wait_until

from pycontainer._tls_env import INSECURE_ENV, TLS_DIR_ENV
from pycontainer.testing import manager_host

ROOT = Path(__file__).resolve().parent.parent


def _section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("\n## Mesh\n", 1)[1].split("\n## ", 1)[0]


def test_readme_mesh_section_runs_as_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    section = _section()
    run_specs, my_app = re.findall(r"```python\n(.*?)```", section, re.S)
    lines = [
        line
        for block in re.findall(r"```sh\n(.*?)```", section, re.S)
        for line in block.splitlines()
        if line.strip()
    ]
    assert len(lines) >= 6
    dial = 'ManagerClient("127.0.0.1:50050")'
    assert dial in run_specs
    work = tmp_path / "work"
    work.mkdir()
    (work / ".venv").symlink_to(ROOT / ".venv")
    (work / "my_app.py").write_text(my_app)
    # The launched containers take the manager's environment: not the suite's --insecure.
    monkeypatch.delenv(INSECURE_ENV, raising=False)
    monkeypatch.delenv(TLS_DIR_ENV, raising=False)
    with manager_host(work / "state", insecure=False) as manager:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYCONTAINER_")}
        env["PYCONTAINER_MANAGER"] = manager.address
        script = tmp_path / "run_specs.py"
        script.write_text(run_specs.replace(dial, f'ManagerClient("{manager.address}")'))
        ran = subprocess.run(
            [sys.executable, str(script)],
            cwd=work,  # where state/admin is
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ran.returncode == 0, ran.stderr

        def served() -> bool:
            status = manager.client.get_mesh_status()
            return bool(status.services) and len(status.services[0].healthy) == 2

        wait_until(served, 60, "both subsets of orders in the mesh")
        outputs = {}
        for line in lines:
            result = subprocess.run(
                ["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True, timeout=60
            )
            assert result.returncode == 0, (line, result.stdout, result.stderr)
            assert "Traceback" not in result.stderr, line
            outputs[line] = result.stdout
    by_verb = {re.sub(r"^\S*(pycontainer|python) ", "", line): out for line, out in outputs.items()}
    bootstrap = (work / "bootstrap.json").read_text()
    assert '"type": "tls"' in bootstrap
    assert '"id": "my-app"' in bootstrap
    [app_run] = [out for line, out in outputs.items() if "my_app.py" in line]
    assert app_run.split() == ["SERVING"] * 4, app_run
    assert by_verb["route orders v1=90 v2=10"] == "orders: v1=90 v2=10 (route)\n"
    status = by_verb["mesh status"]
    assert re.search(r"(?m)^orders +2 +0 +v1=90 v2=10 \(route\)", status), status
    assert "my-app" not in status  # it has gone: only connected clients are listed
    assert "weights:" in by_verb["mesh status orders -o yaml"]
    assert by_verb["route orders --clear"].startswith("orders: no split")

"""The distribution as a user installs it: the wheel built from this tree,
installed with the README's own `pip install` lines into a fresh virtualenv
(dependencies from the package index), used from outside the source tree."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pycontainer import _console

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DISTRIBUTION = PROJECT["name"]
# A requirement as the README writes it: NAME or 'NAME[extra,...]'.
REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)(?:\[(?P<extras>[a-z0-9,_-]+)\])?$")

# The container side, embedded as the README shows, from the installed wheel;
# the command's and the manager's dependencies are not there.
EMBED = """
import importlib.util, sys
from concurrent import futures

import grpc
import pycontainer
from pycontainer.v1 import management_pb2, management_pb2_grpc

assert "site-packages" in pycontainer.__file__, pycontainer.__file__
for module in ("rich", "opentelemetry.instrumentation"):
    assert importlib.util.find_spec(module) is None, module + " came with the base install"
container = pycontainer.Container(pycontainer.ContainerSettings(name="orders"))
server = grpc.server(futures.ThreadPoolExecutor(4))
container.add_to_server(server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
container.start()
with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    info = management_pb2_grpc.ManagementStub(channel).GetInfo(
        management_pb2.GetInfoRequest(), timeout=10
    )
container.stop(reason="done")
server.stop(grace=None).wait()
container.close()
print(info.identity.name, pycontainer.__version__)
"""


def _run(
    argv: list[str | Path], cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def _readme_pip_lines() -> list[str]:
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", README.read_text(), re.S):
        lines += [line for line in block.splitlines() if line.startswith("pip install ")]
    return lines


def _requirement(line: str) -> tuple[str, set[str]]:
    """The requirement of a README `pip install` line: name and extras."""
    words = shlex.split(line, comments=True)
    assert len(words) == 3, line  # pip install REQUIREMENT
    match = REQUIREMENT.match(words[2])
    assert match, line
    return match["name"], set(filter(None, (match["extras"] or "").split(",")))


def _line_with_extras(extras: set[str]) -> str:
    [line] = [line for line in _readme_pip_lines() if _requirement(line)[1] == extras]
    return line


def test_the_distribution_name_is_said_the_same_everywhere() -> None:
    """The README's install lines and every "pip install" hint in the code
    name this distribution and extras it declares (the name "pycontainer"
    on PyPI installs an unrelated project)."""
    assert DISTRIBUTION == _console.DISTRIBUTION != "pycontainer"
    lines = _readme_pip_lines()
    assert {frozenset(_requirement(line)[1]) for line in lines} >= {frozenset(), frozenset({"cli"})}
    extras = set(PROJECT["optional-dependencies"])
    for line in lines:
        name, wanted = _requirement(line)
        assert name == DISTRIBUTION, line
        assert wanted <= extras, line
    hints = re.findall(r"pip install '([^']+)'", README.read_text())
    for source in sorted((ROOT / "pycontainer").rglob("*.py")):
        # pycontainer._console spells it through its constant, checked above.
        text = source.read_text().replace("{DISTRIBUTION}", _console.DISTRIBUTION)
        hints += re.findall(r"pip install '([^']+)'", text)
    assert hints
    for hint in hints:
        match = REQUIREMENT.match(hint)
        assert match, hint
        assert match["name"] == DISTRIBUTION, hint
        assert set((match["extras"] or "").split(",")) - {""} <= extras, hint


@pytest.fixture(scope="module")
def wheel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `pip wheel --no-deps` builds, from a copy of the sources
    (setuptools would also pack what an older build left in build/)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("pycontainer", "generated"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path_factory.mktemp("wheels")
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, source], source
    )
    assert built.returncode == 0, built.stderr
    [wheel] = wheels.glob("*.whl")
    assert wheel.name.startswith(DISTRIBUTION.replace("-", "_") + "-"), wheel.name
    return wheels


def test_readme_install_lines_install_what_each_use_needs(wheel_dir: Path, tmp_path: Path) -> None:
    """In a fresh virtualenv: the README's base line gives an app the
    container side without the command's dependencies, and the command then
    says which extra to install; the README's [cli] line gives the command
    and the manager. Each line runs as written plus `--find-links` to the
    built wheel, as the README says to do before a release."""
    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", venv], tmp_path)
    assert made.returncode == 0, made.stderr
    python, pycontainer = venv / "bin" / "python", venv / "bin" / "pycontainer"

    def pip_install(line: str) -> None:
        words = shlex.split(line, comments=True)
        assert words[:2] == ["pip", "install"], line
        installed = _run(
            [python, "-m", "pip", "install", "-q", "--find-links", wheel_dir, *words[2:]], tmp_path
        )
        assert installed.returncode == 0, (line, installed.stderr)

    pip_install(_line_with_extras(set()))
    embedded = _run([python, "-P", "-c", EMBED], tmp_path, timeout=60)
    assert embedded.returncode == 0, embedded.stderr
    assert embedded.stdout.split() == ["orders", PROJECT["version"]]

    without_cli = _run([pycontainer, "--help"], tmp_path, timeout=60)
    assert without_cli.returncode == 1
    assert without_cli.stdout == ""
    assert f"pip install '{DISTRIBUTION}[cli]'" in without_cli.stderr
    assert "Traceback" not in without_cli.stderr

    pip_install(_line_with_extras({"cli"}))
    with_cli = _run([pycontainer, "--help"], tmp_path, timeout=60)
    assert with_cli.returncode == 0, with_cli.stderr
    assert with_cli.stdout.startswith("usage: pycontainer")
    manager = _run([python, "-P", "-c", "import pycontainer.manager"], tmp_path, timeout=60)
    assert manager.returncode == 0, manager.stderr
    # The manager's mesh: Envoy's xDS API and CSDS.
    mesh = "from envoy.config.cluster.v3 import cluster_pb2; import grpc_csds"
    mesh_imports = _run([python, "-P", "-c", mesh], tmp_path, timeout=60)
    assert mesh_imports.returncode == 0, mesh_imports.stderr
    # The web view's pages and scripts are package data of the wheel.
    web = "from pycontainer.manager._web import _static; _static('fleet.html'); _static('web.js')"
    web_assets = _run([python, "-P", "-c", web], tmp_path, timeout=60)
    assert web_assets.returncode == 0, web_assets.stderr


def test_every_package_of_the_source_tree_is_in_the_distribution() -> None:
    """pyproject lists its packages one by one (generated ones are mapped from
    generated/): a new subpackage left out installs everywhere but from the
    wheel (pycontainer.manager._xds once did)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapped = {name: ROOT / path for name, path in config["package-dir"].items()}
    on_disk = set()
    for init in (ROOT / "pycontainer").rglob("__init__.py"):
        if "__pycache__" not in init.parts:
            on_disk.add(".".join(init.parent.relative_to(ROOT).parts))
    for name, path in mapped.items():
        if name != "pycontainer":
            assert (path / "__init__.py").is_file(), (name, path)
            on_disk.add(name)
    assert on_disk == listed, (
        f"missing from pyproject's packages: {sorted(on_disk - listed)}; "
        f"listed but not in the tree: {sorted(listed - on_disk)}"
    )

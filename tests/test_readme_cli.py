"""Every `.venv/bin/pycontainer` command of the README, as a user types it,
against `pycontainer up` running the demo spec (what `make run` runs), with
mutual TLS on as it is by default (the suite's $PYCONTAINER_INSECURE unset for
them); the Security section's against the managers its lines start."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path
from typing import IO

import pytest
from security_support import issue_files
from support import wait_until

import pycontainer
from pycontainer._tls_env import INSECURE_ENV, TLS_DIR_ENV
from pycontainer.client import ManagerClient, Transport
from pycontainer.security import MANAGER, CertificateAuthority, CredentialFiles, container
from pycontainer.testing import container_host, manager_host
from pycontainer.v1 import container_pb2, manager_pb2, spec_pb2

ROOT = Path(__file__).resolve().parent.parent
PYCONTAINER = ROOT / ".venv" / "bin" / "pycontainer"
# Verbs that follow until interrupted (a pattern of the command line), and
# what they show once they work: Ctrl-C them then.
LIVE = {
    r"pycontainer logs .*-f\b": r"(sync-worker|async-pipeline|oci-worker).*WARN",
    r"pycontainer top\b": r"RUNNING",
    r"pycontainer events .*-w\b": r"sync-worker",
    r"pycontainer run\b": r"tick",
}
# What some commands print once they work (a pattern of the command line ->
# a regular expression their output matches), beyond exit 0.
SHOWS = {
    r"pycontainer version$": r"(?s)Client Version: \S+.*Manager Version: \S+",
    r"pycontainer ps$": r"sync-worker .*RUNNING",
    r"pycontainer ps .*-o name$": r"\Aasync-pipeline\nasync-pipeline\n\Z",
    r"pycontainer logs .*--timestamps": r"(?m)^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z ",
    r"pycontainer logs .*--previous": r"\S",
    # Replicas told apart (NAME/ID8), in the table's state words.
    r"pycontainer events$": r"async-pipeline/[0-9a-f]{8} +STARTING -> RUNNING",
    # `make run` applied the file as apply's owner: nothing to change.
    r"pycontainer (diff|apply) -f examples/demo.yaml$": r"\A((\S+): unchanged \(.*\)\n)+\Z",
    r"pycontainer restart ": r"RUNNING \(restarted\)",
    r"pycontainer kill ": r"sent KILL",
    # The frontend's calls through the mesh, each answered by a greeter replica.
    r"pycontainer logs frontend": r"call \d+: hello, frontend, from greeter-[0-9a-f]{8}",
}
# What `make run` applies (its RUN_SPEC), as `up` flags.
RUN_SPEC_FLAGS = [
    flag
    for path in re.search(r"^RUN_SPEC \?= (.+)$", (ROOT / "Makefile").read_text(), re.M)
    .group(1)  # type: ignore[union-attr]
    .split()
    for flag in ("-f", path)
]
# Terminal control sequences (colours, cursor moves), not text.
ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|\][^\x07]*\x07|[()][A-Z0-9])")


_SECURITY = "\n## Security\n"
_MESH = "\n## Mesh\n"


def _readme(*, security: bool = False) -> str:
    """The README's Security section (``security``), else everything else
    but the Mesh section (tests/test_readme_mesh.py runs it, against a mesh)."""
    text = (ROOT / "README.md").read_text()
    head, mesh, rest = text.partition(_MESH)
    if mesh:
        text = head + "\n## " + rest.partition("\n## ")[2]
    before, _, rest = text.partition(_SECURITY)
    section, heading, after = rest.partition("\n## ")
    return section if security else before + heading + after


def _commands(prefix: str = ".venv/bin/pycontainer ", *, security: bool = False) -> list[str]:
    out = []
    for block in re.findall(r"```sh\n(.*?)```", _readme(security=security), re.S):
        out += [line for line in block.splitlines() if line.startswith(prefix)]
    return out


def _secure_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no --insecure, no certificate directory."""
    env = {k: v for k, v in os.environ.items() if k not in (INSECURE_ENV, TLS_DIR_ENV)}
    return {**env, **extra}


def _free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


class _Reader:
    """What a process writes on one stream (a pipe, or a terminal's master
    side), read as it comes: a stream nobody reads would fill and block it."""

    def __init__(self, stream: IO[str] | int) -> None:
        self.chunks: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str] | int) -> None:
        if isinstance(stream, int):  # a pty master: EIO once the process closed it
            while True:
                try:
                    data = os.read(stream, 65536)
                except OSError:
                    data = b""
                if not data:
                    break
                self.chunks.append(data.decode(errors="replace"))
            os.close(stream)
            return
        with stream:  # closed at its end, not left to the garbage collector
            for line in stream:
                self.chunks.append(line)

    def text(self) -> str:
        self._thread.join(30)  # after the process ended: until end of file
        return "".join(self.chunks)


def _terminal() -> tuple[int, int]:
    """A pseudo-terminal of 40x120 (master, slave): `top` draws its live table
    on a terminal only, as it does for a user."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    return master, slave


def _interrupt_once_it_shows(
    argv: list[str], expected: str, cwd: Path, env: dict[str, str]
) -> None:
    """Run a following verb on a terminal until it shows ``expected`` (a
    regular expression), then Ctrl-C it."""
    command = shlex.join(argv)
    master, slave = _terminal()
    # The terminal's own size, as a user's shell gives it: not $COLUMNS or
    # $LINES of the test's process (pytest-xdist's workers have COLUMNS=80,
    # which rich takes over the terminal's 120, cutting STATE to "RUNNI…").
    env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=slave, stderr=subprocess.PIPE, text=True)
    os.close(slave)
    assert proc.stderr is not None
    out, err = _Reader(master), _Reader(proc.stderr)
    try:

        def shown() -> bool:
            return bool(re.search(expected, ANSI.sub("", "".join(out.chunks))))

        wait_until(lambda: shown() or proc.poll() is not None, 30, f"{expected} from {command}")
        assert proc.poll() is None, (command, out.text(), err.text())
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    # 143: the sidecar exits with its program's status (stopped by SIGTERM).
    assert proc.returncode in (0, 130, -2, 143), (command, err.text())
    assert "Traceback" not in err.text(), command


def test_readme_cli_commands(tmp_path: Path) -> None:
    # `manager` and `health` run against other servers: tests/test_examples.py.
    commands = [
        c
        for c in _commands()
        if not c.startswith((".venv/bin/pycontainer manager", ".venv/bin/pycontainer health"))
    ]
    assert len(commands) >= 15
    address = _free_address()
    env = _secure_env(PYCONTAINER_MANAGER=address)
    # The commands run in a directory of their own (`profile -o` writes there),
    # laid out as the clone: a copy of its examples/ (`apply -f
    # examples/demo.yaml`; a copy, not a symlink, which a runc container's
    # bind mount of its working directory would leave dangling) and the
    # manager's state/ (where they find state/admin, as from the clone's root).
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(ROOT / "examples", work / "examples")
    log = (tmp_path / "up.log").open("w")  # a pipe nobody reads would fill and block up
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pycontainer.cli",
            "up",
            *RUN_SPEC_FLAGS,
            "--headless",
            "--listen",
            address,
            "--state-dir",
            "state",  # relative, as `make run` gives it
        ],
        # As `make run`, in a directory laid out as the clone (so that `apply
        # -f examples/demo.yaml` there names the same file: the same owner).
        cwd=work,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # sync-worker, async-pipeline twice, ticker; oci-worker where runc is (up
    # skips it elsewhere, and `diff` would then want to create it); the mesh's
    # three greeters and its frontend.
    replicas = (5 if shutil.which("runc") else 4) + 4
    try:

        def running() -> bool:
            ps = subprocess.run(
                [str(PYCONTAINER), "ps", "-o", "json"],
                env=env,
                cwd=work,
                capture_output=True,
                text=True,
                timeout=30,
            )
            return ps.returncode == 0 and ps.stdout.count("LIFECYCLE_STATE_RUNNING") >= replicas

        wait_until(running, 60, "the demo containers to run")

        def frontend_answered() -> bool:
            logs = subprocess.run(
                [str(PYCONTAINER), "logs", "frontend"],
                env=env,
                cwd=work,
                capture_output=True,
                text=True,
                timeout=30,
            )
            return bool(re.search(SHOWS[r"pycontainer logs frontend"], logs.stdout))

        # The greeters take a moment more to be ready: the frontend's first
        # calls may wait or fail until then, as the mesh had no endpoint yet.
        wait_until(frontend_answered, 60, "the frontend's first answer through the mesh")
        for command in commands:
            # `run --listen` on a free port instead of the README's fixed one.
            argv = shlex.split(re.sub(r"127\.0\.0\.1:50060\b", _free_address(), command))
            argv[0] = str(ROOT / argv[0])
            live = [expected for verb, expected in LIVE.items() if re.search(verb, command)]
            if live:
                # The sidecar as the README runs it: standalone (with
                # $PYCONTAINER_MANAGER it would join the manager, which serves
                # mutual TLS to certificates of its CA only, and wait to be started).
                standalone = {k: v for k, v in env.items() if k != "PYCONTAINER_MANAGER"}
                sidecar = re.search(r"pycontainer run\b", command)
                _interrupt_once_it_shows(argv, live[0], work, standalone if sidecar else env)
                continue
            result = subprocess.run(
                argv, cwd=work, env=env, capture_output=True, text=True, timeout=60
            )
            assert result.returncode == 0, (command, result.stdout, result.stderr)
            assert "Traceback" not in result.stderr, command
            for verb, expected in SHOWS.items():
                if re.search(verb, command):
                    assert re.search(expected, result.stdout), (command, result.stdout)
            if command.endswith("-o yaml"):  # a spec file: applying it changes nothing
                again = subprocess.run(
                    [str(PYCONTAINER), "apply", "-f", "-"],
                    input=result.stdout,
                    cwd=work,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert again.returncode == 0, again.stderr
                assert again.stdout == "async-pipeline: unchanged (2 replicas)\n", again.stdout
        assert (work / "sync-worker.pb.gz").stat().st_size > 0  # `profile -o` wrote it
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(60)
        log.close()
    assert up.returncode == 0, (tmp_path / "up.log").read_text()[-3000:]


def test_readme_manager_command_serves_until_sigterm(tmp_path: Path) -> None:
    """The README's `pycontainer manager` line (on a free port), as typed."""
    [line] = [
        c
        for c in _commands()
        # The Prometheus section's, with --http-listen: tests/test_readme_prometheus.py.
        if c.startswith(".venv/bin/pycontainer manager") and "--http-listen" not in c
    ]
    address = _free_address()
    argv = shlex.split(line.replace("127.0.0.1:50050", address))
    argv[0] = str(ROOT / argv[0])
    env = _secure_env()
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"manager serving on {address}"
        # From the same directory: its state/admin, over mutual TLS.
        ps = subprocess.run(
            [str(PYCONTAINER), "--manager", address, "ps"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert ps.returncode == 0, ps.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0
    assert (tmp_path / "state" / "manager.db").exists()


def test_readme_completion_line_registers_completion() -> None:
    """The README's `source <(... completion bash)`, as typed, in bash."""
    [line] = _commands("source <(.venv/bin/pycontainer completion")
    result = subprocess.run(
        ["bash", "-c", f"{line} && complete -p pycontainer"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(" pycontainer"), result.stdout


def _python_blocks(heading: str) -> list[str]:
    """The ```python blocks of the README section under ``heading``."""
    section = (ROOT / "README.md").read_text().split(f"\n## {heading}\n", 1)[1]
    return re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], re.S)


def test_readme_client_snippet_runs_against_a_manager(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's pycontainer.client block, as written (the manager's
    address made a free port), against a real manager serving mutual TLS with
    one container, run where that manager's state/ is."""
    [code] = _python_blocks("From Python: `pycontainer.client`")
    dial = 'ManagerClient("127.0.0.1:50050")'
    assert dial in code
    with manager_host(tmp_path / "state", insecure=False) as manager:
        # A container of this process: it joins with a certificate of the manager's CA.
        ca = CertificateAuthority.open(tmp_path / "state")
        issue_files(ca, container("web-1"), tmp_path / "web-tls")
        monkeypatch.setenv(TLS_DIR_ENV, str(tmp_path / "web-tls"))
        settings = pycontainer.ContainerSettings(name="web", id="web-1")
        with container_host(settings, manager=manager) as web:
            wait_until(
                lambda: web.container.state == pycontainer.State.RUNNING, 15, "web to be started"
            )
            script = tmp_path / "client.py"
            script.write_text(code.replace(dial, f'ManagerClient("{manager.address}")'))
            env = {k: v for k, v in os.environ.items() if not k.startswith("PYCONTAINER_")}
            result = subprocess.run(
                [sys.executable, str(script)],
                cwd=tmp_path,  # where the manager's state/ (and state/admin) is
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
    assert result.returncode == 0, result.stderr
    listed, failed = result.stdout.splitlines()
    assert re.fullmatch(r"web web-\S+ LIFECYCLE_STATE_RUNNING", listed), listed
    assert failed.startswith("NOT_FOUND "), failed
    assert "no-such" in failed, failed


def test_readme_testing_snippets_run_as_a_pytest_file(tmp_path: Path) -> None:
    """The README's pycontainer.testing blocks: the conftest line and the test,
    as files of a project of their own, run by pytest in a subprocess."""
    conftest, test = _python_blocks("In your tests: `pycontainer.testing`")
    assert conftest.strip() == 'pytest_plugins = ["pycontainer.testing.pytest_plugin"]'
    project = tmp_path / "project"
    project.mkdir()
    (project / "conftest.py").write_text(conftest)
    (project / "test_web.py").write_text(test)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYCONTAINER_")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(project)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 passed" in result.stdout, result.stdout


def _start_manager(line: str, work: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """A README `pycontainer manager` line, as typed in ``work`` (its
    addresses made free ports); the process and its main address, once serving."""
    address = _free_address()
    typed = line.replace("127.0.0.1:50050", address)
    typed = typed.replace("127.0.0.1:50051", env.get("HEALTH_ADDRESS", "127.0.0.1:50051"))
    argv = shlex.split(typed)
    argv[0] = str(ROOT / argv[0])
    proc = subprocess.Popen(
        argv, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    first = proc.stdout.readline().strip()
    if first != f"manager serving on {address}":
        proc.kill()
        _, err = proc.communicate(timeout=30)
        raise AssertionError((line, first, err))
    return proc, address


def _run(argv: list[str], work: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if argv[0].startswith(".venv/"):
        argv = [str(ROOT / argv[0]), *argv[1:]]
    return subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=60)


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return err


def _security_blocks() -> dict[str, list[str]]:
    """The Security section's sh blocks, each a manager line and the lines
    run against it, keyed by what the manager line shows (its last flag)."""
    blocks: dict[str, list[str]] = {}
    for block in re.findall(r"```sh\n(.*?)```", _readme(security=True), re.S):
        lines = [line for line in block.splitlines() if line.startswith(".venv/bin/pycontainer ")]
        assert lines, block
        assert lines[0].startswith(".venv/bin/pycontainer manager "), block
        flag = next(w for w in reversed(shlex.split(lines[0])) if w.startswith("--"))
        blocks[flag] = lines
    assert set(blocks) == {"--role", "--ca-key", "--health-listen", "--join-listen"}, blocks
    return blocks


def test_readme_security_lines_work_as_typed_against_a_mutual_tls_manager(
    tmp_path: Path,
) -> None:
    """The Security section's commands, each manager as typed (on free ports)
    with mutual TLS, and what the prose says of them."""
    blocks = _security_blocks()
    env = _secure_env()

    # Roles: alice (her certificate issued by the block's `certificate create`,
    # with the admin's from state/admin) may operate, not apply.
    work = tmp_path / "roles"
    work.mkdir()
    manager_line, *client_lines = blocks["--role"]
    proc, address = _start_manager(manager_line, work, env)
    try:
        on = {**env, "PYCONTAINER_MANAGER": address}
        assert not _python_blocks("Security")  # the CLI issues certificates now
        # A container named web for alice to stop, launched by the admin.
        admin_transport = Transport(work / "state" / "admin", MANAGER)
        with ManagerClient(address, transport=admin_transport) as admin:
            command = [sys.executable, str(ROOT / "tests/apps/connected_app.py"), "--name", "web"]
            spec = spec_pb2.ContainerSpec(name="web", command=command)
            admin.run_container(manager_pb2.RunContainerRequest(spec=spec))
            request = manager_pb2.GetContainerRequest(container="web")
            wait_until(
                lambda: (
                    admin.get_container(request).container.state
                    == container_pb2.LIFECYCLE_STATE_RUNNING
                ),
                30,
                "web to run over mutual TLS",
            )
        for line in client_lines:
            done = _run(shlex.split(line), work, on)
            assert done.returncode == 0, (line, done.stdout, done.stderr)
            assert "Traceback" not in done.stderr
        assert (work / "alice" / "tls.pem").stat().st_mode & 0o777 == 0o600
        # Outside her role: the refusal the README quotes.
        quoted = re.search(
            r"`(spiffe://pycontainer\.local/user/alice may not call[^`]*?); \.\.\.`",
            _readme(security=True),
        )
        assert quoted is not None
        (work / "one.yaml").write_text("containers:\n  - name: other\n    command: ['true']\n")
        refused = _run(
            [str(PYCONTAINER), "--cert-dir", "alice", "apply", "-f", "one.yaml"], work, on
        )
        assert refused.returncode == 1, refused.stderr
        assert "PERMISSION_DENIED" in refused.stderr
        assert " ".join(quoted.group(1).split()) in refused.stderr, refused.stderr
        # No certificate where it is looked for: one line saying what to pass.
        bare = _run([str(PYCONTAINER), "--cert-dir", "nowhere", "ps"], work, on)
        assert bare.returncode == 1, bare.stderr
        assert "--cert-dir" in bare.stderr, bare.stderr
        # Plaintext: refused at the handshake (unreachable), and told what to pass.
        plain = _run([str(PYCONTAINER), "--insecure", "ps"], work, on)
        assert plain.returncode == 2, plain.stderr
        assert "--cert-dir" in plain.stderr, plain.stderr
    finally:
        _stop(proc)

    # Your own CA: every certificate from it, none of the manager's own.
    work = tmp_path / "own-ca"
    work.mkdir()
    external = CertificateAuthority.open(work / "ca")  # ca/ca.pem, ca/ca-key.pem
    [manager_line] = blocks["--ca-key"]
    proc, address = _start_manager(manager_line, work, env)
    try:
        ps = _run([str(PYCONTAINER), "ps"], work, {**env, "PYCONTAINER_MANAGER": address})
        assert ps.returncode == 0, ps.stderr
        leaf, trust = CredentialFiles.in_directory(work / "state" / "admin").read()
        assert external.issued(leaf.certificate_chain_pem)
        assert trust == external.certificate_pem
        assert not (work / "state" / "ca-key.pem").exists()
    finally:
        _stop(proc)

    # kubelet's probe: plaintext health on its own port, mutual TLS on the main one.
    work = tmp_path / "health"
    work.mkdir()
    health_address = _free_address()
    [manager_line] = blocks["--health-listen"]
    proc, address = _start_manager(manager_line, work, {**env, "HEALTH_ADDRESS": health_address})
    try:
        probe = _run([str(PYCONTAINER), "health", health_address], work, env)
        assert probe.returncode == 0, probe.stderr
        plain = _run([str(PYCONTAINER), "health", address], work, env)
        assert plain.returncode == 2, plain.stderr  # no plaintext there: connection failed
    finally:
        _stop(proc)


def test_readme_join_lines_work_as_typed(tmp_path: Path) -> None:
    """Joining a container the manager did not launch, as the Security section
    types it: a token made into join.env, listed, and a sidecar that sources
    join.env joins (its certificate in the default directory) and runs."""
    [block] = [
        b
        for b in re.findall(r"```sh\n(.*?)```", _readme(security=True), re.S)
        if "--join-listen" in b
    ]
    manager_line, *rest = [line for line in block.splitlines() if line and not line.startswith("#")]
    join_address = _free_address()
    env = _secure_env(XDG_STATE_HOME=str(tmp_path / "xdg"))
    proc, address = _start_manager(
        manager_line.replace("127.0.0.1:50052", join_address), tmp_path, env
    )
    on = {**env, "PYCONTAINER_MANAGER": address}
    joiner: subprocess.Popen[str] | None = None
    try:
        create, listing, join = rest
        made = _run(["bash", "-c", create.replace(".venv/", f"{ROOT}/.venv/")], tmp_path, on)
        assert made.returncode == 0, made.stderr
        exported = (tmp_path / "join.env").read_text()
        assert f"PYCONTAINER_JOIN={join_address}" in exported
        assert "PYCONTAINER_CONTAINER_ID=worker-1" in exported
        listed = _run(shlex.split(listing), tmp_path, on)
        assert listed.returncode == 0, listed.stderr
        assert "worker-1" in listed.stdout
        joiner = subprocess.Popen(
            ["bash", "-c", join.replace(".venv/", f"{ROOT}/.venv/")],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        admin = Transport(tmp_path / "state" / "admin", MANAGER)
        with ManagerClient(address, transport=admin) as client:
            request = manager_pb2.GetContainerRequest(container="worker-1")

            def running() -> bool:
                assert joiner is not None
                assert joiner.poll() is None, joiner.communicate()
                try:
                    got = client.get_container(request).container
                except Exception:
                    return False
                return got.state == container_pb2.LIFECYCLE_STATE_RUNNING and got.connected

            wait_until(running, 40, "the sidecar joined with the token and runs")
            leaf = tmp_path / "xdg" / "pycontainer" / "tls" / "worker-1" / "tls.pem"
            assert leaf.stat().st_mode & 0o777 == 0o600
            client.stop_container(manager_pb2.StopContainerRequest(container="worker-1"))
        # The stop's SIGTERM ends sleep; the sidecar exits with its status (128+15).
        assert joiner.wait(30) == 128 + signal.SIGTERM
    finally:
        if joiner is not None and joiner.poll() is None:
            joiner.kill()
        if joiner is not None:
            joiner.communicate(timeout=30)
        said = _stop(proc)
    assert f"containers it did not launch join at {join_address}" in said

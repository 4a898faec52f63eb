"""Kubelet-like probes of a program that does not embed pycontainer: run a
command, GET a URL, connect to a port or ask grpc.health.v1, every period,
each within a timeout; a check turns NOT_SERVING after ``failure_threshold``
failures in a row and SERVING again at the first success."""

from __future__ import annotations

import contextlib
import http.client
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..v1 import spec_pb2

__all__ = ["ProbeKind", "ProbeSpec", "Prober", "parse_probe", "run_probe"]

ProbeKind = Literal["exec", "http", "tcp", "grpc"]

DEFAULT_PERIOD = 10.0
DEFAULT_TIMEOUT = 1.0
DEFAULT_FAILURE_THRESHOLD = 3
# Most output of an exec probe kept for the check's message.
_MESSAGE_CHARS = 200


@dataclass(frozen=True)
class ProbeSpec:
    """One probe: what to ask and how often."""

    kind: ProbeKind
    # exec: the argument vector (no shell).
    command: tuple[str, ...] = ()
    # http, tcp, grpc.
    host: str = "127.0.0.1"
    port: int = 0
    # http: the path of the GET.
    path: str = "/"
    # grpc: the service of the Check ("" is overall).
    service: str = ""
    period: float = DEFAULT_PERIOD
    timeout: float = DEFAULT_TIMEOUT
    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    initial_delay: float = 0.0
    # exec: extra environment (the sidecar adds the program's pid).
    env: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.kind == "exec" and not self.command:
            raise ValueError("an exec probe needs a command")
        if self.kind != "exec" and not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} is not 1-65535")
        if self.period <= 0 or self.timeout <= 0:
            raise ValueError("a probe's period and timeout must be positive")
        if self.failure_threshold < 1:
            raise ValueError("a probe's failure threshold must be at least 1")

    def describe(self) -> str:
        """The probe as an operator would write it."""
        if self.kind == "exec":
            return f"exec {shlex.join(self.command)}"
        if self.kind == "http":
            return f"http GET http://{_hostport(self.host, self.port)}{self.path}"
        if self.kind == "tcp":
            return f"tcp {_hostport(self.host, self.port)}"
        return f"grpc {_hostport(self.host, self.port)} service {self.service!r}"

    def target_text(self) -> str:
        """The argument of --liveness-KIND / --readiness-KIND that gives this probe."""
        if self.kind == "exec":
            return shlex.join(self.command)
        address = (
            str(self.port) if self.host == "127.0.0.1" else f"{_hostport(self.host, self.port)}"
        )
        if self.kind == "http":
            return f"{address}{self.path}"
        if self.kind == "grpc" and self.service:
            return f"{address}/{self.service}"
        return address

    @classmethod
    def from_proto(cls, probe: spec_pb2.Probe) -> ProbeSpec:
        """The spec file's Probe message as a ProbeSpec."""
        handler = probe.WhichOneof("handler")
        if handler is None:
            raise ValueError("the probe has no exec, http, tcp or grpc handler")
        timing: dict[str, float | int] = {}
        if probe.HasField("period"):
            timing["period"] = probe.period.ToNanoseconds() / 1e9
        if probe.HasField("timeout"):
            timing["timeout"] = probe.timeout.ToNanoseconds() / 1e9
        if probe.failure_threshold:
            timing["failure_threshold"] = probe.failure_threshold
        if probe.HasField("initial_delay"):
            timing["initial_delay"] = probe.initial_delay.ToNanoseconds() / 1e9
        if handler == "exec":
            return cls("exec", command=tuple(probe.exec.command), **timing)  # type: ignore[arg-type]
        message = getattr(probe, handler)
        host = message.host or "127.0.0.1"
        if handler == "http":
            return cls(
                "http",
                host=host,
                port=message.port,
                path=message.path or "/",
                **timing,  # type: ignore[arg-type]
            )
        if handler == "tcp":
            return cls("tcp", host=host, port=message.port, **timing)  # type: ignore[arg-type]
        return cls(
            "grpc",
            host=host,
            port=message.port,
            service=message.service,
            **timing,  # type: ignore[arg-type]
        )


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split_address(text: str) -> tuple[str, int]:
    """``PORT`` or ``HOST:PORT`` (``[V6]:PORT``)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit():
        raise ValueError(f"{text!r} is not PORT or HOST:PORT")
    return host, int(port)


def parse_probe(kind: ProbeKind, text: str) -> ProbeSpec:
    """A probe from the command line: exec ``CMD`` (split like a shell would,
    run without one), http ``[HOST:]PORT[/PATH]``, tcp ``[HOST:]PORT``, grpc
    ``[HOST:]PORT[/SERVICE]``. Timing is left at the defaults."""
    if kind == "exec":
        try:
            command = tuple(shlex.split(text))
        except ValueError as exc:
            raise ValueError(f"cannot split {text!r}: {exc}") from None
        return ProbeSpec("exec", command=command)
    address, slash, rest = text.partition("/")
    host, port = _split_address(address)
    if kind == "http":
        return ProbeSpec("http", host=host, port=port, path="/" + rest if slash else "/")
    if kind == "tcp":
        if slash:
            raise ValueError(f"{text!r}: a tcp probe takes [HOST:]PORT, no path")
        return ProbeSpec("tcp", host=host, port=port)
    return ProbeSpec("grpc", host=host, port=port, service=rest)


# -- one probe ---------------------------------------------------------------------------


def run_probe(spec: ProbeSpec) -> tuple[bool, str]:
    """Probe once: whether it succeeded and a line saying why."""
    try:
        if spec.kind == "exec":
            return _exec(spec)
        if spec.kind == "http":
            return _http(spec)
        if spec.kind == "tcp":
            return _tcp(spec)
        return _grpc(spec)
    except Exception as exc:  # a probe that breaks is a failed probe
        return False, f"{spec.kind} probe error: {type(exc).__name__}: {exc}"


def _tail(data: bytes) -> str:
    text = " ".join(data.decode("utf-8", "replace").split())
    return text if len(text) <= _MESSAGE_CHARS else "..." + text[-_MESSAGE_CHARS:]


def _exec(spec: ProbeSpec) -> tuple[bool, str]:
    env = {**os.environ, **spec.env} if spec.env else None
    try:
        proc = subprocess.Popen(
            spec.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a timeout ends the command and what it started
        )
    except OSError as exc:
        return False, f"exec probe could not run {spec.command[0]!r}: {exc.strerror or exc}"
    try:
        output, _ = proc.communicate(timeout=spec.timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return False, f"exec probe timed out after {spec.timeout:g}s"
    finally:
        # Whatever the command left behind in its group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    tail = _tail(output)
    said = f": {tail}" if tail else ""
    if proc.returncode == 0:
        return True, f"exec probe succeeded{said}"
    return False, f"exec probe failed with status {proc.returncode}{said}"


def _http(spec: ProbeSpec) -> tuple[bool, str]:
    connection = http.client.HTTPConnection(spec.host, spec.port, timeout=spec.timeout)
    try:
        connection.request("GET", spec.path, headers={"User-Agent": "pycontainer-probe"})
        response = connection.getresponse()
        response.read(64 * 1024)
    except (OSError, http.client.HTTPException) as exc:
        return False, f"http probe GET {spec.path} failed: {exc or type(exc).__name__}"
    finally:
        connection.close()
    what = f"http probe GET {spec.path}: {response.status} {response.reason}"
    return 200 <= response.status < 400, what


def _tcp(spec: ProbeSpec) -> tuple[bool, str]:
    address = _hostport(spec.host, spec.port)
    try:
        with socket.create_connection((spec.host, spec.port), timeout=spec.timeout):
            pass
    except OSError as exc:
        return False, f"tcp probe of {address} failed: {exc.strerror or exc}"
    return True, f"tcp probe of {address} connected"


def _grpc(spec: ProbeSpec) -> tuple[bool, str]:
    address = _hostport(spec.host, spec.port)
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=spec.service),
                timeout=spec.timeout,
                wait_for_ready=True,  # connecting is part of the probe's time
            )
        except grpc.RpcError as exc:
            code = exc.code()
            details = exc.details()
            name = code.name if code is not None else "UNKNOWN"
            return False, f"grpc probe of {address} failed: {name}: {details}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return (
        response.status == health_pb2.HealthCheckResponse.SERVING,
        f"grpc probe of {address} service {spec.service!r}: {status}",
    )


# -- the loop ----------------------------------------------------------------------------

Report = Callable[[bool, str], None]


class Prober:
    """Runs one probe every period on a thread of its own and reports the
    check's status when the thresholds say it changed (or its message did).

    Until the first result the check has the status ``initial`` (the kubelet
    counts liveness as serving and readiness as not). ``skip()`` returning True (the
    program is paused) skips a round.
    """

    def __init__(
        self,
        name: str,
        spec: ProbeSpec,
        report: Report,
        *,
        initial: bool = False,
        skip: Callable[[], bool] = lambda: False,
        probe: Callable[[ProbeSpec], tuple[bool, str]] = run_probe,
    ) -> None:
        self.name = name
        self.spec = spec
        self._report = report
        self._skip = skip
        self._probe = probe
        self._initial = initial
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0
        self.serving: bool | None = None

    def with_env(self, env: Mapping[str, str]) -> None:
        """Give an exec probe extra environment (before start())."""
        self.spec = replace(self.spec, env={**self.spec.env, **env})

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"pycontainer-probe-{self.name}", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        if self._stop.wait(self.spec.initial_delay):
            return
        due = time.monotonic()
        while not self._stop.is_set():
            if not self._skip():
                self.observe(*self._probe(self.spec))
            due = max(due + self.spec.period, time.monotonic())
            if self._stop.wait(due - time.monotonic()):
                return

    def observe(self, ok: bool, message: str) -> None:
        """Count one result and report the check's status."""
        if self._stop.is_set():
            return  # the program is stopping: its probes no longer count
        if ok:
            self.failures = 0
            self.serving = True
            self._report(True, message)
            return
        self.failures += 1
        threshold = self.spec.failure_threshold
        if self.failures >= threshold:
            self.serving = False
            self._report(False, f"{message} ({self.failures} in a row, threshold {threshold})")
        elif self.serving is not False:
            # Still within the threshold: keep the status, say what happened.
            self._report(
                self.serving if self.serving is not None else self._initial,
                f"{message} ({self.failures} of {threshold} failures before NOT_SERVING)",
            )

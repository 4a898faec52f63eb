"""Kubelet-like probes of a program that does not embed pycontainer: run a
command, GET a URL, connect to a port or ask grpc.health.v1, every period,
each within a timeout; a check turns NOT_SERVING after ``failure_threshold``
failures in a row and SERVING again at the first success."""

from __future__ import annotations

import contextlib
import datetime
import http.client
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..units import duration_field, duration_to_proto, format_duration
from ..v1 import spec_pb2

__all__ = [
    "ProbeKind",
    "ProbeTiming",
    "Prober",
    "check_probe",
    "describe_probe",
    "parse_probe",
    "probe_timing",
    "run_probe",
    "with_timing",
]

ProbeKind = Literal["exec", "http", "tcp", "grpc"]

# The kubelet's defaults (periodSeconds, timeoutSeconds, failureThreshold).
DEFAULT_PERIOD = datetime.timedelta(seconds=10)
DEFAULT_TIMEOUT = datetime.timedelta(seconds=1)
DEFAULT_FAILURE_THRESHOLD = 3
_DEFAULT_HOST = "127.0.0.1"
# Most output of an exec probe kept for the check's message.
_MESSAGE_CHARS = 200

# One description of a probe: the spec's Probe message. The command line
# (parse_probe) and the spec file both build one; the probers run one.


@dataclass(frozen=True)
class ProbeTiming:
    """A probe's timing with the defaults filled in."""

    period: datetime.timedelta = DEFAULT_PERIOD
    timeout: datetime.timedelta = DEFAULT_TIMEOUT
    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    initial_delay: datetime.timedelta = datetime.timedelta(0)


def probe_timing(probe: spec_pb2.Probe) -> ProbeTiming:
    """The probe's timing: what it sets, else the kubelet's defaults."""
    return ProbeTiming(
        period=duration_field(probe, "period") or DEFAULT_PERIOD,
        timeout=duration_field(probe, "timeout") or DEFAULT_TIMEOUT,
        failure_threshold=probe.failure_threshold or DEFAULT_FAILURE_THRESHOLD,
        initial_delay=duration_field(probe, "initial_delay") or datetime.timedelta(0),
    )


def check_probe(probe: spec_pb2.Probe, which: str = "probe") -> None:
    """ValueError saying what to fix in a probe that cannot run."""
    handler = probe.WhichOneof("handler")
    if handler is None:
        raise ValueError(f"the {which} has no exec, http, tcp or grpc handler")
    if handler == "exec" and not probe.exec.command:
        raise ValueError(f"the {which}'s exec handler needs a command")
    if handler != "exec" and not 0 < getattr(probe, handler).port < 65536:
        raise ValueError(f"the {which}'s port {getattr(probe, handler).port} is not 1-65535")
    for field in ("period", "timeout"):
        if duration_field(probe, field) == datetime.timedelta(0):
            raise ValueError(f"the {which}'s {field} must be more than 0s")


def describe_probe(probe: spec_pb2.Probe) -> str:
    """The probe as an operator would write it."""
    handler = probe.WhichOneof("handler")
    if handler == "exec":
        return f"exec {shlex.join(probe.exec.command)}"
    if handler == "http":
        return f"http GET http://{_address(probe.http)}{probe.http.path or '/'}"
    if handler == "tcp":
        return f"tcp {_address(probe.tcp)}"
    if handler == "grpc":
        return f"grpc {_address(probe.grpc)} service {probe.grpc.service!r}"
    return "no probe"


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _address(target: spec_pb2.HttpProbe | spec_pb2.TcpProbe | spec_pb2.GrpcProbe) -> str:
    return _hostport(target.host or _DEFAULT_HOST, target.port)


def _split_address(text: str) -> tuple[str, int]:
    """``PORT`` or ``HOST:PORT`` (``[V6]:PORT``)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = _DEFAULT_HOST
    host = host.strip("[]") or _DEFAULT_HOST
    if not port.isdigit():
        raise ValueError(f"{text!r} is not PORT or HOST:PORT")
    return host, int(port)


def parse_probe(kind: ProbeKind, text: str) -> spec_pb2.Probe:
    """A probe from the command line: exec ``CMD`` (split like a shell would,
    run without one), http ``[HOST:]PORT[/PATH]``, tcp ``[HOST:]PORT``, grpc
    ``[HOST:]PORT[/SERVICE]``. Timing is left unset (the defaults)."""
    if kind == "exec":
        try:
            command = shlex.split(text)
        except ValueError as exc:
            raise ValueError(f"cannot split {text!r}: {exc}") from None
        probe = spec_pb2.Probe(exec=spec_pb2.ExecProbe(command=command))
    else:
        address, slash, rest = text.partition("/")
        host, port = _split_address(address)
        if kind == "http":
            probe = spec_pb2.Probe(
                http=spec_pb2.HttpProbe(host=host, port=port, path="/" + rest if slash else "/")
            )
        elif kind == "tcp":
            if slash:
                raise ValueError(f"{text!r}: a tcp probe takes [HOST:]PORT, no path")
            probe = spec_pb2.Probe(tcp=spec_pb2.TcpProbe(host=host, port=port))
        else:
            probe = spec_pb2.Probe(grpc=spec_pb2.GrpcProbe(host=host, port=port, service=rest))
    check_probe(probe, f"{kind} probe {text!r}")
    return probe


def with_timing(
    probe: spec_pb2.Probe,
    *,
    period: datetime.timedelta | None = None,
    timeout: datetime.timedelta | None = None,
    failure_threshold: int | None = None,
    initial_delay: datetime.timedelta | None = None,
) -> spec_pb2.Probe:
    """A copy of ``probe`` with the timing given (None: left as it is)."""
    out = spec_pb2.Probe()
    out.CopyFrom(probe)
    for field, value in (
        ("period", period),
        ("timeout", timeout),
        ("initial_delay", initial_delay),
    ):
        if value is not None:
            getattr(out, field).CopyFrom(duration_to_proto(value))
    if failure_threshold is not None:
        out.failure_threshold = failure_threshold
    return out


# -- one probe ---------------------------------------------------------------------------


def run_probe(probe: spec_pb2.Probe, env: Mapping[str, str] | None = None) -> tuple[bool, str]:
    """Probe once: whether it succeeded and a line saying why. ``env`` is
    added to an exec probe's environment."""
    timeout = probe_timing(probe).timeout.total_seconds()
    handler = probe.WhichOneof("handler")
    try:
        if handler == "exec":
            return _exec(list(probe.exec.command), timeout, env)
        if handler == "http":
            return _http(probe.http, timeout)
        if handler == "tcp":
            return _tcp(probe.tcp, timeout)
        if handler == "grpc":
            return _grpc(probe.grpc, timeout)
        return False, "the probe has no exec, http, tcp or grpc handler"
    except Exception as exc:  # a probe that breaks is a failed probe
        return False, f"{handler} probe error: {type(exc).__name__}: {exc}"


def _tail(data: bytes) -> str:
    text = " ".join(data.decode("utf-8", "replace").split())
    return text if len(text) <= _MESSAGE_CHARS else "..." + text[-_MESSAGE_CHARS:]


def _exec(
    command: list[str], timeout: float, extra_env: Mapping[str, str] | None
) -> tuple[bool, str]:
    env = {**os.environ, **extra_env} if extra_env else None
    try:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a timeout ends the command and what it started
        )
    except OSError as exc:
        return False, f"exec probe could not run {command[0]!r}: {exc.strerror or exc}"
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return False, (
            f"exec probe timed out after {format_duration(datetime.timedelta(seconds=timeout))}"
        )
    finally:
        # Whatever the command left behind in its group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    tail = _tail(output)
    said = f": {tail}" if tail else ""
    if proc.returncode == 0:
        return True, f"exec probe succeeded{said}"
    return False, f"exec probe failed with status {proc.returncode}{said}"


def _http(target: spec_pb2.HttpProbe, timeout: float) -> tuple[bool, str]:
    path = target.path or "/"
    connection = http.client.HTTPConnection(
        target.host or _DEFAULT_HOST, target.port, timeout=timeout
    )
    try:
        connection.request("GET", path, headers={"User-Agent": "pycontainer-probe"})
        response = connection.getresponse()
        response.read(64 * 1024)
    except (OSError, http.client.HTTPException) as exc:
        return False, f"http probe GET {path} failed: {exc or type(exc).__name__}"
    finally:
        connection.close()
    what = f"http probe GET {path}: {response.status} {response.reason}"
    return 200 <= response.status < 400, what


def _tcp(target: spec_pb2.TcpProbe, timeout: float) -> tuple[bool, str]:
    address = _address(target)
    try:
        with socket.create_connection((target.host or _DEFAULT_HOST, target.port), timeout=timeout):
            pass
    except OSError as exc:
        return False, f"tcp probe of {address} failed: {exc.strerror or exc}"
    return True, f"tcp probe of {address} connected"


def _grpc(target: spec_pb2.GrpcProbe, timeout: float) -> tuple[bool, str]:
    address = _address(target)
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=target.service),
                timeout=timeout,
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
        f"grpc probe of {address} service {target.service!r}: {status}",
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
        probe: spec_pb2.Probe,
        report: Report,
        *,
        initial: bool = False,
        skip: Callable[[], bool] = lambda: False,
        run: Callable[[spec_pb2.Probe, Mapping[str, str]], tuple[bool, str]] = run_probe,
    ) -> None:
        check_probe(probe, f"{name} probe")
        self.name = name
        self.probe = probe
        self.timing = probe_timing(probe)
        self._env: dict[str, str] = {}
        self._report = report
        self._skip = skip
        self._run_probe = run
        self._initial = initial
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0
        self.serving: bool | None = None

    def with_env(self, env: Mapping[str, str]) -> None:
        """Give an exec probe extra environment (before start())."""
        self._env.update(env)

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
        if self._stop.wait(self.timing.initial_delay.total_seconds()):
            return
        period = self.timing.period.total_seconds()
        due = time.monotonic()
        while not self._stop.is_set():
            if not self._skip():
                self.observe(*self._run_probe(self.probe, self._env))
            due = max(due + period, time.monotonic())
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
        threshold = self.timing.failure_threshold
        if self.failures >= threshold:
            self.serving = False
            self._report(False, f"{message} ({self.failures} in a row, threshold {threshold})")
        elif self.serving is not False:
            # Still within the threshold: keep the status, say what happened.
            self._report(
                self.serving if self.serving is not None else self._initial,
                f"{message} ({self.failures} of {threshold} failures before NOT_SERVING)",
            )

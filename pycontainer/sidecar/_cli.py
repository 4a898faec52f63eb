"""The sidecar's command line: ``pycontainer run ... -- CMD ARGS...`` and
``python -m pycontainer.sidecar ... -- CMD ARGS...`` (the same arguments).

The flags that describe the container build a ``ContainerSpec``
(:func:`spec_from_args`), the one launch description; a launcher such as the
manager's process runtime hands the sidecar that spec itself in
``$PYCONTAINER_SPEC`` instead. Either way :func:`settings_from_spec` makes the
sidecar's settings from it."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import logging
import os
import shlex
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._meshrules import Spelling, mesh_problems
from .._secrets import mask_url_passwords
from ..agent._container import ContainerSettings
from ..agent._join import JoinError
from ..agent._listen import ListenError
from ..limits import DEFAULT_LOG_CAPACITY, MAX_LOG_CAPACITY
from ..spec import SPEC_ENV, decode_spec
from ..telemetry import TelemetryConfigError, configure_tracing
from ..units import (
    DEFAULT_GRACE_PERIOD,
    DURATION_HELP,
    duration_arg,
    duration_field,
    duration_to_proto,
    format_duration,
    parse_cpu,
    parse_memory,
)
from ..v1 import mesh_pb2, spec_pb2
from ._envoy import envoy_binary
from ._probes import (
    DEFAULT_FAILURE_THRESHOLD,
    DEFAULT_PERIOD,
    DEFAULT_TIMEOUT,
    ProbeKind,
    parse_probe,
    with_timing,
)
from ._severity import SeverityRule, parse_rule
from ._supervisor import DEFAULT_HOOK_TIMEOUT, Sidecar, SidecarSettings

__all__ = [
    "add_arguments",
    "main",
    "run",
    "settings_from_args",
    "settings_from_spec",
    "spec_from_args",
]

_log = logging.getLogger("pycontainer.sidecar")

_PROBE_KINDS: tuple[ProbeKind, ...] = ("exec", "http", "tcp", "grpc")
_PROBE_METAVARS = {
    "exec": "CMD",
    "http": "[HOST:]PORT[/PATH]",
    "tcp": "[HOST:]PORT",
    "grpc": "[HOST:]PORT[/SERVICE]",
}
_PROBE_HELP = {
    "exec": "run CMD (split like a shell would, run without one); status 0 is healthy",
    "http": "GET the path; a 2xx or 3xx status is healthy",
    "tcp": "connect; success is healthy",
    "grpc": "grpc.health.v1 Check of SERVICE (empty: overall); SERVING is healthy",
}

DESCRIPTION = """\
Supervise any program (a shell script, a Go binary, ...) and host the
pycontainer Management API for it: its stdout and stderr as StreamLogs (one
entry per line, loggers "stdout" and "stderr"), its process figures as
metrics (process.child.*), its health from a probe (or: healthy while it
runs), and the lifecycle mapped onto signals (pause: SIGSTOP, resume: SIGCONT,
stop: pre-stop command, stop signal, SIGKILL at the end of the grace period).
With --manager (or $PYCONTAINER_MANAGER) it registers and waits for the
manager to start it; otherwise the program starts at once. With
$PYCONTAINER_SPEC (a ContainerSpec, as the manager launches a spec with
sidecar: true) the container is that spec: give no command then.
"""

EPILOG = """\
Severity: stdout lines are INFO and stderr lines WARN, unless a
--severity-rule REGEX=LEVEL matches (searched, first match wins), or a line
begins with a level word (ERROR, WARN, DEBUG, ...) or holds level=WORD.
Hook commands get $PYCONTAINER_CHILD_PID (the program's pid) and
$PYCONTAINER_CONTAINER_ID. Exit status: the program's (128+N when killed by
signal N), 127 when it cannot be run, 1 when the container FAILED otherwise.

  pycontainer run --name web --listen 127.0.0.1:50051 \\
      --readiness-http 8080/healthz --grace 20s -- ./server --port 8080
"""


# -- argument types ----------------------------------------------------------------------------


def _typed(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _signal(text: str) -> int:
    word = text.strip().upper()
    if word.isdigit():
        return int(signal.Signals(int(word)))
    name = word if word.startswith("SIG") else f"SIG{word}"
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise ValueError(
            f"unknown signal {text!r}: write TERM, INT, QUIT, HUP, USR1, ..."
        ) from None


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"{text!r} is not KEY=VALUE")
    return key, value


def _positive_duration(text: str) -> datetime.timedelta:
    value = datetime.timedelta(0)
    try:
        value = duration_arg(text)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(str(exc)) from None
    if value <= datetime.timedelta(0):
        raise ValueError(f"{text!r}: must be more than 0s")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{text!r}: must be 1 or more")
    return value


def _log_capacity(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number of log entries") from None
    if not 1 <= value <= MAX_LOG_CAPACITY:
        raise ValueError(
            f"{text!r}: must be from 1 to {MAX_LOG_CAPACITY:,} log entries "
            "(pycontainer.limits.MAX_LOG_CAPACITY)"
        )
    return value


def _listen_address(text: str) -> str:
    from ..client._target import parse_listen

    return parse_listen(text)  # a TargetError is a ValueError saying what to write


def _command(text: str) -> tuple[str, ...]:
    try:
        argv = tuple(shlex.split(text))
    except ValueError as exc:
        raise ValueError(f"cannot split {text!r}: {exc}") from None
    if not argv:
        raise ValueError("empty command")
    return argv


def _probe_type(kind: ProbeKind) -> Callable[[str], Any]:
    return _typed(lambda text: parse_probe(kind, text))


# -- the parser --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sidecar's arguments (the same for ``pycontainer run`` and
    ``python -m pycontainer.sidecar``)."""
    # Flags describing the container default to None: a spec from
    # $PYCONTAINER_SPEC excludes them, and unset stays unset in the spec.
    parser.add_argument(
        "--manager",
        metavar="ADDR",
        help="HOST:PORT of a manager to register with (default: $PYCONTAINER_MANAGER, else "
        "none: the program starts at once)",
    )
    parser.add_argument(
        "--listen",
        metavar="ADDR",
        default="127.0.0.1:0",
        help="HOST:PORT for the Management API (default: 127.0.0.1 on a free port, logged)",
    )
    parser.add_argument(
        "--health-listen",
        type=_typed(_listen_address),
        metavar="ADDR",
        help="also serve grpc.health.v1 alone, in plaintext, on this HOST:PORT (for probes "
        "that speak no TLS, such as kubelet's; default: $PYCONTAINER_HEALTH_LISTEN, else none)",
    )
    parser.add_argument(
        "--http-listen",
        type=_typed(_listen_address),
        metavar="ADDR",
        help="also serve the HTTP face, in plaintext, on this HOST:PORT: /livez, /readyz, "
        "/healthz, /metrics and JSON under /v1/ (default: $PYCONTAINER_HTTP_LISTEN, else none)",
    )
    parser.add_argument(
        "--name", help="container name (default: $PYCONTAINER_NAME, else the program's name)"
    )
    parser.add_argument("--app-version", default="0.0.0", help="version shown in GetInfo")
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        type=_typed(_label),
        metavar="KEY=VALUE",
        help="a label (repeatable)",
    )
    parser.add_argument("--priority", type=int, help="priority (higher wins; default: 0)")
    parser.add_argument("--cpu", type=_typed(parse_cpu), help="cpu asked for: 500m, 2")
    parser.add_argument("--memory", type=_typed(parse_memory), help="memory asked for: 256Mi, 1G")
    parser.add_argument(
        "--grace",
        type=duration_arg,
        metavar="DURATION",
        help=f"grace period of a stop, {DURATION_HELP} "
        f"(default: {format_duration(DEFAULT_GRACE_PERIOD)})",
    )
    for probe in ("liveness", "readiness"):
        group = parser.add_mutually_exclusive_group()
        for kind in _PROBE_KINDS:
            group.add_argument(
                f"--{probe}-{kind}",
                dest=f"{probe}_probe",
                type=_probe_type(kind),
                metavar=_PROBE_METAVARS[kind],
                help=f"{probe} probe: {_PROBE_HELP[kind]}",
            )
    parser.add_argument(
        "--probe-period",
        type=_typed(_positive_duration),
        metavar="DURATION",
        help=f"time between probes (default: {format_duration(DEFAULT_PERIOD)})",
    )
    parser.add_argument(
        "--probe-timeout",
        type=_typed(_positive_duration),
        metavar="DURATION",
        help=f"time one probe may take (default: {format_duration(DEFAULT_TIMEOUT)})",
    )
    parser.add_argument(
        "--probe-failure-threshold",
        type=_typed(_positive_int),
        metavar="N",
        help=f"failures in a row before NOT_SERVING (default: {DEFAULT_FAILURE_THRESHOLD})",
    )
    parser.add_argument(
        "--probe-initial-delay",
        type=duration_arg,
        metavar="DURATION",
        help="delay before the first probe (default: 0s)",
    )
    for probe in ("liveness", "readiness"):
        for what, convert in (
            ("period", _typed(_positive_duration)),
            ("timeout", _typed(_positive_duration)),
            ("failure-threshold", _typed(_positive_int)),
            ("initial-delay", duration_arg),
        ):
            parser.add_argument(
                f"--{probe}-{what}",
                type=convert,
                default=None,
                metavar="N" if what == "failure-threshold" else "DURATION",
                help=f"--probe-{what} for the {probe} probe alone",
            )
    parser.add_argument(
        "--pre-stop",
        type=_typed(_command),
        metavar="CMD",
        help="command run before the stop signal (within the grace period)",
    )
    parser.add_argument(
        "--checkpoint-cmd",
        type=_typed(_command),
        metavar="CMD",
        help="checkpoint command: its standard output is the state",
    )
    parser.add_argument(
        "--restore-cmd",
        type=_typed(_command),
        metavar="CMD",
        help="restore command: gets the state on its standard input",
    )
    parser.add_argument(
        "--hook-timeout",
        type=_typed(_positive_duration),
        default=DEFAULT_HOOK_TIMEOUT,
        metavar="DURATION",
        help="most time a checkpoint or restore command may take "
        f"(default: {format_duration(DEFAULT_HOOK_TIMEOUT)})",
    )
    parser.add_argument(
        "--stop-signal",
        type=_typed(_signal),
        default=int(signal.SIGTERM),
        metavar="SIGNAL",
        help="signal asking the program to stop: TERM (default), INT, QUIT, ...",
    )
    parser.add_argument(
        "--severity-rule",
        action="append",
        default=[],
        type=_typed(parse_rule),
        metavar="REGEX=LEVEL",
        help="lines matching REGEX get LEVEL (trace, debug, info, warn, error, fatal); "
        "repeatable, the first match wins",
    )
    parser.add_argument(
        "--no-default-severity-rules",
        action="store_true",
        help="do not read leading level words (ERROR, WARN, ...) or level=WORD",
    )
    parser.add_argument(
        "--no-echo",
        action="store_true",
        help="do not echo the program's output on the sidecar's stdout/stderr",
    )
    parser.add_argument("--workdir", metavar="DIR", help="working directory of the program")
    parser.add_argument(
        "--log-capacity",
        type=_typed(_log_capacity),
        metavar="N",
        help="log entries (lines) kept of the program's output, for StreamLogs' history and "
        "as slack for a follower that falls behind (it is told how many it missed) "
        f"(default: {DEFAULT_LOG_CAPACITY:,}; at most {MAX_LOG_CAPACITY:,})",
    )
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- CMD ARGS...",
        help="the program to run, with its arguments",
    )


# Flags that describe the container (dest names): with $PYCONTAINER_SPEC the spec does.
_SPEC_FLAGS = (
    "name",
    "label",
    "priority",
    "cpu",
    "memory",
    "grace",
    "liveness_probe",
    "readiness_probe",
    *(
        f"{which}_{what}"
        for which in ("probe", "liveness", "readiness")
        for what in ("period", "timeout", "failure_threshold", "initial_delay")
    ),
    "pre_stop",
    "checkpoint_cmd",
    "restore_cmd",
    "workdir",
    "health_listen",
    "http_listen",
    "log_capacity",
)


def _flag_text(dest: str) -> str:
    """The flag a parsed argument came from, as the user wrote it."""
    if dest.endswith("_probe"):
        return f"--{dest.removesuffix('_probe')}-{'/'.join(_PROBE_KINDS)}"
    return "--" + dest.replace("_", "-")


def _command_of(args: argparse.Namespace) -> list[str]:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    return command


def _probe_from_args(args: argparse.Namespace, which: str) -> spec_pb2.Probe | None:
    probe: spec_pb2.Probe | None = getattr(args, f"{which}_probe")
    if probe is None:
        return None

    def pick(what: str) -> Any:
        own = getattr(args, f"{which}_{what}")
        return own if own is not None else getattr(args, f"probe_{what}")

    return with_timing(
        probe,
        period=pick("period"),
        timeout=pick("timeout"),
        failure_threshold=pick("failure_threshold"),
        initial_delay=pick("initial_delay"),
    )


def spec_from_args(args: argparse.Namespace) -> spec_pb2.ContainerSpec:
    """The ContainerSpec the flags describe (what is not given stays unset)."""
    spec = spec_pb2.ContainerSpec(command=_command_of(args), sidecar=True)
    if args.name:
        spec.name = args.name
    spec.labels.update(dict(args.label))
    if args.priority is not None:
        spec.priority = args.priority
    if args.cpu is not None:
        spec.resources.cpu_millis = args.cpu
    if args.memory is not None:
        spec.resources.memory_bytes = args.memory
    if args.grace is not None:
        spec.grace_period.CopyFrom(duration_to_proto(args.grace))
    for which, target in (("liveness", spec.liveness_probe), ("readiness", spec.readiness_probe)):
        probe = _probe_from_args(args, which)
        if probe is not None:
            target.CopyFrom(probe)
    for flag, hook in (
        (args.pre_stop, spec.hooks.pre_stop),
        (args.checkpoint_cmd, spec.hooks.checkpoint),
        (args.restore_cmd, spec.hooks.restore),
    ):
        hook.extend(flag or ())
    if args.workdir:
        spec.working_dir = args.workdir
    if args.health_listen:
        spec.health_listen = args.health_listen
    if args.http_listen:
        spec.http_listen = args.http_listen
    if args.log_capacity is not None:
        spec.log_capacity = args.log_capacity
    return spec


def settings_from_spec(
    spec: spec_pb2.ContainerSpec, environ: Mapping[str, str] = os.environ
) -> SidecarSettings:
    """The sidecar's settings for ``spec`` (how the program is presented and
    driven), with the sidecar's own options at their defaults; ValueError
    saying what is wrong. The name is the spec's, else $PYCONTAINER_NAME,
    else the program's."""
    command = list(spec.command)
    if not command:
        raise ValueError("no program to run: end the options with -- CMD ARGS...")
    grace = duration_field(spec, "grace_period")
    container = ContainerSettings(
        name=spec.name or environ.get("PYCONTAINER_NAME") or os.path.basename(command[0]),
        labels=dict(spec.labels),
        priority=spec.priority,
        cpu_millis=spec.resources.cpu_millis,
        memory_bytes=spec.resources.memory_bytes,
        grace_period=grace if grace is not None else DEFAULT_GRACE_PERIOD,
        # Unset: $PYCONTAINER_HEALTH_LISTEN (the manager sets it from the spec too).
        health_listen=spec.health_listen or None,
        http_listen=spec.http_listen or None,
        log_capacity=_spec_log_capacity(spec.log_capacity),
    )
    return SidecarSettings(
        container=container,
        command=command,
        liveness=spec.liveness_probe if spec.HasField("liveness_probe") else None,
        readiness=spec.readiness_probe if spec.HasField("readiness_probe") else None,
        pre_stop=tuple(spec.hooks.pre_stop),
        checkpoint=tuple(spec.hooks.checkpoint),
        restore=tuple(spec.hooks.restore),
        cwd=spec.working_dir or None,
        env=dict(spec.env),
        envoy=_envoy_settings(spec),
        service=spec.service.name,
        service_endpoint=spec.service.endpoint,
    )


def _field(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out = f"{out}[{part}]" if isinstance(part, int) else f"{out}.{part}".lstrip(".")
    return out


# How the sidecar names a spec's fields and settings in what it refuses.
_SPELLING = Spelling(
    field=_field,
    setting=lambda path, file_value, _api_value: f"{_field(path)}: {file_value}",
    show=repr,
)


def _envoy_settings(spec: spec_pb2.ContainerSpec) -> mesh_pb2.EnvoySettings | None:
    """The spec's Envoy settings when it asks for Envoy; ValueError, before
    anything starts, when they break the mesh's rules (the manager refuses
    such a spec too) or Envoy's binary is missing."""
    if spec.proxy != mesh_pb2.MESH_PROXY_ENVOY:
        return None
    problems = mesh_problems(spec, _SPELLING)
    if problems:
        raise ValueError(
            "; ".join(f"{_field(problem.path)}: {problem.message}" for problem in problems)
        )
    envoy_binary()
    return spec.envoy


def _spec_log_capacity(capacity: int) -> int:
    """The spec's log capacity (0: the default); ValueError past the bounds."""
    if capacity == 0:
        return DEFAULT_LOG_CAPACITY
    if not 1 <= capacity <= MAX_LOG_CAPACITY:
        raise ValueError(
            f"log_capacity must be from 1 to {MAX_LOG_CAPACITY:,} log entries, got {capacity}"
        )
    return capacity


def _launch_spec(args: argparse.Namespace, environ: Mapping[str, str]) -> spec_pb2.ContainerSpec:
    """The spec in $PYCONTAINER_SPEC (then no flag may describe the container), else the flags'."""
    encoded = environ.get(SPEC_ENV)
    if encoded is None:
        return spec_from_args(args)
    given = [
        _flag_text(dest) for dest in _SPEC_FLAGS if getattr(args, dest, None) not in (None, [])
    ]
    if _command_of(args):
        given.append("a command")
    if given:
        raise ValueError(
            f"${SPEC_ENV} describes the container: drop {', '.join(given)} (or unset {SPEC_ENV})"
        )
    return decode_spec(encoded)


def settings_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] = os.environ
) -> SidecarSettings:
    """SidecarSettings from parsed arguments (and $PYCONTAINER_SPEC); ValueError
    saying what is wrong."""
    settings = settings_from_spec(_launch_spec(args, environ), environ)
    settings.container.version = args.app_version
    return dataclasses.replace(
        settings,
        listen=args.listen,
        manager=args.manager or getattr(args, "global_manager", None),
        hook_timeout=args.hook_timeout,
        stop_signal=args.stop_signal,
        severity_rules=list[SeverityRule](args.severity_rule),
        default_severity_rules=not args.no_default_severity_rules,
        echo=not args.no_echo,
    )


def _configure_logging(name: str) -> None:
    if not logging.root.handlers:
        logging.basicConfig(
            level=logging.INFO,
            stream=sys.stderr,
            format=f"pycontainer-sidecar[{name}] %(levelname)s %(message)s",
        )


def run_settings(settings: SidecarSettings) -> int:
    """Run the sidecar in this process until the program ends; its exit status."""
    _configure_logging(settings.name)
    try:
        provider = configure_tracing(settings.name)  # OTEL_* (or up's trace file)
    except TelemetryConfigError as exc:  # as the other OTEL_* errors below
        _log.error("%s", exc)
        return 1
    sidecar = Sidecar(settings)

    def ready(port: int) -> None:
        host = settings.listen.rsplit(":", 1)[0] or "127.0.0.1"
        if host in ("[::]", "0.0.0.0", ""):
            host = "127.0.0.1"
        manager = settings.manager or os.environ.get("PYCONTAINER_MANAGER")
        health_port = sidecar.container.health_port
        http_port = sidecar.container.http_port
        _log.info(
            "container %s: Management API on %s:%d%s%s%s",
            sidecar.container.id,
            host,
            port,
            f", plaintext health on port {health_port}" if health_port else "",
            f", HTTP face on port {http_port}" if http_port else "",
            # An address may carry userinfo (user:password@host): never logged.
            f", manager {mask_url_passwords(manager)}" if manager else "",
        )

    try:
        # Joining (a bootstrap token) here, on the main thread, before the
        # event loop: Ctrl-C interrupts it at once, not after its timeout.
        sidecar.container.join_if_bootstrapping()
        return asyncio.run(sidecar.serve(on_ready=ready))
    except (JoinError, ListenError, TelemetryConfigError) as exc:
        # The program never started: one line saying why, not a traceback.
        _log.error("%s", exc.strerror if isinstance(exc, ListenError) else exc)
        return 1
    finally:
        if provider is not None:
            provider.shutdown()


def run(args: argparse.Namespace) -> int:
    """``pycontainer run``: the parsed arguments' sidecar; its exit status."""
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run_settings(settings)


def build_parser(prog: str = "python -m pycontainer.sidecar") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pycontainer.sidecar [OPTIONS] -- CMD ARGS...``."""
    args = build_parser().parse_args(argv)
    return run(args)

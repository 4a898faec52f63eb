"""The sidecar's command line: ``pycontainer run ... -- CMD ARGS...`` and
``python -m pycontainer.sidecar ... -- CMD ARGS...`` (the same arguments), and
:func:`sidecar_command`, the argument vector that runs a spec's program under
the sidecar."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from ..cli._duration import DURATION_HELP, format_duration, parse_duration
from ..telemetry import configure_tracing
from ..units import parse_cpu, parse_memory
from ..v1 import spec_pb2
from ._probes import (
    DEFAULT_FAILURE_THRESHOLD,
    DEFAULT_PERIOD,
    DEFAULT_TIMEOUT,
    ProbeKind,
    ProbeSpec,
    parse_probe,
)
from ._severity import SeverityRule, parse_rule
from ._supervisor import Sidecar, SidecarSettings

__all__ = ["add_arguments", "main", "run", "settings_from_args", "sidecar_command"]

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
manager to start it; otherwise the program starts at once.
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


def _seconds(text: str) -> float:
    return parse_duration(text) / 1e9


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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{text!r}: must be 1 or more")
    return value


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
    seconds = _typed(_seconds)
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
    parser.add_argument("--priority", type=int, default=0, help="priority (higher wins)")
    parser.add_argument("--cpu", type=_typed(parse_cpu), default=0, help="cpu asked for: 500m, 2")
    parser.add_argument(
        "--memory", type=_typed(parse_memory), default=0, help="memory asked for: 256Mi, 1G"
    )
    parser.add_argument(
        "--grace",
        type=seconds,
        default=30.0,
        metavar="DURATION",
        help=f"grace period of a stop, {DURATION_HELP} (default: 30s)",
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
        type=seconds,
        default=DEFAULT_PERIOD,
        metavar="DURATION",
        help="time between probes (default: 10s)",
    )
    parser.add_argument(
        "--probe-timeout",
        type=seconds,
        default=DEFAULT_TIMEOUT,
        metavar="DURATION",
        help="time one probe may take (default: 1s)",
    )
    parser.add_argument(
        "--probe-failure-threshold",
        type=_typed(_positive_int),
        default=DEFAULT_FAILURE_THRESHOLD,
        metavar="N",
        help="failures in a row before NOT_SERVING (default: 3)",
    )
    parser.add_argument(
        "--probe-initial-delay",
        type=seconds,
        default=0.0,
        metavar="DURATION",
        help="delay before the first probe (default: 0s)",
    )
    for probe in ("liveness", "readiness"):
        for what, convert in (
            ("period", seconds),
            ("timeout", seconds),
            ("failure-threshold", _typed(_positive_int)),
            ("initial-delay", seconds),
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
        type=seconds,
        default=60.0,
        metavar="DURATION",
        help="most time a checkpoint or restore command may take (default: 60s)",
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
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- CMD ARGS...",
        help="the program to run, with its arguments",
    )


def _probe(args: argparse.Namespace, which: str) -> ProbeSpec | None:
    spec: ProbeSpec | None = getattr(args, f"{which}_probe")
    if spec is None:
        return None

    def pick(what: str) -> Any:
        own = getattr(args, f"{which}_{what}")
        return own if own is not None else getattr(args, f"probe_{what}")

    return replace(
        spec,
        period=pick("period"),
        timeout=pick("timeout"),
        failure_threshold=pick("failure_threshold"),
        initial_delay=pick("initial_delay"),
    )


def settings_from_args(args: argparse.Namespace) -> SidecarSettings:
    """SidecarSettings from parsed arguments; ValueError saying what is wrong."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ValueError("no program to run: end the options with -- CMD ARGS...")
    name = args.name or os.environ.get("PYCONTAINER_NAME") or os.path.basename(command[0])
    for which in ("period", "timeout"):
        if getattr(args, f"probe_{which}") <= 0:
            raise ValueError(f"--probe-{which} must be more than 0")
    manager = args.manager or getattr(args, "global_manager", None)
    return SidecarSettings(
        command=command,
        name=name,
        listen=args.listen,
        manager=manager,
        version=args.app_version,
        labels=dict(args.label),
        priority=args.priority,
        cpu_millis=args.cpu,
        memory_bytes=args.memory,
        grace_period=args.grace,
        liveness=_probe(args, "liveness"),
        readiness=_probe(args, "readiness"),
        pre_stop=args.pre_stop or (),
        checkpoint=args.checkpoint_cmd or (),
        restore=args.restore_cmd or (),
        hook_timeout=args.hook_timeout,
        stop_signal=args.stop_signal,
        severity_rules=list[SeverityRule](args.severity_rule),
        default_severity_rules=not args.no_default_severity_rules,
        echo=not args.no_echo,
        cwd=args.workdir,
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
    provider = configure_tracing(settings.name)  # OTEL_* (or up's trace file)
    sidecar = Sidecar(settings)

    def ready(port: int) -> None:
        host = settings.listen.rsplit(":", 1)[0] or "127.0.0.1"
        if host in ("[::]", "0.0.0.0", ""):
            host = "127.0.0.1"
        _log.info(
            "container %s: Management API on %s:%d%s",
            sidecar.container.id,
            host,
            port,
            f", manager {settings.manager or os.environ.get('PYCONTAINER_MANAGER')}"
            if settings.manager or os.environ.get("PYCONTAINER_MANAGER")
            else "",
        )

    try:
        return asyncio.run(sidecar.serve(on_ready=ready))
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


# -- from a spec -------------------------------------------------------------------------------


def _duration_text(duration: Any) -> str:
    return format_duration(duration.ToNanoseconds())


def sidecar_command(
    spec: spec_pb2.ContainerSpec,
    *,
    python: str = sys.executable,
    listen: str = "127.0.0.1:0",
) -> list[str]:
    """The argument vector that runs ``spec``'s program under the sidecar
    (name, labels, priority, resources, grace period, probes, hook commands).
    Environment and working directory are the launcher's to give: the
    program inherits the sidecar's. A program named ``python`` is this
    interpreter, as the manager's process runtime has it."""
    if not spec.command:
        raise ValueError("spec.command is empty: give the program and its arguments")
    argv = [python, "-m", "pycontainer.sidecar", f"--name={spec.name}", f"--listen={listen}"]
    argv += [f"--label={key}={value}" for key, value in sorted(spec.labels.items())]
    if spec.priority:
        argv.append(f"--priority={spec.priority}")
    if spec.resources.cpu_millis:
        argv.append(f"--cpu={spec.resources.cpu_millis}m")
    if spec.resources.memory_bytes:
        argv.append(f"--memory={spec.resources.memory_bytes}")
    if spec.HasField("grace_period"):
        argv.append(f"--grace={_duration_text(spec.grace_period)}")
    for which, probe in (("liveness", spec.liveness_probe), ("readiness", spec.readiness_probe)):
        if not probe.WhichOneof("handler"):
            continue
        parsed = ProbeSpec.from_proto(probe)
        argv.append(f"--{which}-{parsed.kind}={parsed.target_text()}")
        for field_name, flag in (
            ("period", "period"),
            ("timeout", "timeout"),
            ("initial_delay", "initial-delay"),
        ):
            if probe.HasField(field_name):  # type: ignore[arg-type]
                argv.append(f"--{which}-{flag}={_duration_text(getattr(probe, field_name))}")
        if probe.failure_threshold:
            argv.append(f"--{which}-failure-threshold={probe.failure_threshold}")
    for field_name, flag in (
        ("pre_stop", "pre-stop"),
        ("checkpoint", "checkpoint-cmd"),
        ("restore", "restore-cmd"),
    ):
        command = list(getattr(spec.hooks, field_name))
        if command:
            argv.append(f"--{flag}={shlex.join(command)}")
    program = list(spec.command)
    if program[0] == "python":
        program[0] = python
    return [*argv, "--", *program]

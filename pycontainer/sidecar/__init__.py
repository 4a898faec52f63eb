"""The sidecar: pycontainer for programs in any language.

``pycontainer run [OPTIONS] -- CMD ARGS...`` (or ``python -m
pycontainer.sidecar``) supervises a program and hosts the Management API for
it: the program's output as logs, its process figures as metrics, health from
an exec/HTTP/TCP/gRPC probe, and the lifecycle mapped onto signals and hook
commands. The same from Python::

    sidecar = Sidecar(SidecarSettings(command=["./server"], name="web"))
    status = asyncio.run(sidecar.serve())
"""

from ._child import ChildProcess, describe_status, exit_status
from ._cli import add_arguments, build_parser, main, run, settings_from_args, sidecar_command
from ._probes import Prober, ProbeSpec, parse_probe, run_probe
from ._severity import Level, Severities, SeverityRule, parse_level, parse_rule
from ._supervisor import (
    HookCommandError,
    ProgramExited,
    ProgramKilled,
    ProgramNotStarted,
    Sidecar,
    SidecarSettings,
)

__all__ = [
    "ChildProcess",
    "HookCommandError",
    "Level",
    "ProbeSpec",
    "Prober",
    "ProgramExited",
    "ProgramKilled",
    "ProgramNotStarted",
    "Severities",
    "SeverityRule",
    "Sidecar",
    "SidecarSettings",
    "add_arguments",
    "build_parser",
    "describe_status",
    "exit_status",
    "main",
    "parse_level",
    "parse_probe",
    "parse_rule",
    "run",
    "run_probe",
    "settings_from_args",
    "sidecar_command",
]

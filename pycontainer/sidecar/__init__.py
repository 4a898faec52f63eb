"""The sidecar: pycontainer for programs in any language.

``pycontainer run [OPTIONS] -- CMD ARGS...`` (or ``python -m
pycontainer.sidecar``) supervises a program and hosts the Management API for
it: the program's output as logs, its process figures as metrics, health from
an exec/HTTP/TCP/gRPC probe, and the lifecycle mapped onto signals and hook
commands. The same from Python::

    settings = SidecarSettings(ContainerSettings("web"), command=["./server"])
    status = asyncio.run(Sidecar(settings).serve())

or from the one launch description, a ``ContainerSpec``::

    settings = settings_from_spec(ContainerSpec(name="web", command=["./server"]))

A launcher hands the sidecar its spec in ``$PYCONTAINER_SPEC``
(:func:`pycontainer.spec.encode_spec`) and runs ``python -P -m
pycontainer.sidecar``.
"""

from ._child import ChildProcess, describe_status, exit_status
from ._cli import (
    add_arguments,
    build_parser,
    main,
    run,
    settings_from_args,
    settings_from_spec,
    spec_from_args,
)
from ._probes import (
    Prober,
    ProbeTiming,
    check_probe,
    describe_probe,
    parse_probe,
    probe_timing,
    run_probe,
    with_timing,
)
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
    "ProbeTiming",
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
    "check_probe",
    "describe_probe",
    "describe_status",
    "exit_status",
    "main",
    "parse_level",
    "parse_probe",
    "parse_rule",
    "probe_timing",
    "run",
    "run_probe",
    "settings_from_args",
    "settings_from_spec",
    "spec_from_args",
    "with_timing",
]

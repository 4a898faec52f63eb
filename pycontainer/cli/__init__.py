"""The `pycontainer` command.

``main(argv)`` runs it; ``main(argv, client=..., stdout=..., stderr=...)``
runs a verb with a given manager client and output streams (as tests and
embedders do). The grammar (``_parser``) is built without grpc or rich; each
verb's module is imported when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from ._context import Context
from ._errors import EXIT_INTERRUPTED, CliError, Interrupted, from_call
from ._parser import build_parser, has_verb, verb_in

if TYPE_CHECKING:
    from ..client import ManagerClient

__all__ = ["Context", "main"]


def _sidecar_argv(argv: list[str]) -> tuple[str | None, list[str]] | None:
    """For ``[--manager ADDR] run ARGS...``: (the global --manager, ARGS);
    None for every other verb. The sidecar's parser reads ARGS itself (argparse
    cannot hand options through a subcommand untouched)."""
    manager: str | None = None
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--manager" and index + 1 < len(argv):
            manager = argv[index + 1]
            index += 2
        elif arg.startswith("--manager="):
            manager = arg.split("=", 1)[1]
            index += 1
        elif arg == "run":
            return manager, argv[index + 1 :]
        else:
            return None
    return None


_NEGATIVE = re.compile(r"-[0-9.]")


def _duration_options(parser: argparse.ArgumentParser) -> set[str]:
    """Every option of the grammar that takes a DURATION (at any level)."""
    found: set[str] = set()
    for action in parser._actions:
        if action.metavar == "DURATION":
            found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _duration_options(sub)
    return found


def _join_negative_durations(argv: list[str], options: set[str]) -> list[str]:
    """``--grace -1s`` as ``--grace=-1s``: argparse takes a value starting
    with '-' for an option, and the user would hear "expected one argument"
    instead of what is wrong with the duration."""
    out: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            out.extend(argv[index:])
            break
        following = argv[index + 1] if index + 1 < len(argv) else ""
        if arg in options and _NEGATIVE.match(following):
            out.append(f"{arg}={following}")
            index += 2
            continue
        out.append(arg)
        index += 1
    return out


def _parse(argv: list[str], ctx: Context) -> argparse.Namespace | int:
    """The parsed arguments, or the exit status of --help or a usage error."""
    sidecar = _sidecar_argv(argv)
    if sidecar is not None:
        manager, rest = sidecar
        if manager is not None and not any(a.split("=")[0] == "--manager" for a in rest):
            rest = ["--manager", manager, *rest]
        return argparse.Namespace(runs="_run:run", argv=rest)
    verb = verb_in(argv)
    parser = build_parser(verb)
    if verb is not None and not has_verb(parser, verb):  # not a verb: the whole grammar says so
        parser = build_parser()
    if not argv:
        # Bare `pycontainer`: the whole help, verbs listed, as a usage error.
        ctx.stderr.write(parser.format_help())
        return 1
    with contextlib.redirect_stdout(ctx.stdout), contextlib.redirect_stderr(ctx.stderr):
        try:
            return parser.parse_args(_join_negative_durations(argv, _duration_options(parser)))
        except SystemExit as exc:  # argparse: 2 on bad usage; probes expect 1
            return int(exc.code or 0) and 1


def main(
    argv: Sequence[str] | None = None,
    *,
    client: ManagerClient | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    own_process: bool = False,
) -> int:
    """Run ``pycontainer ARGV``; its exit status.

    ``own_process``: the process is the command's (the console script,
    ``python -m pycontainer.cli``), which paused the garbage collector
    before importing anything: it resumes once the verb's modules are
    imported, with what they made frozen (never scanned again)."""
    ctx = Context(stdout or sys.stdout, stderr or sys.stderr, client)
    parsed = _parse(list(sys.argv[1:] if argv is None else argv), ctx)
    if isinstance(parsed, int):
        return parsed
    module, function = parsed.runs.split(":")
    # grpc-core logs a refused TLS handshake as a line of its own; the verb
    # says it in one sentence (read when grpc is first imported, just below).
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    verb = getattr(importlib.import_module(f"{__name__}.{module}"), function)
    if own_process:
        _resume_collector()
    try:
        code: int = verb(parsed, ctx)
    except CliError as exc:
        for line in exc.message.splitlines() or [""]:
            ctx.err(f"error: {line}")
        return exc.code
    except Interrupted as exc:
        if exc.note:
            ctx.err(exc.note)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        ctx.err("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (| head): not an error; keep Python's final
        # flush from complaining on the closed pipe.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        from ..client import CallError

        if not isinstance(exc, CallError):
            raise
        error = from_call(exc)
        ctx.err(f"error: {error.message}")
        return error.code
    return code


def pause_collector() -> None:
    """Before the command's imports: they allocate much (grpc, protobuf's
    descriptors, the grammar) and free next to nothing, and collecting
    while they run cost a verb such as ps some 5% of its run."""
    gc.disable()


def _resume_collector() -> None:
    # Frozen: the modules and classes of the imports stay for the process's
    # life; later collections (and the one at exit) need not scan them.
    gc.freeze()
    gc.enable()


if __name__ == "__main__":
    sys.exit(main())

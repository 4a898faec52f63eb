"""The `pycontainer` command."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

from . import _apply, _containers, _events, _health, _logs, _manager, _profile, _run, _top, _up
from ._client import DEFAULT_MANAGER, MANAGER_ENV, CliError

__all__ = ["main"]

_EPILOG = f"""\
The client verbs find the manager through --manager HOST:PORT, else
${MANAGER_ENV}, else {DEFAULT_MANAGER}. Durations are written like 30s, 2m,
1h30m or 500ms. Exit status: 0 done, 1 refused or failed (error: CODE: details),
2 manager unreachable. `pycontainer VERB --help` tells more.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pycontainer",
        description="Manage containers through their gRPC interface.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--manager",
        dest="global_manager",
        metavar="ADDR",
        help=f"HOST:PORT of the manager, for every client verb (default: ${MANAGER_ENV}, "
        f"else {DEFAULT_MANAGER})",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _apply.add_parser(subparsers)
    _apply.add_diff_parser(subparsers)
    _containers.add_parsers(subparsers)
    _logs.add_parser(subparsers)
    _top.add_parser(subparsers)
    _events.add_parser(subparsers)
    _profile.add_parser(subparsers)
    _up.add_parser(subparsers)
    _run.add_parser(subparsers)
    _manager.add_parser(subparsers)
    _health.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 2 on bad usage; probes expect 1
        return int(exc.code or 0) and 1
    try:
        code: int = args.func(args)
    except CliError as exc:
        for line in exc.message.splitlines() or [""]:
            print(f"error: {line}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (| head): not an error; keep Python's final
        # flush from complaining on the closed pipe.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())

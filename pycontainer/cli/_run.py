"""`pycontainer run [OPTIONS] -- CMD ARGS...`: supervise any program under the
sidecar, which hosts the Management API for it (see pycontainer.sidecar).

The sidecar's own parser reads the arguments when the verb runs: the
command line's grammar (and --help) must not import the sidecar.
"""

from __future__ import annotations

import argparse
import contextlib

from ._context import Context


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``run`` with every sidecar argument (for a parser that has room for the
    sidecar's imports; ``pycontainer`` itself hands the arguments on unparsed)."""
    from ..sidecar import _cli

    parser = subparsers.add_parser(
        "run",
        help="supervise any program and host the Management API for it (the sidecar)",
        description=_cli.DESCRIPTION,
        epilog=_cli.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _cli.add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context | None = None) -> int:
    """The sidecar of ``args``: parsed already, or the unparsed ``args.argv``."""
    from ..sidecar import _cli

    if hasattr(args, "argv"):
        ctx = ctx or Context()
        parser = _cli.build_parser(prog="pycontainer run")
        with contextlib.redirect_stdout(ctx.stdout), contextlib.redirect_stderr(ctx.stderr):
            try:
                args = parser.parse_args(args.argv)
            except SystemExit as exc:
                return int(exc.code or 0) and 1
    return _cli.run(args)

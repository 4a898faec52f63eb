"""`pycontainer run [OPTIONS] -- CMD ARGS...`: supervise any program under the
sidecar, which hosts the Management API for it (see pycontainer.sidecar)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # Imported here: pycontainer.sidecar imports from pycontainer.cli.
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


def run(args: argparse.Namespace) -> int:
    from ..sidecar import _cli

    return _cli.run(args)

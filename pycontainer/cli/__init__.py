"""The `pycontainer` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import _health, _manager

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pycontainer", description="Manage containers through their gRPC interface."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _manager.add_parser(subparsers)
    _health.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 2 on bad usage; probes expect 1
        return int(exc.code or 0) and 1
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

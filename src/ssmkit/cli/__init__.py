"""The ``ssmkit`` command.

Each module of this package adds its subcommands through ``register(sub)``; every
subcommand has ``--help``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import ssmkit
from ssmkit.cli import basic


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ssmkit`` command."""
    parser = argparse.ArgumentParser(
        prog="ssmkit", description="State space models of long sequences."
    )
    parser.add_argument("--version", action="version", version=f"ssmkit {ssmkit.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (basic,):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ssmkit`` command."""
    args = build_parser().parse_args(argv)
    return int(args.fn(args))

"""The ``ssmkit`` command.

Each module of this package adds its subcommands through ``register(sub)``; every
subcommand has ``--help``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import ssmkit
from ssmkit.cli import basic, dynamics, kalman, latent, longseq, train


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ssmkit`` command."""
    parser = argparse.ArgumentParser(
        prog="ssmkit", description="State space models of long sequences."
    )
    parser.add_argument("--version", action="version", version=f"ssmkit {ssmkit.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (basic, train, longseq, dynamics, latent, kalman):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ssmkit`` command.

    Bad input (a ValueError), a diverged training run (FloatingPointError) and a failing file
    operation (an OSError: a full disk, an unwritable or missing path) end with one line on
    stderr and exit status 2, no traceback. A reader that stops early (``ssmkit list | head``)
    ends the command quietly with status 141, as SIGPIPE ends other Unix tools.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "extra_ok", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        status = int(args.fn(args, extra) if getattr(args, "extra_ok", False) else args.fn(args))
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return status
    except BrokenPipeError:
        # Python would flush stdout again at exit and report the same error: point it at
        # /dev/null first (the recipe of Python's signal module documentation).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except (ValueError, FloatingPointError) as e:  # bad input, divergence: one clear line
        print(f"ssmkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a missing or unwritable path: the same contract
        where = f": {e.filename}" if e.filename else ""
        print(f"ssmkit {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2

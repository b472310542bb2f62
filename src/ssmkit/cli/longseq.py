"""``ssmkit extrapolate``: a trained run evaluated at other sequence lengths."""

from __future__ import annotations

import argparse
from pathlib import Path

from ssmkit.cli.options import int_at_least

DEFAULT_LENGTHS = (256, 1024, 4096, 16384, 65536)


def _cmd_extrapolate(args: argparse.Namespace) -> int:
    import torch

    from ssmkit.train.extrapolate import extrapolate, write_report
    from ssmkit.train.run import load_run

    if args.threads:
        torch.set_num_threads(args.threads)
    run = load_run(Path(args.run_dir), args.weights, args.device)
    print(f"{run.config.task} / {run.config.model.layer}: {args.n} sequences per length, "
          f"chunks of {args.chunk} steps, batch {args.batch_size}", flush=True)  # fmt: skip
    report = extrapolate(
        run, args.lengths, n=args.n, chunk=args.chunk, batch_size=args.batch_size,
        seed=args.seed, device=args.device, log=lambda line: print(line, flush=True),
    )  # fmt: skip
    report["weights"] = args.weights
    for path in write_report(report, Path(args.out or args.run_dir), plot=not args.no_plot):
        print(f"wrote {path}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from ssmkit.train.extrapolate import compare

    for path in compare([Path(p) for p in args.reports], Path(args.out), plot=not args.no_plot):
        print(f"wrote {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``extrapolate`` and ``extrapolate-compare`` to the ``ssmkit`` command."""
    ex = sub.add_parser(
        "extrapolate",
        help="accuracy of a trained run at other sequence lengths (chunked, state passing)",
        description="Rebuild the run's task at each length with fresh sequences and evaluate "
        "it, feeding every sequence in chunks with state passing so that memory stays "
        "O(batch x chunk) at any length. Writes extrapolation.json, .md and .png.",
    )
    ex.add_argument("run_dir")
    ex.add_argument(
        "--lengths", type=int, nargs="+", default=list(DEFAULT_LENGTHS),
        help="task lengths to test (default %(default)s)",
    )  # fmt: skip
    ex.add_argument("--n", type=int, default=64, help="test sequences per length")
    ex.add_argument(
        "--chunk", type=int, default=1024,
        help="steps per piece (pieces of 512-2048 steps keep the working set in cache)",
    )  # fmt: skip
    ex.add_argument("--batch-size", type=int, default=16, help="sequences per batch")
    ex.add_argument("--seed", type=int, help="data seed (default: the training seed + 1)")
    ex.add_argument("--weights", default="best", choices=["best", "last"])
    ex.add_argument("--device", default="cpu")
    ex.add_argument(
        "--threads", type=int_at_least(0), default=0, help="torch CPU threads (0: default)"
    )
    ex.add_argument("--out", help="directory of the report (default: the run directory)")
    ex.add_argument("--no-plot", action="store_true", help="skip extrapolation.png")
    ex.set_defaults(fn=_cmd_extrapolate)

    cmp = sub.add_parser(
        "extrapolate-compare",
        help="one table and plot of several extrapolation.json reports (same task)",
    )
    cmp.add_argument("reports", nargs="+", help="extrapolation.json files")
    cmp.add_argument("--out", required=True, help="directory of comparison.md and .png")
    cmp.add_argument("--no-plot", action="store_true", help="skip comparison.png")
    cmp.set_defaults(fn=_cmd_compare)

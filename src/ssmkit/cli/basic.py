"""``ssmkit hippo``, ``ssmkit bench`` and ``ssmkit list``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from ssmkit.cli.options import int_at_least


def _cmd_hippo(args: argparse.Namespace) -> int:
    from ssmkit.analysis.hippo_plot import demo_signal, plot_reconstruction

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"hippo-{args.measure}.png"
    print(f"HiPPO-{args.measure} online compression of a length-{args.length} signal")
    errors = plot_reconstruction(
        demo_signal(args.length, seed=args.seed), args.measure, tuple(args.N), str(path)
    )
    for n, err in errors.items():
        print(f"  N = {n:3d} coefficients: reconstruction RMSE {err:.2e}")
    print(f"plot written to {path}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from ssmkit.bench import run, write_json
    from ssmkit.bench.measure import malloc_env
    from ssmkit.train.config import available_device

    available_device(args.device, "device")  # before the re-run and the first measurement

    missing = {k: v for k, v in malloc_env().items() if os.environ.get(k) != v}
    if missing and not args.no_reexec:
        # Re-run with the allocator settings that make peak-memory readings exact.
        cmd = [sys.executable, "-m", "ssmkit", *sys.argv[1:], "--no-reexec"]
        return subprocess.call(cmd, env={**os.environ, **missing})
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = run(args.suite, size=args.size, repeat=args.repeat, device=args.device, out=sys.stdout)
    if args.json:
        write_json(rows, args.json)
        print(f"results written to {args.json}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from ssmkit import data
    from ssmkit.models.sequence import ALL_LAYERS
    from ssmkit.ops import registry

    print("tasks (ssmkit train --task NAME):")
    for name in data.task_names():
        print(f"  {name:20} {data.TASKS[name].summary}")
    print(f"models (ssmkit train --model NAME): {', '.join(ALL_LAYERS)}")
    print("operators and backends:")
    for op in registry.ops():
        print(f"{op}:")
        for b in registry.backends(op):
            devices = ",".join(sorted(b.devices))
            state = "available" if b.is_available() else "unavailable here"
            print(f"  {b.name:12} priority {b.priority:3}  [{devices}] {state}  {b.description}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``hippo``, ``bench`` and ``list`` to the ``ssmkit`` command."""
    from ssmkit.bench import SIZES, SUITES

    hippo = sub.add_parser(
        "hippo", help="HiPPO online compression and reconstruction of a signal, plotted to PNG"
    )
    hippo.add_argument("--measure", default="legs", choices=["legs", "legt", "lagt", "fout"])
    hippo.add_argument(
        "--length", type=int_at_least(1), default=1000, help="signal length (default 1000)"
    )
    hippo.add_argument(
        "--N", type=int_at_least(1), nargs="+", default=[8, 16, 32, 64], help="state sizes"
    )
    hippo.add_argument("--seed", type=int, default=0)
    hippo.add_argument("--out", default="ssmkit-out", help="output directory (default ssmkit-out)")
    hippo.set_defaults(fn=_cmd_hippo)

    bench = sub.add_parser("bench", help="time and peak memory of fast paths vs references")
    bench.add_argument(
        "--suite", nargs="+", default=[n for n in SUITES if n != "e2e-decode"], choices=list(SUITES)
    )
    bench.add_argument(
        "--size",
        default="default",
        choices=SIZES,
        help="tiny: smoke test; default: about a minute on 2 cores; full: the issue sizes",
    )
    bench.add_argument(
        "--repeat", type=int_at_least(1), default=3, help="timed runs per measurement"
    )
    bench.add_argument("--device", default="cpu", help="cpu, cuda or cuda:K")
    bench.add_argument(
        "--threads", type=int_at_least(0), default=0, help="torch threads (default: torch's)"
    )
    bench.add_argument("--json", help="also write the rows to this JSON file")
    bench.add_argument("--no-reexec", action="store_true", help=argparse.SUPPRESS)
    bench.set_defaults(fn=_cmd_bench)

    lst = sub.add_parser("list", help="operators and their registered backends")
    lst.set_defaults(fn=_cmd_list)

"""``ssmkit dynamics`` (token-dynamics report of a trained run) and ``ssmkit ablate``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ssmkit.cli.options import int_at_least


def _cmd_dynamics(args: argparse.Namespace) -> int:
    import torch

    from ssmkit.analysis.token_probe import format_report, layer_report
    from ssmkit.train.loop import get_batch
    from ssmkit.train.run import load_run

    run = load_run(Path(args.run_dir), args.weights)
    if run.config.model.layer != "mamba":
        raise ValueError(f"dynamics reads Mamba layers; this run uses {run.config.model.layer!r}")
    split = run.task.splits()[args.split]
    idx = torch.arange(min(args.items, split.x.shape[0]))
    x, _, _ = get_batch(split, idx, run.task.spec.kind, torch.device("cpu"))
    report = layer_report(run.model, x)
    print(format_report(report))
    if args.plot:
        from ssmkit.analysis.token_plots import plot_token_norms

        path = run.run_dir / "plots" / "token_norms.png"
        path.parent.mkdir(exist_ok=True)
        plot_token_norms(report, str(path))
        print(f"plot: {path}")
    return 0


def _cmd_ablate(args: argparse.Namespace, extra: list[str]) -> int:
    from ssmkit import data
    from ssmkit.analysis.ablation import ablation_table, summarize_ablation
    from ssmkit.cli.train import _overrides
    from ssmkit.train import apply_overrides, default_run
    from ssmkit.train.ablation import default_variants, run_ablation

    base = apply_overrides(default_run(args.task, "mamba"), _overrides(extra))
    causal = data.build_task(base.task, base.task_config).spec.causal
    variants = args.variants or default_variants(causal)
    out = Path(args.out or f"runs/ablate-{base.task}-{time.strftime('%Y%m%d-%H%M%S')}")
    print(f"ablation on {base.task}: variants {variants}, seeds {args.seeds}, runs in {out}")
    runs = run_ablation(base, variants, args.seeds, out)
    summaries = summarize_ablation(runs)
    table = ablation_table(summaries)
    print(table)
    _plot_curves(summaries, out / "ablation.png")
    (out / "ablation.md").write_text(table + "\n")
    rows = [{"variant": r.variant, "seed": r.seed, "test_loss": r.final_loss,
             "test_accuracy": r.final_accuracy, "val_loss_curve": list(r.loss_curve)}
            for r in runs]  # fmt: skip
    (out / "ablation.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"results: {out / 'ablation.md'}, {out / 'ablation.json'}")
    return 0


def _plot_curves(summaries, path: Path) -> None:
    """Mean +- std of the validation-loss curves per variant (skipped without matplotlib)."""
    from ssmkit.train.plots import pyplot

    try:
        plt = pyplot()
    except ValueError as e:  # matplotlib missing
        print(f"no plot: {e}")
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for s in summaries:
        epochs = range(1, len(s.curve_mean) + 1)
        mean, std = s.curve_mean.numpy(), s.curve_std.nan_to_num(0.0).numpy()
        ax.plot(epochs, mean, label=s.variant)
        ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot: {path}")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``dynamics`` and ``ablate`` to the ``ssmkit`` command."""
    dyn = sub.add_parser(
        "dynamics", help="token-dynamics scenario of each Mamba layer of a trained run"
    )
    dyn.add_argument("run_dir")
    dyn.add_argument("--split", default="test", choices=["train", "val", "test"])
    dyn.add_argument(
        "--items", type=int_at_least(1), default=8, help="sequences to probe (default 8)"
    )
    dyn.add_argument("--weights", default="best", choices=["best", "last"])
    dyn.add_argument("--plot", action="store_true", help="also plot token norms across depth")
    dyn.set_defaults(fn=_cmd_dynamics)

    ab = sub.add_parser(
        "ablate",
        help="train Mamba variants (baseline/positive/negative/reorder) over seeds",
        description="Token-dynamics ablation: every variant x seed trains the task with the "
        "same budget; prints mean and spread per variant. Extra --FIELD VALUE options set the "
        "task/model/train configs as for `ssmkit train`.",
    )
    ab.add_argument("--task", default="digits")
    ab.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ab.add_argument("--variants", nargs="+", help="default: all that the task allows")
    ab.add_argument("--out", help="parent directory of the runs")
    ab.set_defaults(fn=_cmd_ablate, extra_ok=True)

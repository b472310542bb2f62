"""Plots of a run: training curves, learned convolution kernels and step sizes (PNG)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ssmkit.core.plotting import integer_ticks, plain_log_axis, pyplot
from ssmkit.core.step_size import step_size
from ssmkit.layers.lti import LTILayer
from ssmkit.layers.mamba import Mamba
from ssmkit.layers.mamba2 import Mamba2
from ssmkit.layers.s5 import S5
from ssmkit.train.objectives import better, primary_metric
from ssmkit.train.run import LoadedRun, read_metrics

# the y label of the training loss per task kind (the loss of ssmkit.train.objectives)
LOSS_LABEL = {
    "classification": "loss (cross-entropy, nats)",
    "tokens": "loss (cross-entropy per token, nats)",
    "regression": "loss (mean squared error)",
    "forecast": "loss (mean squared error)",
}
METRIC_LABEL = {
    "accuracy": "accuracy",
    "seq_accuracy": "sequence accuracy",
    "rmse": "RMSE",
    "mae": "MAE",
}


def plot_run(run: LoadedRun) -> list[Path]:
    """Write ``plots/curves.png`` and, where the layers have them, ``plots/kernels.png`` and
    ``plots/step_sizes.png`` in the run directory; returns the paths written."""
    plt = pyplot()
    out = run.run_dir / "plots"
    out.mkdir(exist_ok=True)
    paths = [_curves(plt, run, out / "curves.png")]
    layers = [b.layer for b in run.model.blocks]
    if any(_siso(layer) for layer in layers):
        paths.append(_kernels(plt, layers, run.spec.max_length, out / "kernels.png"))
    steps = _step_sizes(layers)
    if steps:
        paths.append(_step_size_histograms(plt, steps, out / "step_sizes.png"))
    return paths


def _step_size_histograms(plt, steps: list[tuple[int, torch.Tensor]], path: Path) -> Path:
    """One outlined histogram per layer on shared log-spaced bins, each in its own colour and
    line style, so overlapping layers stay apart."""
    values = torch.cat([dt for _, dt in steps]).double().clamp_min(1e-12)
    lo, hi = float(values.min()), float(values.max())
    hi = hi * 1.01 if hi > lo else lo * 2
    bins = torch.logspace(math.log10(lo), math.log10(hi), 31).numpy()
    styles = ("-", "--", ":", "-.")
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for k, (i, dt) in enumerate(steps):
        ax.hist(dt.double().numpy(), bins=bins, histtype="step", lw=1.6, ls=styles[k % 4],
                label=f"layer {i} ({dt.numel()} channels)")  # fmt: skip
    ax.set_xscale("log")
    plain_log_axis(ax, "x")
    integer_ticks(ax, "y")
    ax.set_xlabel("learned step size dt (log scale)")
    ax.set_ylabel("number of channels")
    ax.set_title("step sizes after training")
    ax.legend(fontsize=7, ncol=2 if len(steps) > 4 else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def best_epoch(records: list[dict], kind: str) -> int | None:
    """The 1-based epoch whose validation record selected the best checkpoint (the training
    loop's rule: :func:`~ssmkit.train.objectives.better` on the task's primary metric), or
    None without validation records."""
    metric, best, epoch = primary_metric(kind), None, None
    for r in records:
        if r["split"] == "val" and metric in r and better(metric, r[metric], best):
            best, epoch = r[metric], r["epoch"] + 1
    return epoch


def _curves(plt, run: LoadedRun, path: Path) -> Path:
    records = read_metrics(run.run_dir)
    kind = run.spec.kind
    val = [r for r in records if r["split"] == "val"]
    # validation runs at the end of each epoch: its step gives the steps per epoch
    per_epoch = val[0]["step"] / (val[0]["epoch"] + 1) if val and val[0]["step"] > 0 else 0

    def x(r: dict) -> float:
        return r["step"] / per_epoch if per_epoch else r["step"]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for split, style in (("train", "-"), ("val", "o-")):
        rows = [r for r in records if r["split"] == split and "loss" in r]
        ax1.plot([x(r) for r in rows], [r["loss"] for r in rows], style, label=split, ms=3)
    ax1.set_ylabel(LOSS_LABEL.get(kind, "loss"))
    ax1.set_yscale("log")
    plain_log_axis(ax1, "y")
    ax1.set_title("loss (log scale)")
    names = [k for k in METRIC_LABEL if val and k in val[0]]
    for name in names:
        ax2.plot([x(r) for r in val], [r[name] for r in val], "o-", ms=3, label=METRIC_LABEL[name])
    ax2.set_ylabel(" / ".join(METRIC_LABEL[n] for n in names) or "no validation metric")
    if any(n in ("accuracy", "seq_accuracy") for n in names):
        from matplotlib.ticker import PercentFormatter

        ax2.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax2.set_title("validation")
    best = best_epoch(records, kind) if per_epoch else None
    for ax in (ax1, ax2):
        ax.set_xlabel("epoch" if per_epoch else "optimiser step")
        integer_ticks(ax, "x")
        if best is not None:
            ax.axvline(best, color="0.4", ls=":", lw=1, label=f"best (epoch {best})")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{run.config.task} / {run.config.model.layer}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _siso(layer) -> bool:
    """LTI layers with one convolution kernel per channel (S5 is MIMO: no per-channel kernel)."""
    return isinstance(layer, LTILayer) and not isinstance(layer, S5)


@torch.no_grad()
def _kernels(plt, layers, length: int, path: Path) -> Path:
    lti = [(i, layer) for i, layer in enumerate(layers) if _siso(layer)]
    fig, axes = plt.subplots(len(lti), 1, figsize=(8, 2.4 * len(lti)), squeeze=False)
    for ax, (i, layer) in zip(axes[:, 0], lti, strict=True):
        K = layer.kernel(length)  # (k, h, L): k directions
        for channel in range(min(4, K.shape[1])):
            ax.plot(K[0, channel].float().cpu().numpy(), lw=0.8, label=f"channel {channel}")
        ax.set_title(f"layer {i}: convolution kernels of {min(4, K.shape[1])} channels", fontsize=9)
        ax.set_ylabel("K[lag]")
        ax.legend(fontsize=7, ncol=4, loc="upper right")
    axes[-1, 0].set_xlabel("lag (steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@torch.no_grad()
def _step_sizes(layers) -> list[tuple[int, torch.Tensor]]:
    """(layer index, learned dt per channel) for the layers that have one.

    For Mamba and Mamba-2 it is the step size of a zero projection, step_size(b_Delta).
    """
    out = []
    for i, layer in enumerate(layers):
        if isinstance(layer, Mamba):
            out.append((i, step_size(layer.dt_proj.bias).cpu()))
        elif isinstance(layer, Mamba2):
            out.append((i, step_size(layer.dt_bias, limit=layer.dt_limit).cpu()))
        elif hasattr(layer, "log_dt"):
            out.append((i, layer.log_dt.exp().flatten().cpu()))
    return out

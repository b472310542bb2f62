"""Plots of a run: training curves, learned convolution kernels and step sizes (PNG)."""

from __future__ import annotations

from pathlib import Path

import torch

from ssmkit.core.plotting import pyplot
from ssmkit.layers.lti import LTILayer
from ssmkit.layers.mamba import Mamba
from ssmkit.layers.mamba2 import Mamba2
from ssmkit.layers.s5 import S5
from ssmkit.train.run import LoadedRun, read_metrics


def plot_run(run: LoadedRun) -> list[Path]:
    """Write ``plots/curves.png`` and, where the layers have them, ``plots/kernels.png`` and
    ``plots/step_sizes.png`` in the run directory; returns the paths written."""
    plt = pyplot()
    out = run.run_dir / "plots"
    out.mkdir(exist_ok=True)
    paths = [_curves(plt, run, out / "curves.png")]
    layers = [b.layer for b in run.model.blocks]
    if any(_siso(layer) for layer in layers):
        paths.append(_kernels(plt, layers, run.task.spec.max_length, out / "kernels.png"))
    steps = _step_sizes(layers)
    if steps:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for i, dt in steps:
            ax.hist(dt.log10().numpy(), bins=40, alpha=0.5, label=f"layer {i}")
        ax.set_xlabel("log10 step size dt")
        ax.set_ylabel("channels")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "step_sizes.png", dpi=110)
        plt.close(fig)
        paths.append(out / "step_sizes.png")
    return paths


def _curves(plt, run: LoadedRun, path: Path) -> Path:
    records = read_metrics(run.run_dir)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for split, style in (("train", "-"), ("val", "o-")):
        rows = [r for r in records if r["split"] == split and "loss" in r]
        ax1.plot([r["step"] for r in rows], [r["loss"] for r in rows], style, label=split, ms=3)
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.set_yscale("log")
    ax1.legend()
    val = [r for r in records if r["split"] == "val"]
    names = [k for k in ("accuracy", "seq_accuracy", "rmse", "mae") if val and k in val[0]]
    for name in names:
        ax2.plot([r["step"] for r in val], [r[name] for r in val], "o-", ms=3, label=name)
    ax2.set_xlabel("step")
    ax2.set_title("validation")
    if names:
        ax2.legend()
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
    fig, axes = plt.subplots(len(lti), 1, figsize=(8, 2.2 * len(lti)), squeeze=False)
    for ax, (i, layer) in zip(axes[:, 0], lti, strict=True):
        K = layer.kernel(length)  # (k, h, L): k directions
        for channel in range(min(4, K.shape[1])):
            ax.plot(K[0, channel].float().cpu().numpy(), lw=0.8)
        ax.set_title(f"layer {i}: convolution kernels of 4 channels", fontsize=9)
    axes[-1, 0].set_xlabel("lag")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@torch.no_grad()
def _step_sizes(layers) -> list[tuple[int, torch.Tensor]]:
    """(layer index, learned dt per channel) for the layers that have one."""
    out = []
    for i, layer in enumerate(layers):
        if isinstance(layer, Mamba):
            out.append((i, torch.nn.functional.softplus(layer.dt_proj.bias).cpu()))
        elif isinstance(layer, Mamba2):
            out.append((i, torch.nn.functional.softplus(layer.dt_bias).cpu()))
        elif hasattr(layer, "log_dt"):
            out.append((i, layer.log_dt.exp().flatten().cpu()))
    return out

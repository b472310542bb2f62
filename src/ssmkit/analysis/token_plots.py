"""Plots of token dynamics: 1-D and 2-D trajectories, token norms across a model's depth.

matplotlib is imported only when a plot is drawn (``pip install "ssmkit[plot]"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ssmkit.analysis.token_dynamics import classify, paper_2d_cases, simulate
from ssmkit.analysis.token_probe import LayerDynamics
from ssmkit.core.ode import OdeSolution
from ssmkit.core.plotting import integer_ticks
from ssmkit.core.plotting import pyplot as _pyplot

Tensor = torch.Tensor


def plot_trajectories_1d(solution: OdeSolution, path: str, title: str = "") -> None:
    """x_l(t) of a 1-D solution (y: (T, L) or (T, L, 1)) against depth t, one line per token."""
    y = solution.y.detach()
    y = y[..., 0] if y.ndim == 3 else y
    if y.ndim != 2:
        raise ValueError(f"expected a 1-D solution with y (T, L), got {tuple(solution.y.shape)}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for l in range(y.shape[1]):
        ax.plot(solution.t, y[:, l], lw=1.5, label=f"token {l + 1}")
    ax.set(xlabel="depth t", ylabel="x_l(t)", title=title or f"1-D token dynamics "
           f"({solution.status})")  # fmt: skip
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_trajectories_2d(solutions: dict[str, OdeSolution], path: str) -> None:
    """Planar paths of the tokens (y: (T, L, 2)) of each named 2-D solution, side by side."""
    if not solutions:
        raise ValueError("solutions must hold at least one 2-D solution")
    for name, sol in solutions.items():
        if sol.y.ndim != 3 or sol.y.shape[-1] != 2:
            raise ValueError(f"solution {name!r} must have y (T, L, 2), got {tuple(sol.y.shape)}")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(solutions), figsize=(4.2 * len(solutions), 4),
                             constrained_layout=True, squeeze=False)  # fmt: skip
    for ax, (name, sol) in zip(axes[0], solutions.items(), strict=True):
        y = sol.y.detach()
        for l in range(y.shape[1]):
            line = ax.plot(y[:, l, 0], y[:, l, 1], lw=1.2)[0]
            ax.plot(y[0, l, 0], y[0, l, 1], "o", color=line.get_color(), ms=4)
            ax.plot(y[-1, l, 0], y[-1, l, 1], "x", color=line.get_color(), ms=6)
        ax.plot(0, 0, "k+", ms=10)
        ax.set(title=f"{name} ({sol.status}, t = {sol.t_stop:.3g})", xlabel="x[0]",
               ylabel="x[1]")  # fmt: skip
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_paper_2d_cases(path: str, t_end: float = 20.0, n_points: int = 400) -> dict[str, str]:
    """Simulate and plot the three 2-D cases of the paper's figure (``paper_2d_cases``).

    Returns:
        name -> predicted scenario of :func:`classify`.
    """
    solutions, predicted = {}, {}
    for name, (system, x0) in paper_2d_cases().items():
        t_eval = torch.linspace(0, t_end, n_points, dtype=x0.dtype)
        solutions[name] = simulate(system, x0, t_eval, max_norm=1e3)
        predicted[name] = classify(system, x0).scenario
    plot_trajectories_2d(solutions, path)
    return predicted


def plot_token_norms(report: Sequence[LayerDynamics], path: str) -> None:
    """Mean token norm entering and leaving each Mamba layer of a ``layer_report``, each layer
    labelled with its scenario, and the per-token norms leaving each layer (one line per token
    position, coloured by position)."""
    if not report:
        raise ValueError("report is empty: nothing to plot")
    plt = _pyplot()
    depth = list(range(len(report) + 1))
    mean = [float(report[0].norm_in.mean())] + [float(r.norm_out.mean()) for r in report]
    per_token = torch.stack([report[0].norm_in] + [r.norm_out for r in report])  # (depth, l)
    fig, (ax, ax_tok) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    ax.plot(depth, mean, "o-")
    for i, r in enumerate(report):  # the full scenario name, above its point, kept inside
        ax.annotate(r.scenario, (i + 1, mean[i + 1]), xytext=(0, 6), textcoords="offset points",
                    ha="center", va="bottom", fontsize=7, annotation_clip=False)  # fmt: skip
    ax.margins(x=0.12, y=0.18)
    ax.set(xlabel="Mamba layer (0 = input)", ylabel="mean token norm (L2)",
           title="token norm across depth")  # fmt: skip
    n_tok = per_token.shape[1]
    cmap = plt.get_cmap("viridis")
    for l in range(n_tok):
        ax_tok.plot(depth, per_token[:, l], lw=1, color=cmap(l / max(1, n_tok - 1)))
    ax_tok.set(xlabel="Mamba layer (0 = input)", ylabel="token norm (L2)", title="per token")
    norm = plt.Normalize(0, max(1, n_tok - 1))
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax_tok)
    bar.set_label("token position")
    for a in (ax, ax_tok):
        integer_ticks(a, "x")
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = [
    "plot_paper_2d_cases",
    "plot_token_norms",
    "plot_trajectories_1d",
    "plot_trajectories_2d",
]

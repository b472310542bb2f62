"""Residual diagnostic plots (matplotlib, imported only when a plot is drawn)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ssmkit.core.checks import check_int
from ssmkit.core.plotting import pyplot
from ssmkit.probabilistic.diagnostics import autocorrelations

Tensor = torch.Tensor


def plot_diagnostics(e: Tensor, path: Path, lags: int = 10, start: int = 0) -> Path:
    """Four panels of standardised residuals: the series (x axis from ``start``), a histogram
    with the N(0, 1) density, a normal Q-Q plot, and the correlogram with +-1.96 / sqrt(n).

    Args:
        e: (l - d,) standardised residuals, NaN where missing.
        path: the PNG to write (its folder must exist).
        lags: correlogram lags, 1 <= lags < number of observed residuals.
        start: time index of e[0] (the d steps left out).

    Returns:
        path.
    """
    check_int("lags", lags, 1)
    obs = e[~torch.isnan(e)].to(torch.float64)
    n = obs.shape[0]
    if n < 3 or lags >= n:
        raise ValueError(f"lags must be < the number of observed residuals ({n}), got {lags}")
    plt = pyplot()
    fig, ax = plt.subplots(2, 2, figsize=(10, 7))
    t = torch.arange(start, start + e.shape[0])
    ax[0, 0].plot(t, e, lw=0.8)
    ax[0, 0].axhline(0, color="0.5", lw=0.6)
    ax[0, 0].set_title("Standardised residuals")
    ax[0, 1].hist(obs, bins="auto", density=True, alpha=0.6, label="residuals")
    grid = torch.linspace(min(-4.0, float(obs.min())), max(4.0, float(obs.max())), 200)
    ax[0, 1].plot(grid, torch.exp(-0.5 * grid**2) / math.sqrt(2 * math.pi), label="N(0,1)")
    ax[0, 1].set_title("Histogram and normal density")
    ax[0, 1].legend()
    probs = (torch.arange(1, n + 1, dtype=torch.float64) - 0.5) / n
    theory = torch.special.ndtri(probs)
    ax[1, 0].plot(theory, torch.sort(obs).values, ".", ms=3)
    lim = float(theory.abs().max())
    ax[1, 0].plot([-lim, lim], [-lim, lim], color="r", lw=0.8)
    ax[1, 0].set_title("Normal Q-Q")
    ax[1, 0].set_xlabel("theoretical quantiles")
    ax[1, 0].set_ylabel("sample quantiles")
    r = autocorrelations(obs, lags)
    ax[1, 1].vlines(range(1, lags + 1), 0, r)
    ax[1, 1].plot(range(1, lags + 1), r, "o", ms=4)
    band = 1.96 / math.sqrt(n)
    ax[1, 1].axhspan(-band, band, alpha=0.2)
    ax[1, 1].axhline(0, color="0.5", lw=0.6)
    ax[1, 1].set_title("Correlogram")
    ax[1, 1].set_xlabel("lag")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

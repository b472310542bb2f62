"""Plot how well HiPPO coefficients reconstruct a signal as the state size grows."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ssmkit.core.hippo import hippo_coefficients, hippo_reconstruct
from ssmkit.core.plotting import pyplot

Tensor = torch.Tensor


def demo_signal(length: int = 1000, seed: int = 0) -> Tensor:
    """A smooth test signal on [0, 1]: a few random sinusoids under a slow envelope, (l,)."""
    g = torch.Generator().manual_seed(seed)
    s = torch.arange(1, length + 1, dtype=torch.float64) / length
    freqs = torch.tensor([3.0, 7.0, 13.0, 21.0], dtype=torch.float64)
    amps = torch.tensor([1.0, 0.6, 0.35, 0.2], dtype=torch.float64)
    phases = torch.rand(4, generator=g, dtype=torch.float64) * 2 * math.pi
    waves = amps * torch.sin(2 * math.pi * freqs * s[:, None] / 2 + phases)
    return (1 + 0.5 * s) * waves.sum(-1)


def reconstruction_errors(
    f: Tensor, measure: str = "legs", Ns: Sequence[int] = (8, 16, 32, 64)
) -> tuple[dict[int, float], dict[int, Tensor]]:
    """RMSE over the whole history (legs) of the reconstruction at the final time, per N."""
    length = f.shape[-1]
    x = torch.arange(1, length + 1, dtype=torch.float64) / length  # sample k sits at k / l
    errors, curves = {}, {}
    for N in Ns:
        c = hippo_coefficients(f.to(torch.float64), measure, N)[-1]
        curves[N] = hippo_reconstruct(c, measure, x)
        errors[N] = float(((curves[N] - f) ** 2).mean().sqrt())
    return errors, curves


def plot_reconstruction(
    f: Tensor, measure: str = "legs", Ns: Sequence[int] = (8, 16, 32, 64), path: str = "hippo.png"
) -> dict[int, float]:
    """Compress ``f`` (l,) online with each N, reconstruct its history, write a PNG.

    Returns:
        Reconstruction RMSE per N.
    """
    plt = pyplot()
    errors, curves = reconstruction_errors(f, measure, Ns)
    x = torch.arange(1, f.shape[-1] + 1) / f.shape[-1]
    fig, (ax, ax_err) = plt.subplots(
        1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 1]}, constrained_layout=True
    )
    ax.plot(x, f, color="black", lw=2.5, label="signal")
    for N in Ns:
        ax.plot(x, curves[N], lw=1.2, label=f"N = {N}")
    ax.set(xlabel="time (fraction of the history)", ylabel="value")
    ax.set_title(f"HiPPO-{measure}: the whole history rebuilt from N coefficients")
    ax.legend(loc="upper left", fontsize=8)
    ax_err.semilogy(list(errors), list(errors.values()), "o-")
    ax_err.set(xlabel="N", ylabel="RMSE", title="error vs state size")
    ax_err.set_xscale("log", base=2)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return errors

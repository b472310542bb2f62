"""A generated stochastic task for the latent SDE: noisy stochastic spirals.

Each series follows the linear SDE dz = A_s z dt + diffusion dW with
A_s = [[-damping, -s omega], [s omega, -damping]] and a random direction s = +-1 (a mixture of
two stochastic rotations, the stochastic counterpart of ``latent.data.make_spirals``), started
at radius r ~ U(1, 2) and a random phase, solved by Euler-Maruyama on a fine grid
(``ssmkit.core.sde``), and observed at ``n_obs`` random points of an ``n_grid`` grid with
N(0, noise_std^2) noise. The path is random given its start, so a deterministic latent ODE
cannot forecast it exactly: the best forecast is the conditional mean, which decays.
"""

from __future__ import annotations

import math

import torch

from ssmkit.core.checks import check_int
from ssmkit.core.sde import BrownianTree, sdeint
from ssmkit.latent.data import IrregularSeries


def make_stochastic_spirals(
    n_series: int,
    n_grid: int = 50,
    n_obs: int = 20,
    t_max: float = 5.0,
    diffusion: float = 0.2,
    noise_std: float = 0.1,
    damping: float = 0.15,
    omega: float = 1.5,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> IrregularSeries:
    """Irregularly observed stochastic spirals (module docstring).

    Args:
        n_series: number of series b.
        n_grid: points of the shared time grid on [0, t_max].
        n_obs: observed grid points per series (a random subset each).
        t_max: end of the time window.
        diffusion: standard deviation rate of the Brownian forcing (>= 0; 0 gives spirals).
        noise_std: observation noise standard deviation (>= 0).
        damping, omega: decay rate and angular velocity of the drift.
        seed: seed of directions, starts, Brownian paths, noise and observation times.
        dtype: floating dtype of the outputs.

    Returns:
        ``IrregularSeries`` with times (n_grid,), values (b, n_grid, 2) (NaN where unobserved),
        mask (b, n_grid) and clean (b, n_grid, 2) the latent path without observation noise.
    """
    check_int("n_series", n_series, minimum=1)
    check_int("n_grid", n_grid, minimum=2)
    check_int("n_obs", n_obs, minimum=1)
    if n_obs > n_grid:
        raise ValueError(f"n_obs must be <= n_grid = {n_grid}, got {n_obs}")
    for name, v in (("t_max", t_max), ("diffusion", diffusion), ("noise_std", noise_std)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
        if v < 0 or (name == "t_max" and v == 0):
            bound = "> 0" if name == "t_max" else ">= 0"
            raise ValueError(f"{name} must be {bound}, got {v!r}")
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    sign = torch.where(torch.rand(n_series, generator=g) < 0.5, -1.0, 1.0).to(f64)
    radius = 1 + torch.rand(n_series, generator=g, dtype=f64)
    phase = 2 * math.pi * torch.rand(n_series, generator=g, dtype=f64)
    z0 = torch.stack([radius * torch.cos(phase), radius * torch.sin(phase)], -1)  # (b, 2)

    def drift(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        swap = torch.stack([-z[:, 1], z[:, 0]], -1)  # (b, 2): a quarter turn of z
        return -damping * z + omega * sign[:, None] * swap

    def noise(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.full_like(z, float(diffusion))

    times = torch.linspace(0, t_max, n_grid, dtype=f64)
    bm_seed = int(torch.randint(0, 2**62, (1,), generator=g))
    bm = BrownianTree(0.0, t_max, (n_series, 2), seed=bm_seed, levels=12)
    step = t_max / 2**10
    clean = sdeint(drift, noise, z0, times, bm, "euler", step).y.transpose(0, 1)  # (b, u, 2)
    noisy = clean + noise_std * torch.randn(clean.shape, generator=g, dtype=f64)
    chosen = torch.rand(n_series, n_grid, generator=g).argsort(1)[:, :n_obs]
    mask = torch.zeros(n_series, n_grid, dtype=torch.bool).scatter(1, chosen, True)
    values = torch.where(mask[..., None], noisy, torch.full_like(noisy, float("nan")))
    return IrregularSeries(times.to(dtype), values.to(dtype), mask, clean.to(dtype))


__all__ = ["make_stochastic_spirals"]

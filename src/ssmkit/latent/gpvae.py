"""Markovian GP-VAE: a VAE whose latent prior is a Matern Gaussian process in state space form.

A stationary GP with a Matern-nu kernel (nu = 1/2, 3/2, 5/2) is the first component of a linear
SDE (Hartikainen & Sarkka, "Kalman filtering and smoothing solutions to temporal Gaussian
process regression models", MLSP 2010; Solin 2016, sec. 2.3): with lambda = sqrt(2 nu) / ell,

    nu = 1/2:  F_c = [-lambda],                                     q = 2 sigma^2 lambda
    nu = 3/2:  F_c = [[0, 1], [-lambda^2, -2 lambda]],              q = 4 sigma^2 lambda^3
    nu = 5/2:  F_c = [[0, 1, 0], [0, 0, 1], [-lambda^3, -3 lambda^2, -3 lambda]],
               q = 16/3 sigma^2 lambda^5

driven by white noise of spectral density q in the last component (Q_c = q e_n e_n^T),
observed through H = e_1^T, started in the stationary covariance P_inf (F_c P + P F_c^T + Q_c
= 0). Then Cov(f(t), f(t')) = H exp(F_c (t - t')) P_inf H^T = k_nu(t - t') for t >= t'.

The GP-VAE (Fortuin et al., AISTATS 2020, arXiv 1907.04155) puts one such GP on each latent
channel; its Markovian form (Zhu et al., ICML 2023, arXiv 2207.05543) makes the posterior the
prior times Gaussian sites from the encoder, so the prior term of the ELBO is one Kalman filter
and RTS pass (:class:`ssmkit.latent.cd_ssm.SiteVAE`): linear in the length, at any timestamps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ssmkit.core.checks import check_int, check_positive
from ssmkit.core.van_loan import van_loan
from ssmkit.latent.cd_ssm import SiteVAE, check_times

Tensor = torch.Tensor
NUS = (0.5, 1.5, 2.5)


def _check_nu(nu: object) -> float:
    if isinstance(nu, bool) or nu not in NUS:
        raise ValueError(f"nu must be one of {NUS} (Matern-1/2, 3/2, 5/2), got {nu!r}")
    return float(nu)


def matern_kernel(nu: float, tau: Tensor, lengthscale: Tensor | float, variance=1.0) -> Tensor:
    """k_nu(tau) = sigma^2 p(r) exp(-r), r = sqrt(2 nu) |tau| / ell, p = 1, 1 + r, 1 + r + r^2/3.

    Args:
        nu: 0.5, 1.5 or 2.5. tau: (*) time differences. lengthscale ell > 0, variance sigma^2 > 0.
    """
    nu = _check_nu(nu)
    check_positive("lengthscale", lengthscale)
    check_positive("variance", variance)
    r = math.sqrt(2 * nu) * tau.abs() / lengthscale
    poly = {0.5: torch.ones_like(r), 1.5: 1 + r, 2.5: 1 + r + r**2 / 3}[nu]
    return variance * poly * torch.exp(-r)


def matern_sde(
    nu: float, lengthscale: Tensor | float, variance: Tensor | float = 1.0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """State space form of the Matern-nu GP (see the module docstring).

    Args:
        nu: 0.5, 1.5 or 2.5; lengthscale ell > 0 and variance sigma^2 > 0: floats or 0-d
            tensors (differentiable).

    Returns:
        F_c (n, n), Q_c (n, n), H (1, n), P_inf (n, n) with n = nu + 1/2.
    """
    nu = _check_nu(nu)
    check_positive("lengthscale", lengthscale)
    check_positive("variance", variance)
    if not isinstance(lengthscale, Tensor):
        lengthscale = torch.tensor(float(lengthscale))
    ell = lengthscale
    s2 = torch.as_tensor(variance, dtype=ell.dtype, device=ell.device)
    lam = math.sqrt(2 * nu) / ell
    n = int(nu + 0.5)
    z, one = torch.zeros_like(lam), torch.ones_like(lam)
    if n == 1:
        F_c, q, P = (-lam).reshape(1, 1), 2 * s2 * lam, s2.reshape(1, 1)
    elif n == 2:
        F_c = torch.stack([torch.stack([z, one]), torch.stack([-(lam**2), -2 * lam])])
        q = 4 * s2 * lam**3
        P = torch.diag(torch.stack([s2, lam**2 * s2]))
    else:
        F_c = torch.stack([
            torch.stack([z, one, z]), torch.stack([z, z, one]),
            torch.stack([-(lam**3), -3 * lam**2, -3 * lam]),
        ])  # fmt: skip
        q = 16 / 3 * s2 * lam**5
        k = s2 * lam**2 / 3
        P = torch.stack([
            torch.stack([s2, z, -k]), torch.stack([z, k, z]), torch.stack([-k, z, lam**4 * s2]),
        ])  # fmt: skip
    e = torch.zeros(n, dtype=ell.dtype, device=ell.device)
    e[-1] = 1
    Q_c = q * torch.outer(e, e)
    H = torch.zeros(1, n, dtype=ell.dtype, device=ell.device)
    H[0, 0] = 1
    return F_c, Q_c, H, P


def state_space_covariance(
    F_c: Tensor, Q_c: Tensor, H: Tensor, P_inf: Tensor, times: Tensor
) -> Tensor:
    """The GP covariance matrix implied by a stationary state space model.

    K_ij = H exp(F_c (t_i - t_j)) P_inf H^T for t_i >= t_j (and its transpose otherwise); the
    matrix exponential is the ``F`` of :func:`ssmkit.core.van_loan.van_loan`.

    Args:
        F_c, Q_c, P_inf: (n, n); H: (1, n); times: (l,) increasing.

    Returns:
        (l, l) covariance matrix.
    """
    check_times(times)
    tau = (times[:, None] - times[None, :]).clamp_min(0)  # (l, l): t_i - t_j where i >= j
    F, _ = van_loan(F_c, Q_c, tau.to(F_c.dtype))  # (l, l, n, n)
    lower = (H @ F @ P_inf @ H.mT)[..., 0, 0]  # (l, l), valid for i >= j
    return lower.tril() + lower.mT.triu(1)


@dataclass(frozen=True)
class GPVAEConfig:
    """Sizes of the Markovian GP-VAE (names after Fortuin et al. 2020)."""

    obs_dim: int = 2  # dim(x_k)
    latent_dim: int = 2  # number of latent GP channels z_k (the decoder's input)
    nu: float = 1.5  # Matern smoothness: 0.5, 1.5 or 2.5
    lengthscale: float = 1.0  # initial (learned) lengthscale ell of every channel
    hidden: int = 32  # hidden units of the encoder and decoder MLPs
    min_var: float = 1e-4  # floor of every predicted variance

    def __post_init__(self) -> None:
        for name in ("obs_dim", "latent_dim", "hidden"):
            check_int(name, getattr(self, name), minimum=1)
        _check_nu(self.nu)
        for name in ("lengthscale", "min_var"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
                raise ValueError(f"{name} must be a number > 0, got {v!r}")


class GPVAE(SiteVAE):
    """GP-VAE with independent unit-variance Matern priors on the latent channels.

    The latent state stacks one Matern SDE per channel (block-diagonal F_c, Q_c, P_inf); H
    picks the first component of each block, so a_k = z(t_k) is the GP value.
    """

    def __init__(self, config: GPVAEConfig) -> None:
        c = config
        super().__init__(c.obs_dim, c.latent_dim, c.hidden, c.min_var)
        self.config = c
        raw = math.log(math.expm1(c.lengthscale))  # softplus^{-1}
        self.raw_lengthscale = nn.Parameter(torch.full((c.latent_dim,), raw))

    @property
    def lengthscale(self) -> Tensor:
        """(latent_dim,) the lengthscales ell of the channels."""
        return nn.functional.softplus(self.raw_lengthscale)

    def prior(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        blocks = [matern_sde(self.config.nu, ell) for ell in self.lengthscale]
        F_c, Q_c, H, P_inf = (torch.block_diag(*parts) for parts in zip(*blocks, strict=True))
        return F_c, Q_c, H, F_c.new_zeros(F_c.shape[-1]), P_inf


__all__ = [
    "GPVAE",
    "NUS",
    "GPVAEConfig",
    "matern_kernel",
    "matern_sde",
    "state_space_covariance",
]

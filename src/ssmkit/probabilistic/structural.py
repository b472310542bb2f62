"""Ready-made structural time series models (Harvey 1989; Durbin & Koopman 2012, ch. 3).

Each component is a small state space block observed through a row of H; components are
stacked block-diagonally and share one observation noise (:func:`structural_model`). The
layouts follow statsmodels' ``UnobservedComponents``:

* local level:         mu_{t+1} = mu_t + eta_t
* local linear trend:  mu_{t+1} = mu_t + nu_t + eta_t,  nu_{t+1} = nu_t + zeta_t
* seasonal (dummy):    gamma_{t+1} = -(gamma_t + ... + gamma_{t-s+2}) + omega_t, s-1 states
* AR(p):               companion form, stationary prior (discrete Lyapunov equation)

Nonstationary states get an (exactly or approximately) diffuse prior.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssmkit.core.checks import check_int, check_tensor
from ssmkit.probabilistic.model import LinearGaussianSSM

Tensor = torch.Tensor


@dataclass(frozen=True)
class Component:
    """One structural block (no observation noise)."""

    name: str  # "level", "trend", "seasonal" or "ar"
    F: Tensor  # (k, k) transition block
    H: Tensor  # (k,) loading of the block's states on y
    Q: Tensor  # (k, k) noise covariance block
    P0: Tensor  # (k, k) proper prior covariance
    P0_diffuse: Tensor  # (k, k) diffuse part (identity on nonstationary states)


def _scalar(name: str, x: Tensor | float) -> Tensor:
    x = torch.as_tensor(x, dtype=torch.float64) if not isinstance(x, Tensor) else x
    if x.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {tuple(x.shape)}")
    return x


def local_level(sigma2_level: Tensor | float) -> Component:
    """Random walk level, one state."""
    s = _scalar("sigma2_level", sigma2_level)
    one = torch.ones(1, 1, dtype=s.dtype, device=s.device)
    return Component("level", one, one[0], s * one, 0 * one, one)


def local_linear_trend(sigma2_level: Tensor | float, sigma2_slope: Tensor | float) -> Component:
    """Level and slope, two states (level first)."""
    s1, s2 = _scalar("sigma2_level", sigma2_level), _scalar("sigma2_slope", sigma2_slope)
    F = torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=s1.dtype, device=s1.device)
    Q = torch.diag(torch.stack([s1, s2]))
    eye = torch.eye(2, dtype=s1.dtype, device=s1.device)
    return Component("trend", F, eye[0], Q, 0 * eye, eye)


def seasonal(period: int, sigma2_seasonal: Tensor | float) -> Component:
    """Dummy-variable seasonal of the given period, period - 1 states."""
    check_int("period", period, 2)
    s = _scalar("sigma2_seasonal", sigma2_seasonal)
    k = period - 1
    F = torch.zeros(k, k, dtype=s.dtype, device=s.device)
    F[0] = -1.0
    F[1:, :-1] = torch.eye(k - 1, dtype=s.dtype, device=s.device)
    eye = torch.eye(k, dtype=s.dtype, device=s.device)
    Q = torch.zeros(k, k, dtype=s.dtype, device=s.device)
    Q[0, 0] = 1.0
    return Component("seasonal", F, eye[0], s * Q, 0 * eye, eye)


def autoregressive(phi: Tensor, sigma2: Tensor | float) -> Component:
    """AR(p) in companion form, x_t = phi_1 x_{t-1} + ... + phi_p x_{t-p} + e_t.

    Args:
        phi: (p,) coefficients; must be stationary (companion eigenvalues inside the unit circle).
        sigma2: innovation variance.
    """
    check_tensor("phi", phi)
    if phi.ndim != 1 or phi.shape[0] < 1:
        raise ValueError(f"phi must have shape (p,) with p >= 1, got {tuple(phi.shape)}")
    s = _scalar("sigma2", sigma2)
    p = phi.shape[0]
    F = torch.zeros(p, p, dtype=phi.dtype, device=phi.device)
    F = F + torch.diag(torch.ones(p - 1, dtype=phi.dtype, device=phi.device), -1)
    F = torch.cat([phi.unsqueeze(0), F[1:]], 0)
    if float(torch.linalg.eigvals(F.detach()).abs().max()) >= 1:
        raise ValueError("phi is not stationary: the companion matrix has an eigenvalue >= 1")
    eye = torch.eye(p, dtype=phi.dtype, device=phi.device)
    Q = torch.zeros(p, p, dtype=phi.dtype, device=phi.device)
    Q[0, 0] = 1.0
    Q = s * Q
    return Component("ar", F, eye[0], Q, stationary_covariance(F, Q), 0 * eye)


def stationary_covariance(F: Tensor, Q: Tensor) -> Tensor:
    """P with P = F P F^T + Q (discrete Lyapunov), via vec(P) = (I - F kron F)^{-1} vec(Q)."""
    n = F.shape[-1]
    eye = torch.eye(n * n, dtype=F.dtype, device=F.device)
    vec = torch.linalg.solve(eye - torch.kron(F, F), Q.reshape(n * n))
    P = vec.reshape(n, n)
    return 0.5 * (P + P.mT)


def structural_model(*components: Component, sigma2_obs: Tensor | float) -> LinearGaussianSSM:
    """Stack components block-diagonally into one univariate model y_t = sum of blocks + eps_t.

    Args:
        components: one or more :class:`Component`.
        sigma2_obs: variance of eps_t.
    """
    if not components:
        raise ValueError("structural_model needs at least one component")
    s = _scalar("sigma2_obs", sigma2_obs)
    F = torch.block_diag(*[c.F for c in components])
    Q = torch.block_diag(*[c.Q for c in components])
    P0 = torch.block_diag(*[c.P0 for c in components])
    Pd = torch.block_diag(*[c.P0_diffuse for c in components])
    H = torch.cat([c.H for c in components]).unsqueeze(0)
    n = F.shape[-1]
    R = s.reshape(1, 1).to(F.dtype)
    m0 = torch.zeros(n, dtype=F.dtype, device=F.device)
    return LinearGaussianSSM(
        F=F, H=H, Q=Q, R=R, m0=m0, P0=P0, P0_diffuse=Pd if bool(Pd.any()) else None
    )

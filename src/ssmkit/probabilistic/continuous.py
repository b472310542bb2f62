"""Continuous-time linear Gaussian models observed at irregular times.

The model dx = F_c x dt + dW (Cov dW = Q_c dt), y(t_k) = H x(t_k) + v_k is discretised per
interval with Van Loan's matrix exponential (:func:`ssmkit.core.van_loan.van_loan`), so the
ordinary filters and smoothers run on the uneven grid unchanged.
"""

from __future__ import annotations

import torch

from ssmkit.core.checks import check_tensor
from ssmkit.core.van_loan import van_loan
from ssmkit.probabilistic.model import LinearGaussianSSM

Tensor = torch.Tensor


def continuous_time_model(
    F_c: Tensor,
    Q_c: Tensor,
    H: Tensor,
    R: Tensor,
    m0: Tensor,
    P0: Tensor,
    times: Tensor,
    P0_diffuse: Tensor | None = None,
) -> LinearGaussianSSM:
    """A discrete-time SSM on the grid ``times`` of a continuous-time model.

    Args:
        F_c, Q_c: (n, n) drift and diffusion; H: (o, n); R: (o, o); m0: (n,), P0: (n, n) the
        prior of x(times[0]); P0_diffuse: optional diffuse part.
        times: (l,) or (b, l) strictly increasing observation times.

    Returns:
        A model with time-varying F (*, l, n, n) and Q (*, l, n, n); step t maps x(times[t]) to
        x(times[t+1]); the last step (only used by forecasts) repeats the last interval.
    """
    check_tensor("times", times)
    if times.ndim not in (1, 2) or times.shape[-1] < 2:
        raise ValueError(
            f"times must have shape (l,) or (b, l) with l >= 2, got {tuple(times.shape)}"
        )
    dt = times.diff(dim=-1)
    if not bool((dt > 0).all()):
        raise ValueError("times must be strictly increasing")
    dt = torch.cat([dt, dt[..., -1:]], -1)  # (*, l)
    F, Q = van_loan(F_c, Q_c, dt)  # (*, l, n, n): (b, l, ...) broadcasts per series and step
    return LinearGaussianSSM(F=F, H=H, Q=Q, R=R, m0=m0, P0=P0, P0_diffuse=P0_diffuse)

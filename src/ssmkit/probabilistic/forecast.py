"""Forecasts: predictive means, covariances and intervals of y_{l+1} .. y_{l+horizon}."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssmkit.core.checks import check_int
from ssmkit.core.gaussian import mv, predict, symmetrize
from ssmkit.probabilistic.filters import kalman_filter
from ssmkit.probabilistic.model import LinearGaussianSSM

Tensor = torch.Tensor


@dataclass(frozen=True)
class Forecast:
    """Output of :func:`forecast` (h = horizon)."""

    mean: Tensor  # (b, h, o) E[y_{l+k} | y_1..l]
    cov: Tensor  # (b, h, o, o) Cov[y_{l+k} | y_1..l]
    lower: Tensor  # (b, h, o) lower end of the central prediction interval
    upper: Tensor  # (b, h, o) upper end
    state_mean: Tensor  # (b, h, n) E[x_{l+k} | y_1..l]
    state_cov: Tensor  # (b, h, n, n)
    level: float  # coverage of the intervals


def forecast(
    model: LinearGaussianSSM,
    y: Tensor,
    horizon: int,
    method: str = "sequential",
    diffuse: str = "exact",
    kappa: float = 1e6,
    level: float = 0.95,
) -> Forecast:
    """Filter y, then predict ``horizon`` steps ahead with the model's LAST-step matrices.

    Args:
        model, y, method, diffuse, kappa: as in :func:`kalman_filter`.
        horizon: steps ahead, >= 1. Models with inputs (B, D) are not supported here: future
            inputs are unknown to this function.
        level: coverage of the central Gaussian prediction intervals, in (0, 1).

    Returns:
        A :class:`Forecast`.
    """
    check_int("horizon", horizon, 1)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if model.B is not None or model.D is not None:
        raise ValueError("forecast does not support models with inputs (B or D)")
    filt = kalman_filter(model, y, None, method, diffuse, kappa)
    b, o, n = y.shape[0], model.o, model.n

    def last(X: Tensor, r: int, c: int) -> Tensor:  # the matrix of the last step: (b, r, c)
        return X.to(y.dtype).expand(b, y.shape[1], r, c)[:, -1]

    F, Q, H, R = last(model.F, n, n), last(model.Q, n, n), last(model.H, o, n), last(model.R, o, o)
    m, P = filt.m_next, filt.P_next
    means, covs, sm, sc = [], [], [], []
    for _ in range(horizon):
        sm.append(m)
        sc.append(P)
        means.append(mv(H, m))
        covs.append(symmetrize(H @ P @ H.mT + R))
        m, P = predict(m, P, F, Q)
    mean, cov = torch.stack(means, 1), torch.stack(covs, 1)
    z = torch.special.ndtri(torch.tensor(0.5 + level / 2, dtype=y.dtype))
    sd = torch.diagonal(cov, dim1=-2, dim2=-1).clamp_min(0).sqrt()
    return Forecast(
        mean, cov, mean - z * sd, mean + z * sd, torch.stack(sm, 1), torch.stack(sc, 1), level
    )

"""Expectation maximisation with closed-form M-step (Shumway & Stoffer 1982; Ghahramani &
Hinton 1996).

E-step: the RTS smoother's moments E[x_t], E[x_t x_t^T] = P_t + m_t m_t^T and
E[x_{t+1} x_t^T] = C_t^T + m_{t+1} m_t^T (C_t the smoothed cross-covariance). M-step, with
sums over t and over series (all series share the parameters):

    F = (sum E[x_{t+1} x_t^T]) (sum E[x_t x_t^T])^{-1}
    Q = mean of E[(x_{t+1} - F x_t)(x_{t+1} - F x_t)^T]
    H = (sum y_t m_t^T) (sum E[x_t x_t^T])^{-1}          (over observed steps)
    R = mean of E[(y_t - H x_t)(y_t - H x_t)^T]
    m0 = E[x_1],  P0 = Cov[x_1]  (averaged over series)

Each iteration cannot decrease the likelihood. Missing data: whole missing time steps are
allowed; partly observed vectors are not (their M-step is not closed form in R).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ssmkit.core.checks import check_int
from ssmkit.core.gaussian import symmetrize
from ssmkit.probabilistic.filters import rts_smoother
from ssmkit.probabilistic.model import LinearGaussianSSM

Tensor = torch.Tensor
PARAMS = ("F", "H", "Q", "R", "m0", "P0")


@dataclass(frozen=True)
class EMResult:
    """Output of :func:`fit_em`."""

    model: LinearGaussianSSM  # the model after the last M-step
    logliks: list[float]  # log-likelihood before each M-step (summed over series)


def _check(model: LinearGaussianSSM, y: Tensor, estimate: tuple[str, ...]) -> Tensor:
    for name in estimate:
        if name not in PARAMS:
            raise ValueError(
                f"unknown parameter {name!r} in estimate; expected a subset of {PARAMS}"
            )
    if model.B is not None or model.D is not None or model.P0_diffuse is not None:
        raise ValueError("fit_em supports models without inputs and without a diffuse part")
    for name in ("F", "H", "Q", "R"):
        if getattr(model, name).ndim != 2:
            raise ValueError(f"fit_em needs a time-invariant, unbatched {name} of shape (., .)")
    nan = torch.isnan(y)
    partial = nan.any(-1) & ~nan.all(-1)
    if bool(partial.any()):
        raise ValueError("fit_em does not support partly observed vectors; use fit_mle")
    return ~nan.any(-1)  # (b, l) fully observed steps


def em_step(
    model: LinearGaussianSSM,
    y: Tensor,
    estimate: tuple[str, ...] = PARAMS,
    method: str = "sequential",
) -> tuple[LinearGaussianSSM, float]:
    """One EM iteration: returns (new model, log-likelihood of the old model); ``method``
    picks the smoother's implementation (see :func:`rts_smoother`)."""
    observed = _check(model, y, estimate)
    sm = rts_smoother(model, y, method=method, validate=False)
    loglik = float(sm.filtered.loglik.sum())
    m, P, C = sm.m, sm.P, sm.P_cross  # (b, l, n), (b, l, n, n), (b, l-1, n, n)
    Exx = P + m.unsqueeze(-1) * m.unsqueeze(-2)  # (b, l, n, n)
    Exx1 = C.mT + m[:, 1:].unsqueeze(-1) * m[:, :-1].unsqueeze(-2)  # E[x_{t+1} x_t^T]
    S00 = Exx[:, :-1].sum((0, 1))
    S11 = Exx[:, 1:].sum((0, 1))
    S10 = Exx1.sum((0, 1))
    count = Exx1.shape[0] * Exx1.shape[1]
    new = {}
    F = model.F.to(y.dtype)
    if "F" in estimate:
        F = torch.linalg.solve(S00, S10.mT).mT
        new["F"] = F
    if "Q" in estimate:
        Q = S11 - F @ S10.mT - S10 @ F.mT + F @ S00 @ F.mT
        new["Q"] = symmetrize(Q / count)
    w = observed.to(y.dtype)[..., None]  # (b, l, 1)
    y0 = torch.where(observed[..., None], y, torch.zeros((), dtype=y.dtype))
    Sxx_obs = (Exx * w[..., None]).sum((0, 1))
    Syx = (y0.unsqueeze(-1) * m.unsqueeze(-2)).sum((0, 1))  # (o, n)
    Syy = (y0.unsqueeze(-1) * y0.unsqueeze(-2)).sum((0, 1))
    H = model.H.to(y.dtype)
    if "H" in estimate:
        H = torch.linalg.solve(Sxx_obs, Syx.mT).mT
        new["H"] = H
    if "R" in estimate:
        R = Syy - H @ Syx.mT - Syx @ H.mT + H @ Sxx_obs @ H.mT
        new["R"] = symmetrize(R / w.sum())
    if "m0" in estimate:
        new["m0"] = m[:, 0].mean(0)
    if "P0" in estimate:
        dm = m[:, 0] - m[:, 0].mean(0)
        new["P0"] = symmetrize((P[:, 0] + dm.unsqueeze(-1) * dm.unsqueeze(-2)).mean(0))
    return replace(model, **new), loglik


def fit_em(
    model: LinearGaussianSSM,
    y: Tensor,
    iterations: int = 50,
    estimate: tuple[str, ...] = PARAMS,
    tol: float = 0.0,
    method: str = "sequential",
) -> EMResult:
    """Run EM from ``model``.

    Args:
        model: starting point; time-invariant F, H, Q, R, no inputs, no diffuse part.
        y: (b, l, o) observations (whole time steps may be NaN).
        iterations: maximum number of EM iterations.
        estimate: which of F, H, Q, R, m0, P0 to update (the others stay fixed).
        tol: stop when the log-likelihood rises by less than this.
        method: smoother implementation, "sequential", "sqrt" or "parallel".

    Returns:
        An :class:`EMResult`; ``logliks[i]`` is the log-likelihood of the i-th iterate.
    """
    check_int("iterations", iterations, 1)
    logliks: list[float] = []
    with torch.no_grad():
        for _ in range(iterations):
            model, ll = em_step(model, y, estimate, method)
            if logliks and ll - logliks[-1] < tol:
                logliks.append(ll)
                break
            logliks.append(ll)
    return EMResult(model, logliks)

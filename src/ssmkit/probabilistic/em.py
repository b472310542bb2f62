"""Expectation maximisation with closed-form M-step (Shumway & Stoffer 1982; Ghahramani &
Hinton 1996), with inputs and partly observed vectors (Shumway & Stoffer 2017, sec. 6.4).

The model is x_{t+1} = F x_t + B u_t + w_t, y_t = H x_t + D u_t + v_t (B, D optional). E-step:
the RTS smoother's moments E[x_t] = m_t, E[x_t x_t^T] = P_t + m_t m_t^T and E[x_{t+1} x_t^T] =
C_t^T + m_{t+1} m_t^T (C_t the smoothed cross-covariance). The state and observation equations
are regressions on z_t = [x_t; u_t]; the M-step solves them by least squares on the expected
sufficient statistics (sums over t and over series; all series share the parameters):

    [F B] = (sum E[x_{t+1} z_t^T]) (sum E[z_t z_t^T])^{-1}
    Q = mean of E[(x_{t+1} - [F B] z_t)(...)^T]
    [H D] = (sum E[y_t z_t^T]) (sum E[z_t z_t^T])^{-1}     (over steps with an observation)
    R = mean of E[(y_t - [H D] z_t)(...)^T]
    m0 = E[x_1],  P0 = Cov[x_1]  (averaged over series)

A block left out of ``estimate`` stays fixed and the others are solved given it.

Partly observed vectors: the missing entries y_M of a step with some observed entries y_O are
part of the complete data. Given x_t and y_O they are Gaussian,
y_M = J x_t + j + e with J = H_M - A H_O, j = D_M u + A (y_O - D_O u), A = R_MO R_OO^{-1} and
Cov(e) = R_MM - A R_OM; so E[y_t | y] = J m_t + j, Cov(y_t, x_t | y) = J P_t and
Cov(y_t | y) = J P_t J^T + Cov(e) (zero on the observed rows). This keeps every step an exact
EM step: the likelihood never decreases. Steps with no observation add nothing to the
observation equation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ssmkit.core.checks import check_int
from ssmkit.core.gaussian import symmetrize
from ssmkit.probabilistic.filters import rts_smoother
from ssmkit.probabilistic.model import LinearGaussianSSM

Tensor = torch.Tensor
PARAMS = ("F", "B", "H", "D", "Q", "R", "m0", "P0")


@dataclass(frozen=True)
class EMResult:
    """Output of :func:`fit_em`."""

    model: LinearGaussianSSM  # the model after the last M-step
    logliks: list[float]  # log-likelihood before each M-step (summed over series)


def _estimate(model: LinearGaussianSSM, estimate: tuple[str, ...] | None) -> tuple[str, ...]:
    """``estimate`` checked; None means every parameter the model has."""
    if estimate is None:
        return tuple(k for k in PARAMS if getattr(model, k) is not None)
    for name in estimate:
        if name not in PARAMS:
            raise ValueError(
                f"unknown parameter {name!r} in estimate; expected a subset of {PARAMS}"
            )
        if name in ("B", "D") and getattr(model, name) is None:
            raise ValueError(
                f"estimate names {name!r} but the model has no {name}; give a starting value "
                f"(e.g. zeros of shape ({'n' if name == 'B' else 'o'}, m))"
            )
    return tuple(estimate)


def _check(model: LinearGaussianSSM, y: Tensor, estimate: tuple[str, ...]) -> None:
    if model.P0_diffuse is not None:
        raise ValueError("fit_em supports models without a diffuse part (P0_diffuse is set)")
    for name in ("F", "H", "Q", "R", "B", "D"):
        x = getattr(model, name)
        if x is not None and x.ndim != 2:
            raise ValueError(
                f"fit_em needs a time-invariant, unbatched {name} of shape (., .), got shape "
                f"{tuple(x.shape)}"
            )
    if y.ndim == 3 and y.shape[1] < 2 and {"F", "B", "Q"} & set(estimate):
        raise ValueError(
            f"y must have at least 2 time steps to estimate F, B or Q, got {y.shape[1]}"
        )


def _regress(S_tz: Tensor, S_zz: Tensor, C: Tensor, free: Tensor) -> Tensor:
    """Least squares for the free columns of C (r, k) given the fixed ones:
    C_f = (S_tz[:, f] - C_g S_zz[g, f]) S_zz[f, f]^{-1}, S_tz = sum E[target z^T]."""
    if not bool(free.any()):
        return C
    f, g = free, ~free
    rhs = S_tz[:, f] - C[:, g] @ S_zz[g][:, f]
    out = C.clone()
    out[:, f] = torch.linalg.solve(S_zz[f][:, f], rhs.mT).mT  # S_zz symmetric
    return out


def _residual_cov(S_tt: Tensor, S_tz: Tensor, S_zz: Tensor, C: Tensor, count: Tensor) -> Tensor:
    """E[(target - C z)(target - C z)^T] summed, divided by count."""
    return symmetrize((S_tt - C @ S_tz.mT - S_tz @ C.mT + C @ S_zz @ C.mT) / count)


def _completed(y: Tensor, m: Tensor, P: Tensor, H: Tensor, R: Tensor, d: Tensor | None):
    """E[y_t | y], Cov(y_t, x_t | y) and Cov(y_t | y) with missing entries as latent data.

    Args:
        y: (b, l, o) with NaN where missing; m: (b, l, n), P: (b, l, n, n) smoothed moments;
        H: (o, n), R: (o, o); d: (b, l, o) D u_t or None.

    Returns:
        y_hat (b, l, o), C_yx (b, l, o, n), C_yy (b, l, o, o).
    """
    obs = (~torch.isnan(y)).to(y.dtype)  # (b, l, o)
    mis = 1 - obs
    y0 = torch.nan_to_num(y, nan=0.0)
    R_OO = R * (obs.unsqueeze(-1) * obs.unsqueeze(-2)) + torch.diag_embed(mis)  # invertible
    R_MO = R * (mis.unsqueeze(-1) * obs.unsqueeze(-2))  # (b, l, o, o)
    A = torch.linalg.solve(R_OO, R_MO.mT).mT  # R_MO R_OO^{-1}: rows M, columns O
    JH = torch.diag_embed(mis) - A  # (b, l, o, o): J = JH H
    J = JH @ H  # (b, l, o, n), zero rows where observed
    y_hat = obs * y0 + (A @ y0.unsqueeze(-1)).squeeze(-1) + (J @ m.unsqueeze(-1)).squeeze(-1)
    if d is not None:
        y_hat = y_hat + (JH @ d.unsqueeze(-1)).squeeze(-1)
    R_MM = R * (mis.unsqueeze(-1) * mis.unsqueeze(-2))
    cov_e = symmetrize(R_MM - A @ (R * mis.unsqueeze(-2)))  # R_MM - R_MO R_OO^{-1} R_OM
    C_yx = J @ P  # (b, l, o, n)
    return y_hat, C_yx, symmetrize(C_yx @ J.mT) + cov_e


def _outer(a: Tensor, b: Tensor) -> Tensor:
    return a.unsqueeze(-1) * b.unsqueeze(-2)


def em_step(
    model: LinearGaussianSSM,
    y: Tensor,
    u: Tensor | None = None,
    estimate: tuple[str, ...] | None = None,
    method: str = "sequential",
) -> tuple[LinearGaussianSSM, float]:
    """One EM iteration: returns (new model, log-likelihood of the old model).

    Args:
        model: time-invariant F, H, Q, R (and B, D if any), no diffuse part.
        y: (b, l, o) observations, NaN where missing (partly observed vectors allowed).
        u: (b, l, m) inputs when the model has B or D.
        estimate: which of F, B, H, D, Q, R, m0, P0 to update (the others stay fixed);
            None: all that the model has.
        method: the smoother's implementation (see :func:`.filters.rts_smoother`).
    """
    estimate = _estimate(model, estimate)
    _check(model, y, estimate)
    sm = rts_smoother(model, y, u, method=method, validate=False)
    loglik = float(sm.filtered.loglik.sum())
    dt = y.dtype
    m, P, C = sm.m, sm.P, sm.P_cross  # (b, l, n), (b, l, n, n), (b, l-1, n, n)
    n = m.shape[-1]
    Exx = P + _outer(m, m)  # (b, l, n, n)
    new: dict[str, Tensor] = {}

    def z_stats(Ex: Tensor, mx: Tensor, uu: Tensor | None) -> Tensor:  # E[z z^T] (., k, k)
        if uu is None:
            return Ex
        top = torch.cat([Ex, _outer(mx, uu)], -1)
        return torch.cat([top, torch.cat([_outer(uu, mx), _outer(uu, uu)], -1)], -2)

    # state equation: x_{t+1} on z_t = [x_t; u_t]
    uB = None if model.B is None else u.to(dt)
    Cs = model.F.to(dt) if model.B is None else torch.cat([model.F, model.B], -1).to(dt)
    if {"F", "B", "Q"} & set(estimate):
        S_zz = z_stats(Exx[:, :-1], m[:, :-1], None if uB is None else uB[:, :-1]).sum((0, 1))
        Exx1 = C.mT + _outer(m[:, 1:], m[:, :-1])  # E[x_{t+1} x_t^T]
        if uB is not None:
            Exx1 = torch.cat([Exx1, _outer(m[:, 1:], uB[:, :-1])], -1)
        S_tz = Exx1.sum((0, 1))
        free = torch.zeros(Cs.shape[-1], dtype=torch.bool)
        free[:n] = "F" in estimate
        free[n:] = "B" in estimate
        Cs = _regress(S_tz, S_zz, Cs, free)
        if "Q" in estimate:
            count = torch.tensor(float(C.shape[0] * C.shape[1]), dtype=dt)
            new["Q"] = _residual_cov(Exx[:, 1:].sum((0, 1)), S_tz, S_zz, Cs, count)
        if "F" in estimate:
            new["F"] = Cs[:, :n]
        if "B" in estimate:
            new["B"] = Cs[:, n:]
    # observation equation: y_t on z_t, over the steps with at least one observation
    if {"H", "D", "R"} & set(estimate):
        uD = None if model.D is None else u.to(dt)
        H, R = model.H.to(dt), model.R.to(dt)
        d = None if uD is None else (uD @ model.D.to(dt).mT)  # (b, l, o)
        y_hat, C_yx, C_yy = _completed(y, m, P, H, R, d)
        w = (~torch.isnan(y)).any(-1).to(dt)[..., None, None]  # (b, l, 1, 1)
        S_zz = (z_stats(Exx, m, uD) * w).sum((0, 1))
        E_yx = C_yx + _outer(y_hat, m)
        E_yz = E_yx if uD is None else torch.cat([E_yx, _outer(y_hat, uD)], -1)
        S_tz = (E_yz * w).sum((0, 1))
        S_tt = ((C_yy + _outer(y_hat, y_hat)) * w).sum((0, 1))
        Co = H if uD is None else torch.cat([H, model.D.to(dt)], -1)
        free = torch.zeros(Co.shape[-1], dtype=torch.bool)
        free[:n] = "H" in estimate
        free[n:] = "D" in estimate
        Co = _regress(S_tz, S_zz, Co, free)
        if "R" in estimate:
            new["R"] = _residual_cov(S_tt, S_tz, S_zz, Co, w.sum())
        if "H" in estimate:
            new["H"] = Co[:, :n]
        if "D" in estimate:
            new["D"] = Co[:, n:]
    if "m0" in estimate:
        new["m0"] = m[:, 0].mean(0)
    if "P0" in estimate:
        dm = m[:, 0] - m[:, 0].mean(0)
        new["P0"] = symmetrize((P[:, 0] + _outer(dm, dm)).mean(0))
    return replace(model, **new), loglik


def fit_em(
    model: LinearGaussianSSM,
    y: Tensor,
    u: Tensor | None = None,
    iterations: int = 50,
    estimate: tuple[str, ...] | None = None,
    tol: float = 0.0,
    method: str = "sequential",
) -> EMResult:
    """Run EM from ``model``.

    Args:
        model: starting point; time-invariant F, H, Q, R (and B, D), no diffuse part.
        y: (b, l, o) observations, NaN where missing (whole steps or single entries).
        u: (b, l, m) inputs when the model has B or D.
        iterations: maximum number of EM iterations.
        estimate: which of F, B, H, D, Q, R, m0, P0 to update (the others stay fixed);
            None: all that the model has.
        tol: stop when the log-likelihood rises by less than this.
        method: smoother implementation, "sequential", "sqrt" or "parallel".

    Returns:
        An :class:`EMResult`; ``logliks[i]`` is the log-likelihood of the i-th iterate.
    """
    check_int("iterations", iterations, 1)
    estimate = _estimate(model, estimate)
    logliks: list[float] = []
    with torch.no_grad():
        for _ in range(iterations):
            model, ll = em_step(model, y, u, estimate, method)
            if logliks and ll - logliks[-1] < tol:
                logliks.append(ll)
                break
            logliks.append(ll)
    return EMResult(model, logliks)

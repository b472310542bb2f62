"""Constrained parameterisations for fitting: structural models and a dense model.

* variances: sigma2 = exp(theta) (positive);
* covariances: L L^T with L lower triangular, log-diagonal (PSD, in fact PD);
* AR coefficients: partial autocorrelations tanh(theta) mapped to phi by the Durbin-Levinson
  recursion (Barndorff-Nielsen & Schou 1973; Jones 1980): every theta gives a stationary AR;
* a stable F (optional): W / (1 + ||W||_2), spectral norm < 1.
"""

from __future__ import annotations

import torch

from ssmkit.core.checks import check_choice, check_int, check_tensor
from ssmkit.probabilistic.fit import ParametricModel
from ssmkit.probabilistic.fit_batch import stack_models
from ssmkit.probabilistic.model import LinearGaussianSSM
from ssmkit.probabilistic.structural import (
    autoregressive,
    local_level,
    local_linear_trend,
    seasonal,
    structural_model,
)

Tensor = torch.Tensor
TRENDS = ("local-level", "local-linear-trend")


def pacf_to_ar(pacf: Tensor) -> Tensor:
    """AR coefficients (p,) from partial autocorrelations (p,) in (-1, 1) (Durbin-Levinson)."""
    phi = pacf[:1]
    for k in range(1, pacf.shape[0]):
        a = pacf[k]
        phi = torch.cat([phi - a * phi.flip(0), a.unsqueeze(0)])
    return phi


def structural_spec(
    y: Tensor, trend: str = "local-level", seasonal_period: int = 0, ar_order: int = 0
) -> ParametricModel:
    """The family of structural models with free variances (and AR coefficients).

    Args:
        y: (b, l, 1) data, used for the starting point only (variances from var(diff y)).
        trend: "local-level" or "local-linear-trend".
        seasonal_period: 0 for none, else the period (>= 2) of a dummy seasonal.
        ar_order: 0 for none, else the order of an AR component.

    Returns:
        A :class:`ParametricModel` whose natural parameters are named as in statsmodels'
        UnobservedComponents (sigma2.irregular, sigma2.level, ...).
    """
    check_choice("trend", trend, TRENDS)
    check_int("seasonal_period", seasonal_period, 0)
    check_int("ar_order", ar_order, 0)
    if seasonal_period == 1:
        raise ValueError("seasonal_period must be 0 (none) or >= 2, got 1")
    check_tensor("y", y)
    if y.ndim != 3 or y.shape[-1] != 1:
        raise ValueError(f"y must have shape (b, l, 1), got {tuple(y.shape)}")
    names = ["sigma2.irregular", "sigma2.level"]
    if trend == "local-linear-trend":
        names.append("sigma2.trend")
    if seasonal_period:
        names.append("sigma2.seasonal")
    if ar_order:
        names.append("sigma2.ar")
    n_var = len(names)
    names += [f"ar.L{i + 1}" for i in range(ar_order)]
    dy = torch.diff(y[..., 0], dim=1)  # (b, l - 1)

    def start(dy: Tensor) -> Tensor:  # (b, l - 1) -> (b, k): var(diff y) shared equally
        centred = dy - torch.nanmean(dy, 1, keepdim=True)
        v = torch.nanmean(centred**2, 1, keepdim=True).nan_to_num(1.0).clamp_min(1e-8)
        zeros = torch.zeros(dy.shape[0], ar_order, dtype=v.dtype)
        return torch.cat([torch.log(v / n_var).expand(-1, n_var), zeros], 1).to(y.dtype)

    theta0 = start(dy.reshape(1, -1))[0]  # (k,) pooled over the series
    theta0_batch = start(dy)  # (b, k) one start per series

    def natural(theta: Tensor) -> Tensor:
        var = torch.exp(theta[:n_var])
        if not ar_order:
            return var
        return torch.cat([var, pacf_to_ar(torch.tanh(theta[n_var:]))])

    def assemble(par: Tensor) -> LinearGaussianSSM:  # natural parameters (k,) -> model
        i = 2
        comps = []
        if trend == "local-level":
            comps.append(local_level(par[1]))
        else:
            comps.append(local_linear_trend(par[1], par[2]))
            i = 3
        if seasonal_period:
            comps.append(seasonal(seasonal_period, par[i]))
            i += 1
        if ar_order:
            comps.append(autoregressive(par[n_var:], par[i]))
        return structural_model(*comps, sigma2_obs=par[0])

    def build(theta: Tensor) -> LinearGaussianSSM:
        return assemble(natural(theta))

    # Without AR, Q and R are linear in the variances and nothing else depends on theta:
    # the per-series model is sum_j sigma2_j (Q_j, R_j) with (Q_j, R_j) from unit variances.
    unit = None
    if not ar_order:
        eye = torch.eye(n_var, dtype=y.dtype)
        unit = [assemble(e) for e in eye]

    def build_batch(theta: Tensor) -> LinearGaussianSSM:  # (b, k) -> (b, 1, ., .) matrices
        if unit is None:  # the AR block checks stationarity on data: build one at a time
            return stack_models([build(t) for t in theta])
        var = natural(theta.T).T.to(unit[0].Q.dtype)  # (b, k), exp acts entry by entry
        Qs = torch.stack([m.Q for m in unit])  # (k, n, n)
        Rs = torch.stack([m.R for m in unit])  # (k, o, o)
        b = theta.shape[0]
        first = unit[0]
        return LinearGaussianSSM(
            F=first.F.expand(b, 1, *first.F.shape),
            H=first.H.expand(b, 1, *first.H.shape),
            Q=torch.einsum("bk,kij->bij", var, Qs).unsqueeze(1),
            R=torch.einsum("bk,kij->bij", var, Rs).unsqueeze(1),
            m0=first.m0.expand(b, -1),
            P0=first.P0.expand(b, -1, -1),
            P0_diffuse=first.P0_diffuse,
        )

    return ParametricModel(
        build, natural, tuple(names), theta0, build_batch, theta0_batch, seasonal_period
    )


def ar_spec(y: Tensor, order: int) -> ParametricModel:
    """A zero-mean stationary AR(p) observed without noise, y_t = x_t (statsmodels'
    ``SARIMAX(order=(p, 0, 0))``): parameters ar.L1..ar.Lp (through partial
    autocorrelations) and sigma2, named and ordered as in SARIMAX.

    Args:
        y: (b, l, 1) data, used for the starting point only (sigma2 from var(y)).
        order: p >= 1.
    """
    check_int("order", order, 1)
    check_tensor("y", y)
    if y.ndim != 3 or y.shape[-1] != 1:
        raise ValueError(f"y must have shape (b, l, 1), got {tuple(y.shape)}")
    names = (*[f"ar.L{i + 1}" for i in range(order)], "sigma2")

    def start(x: Tensor) -> Tensor:  # (b, l) -> (b, k)
        v = torch.nanmean((x - torch.nanmean(x, 1, keepdim=True)) ** 2, 1, keepdim=True)
        v = v.nan_to_num(1.0).clamp_min(1e-8)
        return torch.cat([torch.zeros(x.shape[0], order, dtype=v.dtype), v.log()], 1)

    def natural(theta: Tensor) -> Tensor:
        return torch.cat([pacf_to_ar(torch.tanh(theta[:order])), torch.exp(theta[order:])])

    def build(theta: Tensor) -> LinearGaussianSSM:
        par = natural(theta)
        return structural_model(autoregressive(par[:order], par[order]), sigma2_obs=0.0)

    x = y[..., 0]
    return ParametricModel(
        build, natural, names, start(x.reshape(1, -1))[0].to(y.dtype), None, start(x).to(y.dtype)
    )


def _tril(x: Tensor, k: int) -> Tensor:
    """Lower-triangular (k, k) with exp on the diagonal from k (k + 1) / 2 numbers."""
    L = torch.zeros(k, k, dtype=x.dtype, device=x.device)
    rows, cols = torch.tril_indices(k, k, device=x.device)
    L = L.index_put((rows, cols), x)
    return L - torch.diag(torch.diagonal(L)) + torch.diag(torch.exp(torch.diagonal(L)))


def dense_spec(
    n: int, o: int, stable: bool = False, seed: int = 0, dtype: torch.dtype = torch.float64
) -> ParametricModel:
    """All of F, H, Q, R free (m0 = 0, P0 = I fixed); Q and R through Cholesky factors.

    The natural parameters are the entries of F, H and the Cholesky factors' lower triangles
    (with the diagonal on the log scale), i.e. theta itself. With ``stable=True`` the
    transition is W / (1 + ||W||_2).
    """
    check_int("n", n, 1)
    check_int("o", o, 1)
    tq, tr = n * (n + 1) // 2, o * (o + 1) // 2
    sizes = [n * n, o * n, tq, tr]
    names = tuple(
        [f"F[{i},{j}]" for i in range(n) for j in range(n)]
        + [f"H[{i},{j}]" for i in range(o) for j in range(n)]
        + [f"chol_Q[{k}]" for k in range(tq)]
        + [f"chol_R[{k}]" for k in range(tr)]
    )
    g = torch.Generator().manual_seed(seed)
    theta0 = torch.cat(
        [
            (0.5 * torch.eye(n)).flatten(),
            torch.randn(o * n, generator=g) / n**0.5,
            torch.zeros(tq),
            torch.zeros(tr),
        ]
    ).to(dtype)

    def build(theta: Tensor) -> LinearGaussianSSM:
        W, Hf, q, r = torch.split(theta, sizes)
        F = W.reshape(n, n)
        if stable:
            F = F / (1 + torch.linalg.matrix_norm(F, ord=2))
        LQ, LR = _tril(q, n), _tril(r, o)
        eye = torch.eye(n, dtype=theta.dtype, device=theta.device)
        return LinearGaussianSSM(
            F=F,
            H=Hf.reshape(o, n),
            Q=LQ @ LQ.mT,
            R=LR @ LR.mT,
            m0=torch.zeros(n, dtype=theta.dtype, device=theta.device),
            P0=eye,
        )

    return ParametricModel(build, lambda t: t, names, theta0)

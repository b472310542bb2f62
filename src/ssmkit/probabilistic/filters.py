"""Kalman filter, RTS smoother and log-likelihood: one signature, three implementations.

``method`` picks the implementation (a strategy, not a flag):

* ``"sequential"``: a loop over time with the Joseph-form update (the reference);
* ``"sqrt"``: the square-root filter on Cholesky factors (QR triangularisation);
* ``"parallel"``: the associative-scan filter and smoother, O(log l) depth;
* ``"numba"`` (:func:`log_likelihood` only): the compiled filter with an adjoint gradient
  (:mod:`.fast_filter`; time-invariant models with diagonal R, no inputs), and ``"auto"``,
  which takes it when numba is installed and the model qualifies, else ``"sequential"``.

``diffuse`` says how ``model.P0_diffuse`` is treated: ``"exact"`` (Durbin & Koopman ch. 5,
statsmodels' ``initialization='diffuse'``; sequential only, diagonal R) or
``"approximate"`` (P0 + kappa P0_diffuse, statsmodels' ``'approximate_diffuse'``, kappa 1e6).
Shapes: y (b, l, o) with NaN where missing, states (b, l, n); see :mod:`.model`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssmkit.core.checks import check_choice, check_int, check_positive
from ssmkit.core.gaussian import predict, psd_factor, smooth_step, sqrt_predict, sqrt_update
from ssmkit.core.gaussian import update as gauss_update
from ssmkit.probabilistic.diffuse import diffuse_filter, diffuse_smoother
from ssmkit.probabilistic.fast_filter import numba_log_likelihood, numba_supports
from ssmkit.probabilistic.model import LinearGaussianSSM, Prepared, prepare
from ssmkit.probabilistic.parallel import parallel_filter, parallel_smoother

Tensor = torch.Tensor
METHODS = ("sequential", "sqrt", "parallel")
LOGLIK_METHODS = (*METHODS, "numba", "auto")
DIFFUSE = ("exact", "approximate")


@dataclass(frozen=True)
class FilterResult:
    """Output of :func:`kalman_filter`."""

    m_pred: Tensor  # (b, l, n) E[x_t | y_1..t-1]
    P_pred: Tensor  # (b, l, n, n) Cov[x_t | y_1..t-1] (proper part during an exact diffuse phase)
    m: Tensor  # (b, l, n) filtered mean E[x_t | y_1..t]
    P: Tensor  # (b, l, n, n) filtered covariance (proper part P_star under exact diffuse)
    loglik: Tensor  # (b, l) log p(y_t | y_1..t-1), observed entries only
    m_next: Tensor  # (b, n) E[x_{l+1} | all y]: the start of a forecast
    P_next: Tensor  # (b, n, n) Cov[x_{l+1} | all y]
    P_inf: Tensor | None = None  # (b, l, n, n) filtered diffuse part (exact diffuse only)


@dataclass(frozen=True)
class SmootherResult:
    """Output of :func:`rts_smoother`."""

    m: Tensor  # (b, l, n) smoothed mean E[x_t | y_1..l]
    P: Tensor  # (b, l, n, n) smoothed covariance
    P_cross: Tensor | None  # (b, l-1, n, n) Cov[x_t, x_{t+1} | y]; None under exact diffuse
    filtered: FilterResult  # the forward pass it was computed from


def _setup(
    model: LinearGaussianSSM,
    y: Tensor,
    u: Tensor | None,
    method: str,
    diffuse: str,
    kappa: float,
    validate: bool,
) -> tuple[Prepared, bool]:
    if not isinstance(model, LinearGaussianSSM):
        raise TypeError(f"model must be a LinearGaussianSSM, got {type(model).__name__}")
    check_choice("method", method, METHODS)
    check_choice("diffuse", diffuse, DIFFUSE)
    check_positive("kappa", kappa)
    exact = diffuse == "exact" and model.P0_diffuse is not None
    if exact and method != "sequential":
        raise ValueError(
            f"diffuse='exact' needs method='sequential', got method={method!r}; "
            "use diffuse='approximate' for the other implementations"
        )
    if not exact:
        model = model.with_diffuse("approximate_diffuse", kappa)
    return prepare(model, y, u, validate), exact


def _step(x: Tensor | None, t: int) -> Tensor | None:
    return None if x is None else x[:, t]


def _shared(p: Prepared) -> bool:
    """True when every series has the same covariances: same F, Q, H, R, P0 (stride 0 over
    the series axis) and nothing missing. Then the covariance recursion runs once, on
    (n, n) matrices, and only the means are batched."""
    mats = (p.F, p.Q, p.H, p.R, p.P0)
    return p.mask is None and all(x.stride(0) == 0 or x.shape[0] == 1 for x in mats)


def _sequential(p: Prepared, sqrt: bool) -> FilterResult:
    b, l = p.y.shape[:2]
    shared = _shared(p)
    S = slice(0, 1) if shared else slice(None)  # the series whose covariances are computed
    F, Q, H, R, P = p.F[S], p.Q[S], p.H[S], p.R[S], p.P0[S]
    m = p.m0
    if sqrt:
        L = psd_factor(P)
        # factor once, or once per step (vectorised) for time-varying noise
        time_varying = Q.stride(1) != 0 or R.stride(1) != 0
        LQ, LR = (Q, R) if time_varying else (Q[:, :1], R[:, :1])
        LQ, LR = psd_factor(LQ), psd_factor(LR)
    out: dict[str, list[Tensor]] = {k: [] for k in ("mp", "Pp", "m", "P", "ll")}
    for t in range(l):
        out["mp"].append(m)
        out["Pp"].append(P)
        y, d, mask = p.y[:, t], _step(p.d, t), _step(p.mask, t)
        if sqrt:
            ti = t if time_varying else 0
            m, L, ll = sqrt_update(m, L, y, H[:, t], LR[:, ti], d, mask)
            P = L @ L.mT
        else:
            m, P, ll = gauss_update(m, P, y, H[:, t], R[:, t], d, mask)
        out["m"].append(m)
        out["P"].append(P)
        out["ll"].append(ll.expand(b))
        if sqrt:
            m, L = sqrt_predict(m, L, F[:, t], LQ[:, ti], _step(p.c, t))
            P = L @ L.mT
        else:
            m, P = predict(m, P, F[:, t], Q[:, t], _step(p.c, t))
    s = {k: torch.stack(v, 1) for k, v in out.items()}
    n = m.shape[-1]
    Pp, Pf = s["Pp"].expand(b, l, n, n), s["P"].expand(b, l, n, n)
    return FilterResult(s["mp"], Pp, s["m"], Pf, s["ll"], m, P.expand(b, n, n))


def kalman_filter(
    model: LinearGaussianSSM,
    y: Tensor,
    u: Tensor | None = None,
    method: str = "sequential",
    diffuse: str = "exact",
    kappa: float = 1e6,
    validate: bool = True,
) -> FilterResult:
    """Filtered and predicted moments and per-step log-likelihoods.

    Args:
        model: the SSM (matrices broadcast against (b, l)).
        y: (b, l, o) observations; NaN marks missing entries (partly observed vectors allowed).
        u: (b, l, m) inputs when the model has B or D.
        method: "sequential" (Joseph form), "sqrt" (square root) or "parallel" (assoc. scan).
        diffuse: "exact" or "approximate" treatment of ``model.P0_diffuse`` (if any).
        kappa: the large variance of the approximate diffuse prior.
        validate: check PSD covariances (costs an eigendecomposition).

    Returns:
        A :class:`FilterResult`.
    """
    p, exact = _setup(model, y, u, method, diffuse, kappa, validate)
    if exact:
        res = diffuse_filter(p, model.P0_diffuse.to(y.dtype))
        return FilterResult(
            res["m_pred"],
            res["P_pred"],
            res["m"],
            res["P"],
            res["loglik"],
            res["m_next"],
            res["P_next"],
            res["P_inf"],
        )
    if method == "parallel":
        m_pred, P_pred, m, P, ll = parallel_filter(p)
        m_next, P_next = predict(m[:, -1], P[:, -1], p.F[:, -1], p.Q[:, -1], _step(p.c, -1))
        return FilterResult(m_pred, P_pred, m, P, ll, m_next, P_next)
    return _sequential(p, sqrt=method == "sqrt")


def rts_smoother(
    model: LinearGaussianSSM,
    y: Tensor,
    u: Tensor | None = None,
    method: str = "sequential",
    diffuse: str = "exact",
    kappa: float = 1e6,
    validate: bool = True,
) -> SmootherResult:
    """Smoothed moments E[x_t | y_1..l], Cov[x_t | y_1..l] (Rauch-Tung-Striebel).

    Same arguments as :func:`kalman_filter`. ``"sequential"`` and ``"sqrt"`` run the RTS
    recursion backwards over the filter's moments; ``"parallel"`` a reverse associative scan;
    the exact diffuse case uses the univariate backward recursion of Durbin & Koopman (5.3).
    """
    p, exact = _setup(model, y, u, method, diffuse, kappa, validate)
    if exact:
        res = diffuse_filter(p, model.P0_diffuse.to(y.dtype))
        filt = FilterResult(
            res["m_pred"],
            res["P_pred"],
            res["m"],
            res["P"],
            res["loglik"],
            res["m_next"],
            res["P_next"],
            res["P_inf"],
        )
        m_s, P_s = diffuse_smoother(p, res)
        return SmootherResult(m_s, P_s, None, filt)
    if method == "parallel":
        m_pred, P_pred, m, P, ll = parallel_filter(p)
        m_next, P_next = predict(m[:, -1], P[:, -1], p.F[:, -1], p.Q[:, -1], _step(p.c, -1))
        filt = FilterResult(m_pred, P_pred, m, P, ll, m_next, P_next)
        m_s, P_s, G = parallel_smoother(m, P, m_pred, P_pred, p.F)
        return SmootherResult(m_s, P_s, G @ P_s[:, 1:], filt)
    filt = _sequential(p, sqrt=method == "sqrt")
    b, l, n = filt.m.shape
    S = slice(0, 1) if _shared(p) else slice(None)  # shared covariances: smooth them once
    P_f, P_p, F = filt.P[S], filt.P_pred[S], p.F[S]
    ms, Ps, Gs = [filt.m[:, -1]], [P_f[:, -1]], []
    for t in range(l - 2, -1, -1):
        m_s, P_s, G = smooth_step(
            filt.m[:, t], P_f[:, t], filt.m_pred[:, t + 1], P_p[:, t + 1], ms[-1], Ps[-1], F[:, t]
        )
        ms.append(m_s)
        Ps.append(P_s)
        Gs.append(G @ Ps[-2])
    m_s, P_s = torch.stack(ms[::-1], 1), torch.stack(Ps[::-1], 1).expand(b, l, n, n)
    empty = m_s.new_zeros(b, 0, n, n)  # l = 1: no pairs
    cross = torch.stack(Gs[::-1], 1).expand(b, l - 1, n, n) if Gs else empty
    return SmootherResult(m_s, P_s, cross, filt)


def log_likelihood(
    model: LinearGaussianSSM,
    y: Tensor,
    u: Tensor | None = None,
    method: str = "sequential",
    diffuse: str = "exact",
    kappa: float = 1e6,
    burn: int = 0,
    validate: bool = True,
) -> Tensor:
    """log p(y_{burn+1} .. y_l | y_1 .. y_burn) per series, shape (b,).

    ``burn`` drops the first steps' terms (statsmodels' ``loglikelihood_burn``; its
    approximate diffuse models use burn = number of diffuse states). ``method`` may also be
    "numba" or "auto" (see the module docstring). Other arguments as in
    :func:`kalman_filter`; differentiable in every model tensor.
    """
    check_int("burn", burn, 0)
    check_choice("method", method, LOGLIK_METHODS)
    if burn >= y.shape[1]:
        raise ValueError(f"burn must be < l = {y.shape[1]}, got {burn}")
    if method == "auto":
        method = "numba" if numba_supports(model, u) else "sequential"
    if method == "numba":
        check_choice("diffuse", diffuse, DIFFUSE)
        check_positive("kappa", kappa)
        if u is not None:
            raise ValueError("method='numba' supports models without inputs; u must be None")
        return numba_log_likelihood(model, y, diffuse, kappa, burn, validate)
    ll = kalman_filter(model, y, u, method, diffuse, kappa, validate).loglik
    return ll[:, burn:].sum(1)

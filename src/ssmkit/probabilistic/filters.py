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
from ssmkit.core.gaussian import predict, smooth_step
from ssmkit.probabilistic.diffuse import diffuse_filter, diffuse_smoother
from ssmkit.probabilistic.fast_filter import numba_log_likelihood, numba_supports
from ssmkit.probabilistic.filter_steps import (
    FilterResult,
    PlainSteps,
    SquareRootSteps,
    at,
    covariance_series,
    run_steps,
)
from ssmkit.probabilistic.model import LinearGaussianSSM, Prepared, prepare
from ssmkit.probabilistic.parallel import parallel_filter, parallel_smoother

Tensor = torch.Tensor
METHODS = ("sequential", "sqrt", "parallel")
LOGLIK_METHODS = (*METHODS, "numba", "auto")
DIFFUSE = ("exact", "approximate")

__all__ = ["FilterResult", "SmootherResult", "kalman_filter", "log_likelihood", "rts_smoother"]


@dataclass(frozen=True)
class SmootherResult:
    """Output of :func:`rts_smoother`."""

    m: Tensor  # (b, l, n) smoothed mean E[x_t | y_1..l]
    P: Tensor  # (b, l, n, n) smoothed covariance
    P_cross: Tensor | None  # (b, l-1, n, n) Cov[x_t, x_{t+1} | y]; None under exact diffuse
    filtered: FilterResult  # the forward pass it was computed from


@dataclass(frozen=True)
class _Sequential:
    """A loop over time with a step strategy (plain or square root), then the RTS recursion."""

    steps: PlainSteps | SquareRootSteps

    def filter(self) -> FilterResult:
        return self.steps.finish(run_steps(self.steps))

    def smooth(self) -> SmootherResult:
        filt, p = self.filter(), self.steps.p
        b, l, n = filt.m.shape
        S = covariance_series(p)  # shared covariances: smooth them once
        P_f, P_p, F = filt.P[S], filt.P_pred[S], p.F[S]
        ms, Ps, Gs = [filt.m[:, -1]], [P_f[:, -1]], []
        for t in range(l - 2, -1, -1):
            m_p, P_pp = filt.m_pred[:, t + 1], P_p[:, t + 1]
            m_s, P_s, G = smooth_step(filt.m[:, t], P_f[:, t], m_p, P_pp, ms[-1], Ps[-1], F[:, t])
            ms.append(m_s)
            Ps.append(P_s)
            Gs.append(G @ Ps[-2])
        m_s, P_s = torch.stack(ms[::-1], 1), torch.stack(Ps[::-1], 1).expand(b, l, n, n)
        empty = m_s.new_zeros(b, 0, n, n)  # l = 1: no pairs
        cross = torch.stack(Gs[::-1], 1).expand(b, l - 1, n, n) if Gs else empty
        return SmootherResult(m_s, P_s, cross, filt)


@dataclass(frozen=True)
class _Parallel:
    """The associative-scan filter and smoother."""

    p: Prepared

    def filter(self) -> FilterResult:
        p = self.p
        m_pred, P_pred, m, P, ll = parallel_filter(p)
        m_next, P_next = predict(m[:, -1], P[:, -1], p.F[:, -1], p.Q[:, -1], at(p.c, -1))
        return FilterResult(m_pred, P_pred, m, P, ll, m_next, P_next)

    def smooth(self) -> SmootherResult:
        filt = self.filter()
        m_s, P_s, G = parallel_smoother(filt.m, filt.P, filt.m_pred, filt.P_pred, self.p.F)
        return SmootherResult(m_s, P_s, G @ P_s[:, 1:], filt)


@dataclass(frozen=True)
class _ExactDiffuse:
    """The univariate exact diffuse filter and its backward recursion (:mod:`.diffuse`)."""

    p: Prepared
    P_inf0: Tensor  # (n, n)

    def filter(self) -> FilterResult:
        return diffuse_filter(self.p, self.P_inf0).filtered

    def smooth(self) -> SmootherResult:
        res = diffuse_filter(self.p, self.P_inf0)
        m_s, P_s = diffuse_smoother(self.p, res)
        return SmootherResult(m_s, P_s, None, res.filtered)


def _method(
    model: LinearGaussianSSM,
    y: Tensor,
    u: Tensor | None,
    method: str,
    diffuse: str,
    kappa: float,
    validate: bool,
) -> _Sequential | _Parallel | _ExactDiffuse:
    """Check the arguments and pick the implementation: the one dispatch of this module."""
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
    if exact:
        return _ExactDiffuse(prepare(model, y, u, validate), model.P0_diffuse.to(y.dtype))
    p = prepare(model.with_diffuse("approximate_diffuse", kappa), y, u, validate)
    if method == "parallel":
        return _Parallel(p)
    return _Sequential(SquareRootSteps.of(p) if method == "sqrt" else PlainSteps.of(p))


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
    return _method(model, y, u, method, diffuse, kappa, validate).filter()


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
    return _method(model, y, u, method, diffuse, kappa, validate).smooth()


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

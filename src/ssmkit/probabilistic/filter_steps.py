"""The sequential Kalman filter: one loop over time, the step chosen before it.

A step strategy says how the covariance is carried and how one time step conditions on y_t
and predicts x_{t+1}:

* :class:`PlainSteps`: P itself, Joseph-form update (:func:`ssmkit.core.gaussian.update`);
* :class:`SquareRootSteps`: a factor L with P = L L^T, triangularised by QR
  (:func:`ssmkit.core.gaussian.sqrt_update`, :func:`~ssmkit.core.gaussian.sqrt_predict`);
* :class:`ssmkit.probabilistic.diffuse.DiffuseSteps`: the pair (P_star, P_inf) of the exact
  diffuse initialisation, processed entry by entry.

:func:`run_steps` is the loop; it records the moments before and after each update and stacks
them into a :class:`Trace`, which the strategy turns into its result. Shapes as in
:mod:`.model`: states (b, l, n), covariances (b, l, n, n).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ssmkit.core.gaussian import predict, psd_factor, sqrt_predict, sqrt_update, update
from ssmkit.probabilistic.model import Prepared

Tensor = torch.Tensor


@dataclass(frozen=True)
class FilterResult:
    """Output of :func:`ssmkit.probabilistic.filters.kalman_filter`."""

    m_pred: Tensor  # (b, l, n) E[x_t | y_1..t-1]
    P_pred: Tensor  # (b, l, n, n) Cov[x_t | y_1..t-1] (proper part during an exact diffuse phase)
    m: Tensor  # (b, l, n) filtered mean E[x_t | y_1..t]
    P: Tensor  # (b, l, n, n) filtered covariance (proper part P_star under exact diffuse)
    loglik: Tensor  # (b, l) log p(y_t | y_1..t-1), observed entries only
    m_next: Tensor  # (b, n) E[x_{l+1} | all y]: the start of a forecast
    P_next: Tensor  # (b, n, n) Cov[x_{l+1} | all y]
    P_inf: Tensor | None = None  # (b, l, n, n) filtered diffuse part (exact diffuse only)


@dataclass(frozen=True)
class Trace:
    """What :func:`run_steps` records; ``S`` is the strategy's covariance state, stacked over
    time along axis 1 (a tensor, or a tuple of tensors)."""

    m_pred: Tensor  # (b, l, n)
    S_pred: Any  # the covariance state before each update
    m: Tensor  # (b, l, n)
    S: Any  # the covariance state after each update
    loglik: Tensor  # (b, l)
    extra: Any  # per-step records of the strategy (stacked), or None
    m_next: Tensor  # (b, n)
    S_next: Any  # the covariance state of x_{l+1}


class Steps(Protocol):
    """A step strategy for :func:`run_steps`."""

    length: int

    def start(self) -> tuple[Tensor, Any]:
        """The prior mean (b, n) and covariance state of x_1."""
        ...

    def update(self, m: Tensor, S: Any, t: int) -> tuple[Tensor, Any, Tensor, Any]:
        """Condition on y_t: the new mean, covariance state, log-likelihood (b,) and records."""
        ...

    def predict(self, m: Tensor, S: Any, t: int) -> tuple[Tensor, Any]:
        """Propagate to t + 1: the predicted mean and covariance state."""
        ...


def run_steps(steps: Steps) -> Trace:
    """Run a step strategy over t = 1..l and stack what it produced."""
    m, S = steps.start()
    rec: dict[str, list[Any]] = {k: [] for k in ("m_pred", "S_pred", "m", "S", "ll", "extra")}
    for t in range(steps.length):
        rec["m_pred"].append(m)
        rec["S_pred"].append(S)
        m, S, ll, extra = steps.update(m, S, t)
        rec["m"].append(m)
        rec["S"].append(S)
        rec["ll"].append(ll.expand(m.shape[0]))
        rec["extra"].append(extra)
        m, S = steps.predict(m, S, t)
    s = {k: _stack(v) for k, v in rec.items()}
    return Trace(s["m_pred"], s["S_pred"], s["m"], s["S"], s["ll"], s["extra"], m, S)


def _stack(xs: list[Any]) -> Any:
    """Stack a list over time along axis 1: tensors, (named) tuples of tensors, or Nones."""
    first = xs[0]
    if first is None:
        return None
    if isinstance(first, Tensor):
        return torch.stack(xs, 1)
    return type(first)(*(_stack(list(field)) for field in zip(*xs, strict=True)))


def at(x: Tensor | None, t: int) -> Tensor | None:
    """x[:, t], or None."""
    return None if x is None else x[:, t]


def shared_covariances(p: Prepared) -> bool:
    """True when every series has the same covariances: same F, Q, H, R, P0 (stride 0 over
    the series axis) and nothing missing. Then the covariance recursion runs once, on
    (n, n) matrices, and only the means are batched."""
    mats = (p.F, p.Q, p.H, p.R, p.P0)
    return p.mask is None and all(x.stride(0) == 0 or x.shape[0] == 1 for x in mats)


def covariance_series(p: Prepared) -> slice:
    """The series whose covariances are computed: the first only when they are shared."""
    return slice(0, 1) if shared_covariances(p) else slice(None)


@dataclass(frozen=True)
class PlainSteps:
    """Carries P; Joseph-form update and the plain predict."""

    p: Prepared
    F: Tensor  # (b or 1, l, n, n)
    Q: Tensor  # (b or 1, l, n, n)
    H: Tensor  # (b or 1, l, o, n)
    R: Tensor  # (b or 1, l, o, o)
    P0: Tensor  # (b or 1, n, n)

    @classmethod
    def of(cls, p: Prepared) -> PlainSteps:
        S = covariance_series(p)
        return cls(p, p.F[S], p.Q[S], p.H[S], p.R[S], p.P0[S])

    @property
    def length(self) -> int:
        return self.p.y.shape[1]

    def start(self) -> tuple[Tensor, Tensor]:
        return self.p.m0, self.P0

    def update(self, m: Tensor, P: Tensor, t: int) -> tuple[Tensor, Tensor, Tensor, None]:
        p = self.p
        m, P, ll = update(m, P, p.y[:, t], self.H[:, t], self.R[:, t], at(p.d, t), at(p.mask, t))
        return m, P, ll, None

    def predict(self, m: Tensor, P: Tensor, t: int) -> tuple[Tensor, Tensor]:
        return predict(m, P, self.F[:, t], self.Q[:, t], at(self.p.c, t))

    def finish(self, tr: Trace) -> FilterResult:
        return _result(tr, tr.S_pred, tr.S, tr.S_next)


@dataclass(frozen=True)
class SquareRootSteps:
    """Carries a factor L of P (P = L L^T); the noise covariances are factored before the loop
    (once when constant over time, else once per step, vectorised)."""

    p: Prepared
    F: Tensor  # (b or 1, l, n, n)
    LQ: Tensor  # (b or 1, l, n, n) a factor of Q
    H: Tensor  # (b or 1, l, o, n)
    LR: Tensor  # (b or 1, l, o, o) a factor of R
    L0: Tensor  # (b or 1, n, n) a factor of P0

    @classmethod
    def of(cls, p: Prepared) -> SquareRootSteps:
        S = covariance_series(p)
        LQ, LR = _factor_over_time(p.Q[S]), _factor_over_time(p.R[S])
        return cls(p, p.F[S], LQ, p.H[S], LR, psd_factor(p.P0[S]))

    @property
    def length(self) -> int:
        return self.p.y.shape[1]

    def start(self) -> tuple[Tensor, Tensor]:
        return self.p.m0, self.L0

    def update(self, m: Tensor, L: Tensor, t: int) -> tuple[Tensor, Tensor, Tensor, None]:
        p = self.p
        y, H, LR = p.y[:, t], self.H[:, t], self.LR[:, t]
        m, L, ll = sqrt_update(m, L, y, H, LR, at(p.d, t), at(p.mask, t))
        return m, L, ll, None

    def predict(self, m: Tensor, L: Tensor, t: int) -> tuple[Tensor, Tensor]:
        return sqrt_predict(m, L, self.F[:, t], self.LQ[:, t], at(self.p.c, t))

    def finish(self, tr: Trace) -> FilterResult:
        return _result(tr, tr.S_pred @ tr.S_pred.mT, tr.S @ tr.S.mT, tr.S_next @ tr.S_next.mT)


def _factor_over_time(X: Tensor) -> Tensor:
    """A factor of X (s, l, k, k) at every step; computed once when X is constant in time."""
    if X.stride(1) != 0:
        return psd_factor(X)
    return psd_factor(X[:, :1]).expand_as(X)


def _result(tr: Trace, P_pred: Tensor, P: Tensor, P_next: Tensor) -> FilterResult:
    """The filter's result, covariances broadcast back over the series axis."""
    b, l, n = tr.m.shape
    return FilterResult(
        tr.m_pred,
        P_pred.expand(b, l, n, n),
        tr.m,
        P.expand(b, l, n, n),
        tr.loglik,
        tr.m_next,
        P_next.expand(b, n, n),
    )

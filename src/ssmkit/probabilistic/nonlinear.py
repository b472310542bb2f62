"""Extended and unscented Kalman filters for x_{t+1} = f(x_t) + w_t, y_t = h(x_t) + v_t.

Both linearise and then call THE Gaussian predict/update of :mod:`ssmkit.core.gaussian`:

* EKF: first-order Taylor: F = df/dx(m) (``torch.func.jacrev``), offset c = f(m) - F m;
* UKF: statistical linear regression through sigma points (Sarkka 2013, sec. 5.5 and 9.2):
  with the unscented mean mu and covariances of (x, f(x)), F = C_xf^T P^{-1}, c = mu - F m and
  the extra noise Lambda = C_ff - F P F^T; the same for h. A linear f, h gives the Kalman filter.

``f`` and ``h`` take and return batched tensors: f: (k, n) -> (k, n), h: (k, n) -> (k, o).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ssmkit.core.checks import check_positive
from ssmkit.core.gaussian import cholesky, predict, symmetrize, update
from ssmkit.probabilistic.model import check_observations

Tensor = torch.Tensor
Fn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class NonlinearFilterResult:
    """Output of :func:`ekf` and :func:`ukf`."""

    m: Tensor  # (b, l, n) filtered means
    P: Tensor  # (b, l, n, n) filtered covariances
    loglik: Tensor  # (b, l) per-step (approximate) log-likelihood


def _taylor(fn: Fn, m: Tensor, P: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    J = torch.func.vmap(torch.func.jacrev(lambda x: fn(x.unsqueeze(0)).squeeze(0)))(m)
    return J, fn(m) - (J @ m.unsqueeze(-1)).squeeze(-1), torch.zeros_like(J @ J.mT)


def _unscented(fn: Fn, m: Tensor, P: Tensor, alpha: float, beta: float, kappa: float):
    """Statistical linear regression of fn under N(m, P): (A, offset, extra covariance)."""
    b, n = m.shape
    lam = alpha**2 * (n + kappa) - n
    L = cholesky((n + lam) * P, "the UKF sigma-point covariance")  # (b, n, n)
    X = torch.cat([m.unsqueeze(1), m.unsqueeze(1) + L.mT, m.unsqueeze(1) - L.mT], 1)  # (b, 2n+1, n)
    wm = torch.full((2 * n + 1,), 0.5 / (n + lam), dtype=m.dtype, device=m.device)
    wc = wm.clone()
    wm[0] = lam / (n + lam)
    wc[0] = lam / (n + lam) + 1 - alpha**2 + beta
    Y = fn(X.reshape(b * (2 * n + 1), n)).reshape(b, 2 * n + 1, -1)  # (b, 2n+1, k)
    mu = (wm[:, None] * Y).sum(1)
    dX, dY = X - m.unsqueeze(1), Y - mu.unsqueeze(1)
    Cxy = (wc[:, None, None] * dX.unsqueeze(-1) * dY.unsqueeze(-2)).sum(1)  # (b, n, k)
    Cyy = (wc[:, None, None] * dY.unsqueeze(-1) * dY.unsqueeze(-2)).sum(1)
    A = torch.linalg.solve(P, Cxy).mT  # (b, k, n) = Cxy^T P^{-1}
    offset = mu - (A @ m.unsqueeze(-1)).squeeze(-1)
    return A, offset, symmetrize(Cyy - A @ P @ A.mT)


def _run(linearise, f: Fn, h: Fn, Q: Tensor, R: Tensor, m0: Tensor, P0: Tensor, y: Tensor):
    check_observations(y, R.shape[-1])
    b, l, _ = y.shape
    m, P = m0.to(y.dtype).expand(b, -1), P0.to(y.dtype).expand(b, -1, -1)
    nan = torch.isnan(y)
    ms, Ps, lls = [], [], []
    for t in range(l):
        Hl, d, Rx = linearise(h, m, P)
        mask = None if not bool(nan[:, t].any()) else ~nan[:, t]
        m, P, ll = update(m, P, torch.nan_to_num(y[:, t]), Hl, R + Rx, d, mask)
        ms.append(m)
        Ps.append(P)
        lls.append(ll)
        if t < l - 1:
            Fl, c, Qx = linearise(f, m, P)
            m, P = predict(m, P, Fl, Q + Qx, c)
    return NonlinearFilterResult(torch.stack(ms, 1), torch.stack(Ps, 1), torch.stack(lls, 1))


def ekf(
    f: Fn, h: Fn, Q: Tensor, R: Tensor, m0: Tensor, P0: Tensor, y: Tensor
) -> NonlinearFilterResult:
    """Extended Kalman filter (Jacobians by autograd).

    Args:
        f: transition, (k, n) -> (k, n); h: emission, (k, n) -> (k, o); both differentiable.
        Q: (n, n), R: (o, o) noise covariances; m0: (n,), P0: (n, n) prior of x_1.
        y: (b, l, o) observations, NaN = missing.
    """
    return _run(_taylor, f, h, Q, R, m0, P0, y)


def ukf(
    f: Fn,
    h: Fn,
    Q: Tensor,
    R: Tensor,
    m0: Tensor,
    P0: Tensor,
    y: Tensor,
    alpha: float = 1.0,
    beta: float = 0.0,
    kappa: float | None = None,
) -> NonlinearFilterResult:
    """Unscented Kalman filter (sigma points of Julier & Uhlmann; weights of Wan & van der
    Merwe with parameters alpha, beta, kappa; kappa defaults to 3 - n). Arguments as :func:`ekf`."""
    n = m0.shape[-1]
    k = 3.0 - n if kappa is None else kappa
    check_positive("alpha", alpha)

    def lin(fn: Fn, m: Tensor, P: Tensor):
        return _unscented(fn, m, P, alpha, beta, k)

    return _run(lin, f, h, Q, R, m0, P0, y)

"""Many independent fits at once: a batched quasi-Newton method over (b, k) parameters.

With one parameter vector per series the negative log-likelihood is a sum of b independent
terms, so its Hessian is block diagonal: each series has its own (k, k) block. One batched
filter call gives all b values and (b, k) gradients; k more calls at shifted parameters give
every block by forward differences of the exact gradient. That block starts each series;
later iterations update it by BFGS (Nocedal & Wright 2006, eq. 6.19) from the change of the
gradient, and take the finite-difference block again only where the curvature condition
fails. Each series takes its own Newton step on |B| (eigenvalues replaced by their absolute
values, floored, so the step always descends; Dauphin et al. 2014's saddle-free Newton),
capped in length, and its own backtracking (Armijo) line search: the batch shares calls to
the filter, never step sizes. A series stops once its gradient, or its last decrease, is
negligible, and is no longer evaluated.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from ssmkit.probabilistic.model import LinearGaussianSSM

Tensor = torch.Tensor
MAX_STEP = 3.0  # longest Newton step in theta (3 = a factor e^3 on a variance)


def value_and_grad(fn: Callable[[Tensor], Tensor], theta: Tensor) -> tuple[Tensor, Tensor]:
    """(b,) values and (b, k) gradients of a per-series function of theta (b, k)."""
    x = theta.detach().requires_grad_(True)
    f = fn(x)  # (b,)
    (g,) = torch.autograd.grad(f.sum(), x)
    return f.detach(), g


def batched_hessian(
    fn: Callable[[Tensor], Tensor], theta: Tensor, g: Tensor, rel_step: float = 1e-6
) -> Tensor:
    """(b, k, k) Hessian blocks by forward differences of the exact gradient (k calls)."""
    _b, k = theta.shape
    cols = []
    for j in range(k):
        h = rel_step * theta[:, j].abs().clamp_min(1.0)  # (b,)
        x = theta.clone()
        x[:, j] += h
        cols.append((value_and_grad(fn, x)[1] - g) / h.unsqueeze(-1))
    Hs = torch.stack(cols, -1)  # (b, k, k)
    return 0.5 * (Hs + Hs.mT)


def newton_per_series(
    fn: Callable[[Tensor, Tensor], Tensor],
    theta0: Tensor,
    max_iter: int = 50,
    gtol: float = 1e-7,
    ftol: float = 1e-13,
) -> tuple[Tensor, int]:
    """Minimise each of the b independent terms of ``fn``.

    Args:
        fn: ``fn(theta, index=index)``: the objective (e.g. negative log-likelihood) of the series
            ``index`` (a, long) at parameters theta (a, k), shape (a,). Only the series still
            moving are evaluated.
        theta0: (b, k) starting points.
        max_iter: iterations at most.
        gtol: a series is done when max |gradient| <= gtol (1 + |f|).
        ftol: ... or when its last accepted step changed f by <= ftol (1 + |f|).

    Returns:
        The (b, k) minimisers and the number of iterations run.
    """
    theta = theta0.detach().clone()
    b, k = theta.shape
    active = torch.arange(b, device=theta.device)  # series still moving
    B = theta.new_zeros(b, k, k)  # Hessian blocks (finite differences, then BFGS)
    have = torch.zeros(b, dtype=torch.bool, device=theta.device)
    g_prev, s_prev = theta.new_zeros(b, k), theta.new_zeros(b, k)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007
        th = theta[active]  # (a, k)
        f, g = value_and_grad(partial(fn, index=active), th)
        moving = g.abs().amax(-1) > gtol * (1 + f.abs())
        if not bool(moving.any()):
            break
        active, th, f, g = active[moving], th[moving], f[moving], g[moving]
        sub = partial(fn, index=active)
        Ba, known = _bfgs(B[active], s_prev[active], g - g_prev[active], have[active])
        if not bool(known.all()):
            need = ~known
            Ba[need] = batched_hessian(partial(fn, index=active[need]), th[need], g[need])
        w, V = torch.linalg.eigh(Ba)
        floor = 1e-8 * w.abs().amax(-1, keepdim=True).clamp_min(1e-12)
        step = -(V @ ((V.mT @ g.unsqueeze(-1)) / w.abs().clamp_min(floor).unsqueeze(-1)))
        step = step.squeeze(-1)  # (a, k)
        norm = step.norm(dim=-1, keepdim=True)
        step = step * (MAX_STEP / norm.clamp_min(MAX_STEP))
        slope = (g * step).sum(-1)  # (a,) < 0
        alpha = torch.ones_like(f)
        todo = torch.ones_like(f, dtype=torch.bool)
        f_new = f.clone()
        th_old = th
        for _ in range(30):  # backtracking, each series its own step length
            with torch.no_grad():
                trial = sub(th + alpha.unsqueeze(-1) * step)
            ok = todo & torch.isfinite(trial) & (trial <= f + 1e-4 * alpha * slope)
            f_new = torch.where(ok, trial, f_new)
            th = torch.where(ok.unsqueeze(-1), th + alpha.unsqueeze(-1) * step, th)
            todo &= ~ok
            if not bool(todo.any()):
                break
            alpha = torch.where(todo, 0.5 * alpha, alpha)
        theta[active] = th
        B[active], have[active] = Ba, True
        g_prev[active], s_prev[active] = g, th - th_old
        # no decrease found (at the optimum to rounding) or a negligible one: done
        keep = ~todo & ((f - f_new).abs() > ftol * (1 + f.abs()))
        active = active[keep]
        if active.numel() == 0:
            break
    return theta, it


def _bfgs(B: Tensor, s: Tensor, y: Tensor, have: Tensor) -> tuple[Tensor, Tensor]:
    """BFGS update of Hessian blocks B (a, k, k) by steps s and gradient changes y (a, k);
    returns the blocks and which are usable (known before and curvature y^T s > 0)."""
    Bs = (B @ s.unsqueeze(-1)).squeeze(-1)  # (a, k)
    sBs, ys = (s * Bs).sum(-1), (y * s).sum(-1)  # (a,)
    scale = s.norm(dim=-1) * y.norm(dim=-1)
    ok = have & (ys > 1e-10 * scale) & (sBs > 0)
    one = torch.ones_like(ys)
    upd = (
        B
        - Bs.unsqueeze(-1) * Bs.unsqueeze(-2) / torch.where(ok, sBs, one)[:, None, None]
        + y.unsqueeze(-1) * y.unsqueeze(-2) / torch.where(ok, ys, one)[:, None, None]
    )
    return torch.where(ok[:, None, None], upd, B), ok


def stack_models(models: list[LinearGaussianSSM]) -> LinearGaussianSSM:
    """One model with a series axis, (b, 1, ., .) matrices, from b time-invariant models.

    Every model must have 2-D F, H, Q, R, 1-D m0, 2-D P0 and the same P0_diffuse.
    """
    first = models[0]
    for name in ("F", "H", "Q", "R"):
        if getattr(first, name).ndim != 2:
            raise ValueError(
                f"per-series fitting stacks time-invariant models; {name} has shape "
                f"{tuple(getattr(first, name).shape)}, expected 2-D"
            )
    if first.B is not None or first.D is not None:
        raise ValueError("per-series fitting supports models without B and D")

    def stack(name: str) -> Tensor:
        return torch.stack([getattr(m, name) for m in models])

    return LinearGaussianSSM(
        F=stack("F").unsqueeze(1),
        H=stack("H").unsqueeze(1),
        Q=stack("Q").unsqueeze(1),
        R=stack("R").unsqueeze(1),
        m0=stack("m0"),
        P0=stack("P0"),
        P0_diffuse=first.P0_diffuse,
    )

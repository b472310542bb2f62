"""Ito SDEs dy = f(t, y) dt + g(t, y) dW with diagonal noise: THE SDE solvers of ssmkit.

Diagonal noise means ``g(t, y)`` has y's shape and multiplies an independent Brownian motion
per entry, dy_i = f_i dt + g_i dW_i, with g_i depending on y only through y_i (Kloeden &
Platen 1992, "Numerical Solution of SDEs", sec. 10.3). One entry point, ``sdeint``, with the
scheme as a named choice:

* ``"euler"``: Euler-Maruyama, y' = y + f h + g dW (strong order 1/2, weak order 1;
  KP eq. 10.2.1).
* ``"milstein"``: the derivative-free Milstein scheme (Platen's explicit order 1.0 strong
  scheme, KP eq. 11.1.5): with the supporting value y~ = y + f h + g sqrt(h),
  y' = y + f h + g dW + (g(t, y~) - g(t, y)) (dW^2 - h) / (2 sqrt(h)). Strong order 1 for
  diagonal noise; equals Euler-Maruyama for additive noise.

The noise comes from a ``BrownianTree``: a Brownian motion on [t0, t1] that is a pure function
of its seed and the query time (a "virtual Brownian tree", Li et al. 2020, arXiv 2001.01328,
sec. 4.2). W is exact at the dyadic points t0 + k (t1 - t0) / 2^levels, built by Brownian-bridge
bisection whose normal draws are seeded by the node's position in the tree, and linear between
them. Solves with different step sizes or query orders therefore see the SAME path, which is
what strong-convergence tests and reproducible training need. Everything else is plain torch
arithmetic, so the solution is differentiable in y0 and in the parameters inside f and g
(for a fixed Brownian path).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ssmkit.core.checks import check_choice, check_finite, check_int, check_tensor
from ssmkit.core.ode import _check_scalar, _check_t_eval

Tensor = torch.Tensor
SDE_METHODS = ("euler", "milstein")
_MASK64 = (1 << 64) - 1


def _mix(*values: int) -> int:
    """SplitMix64 hash of a tuple of ints: the seed of one tree node's normal draw."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h & ((1 << 63) - 1)


class BrownianTree:
    """A seeded Brownian motion W(t) on [t0, t1], W(t0) = 0, queryable at any time.

    Args:
        t0, t1: the time window, t0 < t1.
        shape: shape of W(t) (e.g. (b, d) for a batch of d-dimensional motions).
        seed: the path; equal seeds give equal paths whatever the order of queries.
        levels: depth of the dyadic tree; W is exact at spacing (t1 - t0) / 2^levels and
            linear in between.
        dtype, device: of the returned values.

    Calling ``W(t)`` returns W at time t (a float or 0-d tensor in [t0, t1]); ``W(s, t)`` the
    increment W(t) - W(s). Node values are cached, so a solve costs O(levels) draws per new
    time and repeated queries are free.
    """

    def __init__(
        self,
        t0: float,
        t1: float,
        shape: tuple[int, ...],
        seed: int = 0,
        levels: int = 16,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        t0, t1 = float(t0), float(t1)
        if not (math.isfinite(t0) and math.isfinite(t1) and t1 > t0):
            raise ValueError(f"BrownianTree needs finite t0 < t1, got t0 = {t0!r}, t1 = {t1!r}")
        check_int("levels", levels, minimum=0)
        if levels > 60:
            raise ValueError(f"levels must be <= 60, got {levels}")
        check_int("seed", seed, minimum=0)
        self.t0, self.t1, self.levels, self.seed = t0, t1, levels, seed
        self.shape = tuple(int(s) for s in shape)
        self.dtype, self.device = dtype, torch.device("cpu" if device is None else device)
        self._cache: dict[tuple[int, int], Tensor] = {}

    def _normal(self, level: int, index: int) -> Tensor:
        g = torch.Generator().manual_seed(_mix(self.seed, level, index))
        return torch.randn(self.shape, generator=g, dtype=self.dtype).to(self.device)

    def _node(self, level: int, index: int) -> Tensor:
        """W at t0 + index (t1 - t0) / 2^level (index in [0, 2^level])."""
        if index == 0:
            return torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        while index % 2 == 0 and level > 0:  # the coarsest level that holds this point
            index, level = index // 2, level - 1
        key = (level, index)
        if key in self._cache:
            return self._cache[key]
        span = self.t1 - self.t0
        if level == 0:  # index == 1: W(t1) ~ N(0, t1 - t0)
            w = math.sqrt(span) * self._normal(0, 1)
        else:  # Brownian bridge between the two neighbours one level up
            left = self._node(level - 1, index // 2)
            right = self._node(level - 1, index // 2 + 1)
            h = span / 2**level  # distance to either neighbour
            w = 0.5 * (left + right) + math.sqrt(h / 2) * self._normal(level, index)
        self._cache[key] = w
        return w

    def value(self, t: float | Tensor) -> Tensor:
        """W(t) with the shape of the tree (t in [t0, t1])."""
        t = float(t)
        if not self.t0 <= t <= self.t1:
            raise ValueError(f"t must lie in [t0, t1] = [{self.t0}, {self.t1}], got {t!r}")
        n = 2**self.levels
        x = (t - self.t0) / (self.t1 - self.t0) * n
        k = min(math.floor(x), n - 1)
        frac = x - k
        if frac <= 1e-9:
            return self._node(self.levels, k)
        if frac >= 1 - 1e-9:
            return self._node(self.levels, k + 1)
        return (1 - frac) * self._node(self.levels, k) + frac * self._node(self.levels, k + 1)

    def __call__(self, s: float | Tensor, t: float | Tensor | None = None) -> Tensor:
        if t is None:
            return self.value(s)
        return self.value(t) - self.value(s)


@dataclass
class SdeSolution:
    """Result of ``sdeint``.

    Attributes:
        t: (T,) the output times (``t_eval``).
        y: (T, *s) the solution at those times.
        n_steps: number of steps taken.
    """

    t: Tensor
    y: Tensor
    n_steps: int


Fn = Callable[[Tensor, Tensor], Tensor]


def _checked(name: str, fn: Fn, t: Tensor, y: Tensor) -> Tensor:
    out = fn(t, y)
    if not isinstance(out, torch.Tensor) or out.shape != y.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{name}(t, y) must return a tensor of y's shape {tuple(y.shape)}, "
                         f"got {got}")  # fmt: skip
    if not bool(torch.isfinite(out.detach()).all()):
        raise ValueError(f"{name}(t, y) returned NaN or inf at t = {float(t):.6g}")
    return out


def sde_step(f: Fn, g: Fn, t: float, y: Tensor, h: float, dW: Tensor, method: str, tt) -> Tensor:
    """One step of length h from (t, y) with Brownian increment dW (same shape as y)."""
    drift = _checked("f", f, tt(t), y)
    diffusion = _checked("g", g, tt(t), y)
    y_new = y + h * drift + diffusion * dW
    if method == "milstein":
        support = y + h * drift + diffusion * math.sqrt(h)
        g_support = _checked("g", g, tt(t), support)
        y_new = y_new + (g_support - diffusion) * (dW * dW - h) / (2 * math.sqrt(h))
    return y_new


def sdeint(
    f: Fn,
    g: Fn,
    y0: Tensor,
    t_eval: Tensor,
    bm: BrownianTree,
    method: str = "euler",
    step_size: float | None = None,
) -> SdeSolution:
    """Solve dy = f(t, y) dt + g(t, y) dW (Ito, diagonal noise) and return y at ``t_eval``.

    Each interval of ``t_eval`` is split into the fewest equal steps no longer than
    ``step_size`` (one step per interval when None), so the output times are hit exactly.

    Args:
        f: drift ``f(t, y)``; g: diffusion ``g(t, y)``, both returning y's shape; ``t`` is a
            0-d tensor of y0's dtype and device.
        y0: (*s) initial state at t_eval[0], floating point, finite.
        t_eval: (T,) strictly increasing output times inside [bm.t0, bm.t1].
        bm: the Brownian motion; ``bm.shape`` must equal y0's shape.
        method: "euler" (Euler-Maruyama) or "milstein" (derivative-free, diagonal noise).
        step_size: the maximum step; None = one step per interval of t_eval.

    Returns:
        ``SdeSolution`` with t (T,), y (T, *s) and the number of steps.

    Raises:
        TypeError/ValueError: bad arguments (non-increasing t_eval, shape mismatch, times
            outside the Brownian window, non-finite y0) and, during the solve, an f or g that
            returns the wrong shape, NaN or inf.
    """
    if not callable(f) or not callable(g):
        raise TypeError("f and g must be callables f(t, y) -> drift, g(t, y) -> diffusion")
    check_choice("method", method, SDE_METHODS)
    check_tensor("y0", y0)
    if not y0.is_floating_point():
        raise TypeError(f"y0 must be a real floating-point tensor, got dtype {y0.dtype}")
    check_finite("y0", y0)
    ts = _check_t_eval(t_eval)
    if not isinstance(bm, BrownianTree):
        raise TypeError(f"bm must be a BrownianTree, got {type(bm).__name__}")
    if bm.shape != tuple(y0.shape):
        raise ValueError(f"bm.shape must equal y0's shape {tuple(y0.shape)}, got {bm.shape}")
    if ts[0] < bm.t0 or ts[-1] > bm.t1:
        raise ValueError(
            f"t_eval must lie in the Brownian window [{bm.t0}, {bm.t1}], got [{ts[0]}, {ts[-1]}]"
        )
    if step_size is not None:
        step_size = _check_scalar("step_size", step_size)

    def tt(t: float) -> Tensor:
        return torch.tensor(t, dtype=y0.dtype, device=y0.device)

    ys, y, n_steps = [y0], y0, 0
    for i in range(len(ts) - 1):
        span = ts[i + 1] - ts[i]
        n = 1 if step_size is None else max(1, math.ceil(span / step_size * (1 - 1e-10)))
        h = span / n
        for j in range(n):
            t = ts[i] + j * h
            t_next = ts[i + 1] if j == n - 1 else t + h
            dW = bm(t, t_next).to(dtype=y0.dtype, device=y0.device)  # (*s)
            y = sde_step(f, g, t, y, t_next - t, dW, method, tt)
            n_steps += 1
        ys.append(y)
    return SdeSolution(t=t_eval, y=torch.stack(ys), n_steps=n_steps)


__all__ = ["SDE_METHODS", "BrownianTree", "SdeSolution", "sde_step", "sdeint"]

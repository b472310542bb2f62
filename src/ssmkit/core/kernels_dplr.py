"""Spectrum of the DPLR (S4) kernel: Cauchy sums at roots of unity, then the Woodbury identity.

:func:`ssmkit.core.kernels.kernel_dplr` evaluates, at roots of unity w (S4, algorithm 1),

    S_j(w) = sum_n X_jn / d_n(w),    d_n(w) = (1 - w) - dt/2 (1 + w) Lambda_n,

for the stacked numerators X = (C_tilde B, C_tilde P_i, conj(Q_i) B, conj(Q_i) P_j), then
solves the rank-r Woodbury system per frequency (:func:`spectrum_from_sums`). The sums have
two backends with one forward:

* ``"ref"`` (:func:`cauchy_ref`): plain tensor algebra; autograd keeps the (B, f, n) table
  1/d of every chunk (``kernel_dplr`` checkpoints chunks, so the backward recomputes and
  replays it).
* ``"adjoint"`` (:func:`cauchy_adjoint`): a custom autograd Function whose backward is two
  more Cauchy-type sums over the same table, recomputed in cache-sized pieces, never stored:

      dS_j(w)/dX_jn = 1/d_n(w),    dS_j(w)/dLambda_n = X_jn dt/2 (1 + w) / d_n(w)^2,

  and dt enters d only through the product dt Lambda_n, so its gradient follows from
  Lambda's: dL/d(dt/2) = Re(sum_n conj(Lambda_n) T_n) with dL/dLambda_n = dt/2 T_n.
  It saves only Lambda, dt, X and the points: O(B (n + f)) memory.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

Tensor = torch.Tensor

# Elements of the (B, f, n) table 1/d per tile of the adjoint's loops: 512 KiB of complex64
# stays in cache and below glibc's mmap threshold, so tiles reuse memory without page faults.
TILE_BUDGET = 2**16


def roots_of_unity(pos: Tensor, L: int, dtype: torch.dtype) -> Tensor:
    """w_k = exp(-2 pi i k / L) for k in pos: (f,) of complex ``dtype``."""
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    angle = (-2 * math.pi / L) * pos.to(real)
    return torch.polar(torch.ones_like(angle), angle)


def mirrored_points(pos: Tensor, L: int, dtype: torch.dtype) -> Tensor:
    """The points w_k then w_{-k} for k in pos: (2c,), the layout of every sum below."""
    return roots_of_unity(torch.cat([pos, (-pos) % L]), L, dtype)


def inverse_denominators(w: Tensor, Lam: Tensor, half_dt: Tensor) -> Tensor:
    """1 / d_n(w) = 1 / ((1 - w) - dt/2 (1 + w) Lambda_n): (B, f, n) from w (f,), Lam (B, n).

    No pole at w = -1 (there d = 2), unlike the form (2 / (1 + w)) / (g(w) - Lambda).
    """
    R = (half_dt.unsqueeze(-1) * (1 + w)).unsqueeze(-1) * Lam.unsqueeze(-2)  # (B, f, n)
    return R.neg_().add_((1 - w).unsqueeze(-1)).reciprocal_()  # in place: one temporary


def cauchy_ref(w: Tensor, Lam: Tensor, half_dt: Tensor, X: Tensor) -> Tensor:
    """S_j(w) = sum_n X_jn / d_n(w): the definition, differentiated by autograd.

    Args:
        w: (f,) points on the unit circle. Lam: (B, n). half_dt: (B,) real, dt/2.
        X: (B, j, n) numerators.

    Returns:
        S: (B, f, j).
    """
    return inverse_denominators(w, Lam, half_dt) @ X.mT


def cauchy_adjoint(w: Tensor, Lam: Tensor, half_dt: Tensor, X: Tensor) -> Tensor:
    """The sums of :func:`cauchy_ref` with the hand-written backward (module docstring).

    Args:
        w, Lam, half_dt, X: as :func:`cauchy_ref`; half_dt must be real.

    Returns:
        S: (B, f, j).
    """
    if half_dt.is_complex():
        raise ValueError(f"half_dt must be real, got dtype {half_dt.dtype}")
    return _CauchyAdjoint.apply(w, Lam, half_dt, X)


def _tiles(B: int, f: int, n: int) -> list[tuple[slice, slice]]:
    """(channels, points) tiles of the (B, f, n) table with about TILE_BUDGET elements each.

    Points first: a tile spans many points, so each batched matmul has a long axis (tiny
    matmuls, one per channel, cost more in calls than in arithmetic).
    """
    c = min(f, max(1, TILE_BUDGET // n))
    bb = max(1, TILE_BUDGET // (c * n))
    return [
        (slice(b0, b0 + bb), slice(lo, lo + c)) for b0 in range(0, B, bb) for lo in range(0, f, c)
    ]


class _CauchyAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: Tensor, Lam: Tensor, half_dt: Tensor, X: Tensor) -> Tensor:
        ctx.save_for_backward(w, Lam, half_dt, X)
        return cauchy_tiled(w, Lam, half_dt, X)

    @staticmethod
    @once_differentiable
    def backward(ctx, G: Tensor) -> tuple[Tensor | None, ...]:
        w, Lam, half_dt, X = ctx.saved_tensors
        _, need_Lam, need_dt, need_X = ctx.needs_input_grad
        need_T = need_Lam or need_dt
        B, j, n = X.shape
        Gc = G.conj().resolve_conj()  # (B, f, j): conj(G) lets BLAS use plain transposes
        bGc = Gc * (1 + w).unsqueeze(-1)  # (B, f, j)
        gX = X.new_zeros(B, n, j) if need_X else None  # conj of dL/dX, transposed
        M = X.new_zeros(B, n, j) if need_T else None  # sum_f (1 + w) d^-2 conj(G)
        for cb, pt in _tiles(B, w.shape[0], n):
            R = inverse_denominators(w[pt], Lam[cb], half_dt[cb]).mT  # (bb, n, c)
            if need_X:
                gX[cb].baddbmm_(R, Gc[cb, pt])
            if need_T:
                M[cb].baddbmm_(R.mul_(R), bGc[cb, pt])
        return (None, *grads_from_sums(gX, M, Lam, half_dt, X, need_Lam, need_dt))


def grads_from_sums(
    gX: Tensor | None,
    M: Tensor | None,
    Lam: Tensor,
    half_dt: Tensor,
    X: Tensor,
    need_Lam: bool,
    need_dt: bool,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of Lambda, dt/2 and X from the adjoint's two sums (module docstring).

    Args:
        gX: (B, n, j) sum_k conj(G_kj) / d_n(w_k), or None (X needs no gradient).
        M: (B, n, j) sum_k (1 + w_k) conj(G_kj) / d_n(w_k)^2, or None.
        Lam: (B, n). half_dt: (B,). X: (B, j, n). need_Lam, need_dt: which to return.

    Returns:
        grad_Lam (B, n), grad_half_dt (B,), grad_X (B, j, n); None where not needed.
    """
    grad_X = gX.mT.conj() if gX is not None else None  # (B, j, n)
    grad_Lam = grad_dt = None
    if M is not None:
        T = (X * M.mT).sum(-2).conj()  # (B, n): dL/dLambda_n = dt/2 T_n
        if need_Lam:
            grad_Lam = half_dt.unsqueeze(-1) * T
        if need_dt:
            grad_dt = (Lam.conj() * T).sum(-1).real  # (B,)
    return grad_Lam, grad_dt, grad_X


def cauchy_tiled(w: Tensor, Lam: Tensor, half_dt: Tensor, X: Tensor) -> Tensor:
    """The sums of :func:`cauchy_ref` tile by tile, no autograd: (B, f, j), args as there."""
    (B, n), f = Lam.shape, w.shape[0]
    Xt = X.mT  # (B, n, j)
    out = X.new_empty(B, f, X.shape[1])  # (B, f, j)
    for cb, pt in _tiles(B, f, n):
        R = inverse_denominators(w[pt], Lam[cb], half_dt[cb])  # (bb, c, n)
        out[cb, pt] = R @ Xt[cb]
    return out


def spectrum_from_sums(S: Tensor, w: Tensor, half_dt: Tensor, conj: bool) -> Tensor:
    """Hermitian part of K_hat at the first half of the points, from sums at w_k and w_{-k}.

    With ``conj`` the partner modes' sums at w_k are the conjugates of the stored modes' sums
    at w_{-k}; they join before the Woodbury solve because P, Q couple all modes. Without
    it, K = Re(ifft(K_hat)), whose spectrum is (K_hat(w_k) + conj(K_hat(w_{-k}))) / 2.

    Args:
        S: (B, 2c, j) sums at :func:`mirrored_points`, j = (1 + r)^2 numerators.
        w: (2c,) those points. half_dt: (B,) dt/2. conj: the modes stand for conjugate pairs.

    Returns:
        K_hat: (B, c).
    """
    c = S.shape[1] // 2
    r = math.isqrt(S.shape[-1]) - 1
    s = half_dt.unsqueeze(-1) * (1 + w)  # (B, 2c)
    # split, not slices: autograd then joins the parts' gradients in one cat instead of
    # zero-filling an S-sized tensor per slice
    own, mirror = (
        [k00.squeeze(-1), k01, k10, k11.unflatten(-1, (r, r))]  # (B, c, [r, [r]])
        for k00, k01, k10, k11 in (half.split([1, r, r, r * r], -1) for half in S.split(c, 1))
    )
    if conj:
        both = [a + b.conj() for a, b in zip(own, mirror, strict=True)]
        return _woodbury(*both, s[:, :c], half_dt)
    K_own, K_mirror = _woodbury(*own, s[:, :c], half_dt), _woodbury(*mirror, s[:, c:], half_dt)
    return (K_own + K_mirror.conj()) / 2


def _woodbury(
    k00: Tensor, k01: Tensor, k10: Tensor, k11: Tensor, s: Tensor, half_dt: Tensor
) -> Tensor:
    """K_hat = dt (k00 - s k01 (I + s k11)^{-1} k10): (B, c) from sums (B, c, [r, [r]])."""
    r = k11.shape[-1]
    if r == 1:  # the S4 case: a scalar division instead of a batched solve
        low_rank = k01[..., 0] * k10[..., 0] / (1 + s * k11[..., 0, 0])  # (B, c)
    else:
        eye = torch.eye(r, dtype=k11.dtype, device=k11.device)
        system = eye + s[..., None, None] * k11  # (B, c, r, r)
        correction = torch.linalg.solve(system, k10.unsqueeze(-1))  # (B, c, r, 1)
        low_rank = (k01.unsqueeze(-2) @ correction)[..., 0, 0]  # (B, c)
    return 2 * half_dt.unsqueeze(-1) * (k00 - s * low_rank)

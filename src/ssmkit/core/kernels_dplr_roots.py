"""The DPLR Cauchy sums at all L-th roots of unity, with a backward by one FFT and GEMMs.

:func:`ssmkit.core.kernels_dplr.cauchy_adjoint` differentiates the sums by two more Cauchy
sums over the (B, f, n) table 1/d: one complex reciprocal per (channel, point, mode) and two
thin matmuls. When the points are ALL the L-th roots of unity (w^L = 1), the geometric series
closes. With d_n(w) = alpha_n (1 - rho_n w), alpha_n = 1 - dt/2 Lambda_n and
rho_n = (1 + dt/2 Lambda_n) / alpha_n (the bilinear A_bar, |rho_n| < 1),

    1 / (1 - rho w)   = sum_{m<L} rho^m w^m / (1 - rho^L),
    1 / (1 - rho w)^2 = sum_{m<L} rho^m w^m [(m + 1) / (1 - rho^L) + L rho^L / (1 - rho^L)^2],

so the adjoint's two sums over points (:mod:`ssmkit.core.kernels_dplr`) become

    sum_k g_k / d_n(w_k)               = U0_n / (alpha_n (1 - rho_n^L)),
    sum_k (1 + w_k) g_k / d_n(w_k)^2   = (U2_n / (1 - rho_n^L) + U1_n L rho_n^L / (1 - rho_n^L)^2)
                                         / alpha_n^2,

with U0 = sum_m rho^m g_hat(m), U1 = sum_m rho^m h_hat(m), U2 = sum_m (m + 1) rho^m h_hat(m),
g_hat(m) = sum_k g_k w_k^m (an FFT of the cotangent placed on the roots) and
h_hat(m) = g_hat(m) + g_hat(m + 1) (the factor 1 + w). The Vandermonde products are batched
GEMMs against a blocked table rho^t, t < c (as :func:`ssmkit.core.kernels.kernel_diag`); no
reciprocal is taken per point. rho, its powers and 1 - rho^L are formed in float64 (rho^m for
m ~ L would carry m times float32's rounding of rho).

Precision: the float64 results equal the direct sums to rounding. In float32 the gradients of
X (so of P, Q, B, C_tilde) are as accurate as the direct adjoint's, those of Lambda and dt are
about 3-10x less accurate (at S4's initialisation, L = 1000: dt relative error 2e-3 against
2e-4, Lambda 5e-5 against 1.5e-5): the Fourier side sums large oscillating terms.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from ssmkit.core.checks import check_int
from ssmkit.core.kernels_dplr import cauchy_tiled, grads_from_sums, roots_of_unity

Tensor = torch.Tensor

# Elements of the (bb, 3 j, L) right-hand side of the Vandermonde GEMM per channel block.
BLOCK_BUDGET = 2**19


def root_positions(L: int, chunk: int, device: torch.device | None = None) -> Tensor:
    """Indices p of the points w = exp(-2 pi i p / L) of :func:`cauchy_roots`: (2 (L // 2 + 1),).

    The positions k = 0 .. L // 2 in chunks of ``chunk``, each chunk laid out as
    :func:`ssmkit.core.kernels_dplr.mirrored_points` (its k, then its -k mod L), so that the
    sums split into the chunks' own layout.
    """
    check_int("chunk", chunk, minimum=1)
    pos = torch.arange(L // 2 + 1, device=device)
    return torch.cat([torch.cat([k, (-k) % L]) for k in pos.split(chunk)])


def cauchy_roots(Lam: Tensor, half_dt: Tensor, X: Tensor, L: int, chunk: int) -> Tensor:
    """S_j(w) = sum_n X_jn / d_n(w) at the points of :func:`root_positions` (module docstring).

    The forward is :func:`ssmkit.core.kernels_dplr.cauchy_tiled`; the backward uses that the
    points are the L-th roots of unity (one FFT and GEMMs, no reciprocals).

    Args:
        Lam: (B, n) with Re < 0. half_dt: (B,) real, dt/2. X: (B, j, n) numerators.
        L: the order of the roots of unity. chunk: positions per chunk of the layout.

    Returns:
        S: (B, 2 (L // 2 + 1), j).
    """
    if half_dt.is_complex():
        raise ValueError(f"half_dt must be real, got dtype {half_dt.dtype}")
    return _CauchyRoots.apply(Lam, half_dt, X, root_positions(L, chunk, X.device), L)


def _blocks(L: int) -> tuple[int, int]:
    """(c, m): block length c (a power of two near sqrt(L)) and m = ceil(L / c) blocks."""
    c = 1 << max(0, math.ceil(math.log2(L) / 2))
    return c, -(-L // c)


def _powers(x: Tensor, k: int) -> Tensor:
    """x^t for t < k: (*, k) from (*,), by a cumulative product (exact at x = 0)."""
    out = x.unsqueeze(-1).repeat_interleave(k, dim=-1)
    out[..., 0] = 1
    return out.cumprod(-1)


def _int_power(x: Tensor, e: int) -> Tensor:
    """x^e for an integer e >= 1 by squaring (exact at x = 0, unlike exp(e log x))."""
    out, sq = None, x
    for i in range(e.bit_length()):
        if e >> i & 1:
            out = sq if out is None else out * sq
        sq = sq * sq
    return out


def vandermonde_sums(rho: Tensor, Y: Tensor, c: int) -> Tensor:
    """U0, U1, U2 of the module docstring from Y = (g_hat, h_hat) (B, 2, j, m c): (B, n, 3, j).

    Blocked m = s c + t: the GEMMs sum_t rho^t Y(s c + t) and sum_t t rho^t h_hat(s c + t)
    run in Y's dtype over c terms with weights below c; the heads rho^(s c) and the weights
    s c + 1 of U2 = sum_s rho^(s c) [(s c + 1) sum_t rho^t h_hat + sum_t t rho^t h_hat] are
    applied in complex128 (float32 sums over L terms with weights up to L lose the gradient
    of dt).

    Args:
        rho: (B, n) complex128, |rho| <= 1. Y: (B, 2, j, m c), zero past the last term.
        c: block length.

    Returns:
        U: (B, n, 3, j) complex128.
    """
    B, _, j, mc = Y.shape
    m = mc // c
    table = _powers(rho, c)  # (B, n, c): rho^t
    heads = _powers(table[..., -1] * rho, m).mT.unsqueeze(1)  # (B, 1, m, n): rho^(s c)
    t = torch.arange(c, device=Y.device, dtype=Y.real.dtype)
    inner = (Y.view(B, 2 * j * m, c) @ table.to(Y.dtype).mT).unflatten(1, (2 * j, m))
    inner_t = (Y[:, 1].view(B, j * m, c) @ (table.to(Y.dtype) * t).mT).unflatten(1, (j, m))
    inner, inner_t = inner.to(heads.dtype), inner_t.to(heads.dtype)  # (B, 2j | j, m, n)
    sc1 = (torch.arange(m, device=Y.device, dtype=torch.float64) * c + 1).unsqueeze(-1)  # (m, 1)
    U01 = (inner * heads).sum(2)  # (B, 2j, n)
    U2 = ((inner[:, j:] * sc1 + inner_t) * heads).sum(2)  # (B, j, n)
    return torch.cat([U01, U2], 1).unflatten(1, (3, j)).permute(0, 3, 1, 2)  # (B, n, 3, j)


class _CauchyRoots(torch.autograd.Function):
    @staticmethod
    def forward(ctx, Lam: Tensor, half_dt: Tensor, X: Tensor, p: Tensor, L: int) -> Tensor:
        ctx.save_for_backward(Lam, half_dt, X, p)
        ctx.L = L
        return cauchy_tiled(roots_of_unity(p, L, X.dtype), Lam, half_dt, X)

    @staticmethod
    @once_differentiable
    def backward(ctx, G: Tensor) -> tuple[Tensor | None, ...]:
        Lam, half_dt, X, p = ctx.saved_tensors
        need_Lam, need_dt, need_X, _, _ = ctx.needs_input_grad
        L, (B, j, n) = ctx.L, X.shape
        a = half_dt.double().unsqueeze(-1) * Lam.to(torch.complex128)  # (B, n): dt/2 Lambda
        alpha = 1 - a
        rho = (1 + a) / alpha  # (B, n), in float64: its powers reach rho^L
        c, m = _blocks(L)
        bb = min(B, max(1, BLOCK_BUDGET // (2 * j * m * c)))
        U = alpha.new_empty(B, n, 3, j)  # U0, U1, U2
        g = X.new_empty(bb, j, L)  # the cotangent on the roots; buffers reused by every block
        Y = X.new_empty(bb, 2, j, m * c)  # g_hat, h_hat
        Y[..., L:] = 0
        for b0 in range(0, B, bb):
            cb, nb = slice(b0, b0 + bb), min(bb, B - b0)
            gb, Yb = g[:nb].zero_().index_add_(-1, p, G[cb].mT), Y[:nb]  # (nb, j, L)
            # g_hat(m) = sum_k conj(G_k) w_k^m = conj(sum_p g_p exp(2 pi i p m / L))
            g_hat = torch.fft.ifft(gb, dim=-1, norm="forward").conj()
            Yb[:, 0, :, :L] = g_hat
            h_hat = Yb[:, 1, :, :L]  # g_hat(m) + g_hat(m + 1): the factor 1 + w
            torch.add(g_hat[..., :-1], g_hat[..., 1:], out=h_hat[..., :-1])
            h_hat[..., -1] = g_hat[..., -1] + g_hat[..., 0]
            U[cb] = vandermonde_sums(rho[cb], Yb, c)
        rho_L = _int_power(rho, L)  # (B, n)
        inv = 1 / (1 - rho_L)  # the closed geometric sum
        tail = L * rho_L * inv**2
        gX = (U[..., 0, :] * (inv / alpha).unsqueeze(-1)).to(X.dtype) if need_X else None
        M = None
        if need_Lam or need_dt:
            M = (U[..., 2, :] * inv.unsqueeze(-1) + U[..., 1, :] * tail.unsqueeze(-1)) / (
                alpha**2
            ).unsqueeze(-1)  # (B, n, j)
            M = M.to(X.dtype)
        return (*grads_from_sums(gX, M, Lam, half_dt, X, need_Lam, need_dt), None, None)

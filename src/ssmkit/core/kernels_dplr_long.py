"""C_tilde for a longer kernel: the S4 parameter moved from one length to another.

S4 learns C_tilde = C (I - A_bar^l) for its training length l (S4, section 3.3). A kernel of
another length L needs C (I - A_bar^L) with C = C_tilde (I - A_bar^l)^{-1}:

    C_tilde_L = C - C A_bar^L.

Composing :func:`ssmkit.core.kernels.dplr_c_tilde` with a solve (the reference, used by
``S4(kernel_backend="ref")``) powers the dense (N, N) matrix twice, to l and to L, each by
repeated squaring. :func:`dplr_c_tilde_rescale` keeps the squares A_bar^(2^i) of the first
power and reaches A_bar^L as vector-matrix products: with L = q l + e,

    C A_bar^L = ((C A_bar^l) A_bar^l ...) A_bar^e     (q times, then the bits of e),

so only log2(l) dense products are made (and differentiated), not log2(l) + log2(L).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ssmkit.core.checks import check_int
from ssmkit.core.discretize import discretize_dplr

Tensor = torch.Tensor

# Up to this many vector-matrix products with A^l replace squarings beyond A^l (each costs
# about 1/N of a dense product, so q of them beat log2(q) squarings for any q up to here).
MAX_VECTOR_STEPS = 64


def _square_up(squares: list[Tensor], top: int) -> None:
    """Extend ``squares`` (A^(2^i), i < len) in place to hold A^(2^i) for i <= top."""
    if len(squares) <= top:
        squares.extend(_Squares.apply(squares[-1], top + 1 - len(squares)))


class _Squares(torch.autograd.Function):
    """S_1 .. S_k with S_i = S_(i-1)^2, S_0 = A (*, N, N); the backward conjugates each S_i
    once for its two products G S^H + S^H G (autograd's matmul backward conjugates twice and
    adds the halves in a third pass)."""

    @staticmethod
    def forward(ctx, A: Tensor, k: int) -> tuple[Tensor, ...]:
        S = [A]
        for _ in range(k):
            S.append(S[-1] @ S[-1])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*S[:-1])
        return tuple(S[1:])

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: Tensor | None) -> tuple[Tensor | None, None]:
        S = ctx.saved_tensors  # S_0 .. S_(k-1)
        G = None  # dL/dS_i, from S_i's own use and from S_(i+1) = S_i^2
        for i in range(len(S) - 1, -1, -1):
            if grads[i] is not None:
                G = grads[i] if G is None else G + grads[i]
            if G is not None:
                Sh = S[i].mH.resolve_conj()
                G = torch.baddbmm(G @ Sh, Sh, G) if G.ndim == 3 else G @ Sh + Sh @ G
        return G, None


def matrix_power_squares(A: Tensor, e: int, squares: list[Tensor]) -> Tensor:
    """A^e (*, N, N) for e >= 1 by binary powering, keeping the squares in ``squares``.

    ``squares`` starts as [A] and holds A^(2^i) for i up to the top bit of e afterwards.
    """
    _square_up(squares, e.bit_length() - 1)
    out = None
    for i in range(e.bit_length()):
        if e >> i & 1:
            out = squares[i] if out is None else out @ squares[i]
    return out


def vector_power(v: Tensor, e: int, squares: list[Tensor]) -> Tensor:
    """v A^e for a row vector v (*, N): one vector-matrix product per bit of e."""
    _square_up(squares, e.bit_length() - 1)
    for i in range(e.bit_length()):
        if e >> i & 1:
            v = (v.unsqueeze(-2) @ squares[i]).squeeze(-2)
    return v


def row_powers(v: Tensor, A: Tensor, q: int) -> Tensor:
    """v A^q for row vectors v (*, N) and matrices A (*, N, N): q vector-matrix products.

    Autograd through the loop would make q outer products v_j^H g_(j+1) of size (*, N, N)
    for the gradient of A; :class:`_RowPowers` stacks them into one (N, q) x (q, N) product.

    Args:
        v: (*, N). A: (*, N, N); leading axes broadcast. q: number of products, >= 0.

    Returns:
        (*, N), the broadcast leading shape.
    """
    check_int("q", q, minimum=0)
    return _RowPowers.apply(v, A, q)


class _RowPowers(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: Tensor, A: Tensor, q: int) -> Tensor:
        vs = [v]
        for _ in range(q):
            vs.append((vs[-1].unsqueeze(-2) @ A).squeeze(-2))  # v_j = v_(j-1) A
        ctx.q, ctx.v_shape = q, v.shape
        ctx.save_for_backward(A, *vs[:-1])
        return vs[-1] if q else v.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, ...]:
        A, *vs = ctx.saved_tensors
        need_v, need_A, _ = ctx.needs_input_grad
        Ah = A.mH.resolve_conj()  # once: a conjugate view would be copied in every product
        gs = []  # g_j = dL/dv_j for j = q .. 1, then g_0
        for _ in range(ctx.q):
            gs.append(g)
            g = (g.unsqueeze(-2) @ Ah).squeeze(-2)  # g_(j-1) = g_j A^H
        grad_A = None
        if need_A and ctx.q:
            V = torch.stack(vs, dim=-2)  # (*, q, N): v_0 .. v_(q-1)
            G = torch.stack(gs[::-1], dim=-2)  # (*, q, N): g_1 .. g_q
            grad_A = (V.mH @ G).sum_to_size(A.shape)  # sum_j v_(j-1)^H g_j
        elif need_A:
            grad_A = torch.zeros_like(A)
        grad_v = g.sum_to_size(ctx.v_shape) if need_v else None
        return grad_v, grad_A, None


def dplr_c_tilde_rescale(
    Lambda: Tensor,
    P: Tensor,
    Q: Tensor,
    C_tilde: Tensor,
    dt: Tensor,
    l: int,
    L: int,
    conj: bool = True,
) -> Tensor:
    """C_tilde for length L from C_tilde for length l: C_tilde (I - A^l)^{-1} (I - A^L).

    A = diag(Lambda) - P^T conj(Q), bilinear-discretised with step dt (as
    :func:`ssmkit.core.kernels.kernel_dplr`).

    Args:
        Lambda: (*, n), P, Q: (*, r, n), dt: (*); with ``conj`` the stored halves.
        C_tilde: (k, *, n) or (*, n): the parameter for length l (leading axes broadcast).
        l: the length C_tilde is defined for. L: the new length.
        conj: the inputs hold one mode of each conjugate pair.

    Returns:
        C_tilde_L: the shape of C_tilde (the stored half when ``conj``).
    """
    check_int("l", l, minimum=1)
    check_int("L", L, minimum=1)
    n = Lambda.shape[-1]
    if conj:
        Lambda, P, Q, C_tilde = (torch.cat([x, x.conj()], dim=-1) for x in (Lambda, P, Q, C_tilde))
    A_bar, _ = discretize_dplr(Lambda, P, Q, torch.ones_like(Lambda), dt, "bilinear")  # (*, N, N)
    squares = [A_bar]
    eye = torch.eye(A_bar.shape[-1], dtype=A_bar.dtype, device=A_bar.device)
    A_l = matrix_power_squares(A_bar, l, squares)  # (*, N, N)
    # C (I - A^l) = C_tilde  <=>  (I - A^l)^T C^T = C_tilde^T
    C = torch.linalg.solve((eye - A_l).mT, C_tilde.unsqueeze(-1)).squeeze(-1)  # (k, *, N)
    q, e = divmod(L, l)
    if q <= MAX_VECTOR_STEPS:
        v = vector_power(row_powers(C, A_l, q), e, squares)  # e < l: its squares exist
    else:
        v = vector_power(C, L, squares)
    C_tilde_L = C - v
    return C_tilde_L[..., :n] if conj else C_tilde_L

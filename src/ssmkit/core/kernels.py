"""The convolution kernel of a discretised LTI SSM: K_l = C A_bar^l B_bar, l = 0..L-1 (S4 eq. 5).

Three ways, one result:

* :func:`kernel_dense` powers a dense A_bar step by step: the reference.
* :func:`kernel_diag` is the Vandermonde product of a diagonal SSM (S4D):
  K_l = sum_n C_n B_bar_n A_bar_n^l.
* :func:`kernel_dplr` evaluates the generating function of a diagonal-plus-low-rank SSM (S4)
  at the L-th roots of unity with a Cauchy kernel and the Woodbury identity, then inverts
  the FFT.

The fast two never build an (*, n, L) tensor: they walk L (or the frequencies) in chunks whose
temporary holds at most ``max(numel(K), 2**20)`` elements (:func:`default_chunk`), and when
gradients are needed each chunk is recomputed in the backward pass (activation
checkpointing), so training does not store the table either.

Conjugate pairs: with ``conj=True`` each stored mode stands for itself and its complex
conjugate, so the kernel of the real system is 2 Re(sum over stored modes) (S4D, section 3).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from ssmkit.core.checks import check_finite, check_int, check_tensor
from ssmkit.core.discretize import discretize_dplr

Tensor = torch.Tensor

CHUNK_BUDGET = 2**20  # elements of the per-chunk temporary, at least


def default_chunk(batch: int, n: int, L: int) -> int:
    """Positions of L per chunk so that the (batch, n, chunk) temporary <= the kernel's size."""
    budget = max(batch * L, CHUNK_BUDGET)
    return max(1, min(L, budget // max(batch * n, 1)))


def expand_conj(x: Tensor) -> Tensor:
    """Append the complex conjugates of the modes along the last axis: (*, n) -> (*, 2n)."""
    return torch.cat([x, x.conj()], dim=-1)


def _check_modes(L: int, **tensors: Tensor) -> int:
    check_int("L", L, minimum=1)
    n = None
    for name, x in tensors.items():
        check_tensor(name, x)
        check_finite(name, x)
        if x.ndim < 1:
            raise ValueError(f"{name} must have a trailing state axis (*, n), got a scalar")
        if n is None:
            n = x.shape[-1]
        elif x.shape[-1] != n:
            raise ValueError(
                f"{name} must have n = {n} modes on its last axis (as "
                f"{next(iter(tensors))}), got shape {tuple(x.shape)}"
            )
    return n


def _chunked(fn: Callable[..., tuple[Tensor, ...]], L: int, chunk: int, *args: Tensor):
    """Concatenate ``fn(positions, *args)`` over chunks of range(L) along axis 1."""
    needs_grad = torch.is_grad_enabled() and any(a.requires_grad for a in args)
    device = args[0].device
    parts = []
    for start in range(0, L, chunk):
        pos = torch.arange(start, min(start + chunk, L), device=device)
        if needs_grad and chunk < L:
            parts.append(checkpoint(fn, pos, *args, use_reentrant=False))
        else:
            parts.append(fn(pos, *args))
    return tuple(torch.cat(p, dim=1) for p in zip(*parts, strict=True))


def kernel_dense(A_bar: Tensor, B_bar: Tensor, C: Tensor, L: int) -> Tensor:
    """Reference kernel by powering: v_0 = B_bar, v_{l+1} = A_bar v_l, K_l = C v_l.

    Args:
        A_bar: (*, n, n), B_bar: (*, n), C: (*, n); leading axes broadcast.
        L: kernel length.

    Returns:
        K: (*, L), in the dtype of the inputs (complex stays complex).
    """
    n = _check_modes(L, A_bar=A_bar, B_bar=B_bar, C=C)
    if A_bar.ndim < 2 or A_bar.shape[-2] != n:
        raise ValueError(f"A_bar must have shape (*, n, n), got shape {tuple(A_bar.shape)}")
    v = B_bar.unsqueeze(-1)  # (*, n, 1)
    taps = []
    for _ in range(L):
        taps.append((C.unsqueeze(-2) @ v)[..., 0, 0])
        v = A_bar @ v
    return torch.stack(taps, dim=-1)


def kernel_diag(
    A_bar: Tensor,
    B_bar: Tensor,
    C: Tensor,
    L: int,
    conj: bool = True,
    chunk: int | None = None,
) -> Tensor:
    """Vandermonde kernel of a diagonal SSM (S4D eq. 6): K_l = sum_n C_n B_bar_n A_bar_n^l.

    Args:
        A_bar: (*, n) discretised diagonal (real or complex; negative reals are fine).
        B_bar: (*, n). C: (*, n); leading axes broadcast (e.g. C of shape (2, h, n)).
        L: kernel length.
        conj: each stored mode stands for a conjugate pair: K = 2 Re(sum). With False,
            K = Re(sum) (real diagonal systems, or a full set of modes).
        chunk: positions of L per chunk (default :func:`default_chunk`).

    Returns:
        K: (*, L) real.
    """
    n = _check_modes(L, A_bar=A_bar, B_bar=B_bar, C=C)
    batch = torch.broadcast_shapes(A_bar.shape, B_bar.shape, C.shape)[:-1]
    cdtype = torch.promote_types(torch.promote_types(A_bar.dtype, C.dtype), torch.complex64)
    log_A = torch.log(A_bar.to(cdtype)).expand(*batch, n).reshape(-1, n)  # (B, n)
    CB = (C * B_bar).to(cdtype).expand(*batch, n).reshape(-1, n)  # (B, n)
    chunk = chunk or default_chunk(CB.shape[0], n, L)
    (K,) = _chunked(_vandermonde, L, chunk, log_A, CB)  # (B, L)
    K = K.real * (2 if conj else 1)
    return K.reshape(*batch, L)


def _vandermonde(pos: Tensor, log_A: Tensor, CB: Tensor) -> tuple[Tensor]:
    powers = torch.exp(log_A.unsqueeze(-1) * pos)  # (B, n, c)
    return ((CB.unsqueeze(-2) @ powers).squeeze(-2),)  # (B, c)


def dplr_c_tilde(
    Lambda: Tensor, P: Tensor, Q: Tensor, C: Tensor, dt: Tensor, L: int, conj: bool = True
) -> Tensor:
    """C_tilde = C (I - A_bar^L) for the bilinear-discretised DPLR SSM (S4, section 3.3).

    S4 learns C_tilde directly; this maps a C to it (and is how tests build the reference).

    Args:
        Lambda: (*, n), P, Q: (*, r, n), C: (*, n), dt: (*); with ``conj`` the stored halves.
        L: kernel length.

    Returns:
        C_tilde: (*, n), the stored half when ``conj``.
    """
    n = _check_modes(L, Lambda=Lambda, P=P, Q=Q, C=C)
    if conj:
        Lambda, P, Q, C = (expand_conj(x) for x in (Lambda, P, Q, C))
    A_bar, _ = discretize_dplr(Lambda, P, Q, torch.ones_like(Lambda), dt, "bilinear")
    A_L = torch.linalg.matrix_power(A_bar, L)  # (*, N, N)
    C_tilde = C - (C.unsqueeze(-2) @ A_L).squeeze(-2)
    return C_tilde[..., :n] if conj else C_tilde


def kernel_dplr(
    Lambda: Tensor,
    P: Tensor,
    Q: Tensor,
    B: Tensor,
    C_tilde: Tensor,
    dt: Tensor,
    L: int,
    conj: bool = True,
    chunk: int | None = None,
) -> Tensor:
    """Kernel of the bilinear-discretised SSM with A = diag(Lambda) - P^T conj(Q) (S4 alg. 1).

    At the roots of unity w_k = exp(-2 pi i k / L) the kernel's DFT is
    K_hat(w) = C_tilde [(1 - w) I - dt/2 (1 + w) A]^{-1} dt B. Writing the bracket as
    diag(d) + s P^T conj(Q), with d_n = (1 - w) - dt/2 (1 + w) Lambda_n and s = dt/2 (1 + w),
    the Woodbury identity reduces it to four Cauchy sums (sum_n x_n / d_n). This form has no
    pole at w = -1, unlike the usual (2/(1 + w)) (g(w) - A)^{-1} with g = 2/dt (1-w)/(1+w).

    Args:
        Lambda: (*, n) complex, P: (*, r, n), Q: (*, r, n), B: (*, n), C_tilde: (*, n)
            (see :func:`dplr_c_tilde`), dt: (*) real > 0.
        L: kernel length.
        conj: the inputs hold one mode of each conjugate pair (the other is implied).
        chunk: frequencies per chunk (default :func:`default_chunk`).

    Returns:
        K: (*, L) real.
    """
    n = _check_modes(L, Lambda=Lambda, P=P, Q=Q, B=B, C_tilde=C_tilde)
    if P.shape != Q.shape or P.ndim < 2:
        raise ValueError(
            f"P and Q must both have shape (*, r, n), got P {tuple(P.shape)}, Q {tuple(Q.shape)}"
        )
    check_tensor("dt", dt)
    check_finite("dt", dt)
    if dt.is_complex() or not bool((dt > 0).all()):
        raise ValueError("dt must be real and > 0 everywhere")
    r = P.shape[-2]
    batch = torch.broadcast_shapes(
        Lambda.shape[:-1], P.shape[:-2], Q.shape[:-2], B.shape[:-1], C_tilde.shape[:-1], dt.shape
    )
    cdtype = torch.promote_types(Lambda.dtype, torch.complex64)

    def flat(x: Tensor, tail: tuple[int, ...]) -> Tensor:
        return x.to(cdtype).expand(*batch, *tail).reshape(-1, *tail)

    Lam, Bf, Cf = flat(Lambda, (n,)), flat(B, (n,)), flat(C_tilde, (n,))
    Pf, Qc = flat(P, (r, n)), flat(Q, (r, n)).conj()
    half_dt = flat(dt, ()) / 2  # (B,)
    x00 = Cf * Bf  # (B, n): numerators of the four Cauchy sums
    x01 = Cf.unsqueeze(-2) * Pf  # (B, r, n)
    x10 = Qc * Bf.unsqueeze(-2)  # (B, r, n)
    x11 = Qc.unsqueeze(-2) * Pf.unsqueeze(-3)  # (B, r, r, n): [i, j] = conj(Q_i) P_j
    chunk = chunk or default_chunk(Lam.shape[0], n * (1 + r) ** 2, L)
    k00, k01, k10, k11 = _chunked(
        lambda pos, *a: _cauchy_sums(pos, L, *a), L, chunk, Lam, half_dt, x00, x01, x10, x11
    )  # (B, L), (B, L, r), (B, L, r), (B, L, r, r)
    if conj:  # partner mode at w_k = conj(own term at w_{L-k})
        mirror = (-torch.arange(L, device=Lam.device)) % L
        k00, k01, k10, k11 = (k + k[:, mirror].conj() for k in (k00, k01, k10, k11))
    w = _roots_of_unity(torch.arange(L, device=Lam.device), L, cdtype)  # (L,)
    s = (half_dt.unsqueeze(-1) * (1 + w)).unsqueeze(-1)  # (B, L, 1)
    eye = torch.eye(r, dtype=cdtype, device=Lam.device)
    correction = torch.linalg.solve(eye + s.unsqueeze(-1) * k11, k10.unsqueeze(-1))  # (B, L, r, 1)
    K_hat = (
        2
        * half_dt.unsqueeze(-1)
        * (k00 - s.squeeze(-1) * (k01.unsqueeze(-2) @ correction)[..., 0, 0])
    )  # (B, L)
    K = torch.fft.ifft(K_hat, n=L, dim=-1).real
    return K.reshape(*batch, L)


def _roots_of_unity(pos: Tensor, L: int, dtype: torch.dtype) -> Tensor:
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    angle = (-2 * math.pi / L) * pos.to(real)
    return torch.polar(torch.ones_like(angle), angle)


def _cauchy_sums(
    pos: Tensor,
    L: int,
    Lam: Tensor,
    half_dt: Tensor,
    x00: Tensor,
    x01: Tensor,
    x10: Tensor,
    x11: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = _roots_of_unity(pos, L, Lam.dtype)  # (c,)
    d = (1 - w).unsqueeze(-1) - (half_dt.unsqueeze(-1) * (1 + w)).unsqueeze(-1) * Lam.unsqueeze(
        -2
    )  # (B, c, n)
    R = 1 / d
    k00 = (R * x00.unsqueeze(-2)).sum(-1)  # (B, c)
    k01 = R @ x01.transpose(-1, -2)  # (B, c, r)
    k10 = R @ x10.transpose(-1, -2)  # (B, c, r)
    k11 = torch.einsum("bcn,bijn->bcij", R, x11)  # (B, c, r, r)
    return k00, k01, k10, k11

"""The convolution kernel of a discretised LTI SSM: K_l = C A_bar^l B_bar, l = 0..L-1 (S4 eq. 5).

Three ways, one result:

* :func:`kernel_dense` powers a dense A_bar step by step: the reference.
* :func:`kernel_diag` is the Vandermonde product of a diagonal SSM (S4D):
  K_l = sum_n C_n B_bar_n A_bar_n^l.
* :func:`kernel_dplr` evaluates the generating function of a diagonal-plus-low-rank SSM (S4)
  at the L-th roots of unity with a Cauchy kernel and the Woodbury identity, then inverts
  the FFT.

The fast two never build an (*, n, L) tensor. The Vandermonde product splits l = s + j into
blocks of c positions and reuses one (*, n, c) table of A^j for all blocks (a batched
matmul). The Cauchy sums walk the frequencies in chunks; their backward pass either
recomputes and replays each chunk (``backend="ref"``, activation checkpointing), runs the
hand-written adjoint sums of :mod:`ssmkit.core.kernels_dplr` (``"adjoint"``), or, by
default, sums over all roots of unity by one FFT and GEMMs
(:mod:`ssmkit.core.kernels_dplr_roots`, ``"roots"``). Chunked, the temporary holds at most
``max(numel(K), 2**20)`` elements (:func:`default_chunk`); "roots" with gradients holds the
(*, L + 2, (1 + r)^2) sums of all points at once (without gradients it runs chunked).

Conjugate pairs: with ``conj=True`` each stored mode stands for itself and its complex
conjugate, so the kernel of the real system is 2 Re(sum over stored modes) (S4D, section 3).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from ssmkit.core.checks import (
    check_choice,
    check_finite,
    check_int,
    check_tensor,
    values_checked,
)
from ssmkit.core.discretize import discretize_dplr
from ssmkit.core.dtypes import real_dtype
from ssmkit.core.kernels_dplr import (
    cauchy_adjoint,
    cauchy_ref,
    mirrored_points,
    roots_of_unity,
    spectrum_from_sums,
)
from ssmkit.core.kernels_dplr_roots import cauchy_roots, root_positions

Tensor = torch.Tensor

CHUNK_BUDGET = 2**20  # elements of the per-chunk temporary, at least
DPLR_BACKENDS = ("auto", "ref", "adjoint", "roots")


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
        check_finite(name, x, hot=True)
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


def _chunked(
    fn: Callable[..., tuple[Tensor, ...]], L: int, chunk: int, *args: Tensor, recompute: bool = True
):
    """Concatenate ``fn(positions, *args)`` over chunks of range(L) along axis 1.

    With ``recompute`` (and gradients needed) each chunk is checkpointed: its activations are
    recomputed in the backward pass instead of kept.
    """
    needs_grad = recompute and torch.is_grad_enabled() and any(a.requires_grad for a in args)
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
    log_A = log_modes(A_bar, cdtype).expand(*batch, n).reshape(-1, n)  # (B, n)
    CB = (C * B_bar).to(cdtype).expand(*batch, n).reshape(-1, n)  # (B, n)
    if conj:
        CB = CB * 2
    chunk = chunk or default_chunk(CB.shape[0], n, L)
    return _vandermonde(log_A, CB, L, chunk).reshape(*batch, L)


# Real part of log A_bar where A_bar underflowed to 0: exp(j * LOG_ZERO) is exactly 0 for
# j >= 1 in float32 and float64 (their exp underflows below -104 and -745) and 1 for j = 0,
# while j * LOG_ZERO stays finite (no 0 * -inf = NaN) for any kernel length below 1e30.
LOG_ZERO = -1e4


def log_modes(A_bar: Tensor, cdtype: torch.dtype) -> Tensor:
    """log A_bar in ``cdtype``, with modes that underflow (to 0 or near) at :data:`LOG_ZERO`.

    exp(dt A) underflows to 0 for strongly damped modes (e.g. S4D-Real with N = 64 and dt
    near 2); their powers A_bar^l are then 1 at l = 0 and 0 after, as the scan computes,
    instead of NaN. Such modes get no gradient (it underflowed with them).
    """
    A = A_bar.to(cdtype)  # (*, n)
    # below sqrt(tiny), |A|^2 underflows and the gradient of log (1 / conj A) is NaN; A^l
    # is then below tiny for l >= 2 and A^1 lies far under the rounding of the l = 1 tap
    zero = A.abs() < torch.finfo(A.real.dtype).tiny ** 0.5
    log_A = torch.log(torch.where(zero, torch.ones_like(A), A))  # (*, n), no log(0) in autograd
    return torch.where(zero, torch.full_like(log_A, LOG_ZERO), log_A)


def _vandermonde(log_A: Tensor, CB: Tensor, L: int, c: int) -> Tensor:
    """Re(sum_n CB_n A_n^l) for l < L, in blocks of c: A^(s + j) = A^s A^j.

    One (B, n, c) table of A^j (j < c) serves every block; block s contributes the rows
    CB A^s of a (B, m, n) matrix, so the whole kernel is one batched matmul with the table,
    done in four row groups written into the output so the complex product stays small.
    """
    table, heads = _power_blocks(log_A, L, c)  # (B, n, c), (B, m, n)
    m = heads.shape[-2]
    rows = CB.unsqueeze(-2) * heads  # (B, m, n)
    out = torch.empty(CB.shape[0], m, c, dtype=table.real.dtype, device=CB.device)
    group = -(-m // 4)
    for i in range(0, m, group):
        out[:, i : i + group] = (rows[:, i : i + group] @ table).real
    return out.flatten(1)[:, :L]


def _power_blocks(log_A: Tensor, L: int, c: int) -> tuple[Tensor, Tensor]:
    """A^l for l = s + j in blocks of c: the table A^j (*, n, c) and the heads A^s (*, m, n)."""
    m = -(-L // c)  # blocks
    table = (log_A.unsqueeze(-1) * torch.arange(c, device=log_A.device)).exp_()
    starts = torch.arange(m, device=log_A.device) * c
    heads = torch.exp(log_A.unsqueeze(-2) * starts.unsqueeze(-1))
    return table, heads


def dplr_c_tilde(
    Lambda: Tensor, P: Tensor, Q: Tensor, C: Tensor, dt: Tensor, L: int, conj: bool = True
) -> Tensor:
    """C_tilde = C (I - A_bar^L) for the bilinear-discretised DPLR SSM (S4, section 3.3).

    S4 learns C_tilde directly; this maps a C to it (and is how tests build the reference).
    :func:`ssmkit.core.kernels_dplr_long.dplr_c_tilde_rescale` moves a C_tilde from one
    length to another without powering A_bar twice.

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
    backend: str = "auto",
) -> Tensor:
    """Kernel of the bilinear-discretised SSM with A = diag(Lambda) - P^T conj(Q) (S4 alg. 1).

    At the roots of unity w_k = exp(-2 pi i k / L) the kernel's DFT is
    K_hat(w) = C_tilde [(1 - w) I - dt/2 (1 + w) A]^{-1} dt B. Writing the bracket as
    diag(d) + s P^T conj(Q), with d_n = (1 - w) - dt/2 (1 + w) Lambda_n and s = dt/2 (1 + w),
    the Woodbury identity reduces it to Cauchy sums (sum_n x_n / d_n) of four kinds of
    numerators (:mod:`ssmkit.core.kernels_dplr`). This form has no pole at w = -1, unlike
    the usual (2/(1 + w)) (g(w) - A)^{-1} with g = 2/dt (1-w)/(1+w).

    Args:
        Lambda: (*, n) complex, P: (*, r, n), Q: (*, r, n), B: (*, n), C_tilde: (*, n)
            (see :func:`dplr_c_tilde`), dt: (*) real > 0.
        L: kernel length.
        conj: the inputs hold one mode of each conjugate pair (the other is implied).
        chunk: frequencies per chunk (default :func:`default_chunk`); with "roots" and
            gradients the Cauchy sums are one call over all frequencies, the rest chunked.
        backend: "ref" (autograd through checkpointed chunks), "adjoint" (a custom autograd
            Function whose backward recomputes the Cauchy table: about twice the forward's
            cost), "roots" (the same forward; the backward by one FFT and Vandermonde GEMMs,
            :mod:`ssmkit.core.kernels_dplr_roots`) or "auto" (= "roots"; "adjoint" under
            torch.compile). All give the same
            kernel and gradients.

    Returns:
        K: (*, L) real.
    """
    check_choice("backend", backend, DPLR_BACKENDS)
    n = _check_modes(L, Lambda=Lambda, P=P, Q=Q, B=B, C_tilde=C_tilde)
    if P.shape != Q.shape or P.ndim < 2:
        raise ValueError(
            f"P and Q must both have shape (*, r, n), got P {tuple(P.shape)}, Q {tuple(Q.shape)}"
        )
    check_tensor("dt", dt)
    check_finite("dt", dt, hot=True)
    if dt.is_complex() or (values_checked(dt, hot=True) and not bool((dt > 0).all())):
        raise ValueError("dt must be real and > 0 everywhere")
    r = P.shape[-2]
    batch = torch.broadcast_shapes(
        Lambda.shape[:-1], P.shape[:-2], Q.shape[:-2], B.shape[:-1], C_tilde.shape[:-1], dt.shape
    )
    cdtype = torch.promote_types(Lambda.dtype, torch.complex64)

    def flat(x: Tensor, tail: tuple[int, ...], dtype: torch.dtype = cdtype) -> Tensor:
        return x.to(dtype).expand(*batch, *tail).reshape(-1, *tail)

    Lam, Bf, Cf = flat(Lambda, (n,)), flat(B, (n,)), flat(C_tilde, (n,))
    Pf, Qc = flat(P, (r, n)), flat(Q, (r, n)).conj()
    half_dt = flat(dt, (), real_dtype(cdtype)) / 2  # (B,)
    X = torch.cat(  # (B, j, n), j = (1 + r)^2: numerators of the Cauchy sums
        [
            (Cf * Bf).unsqueeze(-2),
            Cf.unsqueeze(-2) * Pf,
            Qc * Bf.unsqueeze(-2),
            (Qc.unsqueeze(-2) * Pf.unsqueeze(-3)).flatten(-3, -2),  # [i, j] = conj(Q_i) P_j
        ],
        dim=-2,
    )
    half = L // 2 + 1  # K is real, so K_hat at k = 0 .. L/2 determines it (irfft)
    chunk = chunk or default_chunk(Lam.shape[0], 2 * max(n, X.shape[-2]), half)
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in (Lam, half_dt, X))
    if backend == "auto" and torch.compiler.is_compiling():  # "roots" writes into out= views
        backend = "adjoint"
    if backend in ("auto", "roots") and grad:  # its backward needs all roots of unity at once
        S = cauchy_roots(Lam, half_dt, X, L, chunk)  # (B, 2 half, j), chunk after chunk
        w = roots_of_unity(root_positions(L, chunk, Lam.device), L, cdtype)  # (2 half,)
        parts = zip(S.split(2 * chunk, 1), w.split(2 * chunk), strict=True)
        K_hat = torch.cat([spectrum_from_sums(s, wc, half_dt, conj) for s, wc in parts], dim=1)
    else:
        sums = cauchy_ref if backend == "ref" else cauchy_adjoint

        def spectrum(pos: Tensor, Lam: Tensor, half_dt: Tensor, X: Tensor) -> tuple[Tensor]:
            w = mirrored_points(pos, L, cdtype)  # (2c,): w_k, then w_{-k}
            return (spectrum_from_sums(sums(w, Lam, half_dt, X), w, half_dt, conj),)

        # the adjoint recomputes the Cauchy table itself: no checkpoint around it
        (K_hat,) = _chunked(spectrum, half, chunk, Lam, half_dt, X, recompute=backend == "ref")
    K = torch.fft.irfft(K_hat, n=L, dim=-1)  # (B, L)
    return K.reshape(*batch, L)


def power_sum(A_bar: Tensor, v: Tensor, chunk: int | None = None) -> Tensor:
    """sum_j A_bar^j v_j over the length axis: the state a diagonal SSM reaches from v reversed.

    If v_j = u_{L-1-j} (B applied later), this is h_{L-1} = sum_k A_bar^{L-1-k} u_k, the
    final state of h_t = A_bar h_{t-1} + u_t after a sequence run in convolution mode. Uses
    the blocked table of :func:`kernel_diag`: no (b, h, n, L) tensor is built.

    Args:
        A_bar: (h, n) diagonal (complex or real).
        v: (b, L, h) the inputs in reverse time order (real or complex).
        chunk: positions per block (default :func:`default_chunk`).

    Returns:
        (b, h, n) in the promoted complex (or real) dtype.
    """
    check_tensor("A_bar", A_bar)
    check_tensor("v", v)
    if A_bar.ndim != 2 or v.ndim != 3 or v.shape[-1] != A_bar.shape[0]:
        raise ValueError(
            f"A_bar must have shape (h, n) and v shape (b, L, h) with the same h, "
            f"got A_bar {tuple(A_bar.shape)} and v {tuple(v.shape)}"
        )
    b, L, h = v.shape
    n = A_bar.shape[1]
    real = not (A_bar.is_complex() or v.is_complex())
    cdtype = torch.promote_types(torch.promote_types(A_bar.dtype, v.dtype), torch.complex64)
    c = chunk or default_chunk(h, n, L)
    table, heads = _power_blocks(log_modes(A_bar, cdtype), L, c)  # (h, n, c), (h, m, n)
    m = heads.shape[-2]
    v = torch.nn.functional.pad(v, (0, 0, 0, m * c - L)).to(cdtype)  # (b, m c, h)
    blocks = v.reshape(b, m, c, h).permute(3, 0, 1, 2)  # (h, b, m, c)
    inner = blocks.reshape(h, b * m, c) @ table.transpose(-1, -2)  # (h, b m, n)
    out = (inner.reshape(h, b, m, n) * heads.unsqueeze(1)).sum(2)  # (h, b, n)
    out = out.permute(1, 0, 2)  # (b, h, n)
    return out.real if real else out

"""HiPPO: online projection of a signal's history onto orthogonal polynomials (arXiv 2008.07669).

The coefficients c(t) of the projection of f's history onto N basis functions follow a linear
ODE. For each measure, :func:`transition` returns (A, B) and :func:`basis` the functions the
coefficients multiply, so that:

========  =============================  ============================================  ===========
measure   dynamics                       reconstruction                                x in
========  =============================  ============================================  ===========
legs      c' = (A c + B f(t)) / t        f(x t) ~ sum_n c_n sqrt(2n+1) P_n(2x - 1)     [0, 1]
legt      c' = (A c + B f(t)) / theta    f(t - theta + x theta) ~ same basis           [0, 1]
lagt      c' = A c + B f(t)              f(t - x) ~ sum_n c_n L_n(x)  (Laguerre)       [0, inf)
fout      c' = A c + B f(t)              f(t - 1 + x) ~ sum_n c_n g_n(x), g = 1,        [0, 1]
                                         sqrt2 cos(2 pi k x), sqrt2 sin(2 pi k x)
========  =============================  ============================================  ===========

So x = 1 is the newest sample for legs/legt/fout, and x is the age of the sample for lagt.
Each (A, B) is derived by differentiating c_n(t) = <f, basis_n> under the measure: LegS and
LegT as in the HiPPO paper (with the orthonormal scaling), LagT with L_n' = -sum_{k<n} L_k,
FouT with the window-edge term f(t - 1) ~ sum_k c_k g_k(0) (which makes A = J - B B^T).

:func:`nplr` gives the normal-plus-low-rank form of LegS that S4 builds on:
A = V (diag(Lambda) - P^T conj(P)) V^*, with V unitary.
"""

from __future__ import annotations

import math

import torch

from ssmkit.core.checks import check_choice, check_finite, check_int, check_tensor
from ssmkit.core.discretize import discretize_dense, dplr_to_dense

Tensor = torch.Tensor
MEASURES = ("legs", "legt", "lagt", "fout")


def transition(measure: str, N: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """HiPPO transition matrices.

    Args:
        measure: "legs", "legt", "lagt" or "fout" (see the module docstring for the dynamics).
        N: number of coefficients.
        dtype: real dtype of the result.

    Returns:
        A: (N, N) and B: (N,).
    """
    check_choice("measure", measure, MEASURES)
    check_int("N", N, minimum=1)
    n = torch.arange(N, dtype=torch.float64)
    r = torch.sqrt(2 * n + 1)
    row, col = n[:, None], n[None, :]
    if measure == "legs":
        A = -torch.where(row > col, r[:, None] * r[None, :], torch.diag(n + 1))
        B = r
    elif measure == "legt":
        sign = torch.where(col < row, 1.0, (-1.0) ** (row - col))
        A = -r[:, None] * r[None, :] * sign
        B = r
    elif measure == "lagt":
        A = -torch.tril(torch.ones(N, N, dtype=torch.float64))
        B = torch.ones(N, dtype=torch.float64)
    else:  # fout: order 1, cos 1, sin 1, cos 2, sin 2, ...
        k = torch.div(n + 1, 2, rounding_mode="floor")  # frequency of each basis function
        is_cos = (n % 2 == 1).to(torch.float64)
        B = torch.where(n == 0, 1.0, math.sqrt(2) * is_cos)
        J = torch.zeros(N, N, dtype=torch.float64)
        cos_idx = torch.arange(1, N - 1, 2)  # a cos with its sin partner right after it
        J[cos_idx, cos_idx + 1] = 2 * math.pi * k[cos_idx]
        J[cos_idx + 1, cos_idx] = -2 * math.pi * k[cos_idx]
        A = J - B[:, None] * B[None, :]
    return A.to(dtype), B.to(dtype)


def basis(measure: str, N: int, x: Tensor) -> Tensor:
    """The N functions the coefficients multiply, evaluated at positions x (module docstring).

    Args:
        measure: the HiPPO measure.
        N: number of basis functions.
        x: (m,) positions: in [0, 1] (legs, legt, fout), or ages >= 0 (lagt).

    Returns:
        (m, N) values.
    """
    check_choice("measure", measure, MEASURES)
    check_int("N", N, minimum=1)
    check_tensor("x", x)
    check_finite("x", x)
    if measure in ("legs", "legt"):
        z = 2 * x - 1
        scale = torch.sqrt(2 * torch.arange(N, dtype=x.dtype, device=x.device) + 1)
        return _three_term(z, N, legendre=True) * scale
    if measure == "lagt":
        return _three_term(x, N, legendre=False)
    k = torch.div(torch.arange(N, device=x.device) + 1, 2, rounding_mode="floor")
    phase = 2 * math.pi * k * x.unsqueeze(-1)  # (m, N)
    is_cos = torch.arange(N, device=x.device) % 2 == 1
    out = math.sqrt(2) * torch.where(is_cos, torch.cos(phase), torch.sin(phase))
    out[..., 0] = 1
    return out


def _three_term(z: Tensor, N: int, legendre: bool) -> Tensor:
    """Legendre P_n(z) or Laguerre L_n(z), n < N, by their three-term recurrences."""
    values = [torch.ones_like(z)]
    if N > 1:
        values.append(z if legendre else 1 - z)
    for k in range(1, N - 1):
        if legendre:  # (k+1) P_{k+1} = (2k+1) z P_k - k P_{k-1}
            nxt = ((2 * k + 1) * z * values[k] - k * values[k - 1]) / (k + 1)
        else:  # (k+1) L_{k+1} = (2k+1-z) L_k - k L_{k-1}
            nxt = ((2 * k + 1 - z) * values[k] - k * values[k - 1]) / (k + 1)
        values.append(nxt)
    return torch.stack(values, dim=-1)


def hippo_coefficients(
    f: Tensor,
    measure: str,
    N: int,
    dt: float | None = None,
    theta: float = 1.0,
    method: str = "zoh",
) -> Tensor:
    """Compress a signal online: the HiPPO coefficients after every sample.

    Args:
        f: (*, l) samples, taken at times dt, 2 dt, ..., l dt.
        measure: "legs" (whole history, scale-invariant: dt is ignored; the ODE is stepped in
            log-time, where it is time-invariant), "legt" (window of length theta), "lagt",
            "fout" (window of length 1).
        N: number of coefficients.
        dt: sample spacing for the time-invariant measures (default 1/l).
        theta: LegT window length, in the units of dt.
        method: discretisation rule ("zoh": exact for a piecewise-constant signal, the
            default; "bilinear"; "euler").

    Returns:
        c: (*, l, N), c[..., k, :] summarises f[..., :k+1].
    """
    check_tensor("f", f)
    if f.ndim < 1 or f.shape[-1] < 1:
        raise ValueError(f"f must have shape (*, l) with l >= 1, got shape {tuple(f.shape)}")
    check_finite("f", f)
    if not (theta > 0 and math.isfinite(theta)):
        raise ValueError(f"theta must be a finite number > 0, got {theta!r}")
    if dt is not None and not (dt > 0 and math.isfinite(dt)):
        raise ValueError(f"dt must be a finite number > 0, got {dt!r}")
    length = f.shape[-1]
    dtype = f.dtype if f.is_floating_point() else torch.float32
    A, B = transition(measure, N, torch.float64)
    if measure == "legs":
        # c' = (A c + B f) / t is time-invariant in tau = log t: step k spans
        # d tau = log(k / (k - 1)). The first step (from t = 0) is the projection of a
        # constant, -A^{-1} B f_1 (the limit d tau -> inf of ZOH).
        steps = torch.arange(2, length + 1, dtype=torch.float64)
        A_bar, B_bar = discretize_dense(A, B[:, None], torch.log(steps / (steps - 1)), method)
        first = -torch.linalg.solve(A, B[:, None])  # (N, 1)
        A_bar = torch.cat([torch.zeros(1, N, N, dtype=A.dtype), A_bar])  # (l, N, N)
        B_bar = torch.cat([first.unsqueeze(0), B_bar])  # (l, N, 1)
    else:
        step = (dt if dt is not None else 1 / length) / (theta if measure == "legt" else 1.0)
        A_bar, B_bar = discretize_dense(A, B[:, None], torch.tensor(step, dtype=A.dtype), method)
        A_bar, B_bar = A_bar.expand(length, N, N), B_bar.expand(length, N, 1)
    A_bar, B_bar = A_bar.to(dtype), B_bar[..., 0].to(dtype)
    c = f.new_zeros(*f.shape[:-1], N, dtype=dtype)
    out = []
    for k in range(length):
        c = c @ A_bar[k].T + f[..., k : k + 1].to(dtype) * B_bar[k]
        out.append(c)
    return torch.stack(out, dim=-2)


def hippo_reconstruct(c: Tensor, measure: str, x: Tensor) -> Tensor:
    """Evaluate the signal the coefficients describe at positions x (see the module docstring).

    Args:
        c: (*, N) coefficients (e.g. the last row of :func:`hippo_coefficients`).
        measure: the measure the coefficients were computed with.
        x: (m,) positions.

    Returns:
        (*, m) reconstructed values.
    """
    check_tensor("c", c)
    if c.ndim < 1:
        raise ValueError(f"c must have shape (*, N), got shape {tuple(c.shape)}")
    return c @ basis(measure, c.shape[-1], x.to(c.dtype)).T


def nplr(measure: str, N: int, dtype: torch.dtype = torch.complex128) -> tuple[Tensor, ...]:
    """Normal plus low-rank form of a HiPPO matrix (S4, section 3.2 and Theorem 1).

    A = S - p p^T with S normal; S = V diag(Lambda) V^* (V unitary), so
    A = V (diag(Lambda) - P^T conj(P)) V^* with P = p V^* (low rank in the eigenbasis).

    Mode order (a contract for S4 layers): the first N/2 modes have Im(Lambda) > 0, ascending;
    the second half is exactly their complex conjugate (Lambda, the columns of V, P and B),
    so the first half alone describes the real system with conjugate pairs.

    Args:
        measure: "legs" (p_n = sqrt(n + 1/2), S = -I/2 + skew).
        N: even state size.
        dtype: complex dtype of the result.

    Returns:
        Lambda: (N,), P: (1, N), B: (N,) (B in the eigenbasis, V^* b), V: (N, N).
    """
    check_choice("measure", measure, ("legs",))
    check_int("N", N, minimum=2)
    if N % 2:
        raise ValueError(f"N must be even (conjugate pairs), got {N}")
    A, b = transition(measure, N, torch.float64)
    p = torch.sqrt(torch.arange(N, dtype=torch.float64) + 0.5)
    S = A + p[:, None] * p[None, :]
    diag = S.diagonal().mean()  # -1/2 for LegS
    # S - diag I is skew-symmetric, so -i (S - diag I) is Hermitian: eigh gives a unitary V.
    omega, V = torch.linalg.eigh(-1j * (S - diag * torch.eye(N, dtype=torch.float64)))
    upper = torch.argsort(omega)[N // 2 :]  # Im(Lambda) = omega > 0, ascending
    V_half = V[:, upper]  # (N, N/2)
    V = torch.cat([V_half, V_half.conj()], dim=1)  # (N, N)
    Lambda = torch.cat([diag + 1j * omega[upper], diag - 1j * omega[upper]])
    P = (V.conj().T @ p.to(V.dtype)).unsqueeze(0)  # (1, N)
    B = V.conj().T @ b.to(V.dtype)
    return Lambda.to(dtype), P.to(dtype), B.to(dtype), V.to(dtype)


def nplr_to_dense(Lambda: Tensor, P: Tensor, V: Tensor) -> Tensor:
    """A = V (diag(Lambda) - P^T conj(P)) V^*: the check that :func:`nplr` reconstructs A."""
    return V @ dplr_to_dense(Lambda, P, P) @ V.conj().transpose(-1, -2)

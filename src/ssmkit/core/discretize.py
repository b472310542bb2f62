"""Discretisation of the continuous SSM x'(t) = A x(t) + B u(t) with step dt.

One function per structure of A (diagonal, dense, diagonal-plus-low-rank); the rule is a named
choice, ``method="zoh" | "bilinear" | "euler"``:

* ZOH (S4D eq. 4, Mamba): A_bar = exp(dt A),  B_bar = A^{-1} (exp(dt A) - I) B
* bilinear (S4 eq. 3):    A_bar = (I - dt/2 A)^{-1} (I + dt/2 A),  B_bar = (I - dt/2 A)^{-1} dt B
* Euler (forward):        A_bar = I + dt A,  B_bar = dt B

``zoh_dense_ref`` is the exact reference: the exponential of the augmented matrix
[[A, B], [0, 0]] dt holds A_bar and B_bar in its top blocks (Van Loan).

``dt`` may carry extra leading axes (per-step steps for selective or irregularly sampled
SSMs); it broadcasts against the leading axes of ``A``.
"""

from __future__ import annotations

import torch

from ssmkit.core.checks import check_choice, check_finite, check_tensor, values_checked

Tensor = torch.Tensor
METHODS = ("zoh", "bilinear", "euler")


def _check_dt(dt: Tensor) -> Tensor:
    check_tensor("dt", dt)
    check_finite("dt", dt, hot=True)
    if dt.is_complex() or (values_checked(dt, hot=True) and not bool((dt > 0).all())):
        raise ValueError(f"dt must be real and > 0 everywhere, got min {float(dt.real.min()):.4g}")
    return dt


def discretize_diag(A: Tensor, B: Tensor, dt: Tensor, method: str = "zoh") -> tuple[Tensor, Tensor]:
    """Discretise a diagonal SSM, elementwise over the state axis.

    Args:
        A: (*, n) real or complex diagonal of the state matrix.
        B: (*, n) input vector (broadcastable against A).
        dt: (*) step sizes, > 0; a trailing state axis is added before broadcasting.
        method: "zoh", "bilinear" or "euler".

    Returns:
        A_bar: (*, n) and B_bar: (*, n), broadcast over the leading axes of A, B and dt.
    """
    check_choice("method", method, METHODS)
    check_finite("A", check_tensor("A", A), hot=True)
    check_finite("B", check_tensor("B", B), hot=True)
    _check_dt(dt)
    dtA = dt.unsqueeze(-1) * A  # (*, n)
    if method == "zoh":
        A_bar = torch.exp(dtA)
        # (exp(dtA) - 1) / A with the limit dt at A = 0; expm1 keeps accuracy for small dtA.
        num = torch.expm1(dtA) if not dtA.is_complex() else _expm1_complex(dtA)
        small = dtA.abs() < 1e-6
        safe_A = torch.where(small, torch.ones_like(A), A)
        factor = torch.where(small, dt.unsqueeze(-1) * (1 + dtA / 2), num / safe_A)
        return A_bar, factor * B
    if method == "bilinear":
        denom = 1 - dtA / 2
        return (1 + dtA / 2) / denom, dt.unsqueeze(-1) * B / denom
    return 1 + dtA, dt.unsqueeze(-1) * B


def _expm1_complex(z: Tensor) -> Tensor:
    """exp(z) - 1 for complex z without cancellation: exp(x) e^{iy} - 1, split into parts."""
    x, y = z.real, z.imag
    # Re = expm1(x) cos y - 2 sin^2(y/2),  Im = exp(x) sin y
    re = torch.expm1(x) * torch.cos(y) - 2 * torch.sin(y / 2) ** 2
    im = torch.exp(x) * torch.sin(y)
    return torch.complex(re, im)


def discretize_dense(
    A: Tensor, B: Tensor, dt: Tensor, method: str = "zoh"
) -> tuple[Tensor, Tensor]:
    """Discretise a dense SSM.

    Args:
        A: (*, n, n) state matrix.
        B: (*, n, m) input matrix.
        dt: (*) step sizes, > 0.
        method: "zoh", "bilinear" or "euler".

    Returns:
        A_bar: (*, n, n) and B_bar: (*, n, m).
    """
    check_choice("method", method, METHODS)
    _check_square("A", A)
    if B.ndim < 2 or B.shape[-2] != A.shape[-1]:
        raise ValueError(
            f"B must have shape (*, n, m) with n = {A.shape[-1]}, got shape {tuple(B.shape)}"
        )
    _check_dt(dt)
    n = A.shape[-1]
    eye = torch.eye(n, dtype=A.dtype, device=A.device)
    dtA = dt[..., None, None] * A  # (*, n, n)
    if method == "zoh":
        A_bar = torch.linalg.matrix_exp(dtA)
        # A^{-1} (A_bar - I) B; the augmented-matrix exponential (zoh_dense_ref) avoids the
        # solve and is used where A may be singular.
        if _is_singular(A):
            return zoh_dense_ref(A, B, dt)
        B_bar = torch.linalg.solve(A.expand_as(dtA), (A_bar - eye) @ B)
        return A_bar, B_bar
    if method == "bilinear":
        left = eye - dtA / 2
        A_bar = torch.linalg.solve(left, eye + dtA / 2)
        B_bar = torch.linalg.solve(left, dt[..., None, None] * B)
        return A_bar, B_bar
    return eye + dtA, dt[..., None, None] * B


def zoh_dense_ref(A: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """Exact ZOH by the matrix exponential of the augmented matrix (Van Loan, 1978).

    expm([[A, B], [0, 0]] dt) = [[A_bar, B_bar], [0, I]].

    Args:
        A: (*, n, n), B: (*, n, m), dt: (*).

    Returns:
        A_bar: (*, n, n), B_bar: (*, n, m).
    """
    _check_square("A", A)
    _check_dt(dt)
    n, m = A.shape[-1], B.shape[-1]
    batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2], dt.shape)
    dtype = torch.promote_types(A.dtype, B.dtype)
    M = torch.zeros(*batch, n + m, n + m, dtype=dtype, device=A.device)
    M[..., :n, :n] = A
    M[..., :n, n:] = B
    E = torch.linalg.matrix_exp(dt.to(dtype)[..., None, None] * M)
    return E[..., :n, :n], E[..., :n, n:]


def discretize_dplr(
    Lambda: Tensor, P: Tensor, Q: Tensor, B: Tensor, dt: Tensor, method: str = "bilinear"
) -> tuple[Tensor, Tensor]:
    """Discretise a diagonal-plus-low-rank SSM A = diag(Lambda) - P Q^* (S4).

    The bilinear rule uses the Woodbury identity for (I - dt/2 A)^{-1}, so it costs O(n^2 r)
    per channel instead of a dense solve; ZOH and Euler go through the dense matrix.

    Args:
        Lambda: (*, n) complex diagonal.
        P: (*, r, n) and Q: (*, r, n): low-rank factors (S4: Q = P, r = 1).
        B: (*, n) input vector.
        dt: (*) step sizes, > 0.
        method: "zoh", "bilinear" or "euler".

    Returns:
        A_bar: (*, n, n) dense complex, B_bar: (*, n).
    """
    check_choice("method", method, METHODS)
    _check_dt(dt)
    if P.shape != Q.shape or P.shape[-1] != Lambda.shape[-1]:
        raise ValueError(
            f"P and Q must both have shape (*, r, n) with n = {Lambda.shape[-1]}, "
            f"got P {tuple(P.shape)} and Q {tuple(Q.shape)}"
        )
    if method != "bilinear":
        A = dplr_to_dense(Lambda, P, Q)
        A_bar, B_bar = discretize_dense(A, B.unsqueeze(-1), dt, method)
        return A_bar, B_bar.squeeze(-1)
    n = Lambda.shape[-1]
    eye = torch.eye(n, dtype=Lambda.dtype, device=Lambda.device)
    dtc = dt.to(Lambda.dtype)
    # (I - dt/2 A) = D0^{-1} + U V^*, with D0 = diag(1 / (1 - dt/2 Lambda)), U = dt/2 P^T.
    d0 = 1 / (1 - dtc[..., None] / 2 * Lambda)  # (*, n)
    U = (dtc[..., None, None] / 2 * P).transpose(-1, -2)  # (*, n, r)
    Vh = Q.conj()  # (*, r, n)
    r = P.shape[-2]
    eye_r = torch.eye(r, dtype=Lambda.dtype, device=Lambda.device)
    core = eye_r + (Vh * d0.unsqueeze(-2)) @ U  # (*, r, r)

    def inv_left(X: Tensor) -> Tensor:  # (I - dt/2 A)^{-1} X for X: (*, n, k)
        d0X = d0.unsqueeze(-1) * X
        return d0X - d0.unsqueeze(-1) * (U @ torch.linalg.solve(core, Vh @ d0X))

    A = dplr_to_dense(Lambda, P, Q)
    A_bar = inv_left(eye + dtc[..., None, None] / 2 * A)
    B_bar = inv_left((dtc[..., None] * B).unsqueeze(-1)).squeeze(-1)
    return A_bar, B_bar


def dplr_to_dense(Lambda: Tensor, P: Tensor, Q: Tensor) -> Tensor:
    """The dense matrix diag(Lambda) - P^T conj(Q), shape (*, n, n), for (*, n) and (*, r, n)."""
    return torch.diag_embed(Lambda) - P.transpose(-1, -2) @ Q.conj()


def _check_square(name: str, A: Tensor) -> None:
    check_tensor(name, A)
    if A.ndim < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"{name} must have shape (*, n, n), got shape {tuple(A.shape)}")


def _is_singular(A: Tensor) -> bool:
    s = torch.linalg.svdvals(A.detach())
    return bool((s[..., -1] <= s[..., 0] * torch.finfo(s.dtype).eps * A.shape[-1]).any())

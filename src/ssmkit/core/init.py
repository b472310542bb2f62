"""Initialisations of the SSM parameters, as the papers prescribe them.

* S4D (arXiv 2206.11893, section 4): diagonal A from HiPPO (LegS), or the closed forms
  S4D-Inv, S4D-Lin, S4D-Real; conjugate-pair convention (N/2 stored modes).
* LRU (arXiv 2303.06349, section 3.2): eigenvalues uniform on a ring of the unit disc,
  lambda = exp(-exp(nu_log) + i exp(theta_log)), input normalisation gamma = sqrt(1 - |lambda|^2).
* S5 (arXiv 2208.04933, section 4.2): block-diagonal HiPPO-N (the normal part of LegS).
* dt log-uniform in [dt_min, dt_max] (S4, S4D, Mamba), and Mamba's dt bias: the inverse
  softplus of such a dt, so softplus(dt_bias) starts log-uniform.
"""

from __future__ import annotations

import math

import torch

from ssmkit.core.checks import check_choice, check_int, check_tensor, values_checked
from ssmkit.core.hippo import nplr

Tensor = torch.Tensor
S4D_INITS = ("legs", "inv", "lin", "real")


def s4d_init(name: str, N: int, dtype: torch.dtype = torch.complex64) -> Tensor:
    """Diagonal state matrix of S4D, one stored mode per conjugate pair.

    Args:
        name: "legs" (diagonal of HiPPO-LegS's normal part), "inv"
            (-1/2 + i N/pi (N/(2n+1) - 1)), "lin" (-1/2 + i pi n) or "real" (-(n+1)).
        N: state size (even); N/2 modes are returned.
        dtype: complex dtype.

    Returns:
        A: (N/2,) complex, n = 0 .. N/2 - 1.
    """
    check_choice("init", name, S4D_INITS)
    check_int("N", N, minimum=2)
    if N % 2:
        raise ValueError(f"N must be even (conjugate pairs), got {N}")
    n = torch.arange(N // 2, dtype=torch.float64)
    if name == "legs":
        A = nplr("legs", N)[0][: N // 2]
    elif name == "inv":
        A = torch.complex(-0.5 * torch.ones_like(n), N / math.pi * (N / (2 * n + 1) - 1))
    elif name == "lin":
        A = torch.complex(-0.5 * torch.ones_like(n), math.pi * n)
    else:
        A = torch.complex(s4d_real(N // 2, torch.float64), torch.zeros_like(n))
    return A.to(dtype)


def s4d_real(N: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """S4D-Real without pairing: A_n = -(n + 1), n = 0 .. N-1 (Mamba's A = -exp(A_log))."""
    check_int("N", N, minimum=1)
    return -torch.arange(1, N + 1, dtype=dtype)


def lru_ring_init(
    N: int,
    r_min: float = 0.0,
    r_max: float = 1.0,
    max_phase: float = 2 * math.pi,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, Tensor]:
    """LRU eigenvalues uniform on the ring r_min <= |lambda| <= r_max, phase in [0, max_phase].

    Returns:
        nu_log: (N,), theta_log: (N,), gamma_log: (N,), with lambda = lru_lambda(nu_log,
        theta_log) and gamma = exp(gamma_log) = sqrt(1 - |lambda|^2).
    """
    check_int("N", N, minimum=1)
    if not 0 <= r_min < r_max <= 1:
        raise ValueError(
            f"r_min and r_max must satisfy 0 <= r_min < r_max <= 1, got {r_min}, {r_max}"
        )
    if not max_phase > 0:
        raise ValueError(f"max_phase must be > 0, got {max_phase}")
    u1 = torch.rand(N, generator=generator, dtype=torch.float64)
    u2 = torch.rand(N, generator=generator, dtype=torch.float64)
    # |lambda|^2 uniform in [r_min^2, r_max^2] makes lambda uniform in area on the ring.
    radius = torch.sqrt(u1 * (r_max**2 - r_min**2) + r_min**2).clamp(min=1e-12, max=1 - 1e-7)
    nu_log = torch.log(-torch.log(radius))
    theta_log = torch.log(max_phase * u2.clamp(min=1e-12))
    gamma_log = 0.5 * torch.log1p(-(radius**2))
    return nu_log.to(dtype), theta_log.to(dtype), gamma_log.to(dtype)


def lru_lambda(nu_log: Tensor, theta_log: Tensor) -> Tensor:
    """LRU's eigenvalues: lambda = exp(-exp(nu_log) + i exp(theta_log)) (|lambda| < 1 always)."""
    check_tensor("nu_log", nu_log)
    check_tensor("theta_log", theta_log)
    return torch.exp(torch.complex(-torch.exp(nu_log), torch.exp(theta_log)))


def s5_init(N: int, blocks: int = 1, dtype: torch.dtype = torch.complex64) -> tuple[Tensor, ...]:
    """S5's block-diagonal HiPPO-N initialisation.

    Each of ``blocks`` diagonal blocks is the normal part of HiPPO-LegS of size N / blocks,
    diagonalised; V stacks the eigenvectors block-diagonally.

    Returns:
        Lambda: (N,), V: (N, N), V_inv: (N, N) with V diag(Lambda) V_inv = blockdiag(S).
    """
    check_int("N", N, minimum=2)
    check_int("blocks", blocks, minimum=1)
    if N % blocks or (N // blocks) % 2:
        raise ValueError(
            f"N must split into `blocks` blocks of even size, got N = {N}, blocks = {blocks}"
        )
    size = N // blocks
    Lam, _, _, V = nplr("legs", size, dtype=torch.complex128)
    Lambda = Lam.repeat(blocks)
    V_full = torch.block_diag(*[V] * blocks)
    return Lambda.to(dtype), V_full.to(dtype), V_full.conj().T.to(dtype)


def log_uniform_dt(
    h: int,
    dt_min: float = 1e-3,
    dt_max: float = 1e-1,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Step sizes with log(dt) uniform in [log dt_min, log dt_max], one per channel: (h,)."""
    check_int("h", h, minimum=1)
    if not 0 < dt_min < dt_max:
        raise ValueError(
            f"dt_min and dt_max must satisfy 0 < dt_min < dt_max, got {dt_min}, {dt_max}"
        )
    u = torch.rand(h, generator=generator, dtype=torch.float64)
    return torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).to(dtype)


def inverse_softplus(x: Tensor) -> Tensor:
    """y with softplus(y) = x, for x > 0: y = x + log(-expm1(-x)) (stable for large x)."""
    check_tensor("x", x)
    if values_checked(x) and not bool((x > 0).all()):
        raise ValueError("x must be > 0 everywhere for inverse_softplus")
    return x + torch.log(-torch.expm1(-x))


def dt_bias_init(
    h: int,
    dt_min: float = 1e-3,
    dt_max: float = 1e-1,
    dt_floor: float = 1e-4,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Mamba's dt bias: inverse_softplus(max(log-uniform dt, dt_floor)), shape (h,)."""
    dt = log_uniform_dt(h, dt_min, dt_max, generator, torch.float64).clamp(min=dt_floor)
    return inverse_softplus(dt).to(dtype)

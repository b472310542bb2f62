"""Discretisation of a continuous-time linear SDE over an interval (Van Loan 1978).

    dx = F_c x dt + dW,  Cov(dW) = Q_c dt   ==>   x(t + dt) = F x(t) + w,  w ~ N(0, Q)

with F = exp(F_c dt) and Q = int_0^dt exp(F_c s) Q_c exp(F_c^T s) ds. Van Loan: the exponential
of M = [[-F_c, Q_c], [0, F_c^T]] dt is [[*, G], [0, E]] with E = F^T and Q = F G.
"""

from __future__ import annotations

import torch

from ssmkit.core.checks import check_finite, check_tensor
from ssmkit.core.gaussian import symmetrize

Tensor = torch.Tensor


def van_loan(F_c: Tensor, Q_c: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """Exact discretisation of (F_c, Q_c) over steps ``dt``.

    Args:
        F_c: (*, n, n) drift matrix.
        Q_c: (*, n, n) diffusion (spectral density) matrix, symmetric PSD.
        dt: (*) interval lengths, >= 0; broadcasts against the leading axes of F_c, Q_c.

    Returns:
        F: (*, n, n) = exp(F_c dt) and Q: (*, n, n) the integrated noise covariance.
    """
    for name, x in (("F_c", F_c), ("Q_c", Q_c)):
        check_tensor(name, x)
        if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
            raise ValueError(f"{name} must have shape (*, n, n), got shape {tuple(x.shape)}")
    if F_c.shape[-1] != Q_c.shape[-1]:
        raise ValueError(
            f"F_c and Q_c must have the same n, got {F_c.shape[-1]} and {Q_c.shape[-1]}"
        )
    check_tensor("dt", dt)
    check_finite("dt", dt)
    if bool((dt < 0).any()):
        raise ValueError(f"dt must be >= 0 everywhere, got min {float(dt.min()):.4g}")
    n = F_c.shape[-1]
    batch = torch.broadcast_shapes(F_c.shape[:-2], Q_c.shape[:-2], dt.shape)
    dtype = torch.promote_types(F_c.dtype, Q_c.dtype)
    M = torch.zeros(*batch, 2 * n, 2 * n, dtype=dtype, device=F_c.device)
    M[..., :n, :n] = -F_c
    M[..., :n, n:] = Q_c
    M[..., n:, n:] = F_c.mT
    E = torch.linalg.matrix_exp(dt.to(dtype)[..., None, None] * M)
    F = E[..., n:, n:].mT
    return F, symmetrize(F @ E[..., :n, n:])

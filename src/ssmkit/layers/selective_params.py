"""Sign-constrained input/output projections of a selective SSM (Vo et al. 2024, arXiv 2410.03292).

In the continuous-depth limit of a deep Mamba, the sign of the quadratic form of
``M = S_C^T S_B`` decides whether tokens converge to zero or diverge (the 1-D criterion:
mu = S_C^T S_B < 0 converges). The authors exclude the convergent scenario by building S_B and
S_C from an n x d_inner unit upper triangular U and a vector d:

    S_C = U,    S_B = diag(d) U    =>    S_C^T S_B = U^T diag(d) U,

so that M is symmetric with the inertia of diag(d) (Sylvester's law of inertia, since U has full
row rank n): n eigenvalues with the signs of d and d_inner - n zeros. With
d = softplus(.) + 0.7 ("positive") no eigenvalue is negative; d = -softplus(.) - 0.7
("negative") has no positive one; "mixed" makes the first n // 2 entries positive and the rest
negative (the authors' ablation).

The free values live in the raw ``x_proj.weight`` of the layer (so parameter names and
checkpoint shapes do not change): the strict upper triangle of the B rows holds U, the first
column of the C rows holds the pre-activations of d; the other raw entries are unused.

A Mamba layer holds the option as a strategy object, :func:`bc_selection`: :class:`RawBC`
(the plain layer) or :class:`SignedBC`, each with ``project(xs, x_proj)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.core.checks import check_choice, check_int, check_tensor

Tensor = torch.Tensor

BC_PARAMS = ("none", "positive", "negative", "mixed")
MARGIN = 0.7  # |d_i| >= MARGIN: eigenvalues of S_C^T S_B stay away from zero (the authors' 0.7)


def bc_signs(d_state: int, bc_param: str, like: Tensor) -> Tensor:
    """(n,) signs of d: all +1 ("positive"), all -1 ("negative"), n // 2 times +1 then -1."""
    if bc_param == "positive":
        return torch.ones(d_state, dtype=like.dtype, device=like.device)
    signs = -torch.ones(d_state, dtype=like.dtype, device=like.device)
    if bc_param == "mixed":
        signs[: d_state // 2] = 1.0
    return signs


def check_bc_param(bc_param: str, d_state: int, d_inner: int) -> str:
    """Validate the option against the sizes it needs (U is n x d_inner unit upper triangular)."""
    check_choice("bc_param", bc_param, BC_PARAMS)
    if bc_param != "none" and d_state > d_inner:
        raise ValueError(
            f"bc_param={bc_param!r} needs d_state <= d_inner (U is d_state x d_inner unit upper "
            f"triangular), got d_state={d_state} and d_inner={d_inner}"
        )
    if bc_param == "mixed" and d_state < 2:
        raise ValueError(f"bc_param='mixed' needs d_state >= 2 (both signs), got {d_state}")
    return bc_param


def bc_from_raw(raw_B: Tensor, raw_C: Tensor, bc_param: str) -> tuple[Tensor, Tensor]:
    """S_B, S_C (n, d_inner) with S_C^T S_B = U^T diag(d) U, from raw rows of x_proj.

    Args:
        raw_B: (n, d_inner) raw B rows; their strict upper triangle is U's.
        raw_C: (n, d_inner) raw C rows; their first column is the pre-activation of d.
        bc_param: "none" (return the raw rows), "positive", "negative" or "mixed".

    Returns:
        (S_B, S_C), each (n, d_inner).
    """
    check_tensor("raw_B", raw_B)
    check_tensor("raw_C", raw_C)
    if raw_B.ndim != 2 or raw_B.shape != raw_C.shape:
        raise ValueError(
            "raw_B and raw_C must both have shape (d_state, d_inner), got "
            f"{tuple(raw_B.shape)} and {tuple(raw_C.shape)}"
        )
    n, d_inner = raw_B.shape
    check_bc_param(bc_param, n, d_inner)
    if bc_param == "none":
        return raw_B, raw_C
    rows = torch.arange(n, device=raw_B.device)[:, None]
    cols = torch.arange(d_inner, device=raw_B.device)[None, :]
    # unit upper triangular (n, d_inner); masks by comparison, not torch.triu, which opens a
    # parallel region on every call (slow for small matrices on a busy CPU)
    U = torch.where(cols > rows, raw_B, (cols == rows).to(raw_B.dtype))
    d = bc_signs(n, bc_param, raw_C) * (F.softplus(raw_C[:, 0]) + MARGIN)  # (n,)
    return d[:, None] * U, U


def x_proj_weight(raw: Tensor, dt_rank: int, d_state: int, bc_param: str) -> Tensor:
    """The effective x_proj weight (dt_rank + 2 n, d_inner) from the stored raw one.

    The dt rows are used as they are; the B and C rows follow :func:`bc_from_raw`.
    """
    check_int("dt_rank", dt_rank, minimum=1)
    check_int("d_state", d_state, minimum=1)
    if raw.ndim != 2 or raw.shape[0] != dt_rank + 2 * d_state:
        raise ValueError(
            f"raw must have shape (dt_rank + 2 * d_state, d_inner) = ({dt_rank + 2 * d_state}, "
            f"?), got {tuple(raw.shape)}"
        )
    if bc_param == "none":
        check_choice("bc_param", bc_param, BC_PARAMS)
        return raw
    W_dt, raw_B, raw_C = raw.split([dt_rank, d_state, d_state], dim=0)
    S_B, S_C = bc_from_raw(raw_B, raw_C, bc_param)
    return torch.cat([W_dt, S_B, S_C], dim=0)


@dataclass(frozen=True)
class RawBC:
    """``bc_param="none"``: the B and C rows of x_proj are used as learned (Mamba)."""

    bc_param: str = "none"

    def weight(self, raw: Tensor) -> Tensor:
        """The effective x_proj weight (dt_rank + 2 n, d_inner): the raw one."""
        return raw

    def project(self, xs: Tensor, x_proj: nn.Linear) -> Tensor:
        """x_proj(xs): xs (..., d_inner) -> (..., dt_rank + 2 n)."""
        return x_proj(xs)


@dataclass(frozen=True)
class SignedBC:
    """``bc_param`` "positive", "negative" or "mixed": S_C = U, S_B = diag(d) U (module doc)."""

    bc_param: str
    dt_rank: int  # R: the first R rows of x_proj give dt_raw and are used as they are
    d_state: int  # n: then n rows for B and n rows for C

    def weight(self, raw: Tensor) -> Tensor:
        """The effective x_proj weight (dt_rank + 2 n, d_inner), see :func:`x_proj_weight`."""
        return x_proj_weight(raw, self.dt_rank, self.d_state, self.bc_param)

    def project(self, xs: Tensor, x_proj: nn.Linear) -> Tensor:
        """xs (..., d_inner) times the effective weight -> (..., dt_rank + 2 n)."""
        return F.linear(xs, self.weight(x_proj.weight))


def bc_selection(bc_param: str, dt_rank: int, d_state: int, d_inner: int) -> RawBC | SignedBC:
    """The B/C parameterisation strategy of a Mamba layer, checked against its sizes.

    Args:
        bc_param: "none", "positive", "negative" or "mixed" (:data:`BC_PARAMS`).
        dt_rank: R, the rank of the dt projection. d_state: n. d_inner: channels of the scan.

    Returns:
        An object with ``weight(raw)`` (the effective x_proj weight) and
        ``project(xs, x_proj)`` (the selection projection), and its ``bc_param``.
    """
    check_bc_param(bc_param, d_state, d_inner)
    return RawBC() if bc_param == "none" else SignedBC(bc_param, dt_rank, d_state)


def input_output_matrix(S_B: Tensor, S_C: Tensor) -> Tensor:
    """M = S_C^T S_B, (d_inner, d_inner): the matrix whose spectrum decides the token dynamics."""
    return S_C.transpose(-1, -2) @ S_B


__all__ = [
    "BC_PARAMS",
    "MARGIN",
    "RawBC",
    "SignedBC",
    "bc_from_raw",
    "bc_selection",
    "bc_signs",
    "check_bc_param",
    "input_output_matrix",
    "x_proj_weight",
]

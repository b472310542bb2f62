"""RMSNorm and its gated form (Mamba, Mamba-2), computed in float32 at least."""

from __future__ import annotations

import torch
from torch import nn

from ssmkit.ops.gated_norm import BACKENDS, gated_rms_norm

Tensor = torch.Tensor


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, the mean over groups of ``group_size``
    channels (default: all of them); with ``z`` the gate silu(z) comes first (Mamba-2).

    ``backend``: "auto" (the fused CPU kernel where it applies), "ref" (the composition) or
    "numba"; see :func:`ssmkit.ops.gated_norm.gated_rms_norm`.
    """

    def __init__(
        self, d: int, eps: float = 1e-5, group_size: int | None = None, backend: str = "auto"
    ) -> None:
        super().__init__()
        group_size = group_size or d
        if d % group_size:
            raise ValueError(f"group_size must divide d = {d}, got {group_size}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.eps, self.group_size, self.backend = eps, group_size, backend
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        """x: (..., d), z: (..., d) or None -> (..., d)."""
        return gated_rms_norm(x, z, self.weight, self.eps, self.group_size, self.backend)

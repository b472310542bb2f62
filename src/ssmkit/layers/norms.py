"""RMSNorm and its gated form (Mamba, Mamba-2), computed in float32 at least."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, the mean over groups of ``group_size``
    channels (default: all of them); with ``z`` the gate silu(z) comes first (Mamba-2)."""

    def __init__(self, d: int, eps: float = 1e-5, group_size: int | None = None) -> None:
        super().__init__()
        group_size = group_size or d
        if d % group_size:
            raise ValueError(f"group_size must divide d = {d}, got {group_size}")
        self.eps, self.group_size = eps, group_size
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        dtype = x.dtype
        work = torch.promote_types(dtype, torch.float32)  # float32 at least
        x = x.to(work)
        if z is not None:
            x = x * F.silu(z.to(work))
        groups = x.unflatten(-1, (-1, self.group_size))  # (..., d / group_size, group_size)
        groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * groups.flatten(-2).to(dtype)

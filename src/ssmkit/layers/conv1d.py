"""Causal depthwise 1-D convolution with a carried state (Mamba's short convolution).

Parameter names and shapes are those of ``nn.Conv1d(c, c, k, groups=c)`` (``weight: (c, 1, k)``,
``bias: (c,)``), so checkpoints of the reference implementations load unchanged. The state is
the last k - 1 inputs, (b, c, k - 1): ``forward`` continues from it and ``step`` advances it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


class CausalConv1d(nn.Module):
    """y_t = bias + sum_j weight[:, 0, j] * x_{t - (k - 1) + j}, per channel."""

    def __init__(self, channels: int, kernel_size: int, bias: bool = True) -> None:
        super().__init__()
        if kernel_size < 1 or channels < 1:
            raise ValueError(
                f"channels and kernel_size must be >= 1, got {channels} and {kernel_size}"
            )
        self.channels, self.kernel_size = channels, kernel_size
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv1d's default
        if self.bias is not None:
            bound = 1 / math.sqrt(kernel_size)
            nn.init.uniform_(self.bias, -bound, bound)

    def initial_state(self, batch: int, device=None, dtype=None) -> Tensor:
        return torch.zeros(batch, self.channels, self.kernel_size - 1, device=device, dtype=dtype)

    def forward(
        self,
        x: Tensor,
        state: Tensor | None = None,
        lengths: Tensor | None = None,
        reset: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """x: (b, l, c) -> y: (b, l, c) and the state after each item's last valid step.

        ``reset`` (b, l) bool marks the first step of each packed sequence: a window never
        reaches across it (inputs before it count as zeros), and the returned state only
        holds inputs of the last sequence.
        """
        b, _, c = x.shape
        k1 = self.kernel_size - 1
        prev = state if state is not None else self.initial_state(b, x.device, x.dtype)
        full = torch.cat([prev.to(x.dtype), x.transpose(1, 2)], dim=-1)  # (b, c, k - 1 + l)
        if reset is None:
            y = F.conv1d(full, self.weight, self.bias, groups=self.channels)  # (b, c, l)
        else:
            seg = F.pad(reset.long().cumsum(-1), (k1, 0))  # (b, k - 1 + l): segment per input
            same = seg.unfold(-1, k1 + 1, 1) == seg[:, k1:].unsqueeze(-1)  # (b, l, k)
            windows = full.unfold(-1, k1 + 1, 1) * same.unsqueeze(1)  # (b, c, l, k)
            y = (windows * self.weight).sum(-1)
            if self.bias is not None:
                y = y + self.bias.unsqueeze(-1)
            full = full * (seg == seg[:, -1:]).unsqueeze(1)  # the last sequence's inputs
        if lengths is None:
            last = full[..., full.shape[-1] - k1 :]
        else:  # inputs lengths-(k-1) .. lengths-1 sit at lengths .. lengths+k-2 in `full`
            idx = lengths.view(b, 1, 1) + torch.arange(k1, device=x.device)  # (b, 1, k - 1)
            last = full.gather(-1, idx.expand(b, c, k1))
        return y.transpose(1, 2), last

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """x_t: (b, c), state (b, c, k - 1) -> y_t (b, c) and the shifted state."""
        window = torch.cat([state.to(x_t.dtype), x_t.unsqueeze(-1)], dim=-1)  # (b, c, k)
        y = (window * self.weight[:, 0]).sum(-1)
        if self.bias is not None:
            y = y + self.bias
        return y, window[..., 1:]

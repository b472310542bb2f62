"""Causal depthwise 1-D convolution with a carried state (Mamba's short convolution).

Parameter names and shapes are those of ``nn.Conv1d(c, c, k, groups=c)`` (``weight: (c, 1, k)``,
``bias: (c,)``), so checkpoints of the reference implementations load unchanged. The state is
the last k - 1 inputs, (b, c, k - 1): ``forward`` continues from it and ``step`` advances it.

    y_t = bias + sum_{j < k} weight[:, 0, j] * x_{t - (k - 1) + j}

Two implementations of ``forward``: :func:`causal_conv1d_ref` (the slow twin: ``F.conv1d``
on the (b, c, l) layout, and the only one that handles packed sequences) and
:func:`causal_conv1d` (``backend="fused"``), k shifted multiply-adds on the (b, l, c) layout
with a hand-written backward. PyTorch's CPU backward of a depthwise ``conv1d`` is slow (most
of a Mamba training step on CPU); the fused form needs no transposes and k passes each way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.core.checks import check_choice

Tensor = torch.Tensor

BACKENDS = ("auto", "ref", "fused")


class CausalConv1d(nn.Module):
    """y_t = bias + sum_j weight[:, 0, j] * x_{t - (k - 1) + j}, per channel.

    Args:
        channels: c.
        kernel_size: k.
        bias: whether to add a per-channel bias.
        backend: "auto" (= "fused"; packed sequences always take the reference), "fused"
            (:func:`causal_conv1d`) or "ref" (:func:`causal_conv1d_ref`).
    """

    def __init__(
        self, channels: int, kernel_size: int, bias: bool = True, backend: str = "auto"
    ) -> None:
        super().__init__()
        if kernel_size < 1 or channels < 1:
            raise ValueError(
                f"channels and kernel_size must be >= 1, got {channels} and {kernel_size}"
            )
        self.backend = check_choice("backend", backend, BACKENDS)
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
        """x: (b, l, c) -> y: (b, l, c) and the state (b, c, k - 1) after each item's last
        valid step (``lengths`` (b,), default l).

        ``reset`` (b, l) bool marks the first step of each packed sequence: a window never
        reaches across it (inputs before it count as zeros), and the returned state only
        holds inputs of the last sequence.
        """
        if self.backend == "ref" or reset is not None:
            return causal_conv1d_ref(x, self.weight, self.bias, state, lengths, reset)
        return causal_conv1d(x, self.weight, self.bias, state, lengths)

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """x_t: (b, c), state (b, c, k - 1) -> y_t (b, c) and the shifted state."""
        window = torch.cat([state.to(x_t.dtype), x_t.unsqueeze(-1)], dim=-1)  # (b, c, k)
        y = (window * self.weight[:, 0]).sum(-1)
        if self.bias is not None:
            y = y + self.bias
        return y, window[..., 1:]


def causal_conv1d_ref(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    state: Tensor | None = None,
    lengths: Tensor | None = None,
    reset: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The definition through ``F.conv1d`` (slow twin of :func:`causal_conv1d`).

    Args:
        x: (b, l, c) input. weight: (c, 1, k). bias: (c,) or None.
        state: (b, c, k - 1) inputs before x (default zeros).
        lengths: (b,) valid steps per item (default l): the returned state ends there.
        reset: (b, l) bool, True at the first step of each packed sequence.

    Returns:
        y (b, l, c) and the state (b, c, k - 1).
    """
    b, _, c = x.shape
    k1 = weight.shape[-1] - 1
    prev = state if state is not None else x.new_zeros(b, c, k1)
    full = torch.cat([prev.to(x.dtype), x.transpose(1, 2)], dim=-1)  # (b, c, k - 1 + l)
    if reset is None:
        y = F.conv1d(full, weight, bias, groups=c)  # (b, c, l)
    else:
        seg = F.pad(reset.long().cumsum(-1), (k1, 0))  # (b, k - 1 + l): segment per input
        same = seg.unfold(-1, k1 + 1, 1) == seg[:, k1:].unsqueeze(-1)  # (b, l, k)
        windows = full.unfold(-1, k1 + 1, 1) * same.unsqueeze(1)  # (b, c, l, k)
        y = (windows * weight).sum(-1)
        if bias is not None:
            y = y + bias.unsqueeze(-1)
        full = full * (seg == seg[:, -1:]).unsqueeze(1)  # the last sequence's inputs
    if lengths is None:
        last = full[..., full.shape[-1] - k1 :]
    else:  # inputs lengths-(k-1) .. lengths-1 sit at lengths .. lengths+k-2 in `full`
        idx = lengths.view(b, 1, 1) + torch.arange(k1, device=x.device)  # (b, 1, k - 1)
        last = full.gather(-1, idx.expand(b, c, k1))
    return y.transpose(1, 2), last


def causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    state: Tensor | None = None,
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Fused form of :func:`causal_conv1d_ref` (no ``reset``): same arguments and results."""
    b, _, c = x.shape
    k1 = weight.shape[-1] - 1
    prev = (state if state is not None else x.new_zeros(b, c, k1)).to(x.dtype)  # (b, c, k - 1)
    w = weight.to(x.dtype)
    y = _DepthwiseCausalConv.apply(x, prev, w, None if bias is None else bias.to(x.dtype))
    return y, last_inputs(x, prev, lengths)


def last_inputs(x: Tensor, prev: Tensor, lengths: Tensor | None = None) -> Tensor:
    """The conv state after each item's last valid step: the k - 1 inputs of [prev, x]
    before position ``lengths`` (default l), read from x or prev without concatenating.

    Args:
        x: (b, l, c) inputs. prev: (b, c, k - 1) inputs before x, in x's dtype.
        lengths: (b,) valid steps per item, or None.

    Returns:
        (b, c, k - 1).
    """
    b, l, c = x.shape
    k1 = prev.shape[-1]
    end = torch.full((b,), l, device=x.device) if lengths is None else lengths.to(x.device)
    idx = end.view(b, 1) + torch.arange(k1, device=x.device)  # (b, k - 1)
    from_x = x.gather(1, (idx - k1).clamp(min=0).unsqueeze(-1).expand(b, k1, c))  # (b, k - 1, c)
    from_prev = prev.gather(-1, idx.clamp(max=max(k1 - 1, 0)).unsqueeze(1).expand(b, c, k1))
    return torch.where((idx >= k1).unsqueeze(1), from_x.transpose(1, 2), from_prev)


class _DepthwiseCausalConv(torch.autograd.Function):
    """y[:, t] = bias + sum_j w_j * full[:, t + j], full = [prev, x] (b, k - 1 + l, c).

    Backward, with g = dL/dy: dL/dfull[:, s] = sum_j w_j g[:, s - j] (x's part and prev's),
    dL/dw_j = sum_{b, t} g[:, t] full[:, t + j], dL/dbias = sum_{b, t} g.
    """

    @staticmethod
    def forward(ctx, x, prev, weight, bias):
        l, k = x.shape[1], weight.shape[-1]
        full = torch.cat([prev.transpose(1, 2), x], dim=1)  # (b, k - 1 + l, c)
        wk = weight[:, 0].t().contiguous()  # (k, c)
        first = full[:, :l]
        y = first * wk[0] if bias is None else torch.addcmul(bias, first, wk[0])  # (b, l, c)
        for j in range(1, k):
            y.addcmul_(full[:, j : j + l], wk[j])
        ctx.save_for_backward(full, wk)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        full, wk = ctx.saved_tensors
        k = wk.shape[0]
        k1, l = k - 1, g.shape[1]
        g = g.contiguous()
        grad_x = grad_prev = grad_w = grad_bias = None
        if ctx.needs_input_grad[0]:  # x_s enters y at t = s + k1 - j
            grad_x = g * wk[k1]  # (b, l, c)
            for j in range(k1):
                s = k1 - j
                if s < l:
                    grad_x[:, : l - s].addcmul_(g[:, s:], wk[j])
        if ctx.needs_input_grad[1]:  # prev_i (full index i < k1) enters y at t = i - j
            gp = g.new_zeros(g.shape[0], k1, g.shape[2])  # (b, k - 1, c)
            for j in range(k1):
                top = min(k1, j + l)
                gp[:, j:top].addcmul_(g[:, : top - j], wk[j])
            grad_prev = gp.transpose(1, 2)
        if ctx.needs_input_grad[2]:
            flat = g.view(-1, g.shape[-1])  # (b l, c)
            rows = [(g * full[:, j : j + l]).view_as(flat).sum(0) for j in range(k)]
            grad_w = torch.stack(rows, -1).unsqueeze(1)  # (c, 1, k)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_bias = g.sum((0, 1))
        return grad_x, grad_prev, grad_w, grad_bias

"""Weight-only low-precision linear layers for decoding: bfloat16 and int8.

Decoding one token reads every weight once, so it is bound by memory traffic: halving
(bfloat16) or quartering (int8) the bytes of the big matrices can make it faster, while the
activations, the SSM parameters and the recurrent states stay float32 (see
:class:`ssmkit.models.decoding.MambaDecoder`).

int8: per output channel j, scale_j = max_k |W_jk| / 127 and Q_jk = round(W_jk / scale_j), so
W ~ scale[:, None] * Q with an error of at most scale_j / 2 per entry.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.core.checks import check_choice

Tensor = torch.Tensor

PRECISIONS = ("fp32", "bf16", "int8")  # weight formats of the decode-time linear layers


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Per-output-channel symmetric int8: weight (n, k) -> (Q (n, k) int8, scale (n,) float32)."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127  # (n,)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)  # (n, k)
    return q, scale


# torch._weight_int8pack_mm (torch 2.13, AVX-512 CPU) returns garbage or crashes the process
# when the input width k is not a multiple of 16 (seen at k = 8, 24, 40, 56; k = 16 .. 256
# in steps of 16 agree with the dequantised product)
INT8PACK_K_MULTIPLE = 16


def _int8pack_available(k: int) -> bool:
    return hasattr(torch, "_weight_int8pack_mm") and k % INT8PACK_K_MULTIPLE == 0


class Int8Linear(nn.Module):
    """y = x (scale * Q)^T + bias with int8 weights Q (n, k) and float32 scales (n,).

    On CPU it calls ``torch._weight_int8pack_mm`` (bfloat16 activations: the kernel's fast
    form) when k is a multiple of 16 (the kernel is wrong otherwise, see
    ``INT8PACK_K_MULTIPLE``); elsewhere, or with ``packed=False``, it dequantises the weight
    per call (that saves memory, not time).

    Args:
        weight: (n, k) float weight to quantise. bias: (n,) or None (kept float32).
        packed: use ``torch._weight_int8pack_mm`` where it exists and the tensors are on CPU.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None, packed: bool = True) -> None:
        super().__init__()
        if weight.ndim != 2:
            raise ValueError(f"weight must have shape (out, in), got {tuple(weight.shape)}")
        q, scale = quantize_int8(weight)
        self.register_buffer("weight", q)  # (n, k) int8
        self.register_buffer("scale", scale)  # (n,) float32
        self.register_buffer("bias", None if bias is None else bias.detach().float())
        self.packed = packed and _int8pack_available(weight.shape[1])

    def dequantized(self) -> Tensor:
        """scale[:, None] * Q: the float32 weight (n, k) this layer multiplies by."""
        return self.weight.float() * self.scale[:, None]

    def forward(self, x: Tensor) -> Tensor:
        """x (..., k) float -> (..., n) float32."""
        if self.packed and x.device.type == "cpu":
            flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)  # (m, k)
            y = torch._weight_int8pack_mm(flat, self.weight, self.scale.to(torch.bfloat16))
            y = y.float().reshape(*x.shape[:-1], -1)
            return y if self.bias is None else y + self.bias
        return F.linear(x.float(), self.dequantized(), self.bias)


class BF16Linear(nn.Module):
    """y = x W^T + bias with the weight stored in bfloat16 (activations rounded to bfloat16,
    output float32).

    Args:
        weight: (n, k) float weight. bias: (n,) or None (kept float32).
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().to(torch.bfloat16))  # (n, k)
        self.register_buffer("bias", None if bias is None else bias.detach().float())

    def forward(self, x: Tensor) -> Tensor:
        """x (..., k) float -> (..., n) float32."""
        y = F.linear(x.to(torch.bfloat16), self.weight).float()
        return y if self.bias is None else y + self.bias


class FP32Linear(nn.Module):
    """y = x W^T + bias, sharing (not copying) a float32 weight.

    Args:
        weight: (n, k) float32 weight. bias: (n,) or None.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        self.weight = weight.detach()
        self.bias = None if bias is None else bias.detach()

    def forward(self, x: Tensor) -> Tensor:
        """x (..., k) -> (..., n)."""
        return F.linear(x, self.weight, self.bias)


def decode_linear(linear: nn.Linear, precision: str) -> nn.Module:
    """The decode-time form of ``linear`` in weight format ``precision`` ("fp32", "bf16",
    "int8"); the float32 form shares the weight, the others are copies."""
    check_choice("precision", precision, PRECISIONS)
    if precision == "int8":
        return Int8Linear(linear.weight, linear.bias)
    if precision == "bf16":
        return BF16Linear(linear.weight, linear.bias)
    return FP32Linear(linear.weight, linear.bias)

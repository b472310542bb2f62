"""Fast token-by-token decoding of a :class:`~ssmkit.models.MambaLM` on CPU.

A :class:`MambaDecoder` owns float32 copies of the per-layer states and advances them in place:
per layer, RMSNorm and ``in_proj`` (torch), then one fused numba kernel for everything between
``in_proj`` and ``out_proj`` (:mod:`ssmkit.layers.fused_step`), then ``out_proj`` and the
residual. Nothing is validated inside the loop: the first state is checked once when the
decoder is built, and the tokens are the model's own outputs.

Weights: ``precision="fp32"`` shares the model's matrices; ``"bf16"`` and ``"int8"`` hold
weight-only copies of ``in_proj``, ``out_proj`` and ``lm_head`` (see
:mod:`ssmkit.models.quantize`), while the embedding lookup, the norms, the conv1d, x_proj,
dt_proj, A_log, D, dt bias and both states stay float32. The decoder is a snapshot: build a
new one after changing the model's weights.

The slow twin is :meth:`MambaLM.step` (each layer's own ``step``), which the tests compare
with this over whole greedy rollouts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.core.checks import check_choice
from ssmkit.layers import fused_step
from ssmkit.layers.mamba import Mamba, MambaState
from ssmkit.layers.mamba2 import Mamba2, Mamba2State
from ssmkit.models.quantize import PRECISIONS, decode_linear

Tensor = torch.Tensor


def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model`` (a MambaLM) cannot take the fused decoder, or None if it can."""
    if not fused_step.available():
        return "numba is not installed (pip install 'ssmkit[fast]')"
    weight = model.lm_head.weight
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        return f"the fused decoder needs a float32 CPU model, got {weight.dtype} on {weight.device}"
    for block in model.backbone.layers:
        mixer = block.mixer
        if isinstance(mixer, Mamba) and (mixer.polarize or mixer.reorder):
            return "Mamba layers with polarize or reorder decode through their own step"
    return None


GEMV_MAX_BATCH = 8  # larger batches go to F.linear (not measured in between: a safe bound)


class GemvLinear:
    """y = x W^T + bias through :func:`ssmkit.layers.fused_step.gemv`, sharing the float32
    weight (a contiguous one is shared, not copied); its twin is ``F.linear``.

    Args:
        linear: the float32 ``nn.Linear`` (weight (m, k), bias (m,) or None).
    """

    def __init__(self, linear: nn.Linear) -> None:
        self.weight = linear.weight.detach().contiguous()  # (m, k)
        bias = linear.bias
        self.bias = torch.empty(0) if bias is None else bias.detach().float().contiguous()
        self._arrays = (self.weight.numpy(), self.bias.numpy())

    def __call__(self, x: Tensor) -> Tensor:
        """x (b, k) float32 -> (b, m) float32, a new tensor."""
        if x.shape[0] > GEMV_MAX_BATCH:  # a matrix product: BLAS's GEMM reuses the weight
            return F.linear(x, self.weight, self.bias if self.bias.numel() else None)
        x = x.contiguous()
        y = torch.empty(x.shape[0], self.weight.shape[0])  # (b, m)
        fused_step.gemv(x.numpy(), *self._arrays, y.numpy())
        return y


def _decode_linear(linear: nn.Linear, precision: str) -> nn.Module | GemvLinear:
    """float32: the numba GEMV (shared weight); else the weight-only copies of quantize."""
    return GemvLinear(linear) if precision == "fp32" else decode_linear(linear, precision)


class _Layer:
    """One pre-norm residual block in decode form: weights as float32 arrays for the kernel."""

    def __init__(self, block: nn.Module, precision: str) -> None:
        mixer = block.mixer
        self.norm = block.norm
        self.in_proj = _decode_linear(mixer.in_proj, precision)
        self.out_proj = _decode_linear(mixer.out_proj, precision)
        self.v2 = isinstance(mixer, Mamba2)
        conv = mixer.conv1d
        c = conv.channels
        bias = conv.bias if conv.bias is not None else torch.zeros(c)
        self.tensors = [conv.weight[:, 0], bias]  # (c, k), (c,)
        if self.v2:
            self.tensors += [mixer.dt_bias, -torch.exp(mixer.A_log), mixer.D]  # (h,) each
            self.dt_limit = tuple(float(v) for v in mixer.dt_limit)
            self.norm_w = mixer.norm.weight.detach().float().contiguous().numpy()  # (d,)
            self.eps, self.group = float(mixer.norm.eps), int(mixer.norm.group_size)
        else:
            self.tensors += [
                mixer.x_proj_weight(),  # (r + 2 n, d)
                mixer.dt_proj.weight,  # (d, r)
                mixer.dt_proj.bias,  # (d,)
                -torch.exp(mixer.A_log),  # (d, n)
                mixer.D,  # (d,)
            ]
        self.tensors = [t.detach().float().contiguous() for t in self.tensors]
        self.arrays = [t.numpy() for t in self.tensors]
        self.d_inner = mixer.d_inner

    def mix(self, xz: Tensor, conv: Tensor, ssm: Tensor, y: Tensor) -> None:
        """The fused middle of the mixer: conv and ssm (states) updated, y (b, d) written."""
        xz_np = xz.float().contiguous().numpy()
        conv_w, conv_b, *rest = self.arrays
        if self.v2:
            dt_bias, A, D = rest
            fused_step.mamba2_step(
                xz_np, conv.numpy(), conv_w, conv_b, dt_bias, *self.dt_limit, A, D,
                ssm.numpy(), self.norm_w, self.eps, self.group, y.numpy(),
            )  # fmt: skip
        else:
            fused_step.mamba_step(xz_np, conv.numpy(), conv_w, conv_b, *rest, ssm.numpy(),
                                  y.numpy())  # fmt: skip


class MambaDecoder:
    """Decodes a MambaLM one token at a time from a state, with fused per-layer steps.

    Args:
        model: a float32 CPU :class:`~ssmkit.models.MambaLM` (see :func:`unsupported_reason`).
        state: the per-layer states to continue from (e.g. ``model(ids, return_state=True)``
            or ``model.initial_state(b)``); copied, never modified.
        precision: "fp32", "bf16" or "int8": the format of the in_proj, out_proj and lm_head
            weights (everything else stays float32).

    Raises:
        ValueError: the model cannot take this decoder, an unknown precision, or a state of
            the wrong form.
    """

    def __init__(self, model: nn.Module, state: list, precision: str = "fp32") -> None:
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"MambaDecoder: {reason}")
        check_choice("precision", precision, PRECISIONS)
        blocks = model.backbone.layers
        if not isinstance(state, (list, tuple)) or len(state) != len(blocks):
            got = f" of length {len(state)}" if isinstance(state, (list, tuple)) else ""
            raise ValueError(
                f"state must be a list of {len(blocks)} per-layer states, got "
                f"{type(state).__name__}{got}"
            )
        batch = state[0].conv.shape[0]
        for block, s in zip(blocks, state, strict=True):
            block.mixer._check_state(s, batch)  # type, shapes, finite: once, not per token
        self.precision = precision
        with torch.no_grad():
            self.embeddings = model.backbone.embeddings.weight.detach()  # (v, d) float32
            self.norm_f = model.backbone.norm_f
            self.lm_head = _decode_linear(model.lm_head, precision)
            self.layers = [_Layer(block, precision) for block in blocks]
        self._conv = [s.conv.detach().float().contiguous().clone() for s in state]
        self._ssm = [s.ssm.detach().float().contiguous().clone() for s in state]
        self._y = [torch.empty(batch, layer.d_inner) for layer in self.layers]  # (b, d_inner)

    @torch.no_grad()
    def step(self, token: Tensor) -> Tensor:
        """token (b,) -> next-token logits (b, v) float32; the states advance in place."""
        h = self.embeddings[token]  # (b, d) the residual stream, float32
        for layer, conv, ssm, y in zip(self.layers, self._conv, self._ssm, self._y, strict=True):
            layer.mix(layer.in_proj(layer.norm(h)), conv, ssm, y)
            h = h + layer.out_proj(y)
        return self.lm_head(self.norm_f(h)).float()

    def state(self) -> list[MambaState | Mamba2State]:
        """Copies of the current per-layer states, in the model's state types."""
        kinds = [Mamba2State if layer.v2 else MambaState for layer in self.layers]
        return [
            k(c.clone(), s.clone()) for k, c, s in zip(kinds, self._conv, self._ssm, strict=True)
        ]

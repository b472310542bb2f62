"""A Mamba language model: embeddings, pre-norm residual Mamba blocks, tied LM head.

Module names follow the reference implementation (``backbone.embeddings``,
``backbone.layers.{i}.norm`` / ``.mixer``, ``backbone.norm_f``, ``lm_head``), so a
checkpoint's state dict loads as it is (see :mod:`ssmkit.models.pretrained`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ssmkit.core.checks import check_choice, check_tensor
from ssmkit.layers.base import apply_factory
from ssmkit.layers.mamba import Mamba, MambaState
from ssmkit.layers.mamba2 import Mamba2
from ssmkit.layers.norms import RMSNorm
from ssmkit.models.decoding import MambaDecoder, unsupported_reason
from ssmkit.models.generation import DECODE_MODES, GenerationMixin

Tensor = torch.Tensor


@dataclass(frozen=True)
class MambaConfig:
    """Sizes of a Mamba LM (names of the Mamba paper's table of model sizes)."""

    d_model: int = 768  # hidden size D
    n_layer: int = 24  # number of Mamba blocks
    vocab_size: int = 50280  # embedding rows
    d_state: int = 16  # SSM state size N
    d_conv: int = 4  # width of the causal conv1d
    expand: int = 2  # E: d_inner = E * D
    dt_rank: int | str = "auto"  # rank R of the dt projection ("auto": ceil(D / 16))
    bias: bool = False  # biases of in_proj / out_proj
    conv_bias: bool = True  # bias of conv1d
    norm_eps: float = 1e-5  # RMSNorm epsilon
    residual_in_fp32: bool = True  # keep the residual stream in float32
    tie_embeddings: bool = True  # lm_head shares the embedding matrix
    version: int = 1  # 1: Mamba (S6) mixers, 2: Mamba-2 (SSD) mixers
    headdim: int = 64  # Mamba-2: channels P per head
    ngroups: int = 1  # Mamba-2: groups of heads sharing B and C
    chunk_size: int = 256  # Mamba-2: SSD chunk length
    dt_limit: tuple[float, float] = (0.0, math.inf)  # Mamba-2: delta clamped to this range
    bc_param: str = "none"  # Mamba-1: S_C^T S_B = U^T diag(d) U sign constraint (Vo et al.)
    reorder: bool = False  # Mamba-1: SoftSort token reordering by importance (non-causal only)
    causal: bool = True  # whether the mixers serve an autoregressive model (reorder needs False)


class MambaBlock(nn.Module):
    """x + mixer(norm(x)) (pre-norm residual)."""

    def __init__(self, cfg: MambaConfig, backend: str) -> None:
        super().__init__()
        self.residual_in_fp32 = cfg.residual_in_fp32
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        if cfg.version == 2:
            if cfg.bc_param != "none" or cfg.reorder:
                raise ValueError("bc_param and reorder are Mamba-1 options: use version=1")
            self.mixer = Mamba2(
                cfg.d_model, cfg.d_state, cfg.d_conv, cfg.expand, cfg.headdim, cfg.ngroups,
                cfg.chunk_size, dt_limit=cfg.dt_limit, bias=cfg.bias, conv_bias=cfg.conv_bias,
                norm_eps=cfg.norm_eps, backend=backend,
            )  # fmt: skip
        else:
            self.mixer = Mamba(
                cfg.d_model, cfg.d_state, cfg.d_conv, cfg.expand, cfg.dt_rank,
                bias=cfg.bias, conv_bias=cfg.conv_bias, backend=backend,
                bc_param=cfg.bc_param, reorder=cfg.reorder, causal=cfg.causal,
            )  # fmt: skip

    def forward(self, x, state=None, lengths=None, return_state=False):
        residual = x.float() if self.residual_in_fp32 else x
        y, state = self.mixer(self.norm(x), state, lengths, return_state)
        return (residual + y).to(x.dtype), state

    def step(self, x_t: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        residual = x_t.float() if self.residual_in_fp32 else x_t
        self.mixer._check_state(state, x_t.shape[0])  # shapes only; x_t is the model's own
        y, state = self.mixer._step_unchecked(self.norm(x_t), state)
        return (residual + y).to(x_t.dtype), state


class MambaBackbone(nn.Module):
    def __init__(self, cfg: MambaConfig, backend: str) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(MambaBlock(cfg, backend) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)


class MambaLM(GenerationMixin, nn.Module):
    """Mamba language model with streaming ``forward``/``step`` and ``generate``.

    Args:
        cfg: the architecture.
        backend: scan backend of every layer ("auto", "ref", ...).
        device, dtype: factory arguments, as in ``torch.nn.Linear``: where the parameters
            are created and their floating dtype.
    """

    def __init__(
        self,
        cfg: MambaConfig,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(cfg, MambaConfig):
            raise TypeError(f"cfg must be a MambaConfig, got {type(cfg).__name__}")
        if cfg.version not in (1, 2):
            raise ValueError(f"cfg.version must be 1 (Mamba) or 2 (Mamba-2), got {cfg.version}")
        self.cfg = cfg
        self.backbone = MambaBackbone(cfg, backend)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.backbone.embeddings.weight
        apply_factory(self, device, dtype)

    def initial_state(self, batch: int) -> list[MambaState]:
        return [layer.mixer.initial_state(batch) for layer in self.backbone.layers]

    def forward(
        self,
        input_ids: Tensor,
        state: list[MambaState] | None = None,
        lengths: Tensor | None = None,
        return_state: bool = False,
    ) -> tuple[Tensor, list[MambaState] | None]:
        """input_ids (b, l) -> logits (b, l, vocab) and, if asked, the per-layer states."""
        self._check_ids(input_ids, 2)
        h = self.backbone.embeddings(input_ids)
        states = []
        for i, layer in enumerate(self.backbone.layers):
            h, s = layer(h, None if state is None else state[i], lengths, return_state)
            states.append(s)
        logits = self.lm_head(self.backbone.norm_f(h).to(self.lm_head.weight.dtype))
        return logits.float(), (states if return_state else None)

    def step(self, token: Tensor, state: list[MambaState]) -> tuple[Tensor, list[MambaState]]:
        """token (b,) -> logits (b, vocab) and the next states (constant size)."""
        self._check_ids(token, 1)
        return self.decode_step(token, state)

    def decode_step(
        self, token: Tensor, state: list[MambaState]
    ) -> tuple[Tensor, list[MambaState]]:
        """:meth:`step` without the token-id check (it reads the ids: a host sync and a
        ``torch.compile`` graph break), for the decoding loop, whose tokens are the model's
        own outputs; the layers still check the states' shapes."""
        h = self.backbone.embeddings(token)
        new = []
        for layer, s in zip(self.backbone.layers, state, strict=True):
            h, s = layer.step(h, s)
            new.append(s)
        return self.lm_head(self.backbone.norm_f(h)).float(), new

    def check_prompt(self, input_ids: Tensor) -> None:
        self._check_ids(input_ids, 2)

    def decoder(
        self, state: list[MambaState], precision: str = "fp32", decode: str = "auto"
    ) -> Callable[[Tensor], Tensor]:
        """A function token (b,) -> next logits (b, v) continuing from ``state`` (copied).

        ``decode="auto"`` takes the fused CPU decoder (:class:`ssmkit.models.decoding.
        MambaDecoder`, weights in ``precision`` "fp32", "bf16" or "int8") when the model
        allows it (float32, CPU, numba installed), else every layer's ``step``; "fused" insists
        on the former, "step" and "compile" take the latter (see
        :meth:`GenerationMixin.decoder`).
        """
        check_choice("decode", decode, DECODE_MODES)
        reason = unsupported_reason(self)
        if decode == "fused" and reason is not None:
            raise ValueError(f"decode='fused' is not available: {reason}")
        if decode == "fused" or (decode == "auto" and reason is None):
            return MambaDecoder(self, state, precision).step
        return super().decoder(state, precision, decode)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write a transformers checkpoint directory (``config.json`` + ``model.safetensors``)
        that ``transformers.MambaForCausalLM`` (version 1) or ``Mamba2ForCausalLM`` (version
        2) ``.from_pretrained`` and :func:`ssmkit.models.load_pretrained` read with the same
        logits. Returns the directory."""
        from ssmkit.models.pretrained import save_pretrained  # it imports this module

        return save_pretrained(self, path)

    def _check_ids(self, ids: Tensor, ndim: int) -> None:
        check_tensor("input_ids", ids)
        if ids.ndim != ndim or ids.dtype not in (torch.int64, torch.int32):
            shape = "(batch, length)" if ndim == 2 else "(batch,)"
            raise ValueError(
                f"input_ids must be an integer tensor of shape {shape}, "
                f"got {ids.dtype} of shape {tuple(ids.shape)}"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.cfg.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.cfg.vocab_size}), got "
                f"[{int(ids.min())}, {int(ids.max())}]"
            )

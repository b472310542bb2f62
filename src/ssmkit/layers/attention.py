"""Causal multi-head self-attention with a KV cache: the Transformer baseline and hybrid blocks.

    q, k, v = split(in_proj(x))  (h heads of p = d / h channels each)
    q, k <- RoPE(q, k) at each token's position (Su et al. 2021, arXiv 2104.09864)
    y = out_proj(softmax(q k^T / sqrt(p) + causal mask) v)

It follows the sequence-layer protocol of :mod:`ssmkit.layers.base`. Its recurrent state is
the KV cache, :class:`KVCache`: the keys and values of every past token and which of them are
valid (a right-padded item contributes only its first ``lengths[i]`` tokens). Unlike an SSM the
cache grows by one entry per token, so ``step`` costs O(t) at step t.

The fast path is PyTorch's ``scaled_dot_product_attention``; :func:`attention_ref` is its slow
twin (explicit softmax), selected with ``backend="ref"``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.core.checks import check_choice, check_finite, check_tensor
from ssmkit.layers.base import (
    SequenceLayer,
    apply_factory,
    check_lengths,
    check_sequence,
    check_step_input,
    length_mask,
)

Tensor = torch.Tensor

BACKENDS = ("sdpa", "ref")


class KVCache(NamedTuple):
    """The state of an attention layer: keys and values of the past tokens."""

    k: Tensor  # (b, h, t, p): keys after RoPE
    v: Tensor  # (b, h, t, p)
    valid: Tensor  # (b, t) bool: True for the tokens an item really saw

    def keep_where(self, keep_new: Tensor, old: KVCache) -> KVCache:
        """Per item, this cache where ``keep_new`` (b,) else ``old`` (a prefix of this one).

        The entries appended since ``old`` are marked invalid for the items that keep ``old``.
        """
        extra = self.valid.shape[1] - old.valid.shape[1]
        old_valid = F.pad(old.valid, (0, extra), value=False)  # (b, t)
        return KVCache(self.k, self.v, torch.where(keep_new[:, None], self.valid, old_valid))


def attention_ref(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(p), over the allowed keys) v (Vaswani et al. 2017, eq. 1).

    Args:
        q: (b, h, l, p) queries. k, v: (b, h, t, p) keys and values.
        allowed: (b, 1, l, t) bool, True where query i may attend to key j; every row must
            allow at least one key.

    Returns:
        (b, h, l, p).
    """
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (b, h, l, t)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def rope(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """Rotary position embedding: rotate channel pairs (i, i + p/2) by positions * theta_i.

    Args:
        x: (b, h, l, p) with p even. positions: (b, l) integer positions.

    Returns:
        (b, h, l, p), theta_i = base^(-2 i / p).
    """
    p = x.shape[-1]
    theta = base ** (-torch.arange(0, p // 2, device=x.device, dtype=x.dtype) * 2 / p)  # (p/2,)
    angle = positions.to(x.dtype)[:, None, :, None] * theta  # (b, 1, l, p/2)
    cos, sin = torch.cos(angle), torch.sin(angle)
    x1, x2 = x[..., : p // 2], x[..., p // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class CausalSelfAttention(SequenceLayer):
    """Causal multi-head self-attention (the mixer of a Transformer block).

    Args:
        d_model: channels d.
        n_heads: heads h; d_model / n_heads channels each (even, for RoPE).
        rope_base: base of the rotary position angles.
        bias: biases of in_proj and out_proj.
        backend: "sdpa" (``scaled_dot_product_attention``) or "ref" (:func:`attention_ref`).
        device, dtype: factory arguments, as in ``torch.nn.Linear``: where the parameters
            are created and their floating dtype.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        rope_base: float = 10000.0,
        bias: bool = False,
        backend: str = "sdpa",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("n_heads", n_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if d_model % n_heads or (d_model // n_heads) % 2:
            raise ValueError(
                f"d_model ({d_model}) must be n_heads ({n_heads}) times an even head size "
                "(rotary embeddings rotate channel pairs)"
            )
        self.backend = check_choice("backend", backend, BACKENDS)
        self.d_model, self.n_heads, self.headdim = d_model, n_heads, d_model // n_heads
        self.rope_base = float(rope_base)
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        apply_factory(self, device, dtype)

    def initial_state(self, batch: int) -> KVCache:
        """An empty cache (no tokens seen)."""
        w = self.in_proj.weight
        empty = w.new_zeros(batch, self.n_heads, 0, self.headdim)
        return KVCache(
            empty, empty.clone(), torch.zeros(batch, 0, dtype=torch.bool, device=w.device)
        )

    def forward(
        self,
        x: Tensor,
        state: KVCache | None = None,
        lengths: Tensor | None = None,
        return_state: bool = False,
    ) -> tuple[Tensor, KVCache | None]:
        """x: (b, l, d) -> (y (b, l, d), the cache with this chunk's valid tokens, or None).

        ``state`` continues a sequence: the new tokens attend to the cached ones and take the
        positions after them. Padded steps (``lengths``) give zero outputs and no cache entries.
        """
        x = check_sequence("x", x, self.d_model, self.in_proj.weight.dtype)
        b, l, _ = x.shape
        lengths = check_lengths(lengths, b, l)
        if state is not None:
            self._check_state(state, b)
        y, cache = self._attend(x, state, lengths)
        if lengths is not None:
            y = y * length_mask(lengths, l).unsqueeze(-1).to(y.dtype)
        return y, (cache if return_state else None)

    def step(self, x_t: Tensor, state: KVCache) -> tuple[Tensor, KVCache]:
        """One token: x_t (b, d) and the cache -> y_t (b, d) and the cache one entry longer."""
        x_t = check_step_input(x_t, self.d_model, self.in_proj.weight.dtype)
        self._check_state(state, x_t.shape[0])
        y, cache = self._attend(x_t.unsqueeze(1), state, None)
        return y[:, 0], cache

    def _attend(
        self, x: Tensor, state: KVCache | None, lengths: Tensor | None
    ) -> tuple[Tensor, KVCache]:
        b, l, _ = x.shape
        state = self.initial_state(b) if state is None else state
        q, k, v = self.in_proj(x).view(b, l, 3, self.n_heads, self.headdim).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (b, h, l, p)
        seen = state.valid.sum(-1)  # (b,) tokens already in the cache
        positions = seen[:, None] + torch.arange(l, device=x.device)  # (b, l)
        q, k = rope(q, positions, self.rope_base), rope(k, positions, self.rope_base)
        keys, values = torch.cat([state.k, k], 2), torch.cat([state.v, v], 2)  # (b, h, t, p)
        new_valid = (
            torch.ones(b, l, dtype=torch.bool, device=x.device)
            if lengths is None
            else length_mask(lengths, l)
        )  # (b, l)
        valid = torch.cat([state.valid, new_valid], 1)  # (b, t)
        t0 = state.valid.shape[1]
        causal = torch.ones(l, l, dtype=torch.bool, device=x.device).tril()  # (l, l)
        old = torch.ones(l, t0, dtype=torch.bool, device=x.device)
        allowed = torch.cat([old, causal], 1) & valid[:, None, :]  # (b, l, t)
        # a padded query of an item has at least its first token to attend to; a query's own
        # key is always allowed for valid queries, so no row is empty
        allowed = (allowed | ~valid[:, None, :].any(-1, keepdim=True)).unsqueeze(1)
        if self.backend == "sdpa":
            o = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed)
        else:
            o = attention_ref(q, keys, values, allowed)
        o = o.transpose(1, 2).reshape(b, l, self.d_model)  # (b, l, d)
        return self.out_proj(o), KVCache(keys, values, valid)

    def _check_state(self, state: KVCache, batch: int) -> None:
        if not isinstance(state, KVCache):
            raise TypeError(f"state must be a KVCache, got {type(state).__name__}")
        for name, value in zip(("state.k", "state.v", "state.valid"), state, strict=True):
            check_tensor(name, value)
        t = state.valid.shape[-1] if state.valid.ndim == 2 else -1
        shape = (batch, self.n_heads, t, self.headdim)
        for name, value in (("state.k", state.k), ("state.v", state.v)):
            if tuple(value.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
            check_finite(name, value, hot=True)
        if state.valid.dtype != torch.bool or state.valid.shape[0] != batch:
            raise ValueError(
                f"state.valid must be a (batch, t) = ({batch}, t) bool tensor, got "
                f"{state.valid.dtype} of shape {tuple(state.valid.shape)}"
            )

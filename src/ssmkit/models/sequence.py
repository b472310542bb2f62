"""A sequence model around any ssmkit layer: encoder, residual pre-norm blocks, head.

``SequenceModel`` = encoder (token embedding or linear) -> ``n_layers`` blocks
``x + dropout(layer(norm(x)))`` -> final norm -> head. The head is chosen by the task:

* ``classification`` / ``regression``: pool the valid steps (mean or last), then a linear map
  to ``n_outputs`` (b, n_outputs);
* ``tokens`` (language modelling, copying, recall) and ``forecast``: a per-step linear map
  (b, l, n_outputs); with token inputs and outputs over the same vocabulary the head shares the
  embedding matrix (tied embeddings).

Causal models stream: ``forward(x, state=..., return_state=True)`` continues a sequence,
``step`` advances one step, and ``generate`` decodes tokens through every layer's step mode.

``layer="transformer"`` makes every block causal self-attention (the attention baseline, built
like every other model); ``attn_every=k`` makes every k-th block attention and the others the
chosen SSM layer (Jamba/Zamba-style hybrids). ``layer="bimamba"`` is non-causal (Vim).

``state_init`` trains causal recurrent models from non-zero initial states (evaluation always
starts from zeros): ``"noise"``, a Gaussian SSM state (LongSSM's non-zero initialisation and
the "unexplored states" intervention), or ``"carry"``, the final state of another sequence of
the batch (the next item's), computed without gradient.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from ssmkit.core.checks import check_tensor
from ssmkit.core.dtypes import full_precision
from ssmkit.core.kinds import TASK_KINDS, TaskKind
from ssmkit.layers.attention import KVCache
from ssmkit.layers.base import apply_factory, check_lengths, length_mask, trusted_lengths
from ssmkit.layers.norms import RMSNorm
from ssmkit.models.generation import GenerationMixin
from ssmkit.models.model_config import (  # noqa: F401 (re-exported: the public names)
    ALL_LAYERS,
    HEADS,
    LAYERS,
    NONCAUSAL_LAYERS,
    NORMS,
    POOLINGS,
    STATE_INITS,
    STATELESS_LAYERS,
    IOSpec,
    ModelConfig,
    make_layer,
)

Tensor = torch.Tensor


def _norm(cfg: ModelConfig) -> nn.Module:
    return LayerNorm32(cfg.d_model) if cfg.norm == "layer" else RMSNorm(cfg.d_model)


class LayerNorm32(nn.LayerNorm):
    """``nn.LayerNorm`` computed in float32 at least, also under ``torch.autocast``.

    CPU autocast runs ``layer_norm`` in bfloat16 when its input is bfloat16 (a feature
    encoder's output), and the weight and bias gradients, sums over every (b, l) position,
    then lose most of their digits (80% off float32 at b l = 8192). Same parameters and
    state-dict keys as ``nn.LayerNorm``; the output has the input's dtype.
    """

    def forward(self, x: Tensor) -> Tensor:
        work = torch.promote_types(x.dtype, torch.float32)
        weight = None if self.weight is None else self.weight.to(work)
        bias = None if self.bias is None else self.bias.to(work)
        with full_precision(x.device):
            y = nn.functional.layer_norm(x.to(work), self.normalized_shape, weight, bias, self.eps)
        return y.to(x.dtype)


class Block(nn.Module):
    """x + dropout(layer(norm(x))) (pre-norm residual)."""

    def __init__(self, cfg: ModelConfig, io: IOSpec, index: int = 0) -> None:
        super().__init__()
        self.norm = _norm(cfg)
        self.layer = make_layer(cfg, io, index)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, state=None, lengths=None, return_state=False):
        y, state = self.layer(self.norm(x), state, lengths=lengths, return_state=return_state)
        return x + self.dropout(y), state

    def step(self, x_t: Tensor, state):
        y, state = self.layer.step(self.norm(x_t), state)
        return x_t + self.dropout(y), state


class SequenceModel(GenerationMixin, nn.Module):
    """Encoder, residual blocks of one ssmkit layer type, final norm and a task head.

    Args:
        cfg: the architecture.
        io: inputs and outputs (head type, vocabulary or feature size, causality).
        device, dtype: factory arguments, as in ``torch.nn.Linear``: where the parameters
            are created and their floating dtype.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        io: IOSpec,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if io.causal and (cfg.bidirectional or cfg.layer in NONCAUSAL_LAYERS):
            what = "bidirectional=True" if cfg.bidirectional else f"layer={cfg.layer!r}"
            raise ValueError(f"{what} makes the model see the future; this task is causal")
        self.cfg, self.io = cfg, io
        if io.vocab_size is not None:
            self.encoder: nn.Module = nn.Embedding(io.vocab_size, cfg.d_model)
        else:
            self.encoder = nn.Linear(io.d_input, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, io, i) for i in range(cfg.n_layers))
        self.norm_f = _norm(cfg)
        self.head = nn.Linear(cfg.d_model, io.n_outputs)
        if self.tied:
            # the shared matrix also makes the logits: a unit-variance embedding would give
            # logits of scale sqrt(d_model) and an initial loss far above log(vocab)
            nn.init.normal_(self.encoder.weight, std=0.02)
            self.head.weight = self.encoder.weight
        apply_factory(self, device, dtype)

    @property
    def kind(self) -> TaskKind:
        """The task kind the head serves: per-step or pooled, token outputs or not."""
        return TASK_KINDS[self.io.head]

    @property
    def tied(self) -> bool:
        """Token inputs and a per-step head over the same vocabulary share one matrix."""
        return self.kind.token_outputs and self.io.vocab_size == self.io.n_outputs

    @property
    def streams(self) -> bool:
        """Whether ``step`` is available (causal per-step heads with causal layers)."""
        return self.kind.per_step and not (self._sees_future or self._stateless)

    def initial_state(self, batch: int) -> list:
        """The state of every block before the first step."""
        self._require_streaming("initial_state")
        return [b.layer.initial_state(batch) for b in self.blocks]

    def forward(
        self,
        x: Tensor,
        state: list | None = None,
        lengths: Tensor | None = None,
        return_state: bool = False,
    ) -> Tensor | tuple[Tensor, list | None]:
        """Outputs of the head for ``x`` (b, l) token ids or (b, l, d_input) features.

        The arguments come in the layer protocol's order (:mod:`ssmkit.layers.base`);
        ``lengths`` (b,) is validated here once, not again by every layer.

        Returns (b, n_outputs) for sequence-level heads, (b, l, n_outputs) for per-step
        heads; with ``return_state`` also the state after each item's last valid step.
        """
        if state is not None or return_state:
            self._require_streaming("forward with state")
        if state is not None and not isinstance(state, (list, tuple)):
            raise TypeError(f"state must be a list of block states, got {type(state).__name__}")
        x = self._check_input(x)
        if x.ndim >= 2:  # else the first layer names the bad shape
            lengths = check_lengths(lengths, x.shape[0], x.shape[1])
        h = self.encoder(x)
        if state is None and self.training and self.cfg.state_init != "zero":
            state = self.training_initial_state(x, lengths)
        states = state if state is not None else [None] * len(self.blocks)
        if len(states) != len(self.blocks):
            raise ValueError(f"state must hold {len(self.blocks)} block states, got {len(states)}")
        h, new = self._blocks(h, states, lengths, return_state)
        h = self.norm_f(h)
        out = h if self.kind.per_step else self._pool(h, lengths)
        out = self.head(out)
        return (out, new) if return_state else out

    def forward_chunks(
        self, x: Tensor, lengths: Tensor | None = None, chunk: int = 4096
    ) -> Iterator[tuple[int, Tensor]]:
        """Run ``x`` in pieces of ``chunk`` steps, passing every block's state between them.

        Memory stays O(batch x chunk) whatever the length. Per-step heads yield
        ``(start, out)`` for each piece, out (b, <= chunk, n_outputs) for steps
        ``start .. start + chunk - 1``; sequence-level heads yield one ``(0, out)``,
        out (b, n_outputs), after the last piece (the pooling runs over all valid steps).
        The outputs equal :meth:`forward` on the whole sequence (tested).

        Raises:
            ValueError: the model is not recurrent (bidirectional, or Mamba with reordering).
        """
        self._require_recurrent()
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be a positive int, got {chunk!r}")
        x = self._check_input(x)
        b, l = x.shape[0], x.shape[1]
        full = torch.full((b,), l, dtype=torch.int64, device=x.device)
        lengths = full if lengths is None else check_lengths(lengths, b, l).to(x.device)
        pooled = not self.kind.per_step
        acc = None  # pooled heads: running sum (mean) or the last valid step (last), (b, d)
        states: list = [None] * len(self.blocks)
        for start in range(0, l, chunk):
            end = min(start + chunk, l)
            valid = (lengths - start).clamp(0, end - start)  # (b,) valid steps in this piece
            live = valid > 0  # items with steps left; the others keep their state
            full = bool((valid == end - start).all())  # no padding in this piece
            piece_lengths = None if full else valid.clamp(min=1)
            h = self.encoder(x[:, start:end])
            new = []
            for block, s in zip(self.blocks, states, strict=True):
                h, s_new = block(h, s, lengths=piece_lengths, return_state=True)
                new.append(s_new if s is None or full else _where(live, s_new, s))
            states = new
            h = self.norm_f(h)
            if not pooled:
                yield start, self.head(h)
                continue
            acc = self._pool_piece(h, valid, start, lengths, acc)
        if pooled:
            if self.cfg.pooling == "mean":
                acc = acc / lengths.to(acc.dtype).unsqueeze(-1)
            yield 0, self.head(acc)

    def _pool_piece(
        self, h: Tensor, valid: Tensor, start: int, lengths: Tensor, acc: Tensor | None
    ) -> Tensor:
        """Fold one piece (b, c, d) into the running pool (b, d) of :meth:`forward_chunks`."""
        c = h.shape[1]
        if self.cfg.pooling == "mean":
            mask = length_mask(valid.clamp(min=1), c).to(h.dtype) * (valid > 0).to(h.dtype)[:, None]
            part = (h * mask.unsqueeze(-1)).sum(1)  # (b, d)
            return part if acc is None else acc + part
        ends_here = (lengths - 1 >= start) & (lengths - 1 < start + c)  # (b,)
        idx = (lengths - 1 - start).clamp(0, c - 1)
        last = h[torch.arange(h.shape[0], device=h.device), idx]  # (b, d)
        if acc is None:
            acc = torch.zeros_like(last)
        return torch.where(ends_here.unsqueeze(-1), last, acc)

    def step(self, x_t: Tensor, state: list) -> tuple[Tensor, list]:
        """One step: token ids (b,) or features (b, d_input) -> outputs (b, n_outputs)."""
        self._require_streaming("step")
        h = self.encoder(x_t)
        new = []
        for block, s in zip(self.blocks, state, strict=True):
            h, s = block.step(h, s)
            new.append(s)
        return self.head(self.norm_f(h)), new

    def check_prompt(self, input_ids: Tensor) -> None:
        """Prompts of :meth:`generate`: token ids for a per-step token head."""
        if not (self.kind.token_outputs and self.io.vocab_size is not None):
            raise ValueError("generate needs token inputs and a per-step token head")
        self._check_input(input_ids)

    def _pool(self, h: Tensor, lengths: Tensor | None) -> Tensor:
        """(b, l, d) -> (b, d): mean or last over the valid steps."""
        b, l, _ = h.shape
        if lengths is None:
            return h.mean(1) if self.cfg.pooling == "mean" else h[:, -1]
        if self.cfg.pooling == "last":
            return h[torch.arange(b, device=h.device), lengths.to(h.device) - 1]
        mask = length_mask(lengths.to(h.device), l).to(h.dtype)  # (b, l)
        return (h * mask.unsqueeze(-1)).sum(1) / lengths.to(h.device, h.dtype).unsqueeze(-1)

    def _check_input(self, x: Tensor) -> Tensor:
        check_tensor("x", x)
        if self.io.vocab_size is not None:
            if x.dtype not in (torch.int64, torch.int32):
                raise TypeError(f"x must hold token ids (int64), got {x.dtype}")
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.io.vocab_size):
                raise ValueError(
                    f"token ids must lie in [0, {self.io.vocab_size}), got "
                    f"[{int(x.min())}, {int(x.max())}]"
                )
        elif x.ndim != 3 or x.shape[-1] != self.io.d_input:
            raise ValueError(
                f"x must have shape (batch, length, {self.io.d_input}), got {tuple(x.shape)}"
            )
        return x

    def training_initial_state(self, x: Tensor, lengths: Tensor | None = None) -> list:
        """Initial states of the blocks for a training batch x, by ``cfg.state_init``.

        ``"noise"``: the SSM state (``.ssm`` of a Mamba state) drawn from
        N(0, state_init_scale^2) (complex states: each part with half the variance);
        ``"carry"``: the state after the last valid step of the next item of the batch (item
        i takes item i + 1's, the last takes the first's), without gradient.
        """
        if self.cfg.state_init == "carry":
            with torch.no_grad():
                rolled = None if lengths is None else lengths.roll(-1, 0)
                none = [None] * len(self.blocks)
                _, states = self._blocks(self.encoder(x.roll(-1, 0)), none, rolled, True)
            return [_detach(s) for s in states]
        zeros = [b.layer.initial_state(x.shape[0]) for b in self.blocks]
        return [_noise(s, self.cfg.state_init_scale) for s in zeros]

    def _blocks(
        self, h: Tensor, states: list, lengths: Tensor | None, return_state: bool
    ) -> tuple[Tensor, list]:
        """The residual blocks on the encoded input h (b, l, d) from ``states``."""
        new = []
        with trusted_lengths(lengths):  # validated once by the caller: no check per layer
            for block, s in zip(self.blocks, states, strict=True):
                h, s = block(h, s, lengths=lengths, return_state=return_state)
                new.append(s)
        return h, new

    @property
    def _sees_future(self) -> bool:
        return self.cfg.bidirectional or self.cfg.layer in NONCAUSAL_LAYERS

    @property
    def _stateless(self) -> bool:
        """No recurrent state to step or pass (long convolutions)."""
        return self.cfg.layer in STATELESS_LAYERS

    def _require_recurrent(self) -> None:
        mixers = [b.layer for b in self.blocks]
        if self._stateless:
            raise ValueError(
                f"layer={self.cfg.layer!r} has no recurrent state, so the model cannot run in "
                "chunks with state passing; evaluate whole sequences"
            )
        if self._sees_future or any(getattr(m, "reorder", False) for m in mixers):
            raise ValueError(
                "this model is not recurrent (bidirectional layers, bimamba or token reordering "
                "see the whole sequence), so it cannot run in chunks with state passing; "
                f"layer={self.cfg.layer!r}, bidirectional={self.cfg.bidirectional}, "
                f"reorder={self.cfg.reorder}"
            )

    def _require_streaming(self, what: str) -> None:
        if not self.streams:
            raise ValueError(
                f"{what} needs a causal per-step model (tokens/forecast head, not "
                f"bidirectional, bimamba or longconv); this one has head={self.io.head!r}, "
                f"layer={self.cfg.layer!r}, bidirectional={self.cfg.bidirectional}"
            )


def _where(keep_new: Tensor, new, old):
    """Per item, the new state where ``keep_new`` (b,) is True, else the old one (any nesting
    of tensors, tuples and named tuples with the batch first)."""
    if isinstance(new, Tensor):
        return torch.where(keep_new.view(-1, *([1] * (new.ndim - 1))), new, old)
    if isinstance(new, KVCache):  # a KV cache grows: the items that keep the old one mask
        return new.keep_where(keep_new, old)
    parts = [_where(keep_new, n, o) for n, o in zip(new, old, strict=True)]
    return type(new)(*parts) if hasattr(new, "_fields") else type(new)(parts)


def _noise(state, scale: float):
    """A random SSM state shaped like ``state`` (a tensor, or a named tuple with ``.ssm``)."""
    if hasattr(state, "_fields"):
        return state._replace(ssm=_noise(state.ssm, scale))
    return torch.randn_like(state) * scale


def _detach(state):
    if isinstance(state, Tensor):
        return state.detach()
    return type(state)(*(_detach(s) for s in state))

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
from dataclasses import dataclass

import torch
from torch import nn

from ssmkit.core.checks import check_choice, check_tensor
from ssmkit.layers import DSS, LRU, S4, S4D, S5
from ssmkit.layers.attention import CausalSelfAttention, KVCache
from ssmkit.layers.base import length_mask
from ssmkit.layers.bimamba import BiMamba
from ssmkit.layers.gss import GSS
from ssmkit.layers.h3 import H3
from ssmkit.layers.longconv import LongConv
from ssmkit.layers.mamba import Mamba
from ssmkit.layers.mamba2 import Mamba2
from ssmkit.layers.norms import RMSNorm
from ssmkit.layers.spacetime import SpaceTime
from ssmkit.models.generation import GenerationMixin

Tensor = torch.Tensor

LAYERS = ("s4", "s4d", "dss", "s5", "lru", "mamba", "mamba2", "transformer")  # causal, streaming
LAYERS += ("h3", "gss", "spacetime")  # causal, streaming (issue 21)
NONCAUSAL_LAYERS = ("bimamba",)  # see the whole sequence: classification-style tasks only
STATELESS_LAYERS = ("longconv",)  # causal, but no recurrent state: no step or state passing
ALL_LAYERS = LAYERS + NONCAUSAL_LAYERS + STATELESS_LAYERS
STATE_INITS = ("zero", "noise", "carry")
HEADS = ("classification", "regression", "tokens", "forecast")
POOLINGS = ("mean", "last")
NORMS = ("layer", "rms")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a :class:`SequenceModel` (symbols of the S4/S4D/Mamba papers)."""

    layer: str = "s4d"  # layer of every block: s4, s4d, dss, s5, lru, mamba, mamba2, bimamba,
    # or transformer (causal self-attention in every block)
    d_model: int = 64  # H (S4) / D (Mamba): channels of the residual stream
    n_layers: int = 4  # number of residual blocks
    d_state: int = 64  # N: state size (per channel for S4/S4D/DSS/LRU/Mamba, total for S5)
    dropout: float = 0.0  # dropout on each block's output before the residual add
    norm: str = "layer"  # pre-norm of each block and the final norm: "layer" or "rms"
    pooling: str = "mean"  # sequence-level heads: mean or last over the valid steps
    bidirectional: bool = False  # LTI layers only: also run the SSM backwards (non-causal)
    dt_min: float = 1e-3  # lower end of the log-uniform step-size init
    dt_max: float = 1e-1  # upper end of the log-uniform step-size init
    r_min: float = 0.0  # LRU: eigenvalue moduli drawn in the ring [r_min, r_max]
    r_max: float = 1.0  # LRU: long memory needs r_max close to 1 (0.9999 at L = 16384)
    max_phase: float = 6.283185307179586  # LRU: eigenvalue phases drawn in [0, max_phase]
    expand: int = 2  # Mamba/Mamba-2: E, inner channels = E * d_model
    headdim: int = 16  # Mamba-2: P, channels per head
    chunk_size: int = 64  # Mamba-2: SSD chunk length
    bc_param: str = "none"  # Mamba: sign constraint of S_C^T S_B (token dynamics, Vo et al.)
    reorder: bool = False  # Mamba: SoftSort token reordering (non-causal tasks only)
    n_heads: int = 4  # attention blocks: heads h (d_model / h even, for RoPE)
    attn_every: int = 0  # hybrid: every k-th block is causal attention (Jamba: 8); 0: none
    shared: bool = False  # bimamba: one set of SSM parameters for both directions
    polarize: bool = False  # Mamba/BiMamba: two state channels fixed to A_bar = 1 and 0
    mimetic: bool = False  # Mamba/BiMamba: attention-like init (W_C = W_B, A near 0)
    state_init: str = "zero"  # training initial state: zero, noise or carry (see module doc)
    state_init_scale: float = 1.0  # std of the "noise" initial state

    def __post_init__(self) -> None:
        check_choice("layer", self.layer, ALL_LAYERS)
        check_choice("state_init", self.state_init, STATE_INITS)
        check_choice("norm", self.norm, NORMS)
        check_choice("pooling", self.pooling, POOLINGS)
        names = ("d_model", "n_layers", "d_state", "expand", "headdim", "chunk_size", "n_heads")
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        if not 0.0 <= self.r_min < self.r_max <= 1.0:
            raise ValueError(f"need 0 <= r_min < r_max <= 1, got {self.r_min}, {self.r_max}")
        if not 0.0 < self.max_phase <= 6.283185307179586:
            raise ValueError(f"max_phase must lie in (0, 2 pi], got {self.max_phase}")
        if (self.bc_param != "none" or self.reorder) and self.layer != "mamba":
            raise ValueError(
                f"bc_param and reorder are options of layer='mamba', not {self.layer!r}"
            )
        self._check_new_options()
        if self.bidirectional and self.layer in ("mamba", "mamba2", "bimamba", "transformer"):
            raise ValueError(f"bidirectional applies to LTI layers, not layer={self.layer!r}")
        if self.layer == "mamba2" and (self.expand * self.d_model) % self.headdim:
            raise ValueError(
                f"mamba2 needs expand * d_model ({self.expand * self.d_model}) divisible by "
                f"headdim ({self.headdim})"
            )

    def _check_new_options(self) -> None:
        """Hybrid attention, BiMamba, the recall fixes and the training initial state."""
        if isinstance(self.attn_every, bool) or not isinstance(self.attn_every, int):
            raise TypeError(f"attn_every must be an int, got {type(self.attn_every).__name__}")
        if self.attn_every < 0 or (self.attn_every and self.layer in ("transformer", "bimamba")):
            raise ValueError(
                f"attn_every must be >= 0 and only mixes attention into a causal SSM layer, got "
                f"attn_every={self.attn_every} with layer={self.layer!r}"
            )
        if self.uses_attention and (
            self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2
        ):
            raise ValueError(
                f"attention needs d_model ({self.d_model}) = n_heads ({self.n_heads}) times an "
                "even head size"
            )
        if self.shared and self.layer != "bimamba":
            raise ValueError(f"shared is an option of layer='bimamba', not {self.layer!r}")
        if (self.polarize or self.mimetic) and self.layer not in ("mamba", "bimamba"):
            raise ValueError(
                "polarize and mimetic are options of layer='mamba' or 'bimamba', "
                f"not {self.layer!r}"
            )
        if self.state_init != "zero":
            recurrent = self.layer in ("s4", "s4d", "dss", "s5", "lru", "mamba", "mamba2")
            if not recurrent or self.attn_every or self.bidirectional or self.reorder:
                raise ValueError(
                    f"state_init={self.state_init!r} needs a causal recurrent SSM in every block "
                    f"(no attention, bidirectional or reorder), got layer={self.layer!r}, "
                    f"attn_every={self.attn_every}"
                )
        if not self.state_init_scale > 0:
            raise ValueError(f"state_init_scale must be > 0, got {self.state_init_scale}")

    @property
    def uses_attention(self) -> bool:
        return self.layer == "transformer" or self.attn_every > 0

    def is_attention(self, index: int) -> bool:
        """Whether block ``index`` (0-based) is an attention block."""
        return self.layer == "transformer" or (
            self.attn_every > 0 and (index + 1) % self.attn_every == 0
        )


@dataclass(frozen=True)
class IOSpec:
    """What the model reads and predicts (built from a task's spec by the trainer)."""

    head: str  # classification, regression, tokens or forecast
    n_outputs: int  # classes, output vocabulary, or regression/forecast dimension
    vocab_size: int | None = None  # token inputs: embedding rows
    d_input: int | None = None  # feature inputs: channels of x
    max_length: int = 1024  # longest sequence (kernel length of S4/DSS)
    causal: bool = True  # the output at step t may only depend on steps <= t

    def __post_init__(self) -> None:
        check_choice("head", self.head, HEADS)
        if (self.vocab_size is None) == (self.d_input is None):
            raise ValueError("give exactly one of vocab_size (token inputs), d_input (features)")
        if self.n_outputs < 1 or self.max_length < 1:
            raise ValueError(
                f"n_outputs and max_length must be >= 1, got {self.n_outputs}, {self.max_length}"
            )


def make_layer(cfg: ModelConfig, io: IOSpec, index: int = 0) -> nn.Module:
    """The sequence layer of block ``index``."""
    d, n = cfg.d_model, cfg.d_state
    if cfg.is_attention(index):
        return CausalSelfAttention(d, n_heads=cfg.n_heads)
    dt = {"dt_min": cfg.dt_min, "dt_max": cfg.dt_max}
    fixes = {"polarize": cfg.polarize, "mimetic": cfg.mimetic}
    if cfg.layer == "bimamba":
        return BiMamba(d, d_state=n, expand=cfg.expand, shared=cfg.shared, **fixes, **dt)
    bi = {"bidirectional": cfg.bidirectional}
    if cfg.layer == "s4":
        return S4(d, N=n, l_max=io.max_length, **dt, **bi)
    if cfg.layer == "s4d":
        return S4D(d, N=n, **dt, **bi)
    if cfg.layer == "dss":
        return DSS(d, N=n, l_max=io.max_length, **dt, **bi)
    if cfg.layer == "s5":
        return S5(d, N=n, **dt, **bi)
    if cfg.layer in ("h3", "gss", "longconv", "spacetime"):
        return _issue21_layer(cfg, io)
    if cfg.layer == "lru":
        return LRU(d, N=n, r_min=cfg.r_min, r_max=cfg.r_max, max_phase=cfg.max_phase, **bi)
    if cfg.layer == "mamba":
        return Mamba(
            d, d_state=n, expand=cfg.expand, bc_param=cfg.bc_param, reorder=cfg.reorder,
            causal=io.causal, **fixes, **dt,
        )  # fmt: skip
    return Mamba2(
        d, d_state=n, expand=cfg.expand, headdim=cfg.headdim, chunk_size=cfg.chunk_size, **dt
    )


def _issue21_layer(cfg: ModelConfig, io: IOSpec) -> nn.Module:
    """H3, GSS, long convolutions and SpaceTime (d_state: their N; GSS: d_ssm = d_model / 4)."""
    d, n, bi = cfg.d_model, cfg.d_state, cfg.bidirectional
    if cfg.layer == "h3":
        if bi:
            raise ValueError("layer='h3' is causal only: bidirectional=True is not available")
        return H3(d, N=n, shift_size=n, dt_min=cfg.dt_min, dt_max=cfg.dt_max)
    if cfg.layer == "gss":
        return GSS(
            d, d_ssm=max(1, d // 4), expand=cfg.expand, N=n, dt_min=cfg.dt_min,
            dt_max=cfg.dt_max, bidirectional=bi,
        )  # fmt: skip
    if cfg.layer == "longconv":
        return LongConv(d, l_max=io.max_length, bidirectional=bi)
    return SpaceTime(d, N=n, bidirectional=bi)


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
        with torch.autocast(x.device.type, enabled=False):
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
    """

    def __init__(self, cfg: ModelConfig, io: IOSpec) -> None:
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

    @property
    def tied(self) -> bool:
        """Token inputs and a per-step head over the same vocabulary share one matrix."""
        return self.io.head == "tokens" and self.io.vocab_size == self.io.n_outputs

    @property
    def streams(self) -> bool:
        """Whether ``step`` is available (causal per-step heads with causal layers)."""
        return self.io.head in ("tokens", "forecast") and not (self._sees_future or self._stateless)

    def initial_state(self, batch: int) -> list:
        """The state of every block before the first step."""
        self._require_streaming("initial_state")
        return [b.layer.initial_state(batch) for b in self.blocks]

    def forward(
        self,
        x: Tensor,
        lengths: Tensor | None = None,
        state: list | None = None,
        return_state: bool = False,
    ) -> Tensor | tuple[Tensor, list | None]:
        """Outputs of the head for ``x`` (b, l) token ids or (b, l, d_input) features.

        Returns (b, n_outputs) for sequence-level heads, (b, l, n_outputs) for per-step
        heads; with ``return_state`` also the state after each item's last valid step.
        """
        if state is not None or return_state:
            self._require_streaming("forward with state")
        h = self.encoder(self._check_input(x))
        if state is None and self.training and self.cfg.state_init != "zero":
            state = self.training_initial_state(x, lengths)
        states = state if state is not None else [None] * len(self.blocks)
        if len(states) != len(self.blocks):
            raise ValueError(f"state must hold {len(self.blocks)} block states, got {len(states)}")
        h, new = self._blocks(h, states, lengths, return_state)
        h = self.norm_f(h)
        out = self._pool(h, lengths) if self.io.head in ("classification", "regression") else h
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
        lengths = full if lengths is None else lengths.to(x.device, torch.int64)
        pooled = self.io.head in ("classification", "regression")
        acc = None  # pooled heads: running sum (mean) or the last valid step (last), (b, d)
        states: list = [None] * len(self.blocks)
        for start in range(0, l, chunk):
            end = min(start + chunk, l)
            valid = (lengths - start).clamp(0, end - start)  # (b,) valid steps in this piece
            live = valid > 0  # items with steps left; the others keep their state
            h = self.encoder(x[:, start:end])
            new = []
            for block, s in zip(self.blocks, states, strict=True):
                h, s_new = block(h, s, lengths=valid.clamp(min=1), return_state=True)
                new.append(s_new if s is None else _where(live, s_new, s))
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
        if not (self.io.head == "tokens" and self.io.vocab_size is not None):
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

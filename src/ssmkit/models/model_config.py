"""What a :class:`~ssmkit.models.sequence.SequenceModel` is built from: the architecture
(:class:`ModelConfig`), what it reads and predicts (:class:`IOSpec`), and the layer of each
block (:func:`make_layer`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ssmkit.core.checks import check_choice
from ssmkit.layers import DSS, LRU, S4, S4D, S5
from ssmkit.layers.attention import CausalSelfAttention
from ssmkit.layers.bimamba import BiMamba
from ssmkit.layers.gss import GSS
from ssmkit.layers.h3 import H3
from ssmkit.layers.longconv import LongConv
from ssmkit.layers.mamba import Mamba
from ssmkit.layers.mamba2 import Mamba2
from ssmkit.layers.spacetime import SpaceTime

Tensor = torch.Tensor

LAYERS = ("s4", "s4d", "dss", "s5", "lru", "mamba", "mamba2", "transformer")  # causal, streaming
LAYERS += ("h3", "gss", "spacetime")  # causal, streaming: composed from the LTI layers
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
    polarize: bool = False  # Mamba/BiMamba/S4D: two state channels fixed to A_bar = 1 and 0
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
        if self.polarize and self.layer not in ("mamba", "bimamba", "s4d"):
            raise ValueError(
                f"polarize is an option of layer='mamba', 'bimamba' or 's4d', not {self.layer!r}"
            )
        if self.mimetic and self.layer not in ("mamba", "bimamba"):
            raise ValueError(
                f"mimetic is an option of layer='mamba' or 'bimamba', not {self.layer!r}"
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
        return S4D(d, N=n, polarize=cfg.polarize, **dt, **bi)
    if cfg.layer == "dss":
        return DSS(d, N=n, l_max=io.max_length, **dt, **bi)
    if cfg.layer == "s5":
        return S5(d, N=n, **dt, **bi)
    if cfg.layer in ("h3", "gss", "longconv", "spacetime"):
        return _composed_layer(cfg, io)
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


def _composed_layer(cfg: ModelConfig, io: IOSpec) -> nn.Module:
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

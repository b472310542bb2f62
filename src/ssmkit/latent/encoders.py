"""Sequence encoders of the deep latent models, built from ssmkit's own layers.

``encoder="gru" | "s4d" | "lru" | "mamba"`` picks the layer that reads the observations; every
choice follows the sequence-layer protocol of :mod:`ssmkit.layers.base`, so the latent models
never look inside it. ``direction`` says what each output step summarises:

* ``"backward"``: step t summarises x_{t:T} (the ST-R inference network of Krishnan et al.
  2017, and the backwards-in-time reading of the latent ODE's encoder). A causal layer reads
  each sequence reversed inside its own length (:func:`ssmkit.layers.bimamba.reverse_valid`),
  so right padding never reaches a valid step.
* ``"bidirectional"``: step t summarises all of x_{1:T} (the smoothing posterior, ST-LR):
  the LTI layers run their native anti-causal second kernel, Mamba becomes
  :class:`ssmkit.layers.bimamba.BiMamba`, the GRU a bidirectional GRU.

The layer sits in a pre-projection, residual, LayerNorm block: h = norm(W x + layer(W x)).
"""

from __future__ import annotations

import torch
from torch import nn

from ssmkit.core.checks import check_choice, check_int
from ssmkit.layers.bimamba import BiMamba, reverse_valid
from ssmkit.layers.lru import LRU
from ssmkit.layers.mamba import Mamba
from ssmkit.layers.s4d import S4D

Tensor = torch.Tensor
ENCODERS = ("gru", "s4d", "lru", "mamba")
DIRECTIONS = ("backward", "bidirectional")


def _layer(kind: str, d: int, bidirectional: bool, d_state: int) -> nn.Module:
    if kind == "s4d":
        return S4D(d, N=d_state, bidirectional=bidirectional)
    if kind == "lru":
        return LRU(d, N=d_state, r_min=0.5, r_max=0.99, bidirectional=bidirectional)
    if bidirectional:
        return BiMamba(d, d_state=d_state)
    return Mamba(d, d_state=d_state)


class SequenceEncoder(nn.Module):
    """(b, l, d_in) observations -> (b, l, d_hidden) features (see the module docstring).

    Args:
        kind: "gru", "s4d", "lru" or "mamba".
        d_in: input channels; d_hidden: output channels (and the layer's width).
        direction: "backward" (x_{t:T}) or "bidirectional" (x_{1:T}).
        d_state: state size N of the SSM layers (unused by the GRU).
    """

    def __init__(
        self, kind: str, d_in: int, d_hidden: int, direction: str = "backward", d_state: int = 16
    ) -> None:
        super().__init__()
        self.kind = check_choice("encoder", kind, ENCODERS)
        self.direction = check_choice("direction", direction, DIRECTIONS)
        check_int("d_in", d_in, minimum=1)
        check_int("d_hidden", d_hidden, minimum=1)
        check_int("d_state", d_state, minimum=1)
        self.d_in, self.d_hidden = d_in, d_hidden
        both = direction == "bidirectional"
        if kind == "gru":
            self.rnn = nn.GRU(d_in, d_hidden, batch_first=True, bidirectional=both)
            self.merge = nn.Linear(2 * d_hidden, d_hidden) if both else None
        else:
            self.proj = nn.Linear(d_in, d_hidden)
            self.layer = _layer(kind, d_hidden, both, d_state)
            self.norm = nn.LayerNorm(d_hidden)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Encode a right-padded batch.

        Args:
            x: (b, l, d_in) inputs (finite; values at padded steps are ignored).
            lengths: (b,) valid steps per item (>= 1); None = all l.

        Returns:
            (b, l, d_hidden) features; rows past an item's length are not meaningful.
        """
        if x.ndim != 3 or x.shape[-1] != self.d_in:
            raise ValueError(
                f"x must have shape (b, l, d_in) with d_in = {self.d_in}, got {tuple(x.shape)}"
            )
        backward = self.direction == "backward"
        h = reverse_valid(x, lengths) if backward else x  # (b, l, d_in)
        if self.kind == "gru":
            h = self._gru(h, lengths)
        else:
            u = self.proj(h)  # (b, l, d_hidden)
            h = self.norm(u + self.layer(u, lengths=lengths)[0])
        return reverse_valid(h, lengths) if backward else h

    def _gru(self, x: Tensor, lengths: Tensor | None) -> Tensor:
        if self.merge is None:  # causal over the (reversed) input: padding comes after
            return self.rnn(x)[0]
        if lengths is None:
            return self.merge(self.rnn(x)[0])
        packed = nn.utils.rnn.pack_padded_sequence(
            x, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.rnn(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.merge(out)


class GridEncoder(nn.Module):
    """q(z_0 | x) of the latent ODE from a layer that reads the shared grid backwards.

    Step k of the input is [x_k (0 where unobserved), observed flag, t_k - t_0], so the layer
    sees the irregular timing and the missingness; the backward feature at the first grid time
    summarises every observation and gives the mean and variance of z_0.

    Args:
        kind: "gru", "s4d", "lru" or "mamba"; obs_dim: dim(x); d_hidden: feature size;
        latent_dim: dim(z_0).
    """

    def __init__(self, kind: str, obs_dim: int, d_hidden: int, latent_dim: int) -> None:
        super().__init__()
        check_int("latent_dim", latent_dim, minimum=1)
        self.seq = SequenceEncoder(kind, obs_dim + 2, d_hidden, "backward")
        self.to_z0 = nn.Linear(d_hidden, 2 * latent_dim)

    def forward(self, times: Tensor, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """times (u,), values (b, u, d) (0 where unobserved), mask (b, u) -> mean, var (b, z)."""
        b, u, _ = values.shape
        rel = (times - times[0]).to(values.dtype)[None, :, None].expand(b, u, 1)  # (b, u, 1)
        inp = torch.cat([values, mask[..., None].to(values.dtype), rel], -1)  # (b, u, d + 2)
        h0 = self.seq(inp)[:, 0]  # (b, d_hidden): has read the whole grid backwards
        mean, raw = self.to_z0(h0).chunk(2, -1)
        return mean, nn.functional.softplus(raw) + 1e-6


__all__ = ["DIRECTIONS", "ENCODERS", "GridEncoder", "SequenceEncoder"]

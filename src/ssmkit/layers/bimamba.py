"""Bidirectional Mamba, Vision-Mamba style (Zhu et al. 2024, arXiv 2401.09417).

    in_proj -> (x, z)
    y_f = forward branch (conv1d -> SiLU -> selective scan, gated by z) on x
    y_b = the same on x read backwards (each item's valid steps reversed), reversed back
    y = out_proj(y_f + y_b)

The branches are :meth:`ssmkit.layers.mamba.Mamba.mix`: the forward one belongs to a full
Mamba layer (which also owns in_proj and out_proj); the backward one either is the same module
(``shared=True``, one set of SSM parameters read both ways) or a second Mamba without
projections (``shared=False``, Vim's separate conv1d, x_proj, dt_proj, A_log and D).

Every output sees the whole sequence, so the layer is non-causal: for classification and
other non-causal tasks. It has no recurrent state and refuses ``step``, ``initial_state``
and ``forward`` with a state.
"""

from __future__ import annotations

import torch
from torch import nn

from ssmkit.layers.base import (
    SequenceLayer,
    apply_factory,
    check_lengths,
    check_overflow,
    check_sequence,
    length_mask,
)
from ssmkit.layers.mamba import Mamba

Tensor = torch.Tensor


def reverse_valid(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each item's first ``lengths[i]`` steps; padded steps stay where they are.

    Args:
        x: (b, l, c). lengths: (b,) or None (all of x).

    Returns:
        (b, l, c); applying it twice gives x back.
    """
    if lengths is None:
        return x.flip(1)
    t = torch.arange(x.shape[1], device=x.device)  # (l,)
    idx = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (b, l)
    return x.gather(1, idx.unsqueeze(-1).expand_as(x))


class BiMamba(SequenceLayer):
    """Bidirectional (non-causal) Mamba layer.

    Args:
        d_model: channels d.
        d_state: SSM state size n per channel.
        d_conv: width of each branch's depthwise convolution.
        expand: d_inner = expand * d_model.
        shared: one set of branch parameters for both directions (else separate, as Vim).
        dt_min, dt_max: range of the initial step sizes.
        backend: selective-scan backend ("auto", "ref", "chunked", "numba").
        polarize, mimetic: the recall fixes of :class:`~ssmkit.layers.mamba.Mamba`, in both
            branches.
        device, dtype: factory arguments, as in ``torch.nn.Linear``: where the parameters
            are created and their floating dtype.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        shared: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        backend: str = "auto",
        polarize: bool = False,
        mimetic: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(shared, bool):
            raise TypeError(f"shared must be a bool, got {type(shared).__name__}")
        options = dict(
            d_state=d_state, d_conv=d_conv, expand=expand, dt_min=dt_min, dt_max=dt_max,
            backend=backend, causal=False, polarize=polarize, mimetic=mimetic,
        )  # fmt: skip
        self.d_model, self.shared = d_model, shared
        self.mamba = Mamba(d_model, **options)  # in_proj, forward branch, out_proj
        self.backward_branch: Mamba | None = None
        if not shared:
            branch = Mamba(d_model, **options)
            branch.in_proj, branch.out_proj = None, None  # the projections are shared
            self.backward_branch = branch
        apply_factory(self, device, dtype)

    def forward(
        self,
        x: Tensor,
        state: None = None,
        lengths: Tensor | None = None,
        return_state: bool = False,
    ) -> tuple[Tensor, None]:
        """x: (b, l, d) -> (y (b, l, d), None); padded steps (``lengths``) give zeros."""
        if state is not None or return_state:
            self._refuse("forward with a state (state= or return_state=True)")
        m = self.mamba
        x = check_sequence("x", x, self.d_model, m.in_proj.weight.dtype)
        b, l, _ = x.shape
        lengths = check_lengths(lengths, b, l)
        xs, z = m.in_proj(x).chunk(2, dim=-1)  # (b, l, d_inner) each
        y_f, _ = m.mix(xs, z, lengths=lengths)
        back: nn.Module = m if self.backward_branch is None else self.backward_branch
        rev = [reverse_valid(t, lengths) for t in (xs, z)]
        y_b, _ = back.mix(*rev, lengths=lengths)
        y = check_overflow(self, m.out_proj(y_f + reverse_valid(y_b, lengths)), x)
        if lengths is not None:
            y = y * length_mask(lengths, l).unsqueeze(-1)
        return y, None

    def step(self, x_t: Tensor, state: object) -> tuple[Tensor, object]:
        self._refuse("step")

    def initial_state(self, batch: int) -> object:
        self._refuse("initial_state")

    def _refuse(self, what: str) -> None:
        raise ValueError(
            f"BiMamba reads the sequence in both directions, so it is non-causal and has no "
            f"recurrent state: {what} is not available; run whole sequences, or use the causal "
            "Mamba layer for streaming and generation"
        )

"""GSS: the gated state space layer (Mehta, Gupta, Cutkosky, Neyshabur 2022; arXiv 2206.13947).

A gated unit around a diagonal SSM (DSS) that runs in a reduced dimension H < E:

    v  = gelu(W_v x)        (b, l, F)   the gate, F = expand * E
    u  = gelu(W_u x)        (b, l, H)   the SSM's input, H = d_ssm (paper: E / 4)
    y  = DSS(u)             (b, l, H)   y = K * u + D u, no activation or output map
    uc = W_uc y             (b, l, F)
    o  = W_o (uc * v)       (b, l, E)

The pre-norm and the residual of the paper's block are those of
:class:`ssmkit.models.SequenceModel`. The DSS layer carries the state, so ``forward`` with a
state, ``step`` and padded batches all come from :class:`ssmkit.layers.DSS`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.core.checks import check_int
from ssmkit.core.params import SSM_LR
from ssmkit.layers.base import (
    SequenceLayer,
    apply_factory,
    check_sequence,
    check_step_input,
    length_mask,
)
from ssmkit.layers.dss import DSS
from ssmkit.layers.lti import BlockConfig

Tensor = torch.Tensor

# the SSM inside the gated unit is bare: y = K * u + D u
BARE = BlockConfig(activation="identity", output="none")


class GSS(SequenceLayer):
    """Gated state space layer.

    Args:
        d_model: channels E of the input and output.
        d_ssm: channels H of the SSM (the reduced dimension).
        expand: F = expand * d_model channels of the gate.
        N: DSS state size (even: N/2 conjugate pairs).
        dt_min, dt_max: range of the log-uniform initial step sizes of the DSS.
        mode: the DSS's mode, "conv" (training) or "scan".
        bidirectional: a bidirectional DSS (no recurrent state then).
        lr: learning-rate cap of the DSS's Lambda and dt.
        device, dtype: factory arguments, as in ``torch.nn.Linear``: where the parameters
            are created and their floating dtype.
    """

    def __init__(
        self,
        d_model: int,
        d_ssm: int = 64,
        expand: int = 4,
        N: int = 64,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        mode: str = "conv",
        bidirectional: bool = False,
        lr: float | None = SSM_LR,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = check_int("d_model", d_model, minimum=1)
        check_int("d_ssm", d_ssm, minimum=1)
        d_gate = check_int("expand", expand, minimum=1) * d_model
        self.W_v = nn.Linear(d_model, d_gate)
        self.W_u = nn.Linear(d_model, d_ssm)
        self.ssm = DSS(
            d_ssm, N=N, dt_min=dt_min, dt_max=dt_max, mode=mode,
            bidirectional=bidirectional, block=BARE, lr=lr,
        )  # fmt: skip
        self.W_uc = nn.Linear(d_ssm, d_gate)
        self.W_o = nn.Linear(d_gate, d_model)
        apply_factory(self, device, dtype)

    @property
    def mode(self) -> str:
        """The DSS's mode ("conv" or "scan")."""
        return self.ssm.mode

    @mode.setter
    def mode(self, value: str) -> None:
        self.ssm.mode = value

    def initial_state(self, batch: int) -> Tensor:
        """The DSS state before the first step, (batch, d_ssm, N/2) complex."""
        return self.ssm.initial_state(batch)

    def forward(
        self,
        x: Tensor,
        state: Tensor | None = None,
        lengths: Tensor | None = None,
        return_state: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Run a whole sequence.

        Args:
            x: (b, l, E) input.
            state: (b, H, N/2) DSS state before the first step (see :meth:`initial_state`).
            lengths: (b,) valid steps per item of a right-padded batch.
            return_state: also return the state after each item's last valid step.

        Returns:
            y: (b, l, E) (zero at padded steps), and the (b, H, N/2) state or None.
        """
        x = check_sequence("x", x, self.d_model, self.W_o.weight.dtype)
        u = F.gelu(self.W_u(x))  # (b, l, H)
        y, state = self.ssm(u, state, lengths, return_state)  # (b, l, H)
        o = self._gate(x, y)  # (b, l, E)
        if lengths is not None:
            o = o * length_mask(lengths.to(x.device), x.shape[1]).unsqueeze(-1).to(o.dtype)
        return o, state

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One step: x_t (b, E) and state (b, H, N/2) -> y_t (b, E) and the next state."""
        x_t = check_step_input(x_t, self.d_model, self.W_o.weight.dtype)
        y, state = self.ssm.step(F.gelu(self.W_u(x_t)), state)
        return self._gate(x_t, y), state

    def _gate(self, x: Tensor, y: Tensor) -> Tensor:
        """o = W_o(W_uc y * gelu(W_v x)): (..., E), (..., H) -> (..., E)."""
        return self.W_o(self.W_uc(y) * F.gelu(self.W_v(x)))

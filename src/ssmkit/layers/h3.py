"""H3: Hungry Hungry Hippos (Fu, Dao, Saab, Thomas, Rudra, Re 2023; arXiv 2212.14052).

Two SSMs with multiplicative interactions, built to recall and compare tokens:

    Q, K, V = W_Q x, W_K x, W_V x                       (b, l, d) each
    K'      = SSM_shift(K)                              the shift SSM: A = shift matrix,
                                                        B = e_1, so K'_t = sum_{j<m} C_j K_{t-j}
    per head h (d_h = head_dim channels, H = d / d_h heads):
    O_h     = Q_h^T SSM_diag(K'_h V_h^T)                SSM_diag on each of the d_h^2 entries
    y       = W_O O

The shift SSM's state is its last m inputs, so it is exactly a causal depthwise convolution
of width m (:class:`ssmkit.layers.conv1d.CausalConv1d`; its tap on the current input plays the
shift SSM's D). The diagonal SSM is an S4D layer with no activation or output map, one SSM per
head shared by the head's d_h^2 outer-product entries (run as d_h^2 sequences of H channels).
The state is both SSMs' states (:class:`H3State`), so ``step`` decodes a token at a time.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ssmkit.core.checks import check_int
from ssmkit.core.params import SSM_LR
from ssmkit.layers.base import (
    SequenceLayer,
    apply_factory,
    check_lengths,
    check_sequence,
    check_state_tuple,
    check_step_input,
    length_mask,
)
from ssmkit.layers.conv1d import CausalConv1d
from ssmkit.layers.lti import BlockConfig
from ssmkit.layers.s4d import S4D

Tensor = torch.Tensor

# the diagonal SSM inside H3 is bare: y = K * u + D u
BARE = BlockConfig(activation="identity", output="none")


class H3State(NamedTuple):
    """The recurrent state of an H3 layer."""

    shift: Tensor  # (b, d, m - 1): the last inputs of the shift SSM
    diag: Tensor  # (b, d_h^2, H, N/2) complex: the diagonal SSM's state per outer-product entry


class H3(SequenceLayer):
    """H3 layer.

    Args:
        d_model: channels d.
        N: state size of the diagonal SSM (even: N/2 conjugate pairs).
        shift_size: state size m of the shift SSM (the paper: the same N; here a free choice).
        head_dim: d_h, channels per head (the paper's default 1: H = d heads).
        init: S4D initialisation of the diagonal SSM ("legs", "inv", "lin", "real").
        dt_min, dt_max: range of the log-uniform initial step sizes of the diagonal SSM.
        mode: the diagonal SSM's mode, "conv" (training) or "scan".
        lr: learning-rate cap of the diagonal SSM's A, dt and B.
        device, dtype: factory arguments, as in ``torch.nn.Linear``: where the parameters
            are created and their floating dtype.
    """

    def __init__(
        self,
        d_model: int,
        N: int = 64,
        shift_size: int = 64,
        head_dim: int = 1,
        init: str = "legs",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        mode: str = "conv",
        lr: float | None = SSM_LR,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = check_int("d_model", d_model, minimum=1)
        self.shift_size = check_int("shift_size", shift_size, minimum=1)
        self.head_dim = check_int("head_dim", head_dim, minimum=1)
        if d_model % head_dim:
            raise ValueError(f"d_model ({d_model}) must be divisible by head_dim ({head_dim})")
        self.heads = d_model // head_dim
        self.W_Q = nn.Linear(d_model, d_model)
        self.W_K = nn.Linear(d_model, d_model)
        self.W_V = nn.Linear(d_model, d_model)
        self.shift = CausalConv1d(d_model, shift_size, bias=False)
        self.diag = S4D(
            self.heads, N=N, init=init, dt_min=dt_min, dt_max=dt_max, mode=mode, block=BARE,
            lr=lr,
        )  # fmt: skip
        self.W_O = nn.Linear(d_model, d_model)
        apply_factory(self, device, dtype)

    @property
    def mode(self) -> str:
        """The diagonal SSM's mode ("conv" or "scan")."""
        return self.diag.mode

    @mode.setter
    def mode(self, value: str) -> None:
        self.diag.mode = value

    def initial_state(self, batch: int) -> H3State:
        """Zeros: (batch, d, m - 1) and (batch, d_h^2, H, N/2)."""
        w = self.W_O.weight
        diag = self.diag.initial_state(batch * self.head_dim**2)
        return H3State(
            self.shift.initial_state(batch, device=w.device, dtype=w.dtype),
            diag.reshape(batch, self.head_dim**2, *diag.shape[1:]),
        )

    def forward(
        self,
        x: Tensor,
        state: H3State | None = None,
        lengths: Tensor | None = None,
        return_state: bool = False,
    ) -> tuple[Tensor, H3State | None]:
        """Run a whole sequence.

        Args:
            x: (b, l, d) input.
            state: :class:`H3State` before the first step (see :meth:`initial_state`).
            lengths: (b,) valid steps per item of a right-padded batch.
            return_state: also return the state after each item's last valid step.

        Returns:
            y: (b, l, d) (zero at padded steps), and the :class:`H3State` or None.
        """
        x = check_sequence("x", x, self.d_model, self.W_O.weight.dtype)
        b, l, _ = x.shape
        lengths = check_lengths(lengths, b, l)
        if state is not None:
            self._check_state(state, b)
        mask = None if lengths is None else length_mask(lengths, l).unsqueeze(-1)  # (b, l, 1)
        q, k, v = self.W_Q(x), self.W_K(x), self.W_V(x)  # (b, l, d)
        if mask is not None:
            k = k * mask
        k, shift_state = self.shift(k, None if state is None else state.shift, lengths)
        kv = self._outer(k, v)  # (b, l, d_h, d_h, H)
        e = self.head_dim**2
        seqs = kv.permute(0, 2, 3, 1, 4).reshape(b * e, l, self.heads)  # (b e, l, H)
        diag_state = None if state is None else state.diag.reshape(b * e, *state.diag.shape[2:])
        rep = None if lengths is None else lengths.repeat_interleave(e)
        s, diag_last = self.diag(seqs, diag_state, rep, return_state)  # (b e, l, H)
        s = s.reshape(b, self.head_dim, self.head_dim, l, self.heads).permute(0, 3, 1, 2, 4)
        y = self.W_O(self._read(q, s))  # (b, l, d)
        if mask is not None:
            y = y * mask
        if not return_state:
            return y, None
        return y, H3State(shift_state, diag_last.reshape(b, e, *diag_last.shape[1:]))

    def step(self, x_t: Tensor, state: H3State) -> tuple[Tensor, H3State]:
        """One step: x_t (b, d) and the state -> y_t (b, d) and the next state."""
        x_t = check_step_input(x_t, self.d_model, self.W_O.weight.dtype)
        b = x_t.shape[0]
        self._check_state(state, b)
        q, k, v = self.W_Q(x_t), self.W_K(x_t), self.W_V(x_t)  # (b, d)
        k, shift_state = self.shift.step(k, state.shift)
        kv = self._outer(k, v)  # (b, d_h, d_h, H)
        e = self.head_dim**2
        s, diag = self.diag.step(kv.reshape(b * e, self.heads), state.diag.flatten(0, 1))
        s = s.reshape(b, self.head_dim, self.head_dim, self.heads)
        y = self.W_O(self._read(q, s))
        return y, H3State(shift_state, diag.reshape(state.diag.shape))

    def _outer(self, k: Tensor, v: Tensor) -> Tensor:
        """K'_h V_h^T per head: (..., d), (..., d) -> (..., d_h, d_h, H); entry [i, j, h] is
        K'[h d_h + i] V[h d_h + j]."""
        dh, H = self.head_dim, self.heads
        k = k.unflatten(-1, (H, dh)).transpose(-1, -2)  # (..., d_h, H)
        v = v.unflatten(-1, (H, dh)).transpose(-1, -2)
        return k.unsqueeze(-2) * v.unsqueeze(-3)  # (..., d_h, d_h, H)

    def _read(self, q: Tensor, s: Tensor) -> Tensor:
        """O_h = Q_h^T S_h: (..., d), (..., d_h, d_h, H) -> (..., d) with O[h d_h + j]."""
        dh, H = self.head_dim, self.heads
        q = q.unflatten(-1, (H, dh)).transpose(-1, -2)  # (..., d_h, H)
        o = (q.unsqueeze(-2) * s).sum(-3)  # (..., d_h, H): sum over i
        return o.transpose(-1, -2).flatten(-2)  # (..., d)

    def _check_state(self, state: H3State, b: int) -> None:
        sys = self.diag.system()
        check_state_tuple(
            state,
            H3State,
            {
                "shift": (b, self.d_model, self.shift_size - 1),
                "diag": (b, self.head_dim**2, *sys.state_shape),
            },
        )

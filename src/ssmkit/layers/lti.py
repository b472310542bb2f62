"""The one base of every linear time-invariant SSM layer: conv, scan and step, written once.

A subclass (S4, S4D, DSS, S5, LRU) only says how its parameters become a discretised system,
:class:`System`; this class runs that system in any of three ways and wraps it in the usual
block (S4, section 4):

    u -> SSM -> + D u -> activation -> dropout -> output map (GLU or linear)

* ``mode="conv"`` (SISO layers only): the kernel K_l = C A_bar^l B_bar (S4 eq. 5) and one
  FFT convolution. An initial state adds its free response C A_bar^(t+1) x0, and the final
  state is a power sum over the reversed input (:func:`ssmkit.core.kernels.power_sum`).
* ``mode="scan"``: the recurrence x_t = A_bar x_{t-1} + B_bar u_t through
  :func:`ssmkit.ops.lti_scan` (inject, recurrence and readout fused; no (b, l, *s) history
  on CPU with numba); per-step systems go through :func:`ssmkit.ops.scan`, and S4's dense
  transition through a sequential loop.
* ``step``: one step of the same recurrence.

All three agree to rounding (tested), so a model trained in conv mode generates in step mode.
``bidirectional=True`` adds a second, anti-causal SSM that shares A and B and has its own C
(the second row of ``C``); such a layer has no recurrent state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ssmkit.core.checks import check_choice
from ssmkit.core.dtypes import real_dtype
from ssmkit.core.fftconv import fftconv, fftconv_bidirectional
from ssmkit.core.kernels import kernel_diag, power_sum
from ssmkit.layers.base import (
    SequenceLayer,
    check_lengths,
    check_sequence,
    check_state,
    check_step_input,
    length_mask,
)
from ssmkit.ops import lti_scan, scan
from ssmkit.ops.lti_scan import ref as lti_ref

Tensor = torch.Tensor

ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU, "identity": nn.Identity}
OUTPUTS = ("glu", "linear", "none")
MODES = ("conv", "scan")


@dataclass(frozen=True)
class BlockConfig:
    """The block around the SSM (S4, section 4; S4D and S5 keep it)."""

    activation: str = "gelu"  # nonlinearity after SSM + D u: gelu, silu, relu or identity
    dropout: float = 0.0  # dropout probability after the activation
    output: str = "glu"  # output map: "glu" (Linear d -> 2d, GLU), "linear" (d -> d), "none"

    def __post_init__(self) -> None:
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("output", self.output, OUTPUTS)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class System:
    """A discretised SSM ready to run. State shape s: SISO (h, n), MIMO (n,).

    The transition is diagonal (A_bar holds the diagonal) or, with ``dense``, one (n, n)
    matrix per channel (S4's bilinear DPLR matrix). ``A_bar`` may carry leading (b, l) axes
    (a per-step transition, irregular sampling); ``gain`` then scales B_bar per step.
    """

    A_bar: Tensor  # diagonal: (*s) or (b, l, *s); dense: (h, n, n)
    B_bar: Tensor  # SISO: (h, n); MIMO: (n, h)
    C: Tensor  # (k, h, n): k = 1 (causal) or 2 (second row: the anti-causal direction)
    conj: bool  # each stored mode stands for a conjugate pair: y = 2 Re(C x), else Re(C x)
    mimo: bool = False
    dense: bool = False
    gain: Tensor | None = None  # (b, l, *s) per-step factor on B_bar u

    @property
    def state_shape(self) -> tuple[int, ...]:
        if self.dense:
            return tuple(self.A_bar.shape[:-1])
        return (self.B_bar.shape[0],) if self.mimo else tuple(self.B_bar.shape)

    @property
    def state_dtype(self) -> torch.dtype:
        return torch.promote_types(self.A_bar.dtype, self.B_bar.dtype)

    @property
    def per_step(self) -> bool:
        return self.A_bar.ndim > (2 if self.dense else len(self.state_shape))

    def inject(self, u: Tensor) -> Tensor:
        """B_bar u: (..., h) -> (..., *s)."""
        bu = lti_ref.inject(u.to(real_dtype(self.B_bar.dtype)), self.B_bar, self.mimo)
        return bu if self.gain is None else bu * self.gain

    def readout(self, x: Tensor, k: int = 0) -> Tensor:
        """(2) Re(C x): (..., *s) -> (..., h) real."""
        return lti_ref.readout(x, self.C[k], self.conj, self.mimo)

    def advance(self, x: Tensor, bu: Tensor) -> Tensor:
        """One step x <- A_bar x + B_bar u, for a time-invariant transition."""
        if self.dense:
            return (self.A_bar @ x.unsqueeze(-1)).squeeze(-1) + bu
        return self.A_bar * x + bu


class LTILayer(SequenceLayer):
    """Shared machinery of the LTI layers; subclasses implement :meth:`system`.

    Args:
        d_model: channels d of the input (b, l, d).
        modes: the modes this parameterisation supports (a subset of ("conv", "scan")).
        mode: the mode :meth:`forward` uses.
        bidirectional: add an anti-causal SSM (no recurrent state then).
        block: activation, dropout and output map around the SSM.
    """

    def __init__(
        self,
        d_model: int,
        modes: tuple[str, ...],
        mode: str,
        bidirectional: bool,
        block: BlockConfig,
    ) -> None:
        super().__init__()
        if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model < 1:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        check_choice("mode", mode, modes)
        if not isinstance(block, BlockConfig):
            raise TypeError(f"block must be a BlockConfig, got {type(block).__name__}")
        self.d_model = d_model
        self.mode = mode
        self.bidirectional = bool(bidirectional)
        self.directions = 2 if bidirectional else 1
        self.D = nn.Parameter(torch.randn(d_model))  # skip term, one per channel
        self.activation = ACTIVATIONS[block.activation]()
        self.dropout = nn.Dropout(block.dropout)
        if block.output == "glu":
            self.output = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GLU(dim=-1))
        elif block.output == "linear":
            self.output = nn.Linear(d_model, d_model)
        else:
            self.output = nn.Identity()
        self._step_cache: tuple[tuple, System] | None = None

    def _apply(self, fn: Callable, recurse: bool = True) -> LTILayer:
        """Refuse a half-precision conversion (``.to(torch.bfloat16)``, ``.half()``) up front.

        The SSM parameters are complex numbers stored as (..., 2) real pairs and the kernels
        run in complex arithmetic, which PyTorch has only in single and double precision.
        """
        probe = fn(torch.empty(0, dtype=self.D.dtype, device=self.D.device))  # the target dtype
        if isinstance(probe, Tensor) and probe.dtype in (torch.float16, torch.bfloat16):
            raise TypeError(
                f"{type(self).__name__} needs float32 or float64 parameters (its SSM runs in "
                f"complex arithmetic), got a conversion to {probe.dtype}; keep the layer in "
                "float32 and use torch.autocast for mixed precision"
            )
        return super()._apply(fn, recurse)

    # -- what a subclass defines ------------------------------------------------------------

    def system(self) -> System:
        """The discretised system from the current parameters."""
        raise NotImplementedError

    def kernel(self, L: int) -> Tensor:
        """Convolution kernels (k, h, L) of a SISO diagonal system; S4 overrides (DPLR)."""
        sys = self.system()
        return kernel_diag(sys.A_bar, sys.B_bar, sys.C, L, conj=sys.conj)

    # -- the protocol ------------------------------------------------------------------------

    def initial_state(self, batch: int) -> Tensor:
        """Zeros of shape (batch, *s) in the state dtype (complex for complex modes)."""
        self._require_causal("initial_state")
        sys = self.system()
        return torch.zeros(batch, *sys.state_shape, dtype=sys.state_dtype, device=self.D.device)

    def forward(
        self,
        x: Tensor,
        state: Tensor | None = None,
        lengths: Tensor | None = None,
        return_state: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Run a whole sequence.

        Args:
            x: (b, l, d) input.
            state: (b, *s) state before the first step (see :meth:`initial_state`).
            lengths: (b,) valid steps per item of a right-padded batch.
            return_state: also return the state after each item's last valid step.

        Returns:
            y: (b, l, d) (zero at padded steps), and the (b, *s) state or None.
        """
        return self._run(x, self.system, state, lengths, return_state)

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One step: x_t (b, d) and state (b, *s) -> y_t (b, d) and the next state."""
        self._require_causal("step")
        x_t = check_step_input(x_t, self.d_model, self.D.dtype)
        sys = self._system_for_step()
        check_state(state, (x_t.shape[0], *sys.state_shape), sys.state_dtype)
        state = sys.advance(state, sys.inject(x_t))
        y = sys.readout(state) + self.D * x_t
        return self._post(y.to(x_t.dtype)), state

    # -- the three computations ----------------------------------------------------------------

    def _run(
        self,
        x: Tensor,
        system: Callable[[], System],
        state: Tensor | None,
        lengths: Tensor | None,
        return_state: bool,
    ) -> tuple[Tensor, Tensor | None]:
        x = check_sequence("x", x, self.d_model, self.D.dtype)
        b, l, _ = x.shape
        lengths = check_lengths(lengths, b, l)
        stateful = state is not None or return_state
        if self.bidirectional and stateful:
            raise ValueError("a bidirectional layer has no recurrent state: pass no state")
        # conv mode without state needs only the kernel (S4's dense system is not built)
        sys = system() if self.mode == "scan" or stateful else None
        if state is not None:
            check_state(state, (b, *sys.state_shape), sys.state_dtype)
        mask = None if lengths is None else length_mask(lengths, l).unsqueeze(-1)  # (b, l, 1)
        u = x if mask is None else x * mask
        # A dense (S4) transition has no power sum: its state comes from the recurrence.
        if self.mode == "conv" and not (stateful and sys.dense):
            y, last = self._conv(u, sys, state, lengths, return_state)
        else:
            y, last = self._scan(u, sys, state, lengths, return_state)
        y = self._post((y + self.D * u).to(x.dtype))
        if mask is not None:
            y = y * mask
        return y, last

    def _conv(
        self,
        u: Tensor,
        sys: System | None,
        state: Tensor | None,
        lengths: Tensor | None,
        return_state: bool,
    ) -> tuple[Tensor, Tensor | None]:
        L = u.shape[1]
        K = self.kernel(L)  # (k, h, L)
        y = fftconv_bidirectional(u, K[0], K[1]) if self.bidirectional else fftconv(u, K[0])
        if state is not None:  # free response C A_bar^(t+1) x0 (a kernel per item)
            free = kernel_diag(sys.A_bar, sys.A_bar * state, sys.C[0], L, conj=sys.conj)
            y = y + free.transpose(1, 2).to(y.dtype)  # (b, L, h)
        last = self._conv_final_state(u, sys, state, lengths) if return_state else None
        return y, last

    def _conv_final_state(
        self, u: Tensor, sys: System, state: Tensor | None, lengths: Tensor | None
    ) -> Tensor:
        b, L, _ = u.shape
        if lengths is None:
            lengths = torch.full((b,), L, dtype=torch.long, device=u.device)
        # v_j = u_{len-1-j}: each item's valid steps, newest first, then zeros.
        idx = lengths.unsqueeze(-1) - 1 - torch.arange(L, device=u.device)  # (b, L)
        v = u.gather(1, idx.clamp(min=0).unsqueeze(-1).expand_as(u)) * (idx >= 0).unsqueeze(-1)
        last = sys.B_bar * power_sum(sys.A_bar, v)  # (b, h, n)
        if state is not None:
            log_A = torch.log(sys.A_bar.to(last.dtype))
            last = last + torch.exp(lengths[:, None, None] * log_A) * state
        return last.to(sys.state_dtype)

    def _scan(
        self,
        u: Tensor,
        sys: System,
        state: Tensor | None,
        lengths: Tensor | None,
        return_state: bool,
    ) -> tuple[Tensor, Tensor | None]:
        if not (sys.dense or sys.per_step or sys.gain is not None):
            return self._scan_fused(u, sys, state, lengths, return_state)
        bu = sys.inject(u)  # (b, l, *s)
        states = self._recurrence(sys, bu, state)  # (b, l, *s)
        y = sys.readout(states)
        if self.bidirectional:  # anti-causal: y_t += C x'_{t+1}, x'_t = A x'_{t+1} + B u_t
            back = self._recurrence(sys, bu.flip(1), None).flip(1)
            y_back = sys.readout(back[:, 1:], 1)
            y = y + torch.nn.functional.pad(y_back, (0, 0, 0, 1))
        last = None
        if return_state:
            if lengths is None:
                last = states[:, -1]
            else:
                last = states[torch.arange(u.shape[0], device=u.device), lengths - 1]
        return y, last

    def _scan_fused(
        self,
        u: Tensor,
        sys: System,
        state: Tensor | None,
        lengths: Tensor | None,
        return_state: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """A diagonal time-invariant system through :func:`ssmkit.ops.lti_scan`: inject,
        recurrence and readout fused, no (b, l, *s) states kept (on CPU with numba)."""
        u = u.to(real_dtype(sys.state_dtype))
        y, last = lti_scan(
            u, sys.A_bar, sys.B_bar, sys.C[0], conj=sys.conj, initial_state=state,
            return_final_state=True, lengths=lengths,
        )  # fmt: skip
        if self.bidirectional:  # anti-causal: y_t += C x'_{t+1}, x'_t = A x'_{t+1} + B u_t
            y_back = lti_scan(u.flip(1), sys.A_bar, sys.B_bar, sys.C[1], conj=sys.conj)
            y = y + torch.nn.functional.pad(y_back.flip(1)[:, 1:], (0, 0, 0, 1))
        return y, last if return_state else None

    @staticmethod
    def _recurrence(sys: System, bu: Tensor, state: Tensor | None) -> Tensor:
        if not sys.dense:
            a = sys.A_bar if sys.per_step else sys.A_bar.expand(1, 1, *sys.A_bar.shape)
            return scan(a, bu, initial_state=state)
        x = state if state is not None else bu.new_zeros(bu.shape[0], *sys.state_shape)
        out = []
        for bu_t in bu.unbind(1):  # dense transition: the plain loop
            x = sys.advance(x, bu_t)
            out.append(x)
        return torch.stack(out, dim=1)

    # -- helpers -------------------------------------------------------------------------------

    def _post(self, y: Tensor) -> Tensor:
        return self.output(self.dropout(self.activation(y)))

    def _require_causal(self, what: str) -> None:
        if self.bidirectional:
            raise ValueError(f"{what} needs a causal layer; this one is bidirectional")

    def _system_for_step(self) -> System:
        """The system, cached between steps while no parameter changes and no grad is needed."""
        if torch.is_grad_enabled():
            return self.system()
        key = tuple((id(p), p._version) for p in self.parameters())
        if self._step_cache is None or self._step_cache[0] != key:
            self._step_cache = (key, self.system())
        return self._step_cache[1]

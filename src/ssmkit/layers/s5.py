"""S5: one MIMO diagonal SSM per layer (Smith, Warrington, Linderman 2023; arXiv 2208.04933).

The state x (n complex modes) is driven by all d channels at once: x_t = A_bar x_{t-1} +
B_bar u_t, y_t = 2 Re(C x_t) + D u_t, A = diag(Lambda) from the diagonalised normal part of
HiPPO-LegS (HiPPO-N), optionally block-diagonal; B and C are drawn in the original basis and
rotated into the eigenbasis (B~ = V^-1 B, C~ = C V). Only the modes with Im(Lambda) > 0 are
stored (their conjugates are implied). It runs as a parallel scan; with ``intervals`` every
step has its own dt (irregularly sampled input, S5 section 6.3).
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from ssmkit.core.checks import check_choice, check_finite, check_tensor, values_checked
from ssmkit.core.discretize import discretize_diag
from ssmkit.core.init import log_uniform_dt, s5_init
from ssmkit.core.params import SSM_LR, ssm_parameter
from ssmkit.layers.base import apply_factory, check_state, check_step_input
from ssmkit.layers.lti import BlockConfig, LTILayer, System

Tensor = torch.Tensor
DISCRETIZATIONS = ("zoh", "bilinear")


class S5(LTILayer):
    """Simplified structured state space layer (MIMO, scan only).

    Args:
        d_model: channels d (inputs and outputs of the one MIMO system).
        N: state size P of the real system (N/2 complex modes are stored).
        blocks: number of HiPPO-N blocks on the diagonal (S5's J); N/blocks must be even.
        discretization: "zoh" (S5's default) or "bilinear".
        dt_min, dt_max: range of the log-uniform initial step sizes (one per mode).
        bidirectional: add an anti-causal pass with its own C.
        block: activation, dropout and output map around the SSM.
        lr: learning-rate cap of Lambda, dt and B.
        device, dtype: factory arguments, as in ``torch.nn.Linear``: where the parameters
            are created and their floating dtype.
    """

    def __init__(
        self,
        d_model: int,
        N: int = 64,
        blocks: int = 1,
        discretization: str = "zoh",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        bidirectional: bool = False,
        block: BlockConfig = BlockConfig(),
        lr: float | None = SSM_LR,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(d_model, ("scan",), "scan", bidirectional, block)
        self.discretization = check_choice("discretization", discretization, DISCRETIZATIONS)
        here = torch.get_default_device()  # meta under ``with torch.device("meta")``
        with torch.device("cpu"):  # an eigendecomposition: needs values, also when on meta
            Lam, V, V_inv = s5_init(N, blocks)  # (N,), (N, N), (N, N)
            keep = Lam.imag > 0  # one mode of each conjugate pair
            Lam, V, V_inv = (t.to(here) for t in (Lam[keep], V[:, keep], V_inv[keep]))
        n, h = Lam.shape[0], d_model
        self.log_Lambda_real = ssm_parameter(nn.Parameter(torch.log(-Lam.real)), lr)
        self.Lambda_imag = ssm_parameter(nn.Parameter(Lam.imag.clone()), lr)
        self.log_dt = ssm_parameter(nn.Parameter(torch.log(log_uniform_dt(n, dt_min, dt_max))), lr)
        B = torch.randn(N, h) / math.sqrt(h)  # LeCun normal in the original basis
        self.B = ssm_parameter(nn.Parameter(torch.view_as_real(V_inv @ B.to(V.dtype))), lr)
        C = torch.randn(self.directions, h, N) / math.sqrt(N)
        self.C = nn.Parameter(torch.view_as_real(C.to(V.dtype) @ V).clone())
        apply_factory(self, device, dtype)

    def _parts(self) -> tuple[Tensor, Tensor, Tensor]:
        Lam = torch.complex(-torch.exp(self.log_Lambda_real), self.Lambda_imag)  # (n,)
        return Lam, torch.view_as_complex(self.B), torch.view_as_complex(self.C)

    def system(self, intervals: Tensor | None = None) -> System:
        """The discretised system; with ``intervals`` (b, l) every step has dt * interval."""
        Lam, B, C = self._parts()
        dt = torch.exp(self.log_dt)  # (n,): one step size per mode
        if intervals is not None:
            dt = intervals.unsqueeze(-1).to(dt.dtype) * dt  # (b, l, n)
        # a trailing axis of one makes discretize_diag's per-channel dt a per-mode dt
        A_bar, gain = discretize_diag(
            Lam.unsqueeze(-1), torch.ones_like(Lam).unsqueeze(-1), dt, self.discretization
        )
        A_bar, gain = A_bar.squeeze(-1), gain.squeeze(-1)  # (n,) or (b, l, n)
        if intervals is None:
            return System(A_bar, gain.unsqueeze(-1) * B, C, conj=True, mimo=True)
        return System(A_bar, B, C, conj=True, mimo=True, gain=gain)

    def forward(
        self,
        x: Tensor,
        state: Tensor | None = None,
        lengths: Tensor | None = None,
        return_state: bool = False,
        intervals: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """As :meth:`LTILayer.forward`; ``intervals`` (b, l) > 0 are the gaps before each step
        in units of the learned dt (1 everywhere = a regularly sampled sequence)."""
        if intervals is not None:
            _check_intervals(intervals, tuple(x.shape[:2]) if isinstance(x, Tensor) else None)
            if self.bidirectional:
                raise ValueError("intervals need a causal layer; this one is bidirectional")
        return self._run(x, partial(self.system, intervals), state, lengths, return_state)

    def step(
        self, x_t: Tensor, state: Tensor, interval: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """One step; ``interval`` (b,) > 0 is the gap before this step (default 1)."""
        if interval is None:
            return super().step(x_t, state)
        self._require_causal("step")
        x_t = check_step_input(x_t, self.d_model)
        _check_intervals(interval, (x_t.shape[0],))
        sys = self.system(interval.unsqueeze(-1))  # one step: (b, 1)
        check_state(state, (x_t.shape[0], *sys.state_shape), sys.state_dtype)
        state = sys.A_bar[:, 0] * state + sys.inject(x_t.unsqueeze(1))[:, 0]
        y = sys.readout(state) + self.D * x_t
        return self._post(y.to(x_t.dtype)), state


def _check_intervals(intervals: Tensor, shape: tuple[int, ...] | None) -> None:
    check_tensor("intervals", intervals)
    if shape is not None and tuple(intervals.shape) != shape:
        raise ValueError(f"intervals must have shape {shape}, got shape {tuple(intervals.shape)}")
    check_finite("intervals", intervals, hot=True)
    if values_checked(intervals, hot=True) and not bool((intervals > 0).all()):
        raise ValueError(f"intervals must be > 0 everywhere, got min {float(intervals.min()):.4g}")

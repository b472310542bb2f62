"""S4D: a diagonal SSM per channel (Gu, Gupta, Goel, Re 2022; arXiv 2206.11893).

A = -exp(log_A_real) + i A_imag (the real part stays negative: S4D, section 3.4), one dt per
channel, N/2 stored modes standing for N/2 conjugate pairs, so K_l = 2 Re(sum_n C_n B_bar_n
A_bar_n^l). S4D-Real keeps N real modes instead.

``polarize=True`` adds the recall fix of Wang et al. (ICLR 2025, "Understanding and
mitigating bottlenecks of state space models through the lens of recency and
over-smoothing"): two of the N real state channels of each SSM have a fixed transition,
A_bar = 1 (no decay: a running sum) and A_bar = 0 (full decay: only the current input), with
learned B and C; the other N - 2 channels are the usual S4D modes.
"""

from __future__ import annotations

import torch
from torch import nn

from ssmkit.core.checks import check_choice, check_int
from ssmkit.core.discretize import discretize_diag
from ssmkit.core.init import log_uniform_dt, s4d_init, s4d_real
from ssmkit.core.params import SSM_LR, ssm_parameter
from ssmkit.layers.base import apply_factory
from ssmkit.layers.lti import MODES, BlockConfig, LTILayer, System

INITS = ("legs", "inv", "lin", "real")
DISCRETIZATIONS = ("zoh", "bilinear")
POLAR_A_BAR = (1.0, 0.0)  # the fixed transitions: no decay, full decay


class S4D(LTILayer):
    """Diagonal structured SSM layer.

    Polarization (``polarize=True``): the state of each channel ends with two real modes of
    fixed transition, A_bar = 1 then A_bar = 0, both with B_bar = dt B_polar (the ZOH and
    bilinear B_bar at A = 0; the full-decay mode takes the same, as Mamba's polarized
    channel does) and their own C_polar. So K_l gains C_1 dt B_1 for every l (the running
    sum) and C_0 dt B_0 at l = 0 only (the current token). The constants are concatenated to
    the learned diagonal, never computed from parameters, so they are exact in the kernel,
    the scan and ``step``. With a complex init the two real modes are stored as modes of the
    complex state with imaginary part 0 and C halved, so the conjugate-pair readout
    2 Re(C x) gives exactly C_polar x: the kernel is 2 Re(sum over the (N - 2)/2 learned
    pairs) plus the two real terms, and the state has (N - 2)/2 + 2 complex entries (N - 2
    learned real dimensions plus 2 fixed ones). With ``init="real"`` they are the last two of
    N real modes. The learned modes are initialised for size N - 2 (e.g. S4D-LegS of size
    N - 2).

    Args:
        d_model: channels d (one SISO SSM each).
        N: state size per channel; even for the complex inits (N/2 conjugate pairs).
            ``polarize`` needs N >= 4 (complex inits) or N >= 3 (``init="real"``).
        init: "legs", "inv", "lin" (complex) or "real" (A_n = -(n + 1)).
        discretization: "zoh" (the paper's default) or "bilinear".
        dt_min, dt_max: range of the log-uniform initial step sizes.
        mode: "conv" (FFT convolution; training) or "scan" (recurrence).
        bidirectional: add an anti-causal SSM (second C).
        block: activation, dropout and output map around the SSM.
        polarize: fix two state channels to A_bar = 1 and A_bar = 0 (see above).
        lr: learning-rate cap of A, dt and B (see :func:`ssmkit.param_groups`).
        device, dtype: factory arguments, as in ``torch.nn.Linear``: where the parameters
            are created and their floating dtype.
    """

    def __init__(
        self,
        d_model: int,
        N: int = 64,
        init: str = "legs",
        discretization: str = "zoh",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        mode: str = "conv",
        bidirectional: bool = False,
        block: BlockConfig = BlockConfig(),
        polarize: bool = False,
        lr: float | None = SSM_LR,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(d_model, MODES, mode, bidirectional, block)
        check_choice("init", init, INITS)
        self.discretization = check_choice("discretization", discretization, DISCRETIZATIONS)
        check_int("N", N, minimum=1)
        if not isinstance(polarize, bool):
            raise TypeError(f"polarize must be a bool, got {type(polarize).__name__}")
        if polarize:
            _check_polarized_N(N, init)
        self.init, self.N, self.polarize = init, N, polarize
        h, k = d_model, self.directions
        n_learned = N - 2 if polarize else N  # real state dimensions with learned A
        if init == "real":
            A = s4d_real(n_learned)  # (n,)
            self.conj = False
            self.log_A_real = ssm_parameter(nn.Parameter(torch.log(-A).repeat(h, 1)), lr)
            self.A_imag = None
            self.B = ssm_parameter(nn.Parameter(torch.ones(h, n_learned)), lr)
            self.C = nn.Parameter(torch.randn(k, h, n_learned))
        else:
            A = s4d_init(init, n_learned)  # (n/2,) complex; raises on odd N
            self.conj = True
            n = A.shape[0]
            self.log_A_real = ssm_parameter(nn.Parameter(torch.log(-A.real).repeat(h, 1)), lr)
            self.A_imag = ssm_parameter(nn.Parameter(A.imag.repeat(h, 1)), lr)
            B = torch.ones(h, n, dtype=torch.complex64)
            self.B = ssm_parameter(nn.Parameter(torch.view_as_real(B).clone()), lr)
            C = torch.randn(k, h, n, dtype=torch.complex64)  # variance 1/2 per part
            self.C = nn.Parameter(torch.view_as_real(C).clone())
        if polarize:  # real B and C of the modes A_bar = 1 (index 0) and A_bar = 0 (index 1)
            self.B_polar = ssm_parameter(nn.Parameter(torch.ones(h, 2)), lr)
            self.C_polar = nn.Parameter(torch.randn(k, h, 2))
        dt = log_uniform_dt(h, dt_min, dt_max)
        self.log_dt = ssm_parameter(nn.Parameter(torch.log(dt)), lr)
        apply_factory(self, device, dtype)

    def system(self) -> System:
        A = -torch.exp(self.log_A_real)
        if self.A_imag is not None:
            A = torch.complex(A, self.A_imag)  # (h, n)
            B, C = torch.view_as_complex(self.B), torch.view_as_complex(self.C)
        else:
            B, C = self.B, self.C
        dt = torch.exp(self.log_dt)  # (h,)
        A_bar, B_bar = discretize_diag(A, B, dt, self.discretization)
        if self.polarize:
            A_bar, B_bar, C = self._polarized(A_bar, B_bar, C, dt)
        return System(A_bar, B_bar, C, conj=self.conj)

    def _polarized(
        self, A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor, dt: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Append the two fixed modes to the learned ones: (h, n) -> (h, n + 2), C (k, h, n + 2).

        A conjugate-pair readout doubles each mode (2 Re(C x)); the fixed modes are real, so
        their C is halved to count once (an exact division by 2).
        """
        h = A_bar.shape[0]
        A_fixed = torch.tensor(POLAR_A_BAR, dtype=A_bar.dtype, device=A_bar.device)
        B_fixed = dt.unsqueeze(-1) * self.B_polar  # (h, 2)
        C_fixed = self.C_polar / 2 if self.conj else self.C_polar  # (k, h, 2)
        A_bar = torch.cat([A_bar, A_fixed.expand(h, 2)], dim=-1)  # (h, n + 2)
        B_bar = torch.cat([B_bar, B_fixed.to(B_bar.dtype)], dim=-1)  # (h, n + 2)
        C = torch.cat([C, C_fixed.to(C.dtype)], dim=-1)  # (k, h, n + 2)
        return A_bar, B_bar, C


def _check_polarized_N(N: int, init: str) -> None:
    """polarize keeps N - 2 learned channels: at least one (a conjugate pair if complex)."""
    if init == "real":
        if N < 3:
            raise ValueError(
                f"polarize fixes 2 of the N state channels and keeps at least 1 learned: "
                f"needs N >= 3 with init='real', got N={N}"
            )
        return
    if N < 4 or N % 2:
        raise ValueError(
            f"polarize fixes 2 of the N state channels and keeps at least 1 learned conjugate "
            f"pair: needs an even N >= 4 with init={init!r}, got N={N}"
        )

"""S4D: a diagonal SSM per channel (Gu, Gupta, Goel, Re 2022; arXiv 2206.11893).

A = -exp(log_A_real) + i A_imag (the real part stays negative: S4D, section 3.4), one dt per
channel, N/2 stored modes standing for N/2 conjugate pairs, so K_l = 2 Re(sum_n C_n B_bar_n
A_bar_n^l). S4D-Real keeps N real modes instead.
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


class S4D(LTILayer):
    """Diagonal structured SSM layer.

    Args:
        d_model: channels d (one SISO SSM each).
        N: state size per channel; even for the complex inits (N/2 conjugate pairs).
        init: "legs", "inv", "lin" (complex) or "real" (A_n = -(n + 1)).
        discretization: "zoh" (the paper's default) or "bilinear".
        dt_min, dt_max: range of the log-uniform initial step sizes.
        mode: "conv" (FFT convolution; training) or "scan" (recurrence).
        bidirectional: add an anti-causal SSM (second C).
        block: activation, dropout and output map around the SSM.
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
        lr: float | None = SSM_LR,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(d_model, MODES, mode, bidirectional, block)
        check_choice("init", init, INITS)
        self.discretization = check_choice("discretization", discretization, DISCRETIZATIONS)
        check_int("N", N, minimum=1)
        self.init, self.N = init, N
        h, k = d_model, self.directions
        if init == "real":
            A = s4d_real(N)  # (n,)
            self.conj = False
            self.log_A_real = ssm_parameter(nn.Parameter(torch.log(-A).repeat(h, 1)), lr)
            self.A_imag = None
            self.B = ssm_parameter(nn.Parameter(torch.ones(h, N)), lr)
            self.C = nn.Parameter(torch.randn(k, h, N))
        else:
            A = s4d_init(init, N)  # (N/2,) complex; raises on odd N
            self.conj = True
            n = A.shape[0]
            self.log_A_real = ssm_parameter(nn.Parameter(torch.log(-A.real).repeat(h, 1)), lr)
            self.A_imag = ssm_parameter(nn.Parameter(A.imag.repeat(h, 1)), lr)
            B = torch.ones(h, n, dtype=torch.complex64)
            self.B = ssm_parameter(nn.Parameter(torch.view_as_real(B).clone()), lr)
            C = torch.randn(k, h, n, dtype=torch.complex64)  # variance 1/2 per part
            self.C = nn.Parameter(torch.view_as_real(C).clone())
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
        A_bar, B_bar = discretize_diag(A, B, torch.exp(self.log_dt), self.discretization)
        return System(A_bar, B_bar, C, conj=self.conj)

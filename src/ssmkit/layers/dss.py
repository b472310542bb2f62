"""DSS: diagonal state spaces (Gupta, Gu, Berant 2022; arXiv 2203.14343).

DSS fixes B = 1 and learns W (the C of the other layers), Lambda and dt. Its two kernels:

* "exp":     K_l = 2 Re(sum_n W_n (exp(dt Lambda_n) - 1) / Lambda_n exp(l dt Lambda_n)),
  the ZOH kernel of (Lambda, B = 1, C = W);
* "softmax": K_l = 2 Re(sum_n W_n / Lambda_n softmax_l(l dt Lambda_n)), each mode's powers
  normalised by their sum over l < l_max, which is B_bar_n = (1 - A_bar_n) /
  (Lambda_n (1 - A_bar_n^l_max)) on the recurrence A_bar_n = exp(dt Lambda_n).

Both are diagonal LTI systems, so conv, scan and step agree. Here Re(Lambda) < 0 in both
variants (the recurrence must stay stable for the scan and step modes).
"""

from __future__ import annotations

import torch
from torch import nn

from ssmkit.core.checks import check_choice, check_int
from ssmkit.core.discretize import discretize_diag
from ssmkit.core.init import log_uniform_dt, s4d_init
from ssmkit.core.params import SSM_LR, ssm_parameter
from ssmkit.layers.base import apply_factory
from ssmkit.layers.lti import MODES, BlockConfig, LTILayer, System

KERNELS = ("exp", "softmax")


class DSS(LTILayer):
    """Diagonal state space layer.

    Args:
        d_model: channels d.
        N: state size (even: N/2 conjugate pairs), Lambda initialised to S4D-LegS (the
            eigenvalues of HiPPO-LegS's normal part, as in DSS).
        kernel: "exp" or "softmax".
        l_max: the normalisation length of the softmax kernel (the training length).
        dt_min, dt_max: range of the log-uniform initial step sizes.
        mode, bidirectional, block, lr: as for :class:`ssmkit.layers.S4D`.
        device, dtype: factory arguments, as in ``torch.nn.Linear``: where the parameters
            are created and their floating dtype.
    """

    def __init__(
        self,
        d_model: int,
        N: int = 64,
        kernel: str = "exp",
        l_max: int = 1024,
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
        self.kind = check_choice("kernel", kernel, KERNELS)
        self.l_max = check_int("l_max", l_max, minimum=1)
        check_int("N", N, minimum=2)
        Lam = s4d_init("legs", N)  # (N/2,) raises on odd N
        h, n = d_model, Lam.shape[0]
        self.log_Lambda_real = ssm_parameter(nn.Parameter(torch.log(-Lam.real).repeat(h, 1)), lr)
        self.Lambda_imag = ssm_parameter(nn.Parameter(Lam.imag.repeat(h, 1)), lr)
        self.log_dt = ssm_parameter(nn.Parameter(torch.log(log_uniform_dt(h, dt_min, dt_max))), lr)
        W = torch.randn(self.directions, h, n, dtype=torch.complex64)
        self.W = nn.Parameter(torch.view_as_real(W).clone())
        apply_factory(self, device, dtype)

    def system(self) -> System:
        Lam = torch.complex(-torch.exp(self.log_Lambda_real), self.Lambda_imag)  # (h, n)
        dt = torch.exp(self.log_dt)
        A_bar, B_bar = discretize_diag(Lam, torch.ones_like(Lam), dt, "zoh")
        if self.kind == "softmax":  # 1 / (Lambda sum_{l < l_max} A_bar^l)
            B_bar = (1 - A_bar) / (Lam * (1 - A_bar**self.l_max))
        return System(A_bar, B_bar, torch.view_as_complex(self.W), conj=True)

"""LRU: the linear recurrent unit (Orvieto et al. 2023; arXiv 2303.06349).

Parameterised directly in discrete time: lambda = exp(-exp(nu_log) + i exp(theta_log)),
initialised uniformly on a ring r_min <= |lambda| <= r_max with phase in [0, max_phase];
the input is normalised by gamma = sqrt(1 - |lambda|^2) (a learned exp(gamma_log)), and
y_t = Re(C x_t) + D u_t with x_t = lambda x_{t-1} + gamma B u_t (complex B, C; MIMO).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ssmkit.core.checks import check_int
from ssmkit.core.init import lru_lambda, lru_ring_init
from ssmkit.core.params import SSM_LR, ssm_parameter
from ssmkit.layers.base import apply_factory
from ssmkit.layers.lti import BlockConfig, LTILayer, System


class LRU(LTILayer):
    """Linear recurrent unit layer (MIMO, scan only).

    Args:
        d_model: channels d (H in the paper).
        N: number of complex modes (the paper's N; no conjugate pairing: y = Re(C x)).
        r_min, r_max: ring of the initial |lambda| (paper: 0.9 and 0.999 on long tasks).
        max_phase: largest initial phase (paper: pi / 10 on long tasks, 2 pi default).
        bidirectional: add an anti-causal pass with its own C.
        block: activation, dropout and output map around the recurrence.
        lr: learning-rate cap of nu_log, theta_log, gamma_log (no weight decay).
        device, dtype: factory arguments, as in ``torch.nn.Linear``: where the parameters
            are created and their floating dtype.
    """

    def __init__(
        self,
        d_model: int,
        N: int = 64,
        r_min: float = 0.0,
        r_max: float = 1.0,
        max_phase: float = 2 * math.pi,
        bidirectional: bool = False,
        block: BlockConfig = BlockConfig(),
        lr: float | None = SSM_LR,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(d_model, ("scan",), "scan", bidirectional, block)
        check_int("N", N, minimum=1)
        nu_log, theta_log, gamma_log = lru_ring_init(N, r_min, r_max, max_phase)
        self.nu_log = ssm_parameter(nn.Parameter(nu_log), lr)
        self.theta_log = ssm_parameter(nn.Parameter(theta_log), lr)
        self.gamma_log = ssm_parameter(nn.Parameter(gamma_log), lr)
        h = d_model
        B = torch.randn(N, h, dtype=torch.complex64) / math.sqrt(h)  # variance 1/(2h) per part
        C = torch.randn(self.directions, h, N, dtype=torch.complex64) / math.sqrt(N)
        self.B = nn.Parameter(torch.view_as_real(B).clone())
        self.C = nn.Parameter(torch.view_as_real(C).clone())
        apply_factory(self, device, dtype)

    def system(self) -> System:
        lam = lru_lambda(self.nu_log, self.theta_log)  # (n,)
        B_bar = torch.exp(self.gamma_log).unsqueeze(-1) * torch.view_as_complex(self.B)  # (n, h)
        return System(lam, B_bar, torch.view_as_complex(self.C), conj=False, mimo=True)

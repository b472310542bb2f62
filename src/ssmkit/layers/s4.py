"""S4: the diagonal-plus-low-rank structured SSM (Gu, Goel, Re 2022; arXiv 2111.00396).

A = diag(Lambda) - P^T conj(P) in HiPPO-LegS's eigenbasis (its NPLR form, S4 Theorem 1), one
dt per channel, N/2 stored modes standing for conjugate pairs. With the bilinear rule the
kernel comes from Cauchy sums at the roots of unity plus the Woodbury correction
(:func:`ssmkit.core.kernels.kernel_dplr`; its default "roots" backend differentiates the
Cauchy sums by one FFT and Vandermonde GEMMs over all roots of unity, so a training step's
backward costs less than its forward's Cauchy sums and keeps no (h, N, L) table); C_tilde is
the parameter and C = C_tilde (I - A_bar^l_max)^{-1} is formed when the recurrent form needs
it, so one trained layer runs at any length and steps exactly.

The recurrent modes use the dense (N, N) transition of each channel: ``mode="scan"`` and
``step`` cost O(N^2) per step and channel. In conv mode a given or returned state also
goes through that recurrence (the DPLR matrix has no cheap power sum); for streaming, S4D
is the fast choice. ``discretization="zoh"`` builds the dense exp(dt A) and powers it (exact,
O(L N^2)); the bilinear default is the paper's and the fast one.
"""

from __future__ import annotations

import torch
from torch import nn

from ssmkit.core.checks import check_choice, check_int
from ssmkit.core.discretize import discretize_dplr
from ssmkit.core.hippo import nplr
from ssmkit.core.init import log_uniform_dt
from ssmkit.core.kernels import (
    DPLR_BACKENDS,
    dplr_c_tilde,
    expand_conj,
    kernel_dense,
    kernel_dplr,
)
from ssmkit.core.kernels_dplr_long import dplr_c_tilde_rescale
from ssmkit.core.params import SSM_LR, ssm_parameter
from ssmkit.layers.base import apply_factory
from ssmkit.layers.lti import MODES, BlockConfig, LTILayer, System

Tensor = torch.Tensor
DISCRETIZATIONS = ("bilinear", "zoh")


class S4(LTILayer):
    """Structured state space layer (DPLR, HiPPO-LegS initialisation).

    Args:
        d_model: channels d (one SISO SSM each).
        N: state size per channel (even: N/2 conjugate pairs are stored).
        rank: rank r of the low-rank term (1 for HiPPO-LegS; extra rows start at zero).
        l_max: the length C_tilde is defined for (the training length; longer inputs work).
        discretization: "bilinear" (Cauchy kernel, the paper's) or "zoh" (dense).
        dt_min, dt_max: range of the log-uniform initial step sizes.
        mode: "conv" or "scan" (the dense recurrence).
        bidirectional, block, lr: as for :class:`ssmkit.layers.S4D`.
        kernel_backend: backend of :func:`ssmkit.core.kernels.kernel_dplr` ("auto", "ref",
            "adjoint", "roots"); the same kernel and gradients, "ref" has the slowest backward
            and, for
            inputs longer than l_max, forms C_tilde for the new length by the definition
            (two dense matrix powers) instead of :func:`dplr_c_tilde_rescale`.
        device, dtype: factory arguments, as in ``torch.nn.Linear``: where the parameters
            are created and their floating dtype.
    """

    def __init__(
        self,
        d_model: int,
        N: int = 64,
        rank: int = 1,
        l_max: int = 1024,
        discretization: str = "bilinear",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        mode: str = "conv",
        bidirectional: bool = False,
        block: BlockConfig = BlockConfig(),
        lr: float | None = SSM_LR,
        kernel_backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(d_model, MODES, mode, bidirectional, block)
        self.discretization = check_choice("discretization", discretization, DISCRETIZATIONS)
        self.kernel_backend = check_choice("kernel_backend", kernel_backend, DPLR_BACKENDS)
        check_int("rank", rank, minimum=1)
        self.l_max = check_int("l_max", l_max, minimum=1)
        check_int("N", N, minimum=2)
        Lam, P, B, _ = nplr("legs", N, dtype=torch.complex64)  # raises on odd N
        n, h = N // 2, d_model
        Lam, P, B = Lam[:n], P[:, :n], B[:n]  # the stored half
        P = torch.cat([P, P.new_zeros(rank - 1, n)])  # (r, n)
        self.log_Lambda_real = ssm_parameter(nn.Parameter(torch.log(-Lam.real).repeat(h, 1)), lr)
        self.Lambda_imag = ssm_parameter(nn.Parameter(Lam.imag.repeat(h, 1)), lr)
        self.P = ssm_parameter(nn.Parameter(torch.view_as_real(P.repeat(h, 1, 1)).clone()), lr)
        self.B = ssm_parameter(nn.Parameter(torch.view_as_real(B.repeat(h, 1)).clone()), lr)
        self.log_dt = ssm_parameter(nn.Parameter(torch.log(log_uniform_dt(h, dt_min, dt_max))), lr)
        C_tilde = torch.randn(self.directions, h, n, dtype=torch.complex64)
        self.C_tilde = nn.Parameter(torch.view_as_real(C_tilde).clone())
        apply_factory(self, device, dtype)

    def _parts(self) -> tuple[Tensor, ...]:
        Lam = torch.complex(-torch.exp(self.log_Lambda_real), self.Lambda_imag)  # (h, n)
        P = torch.view_as_complex(self.P)  # (h, r, n)
        B = torch.view_as_complex(self.B)  # (h, n)
        C_tilde = torch.view_as_complex(self.C_tilde)  # (k, h, n)
        return Lam, P, B, C_tilde, torch.exp(self.log_dt)

    def kernel(self, L: int) -> Tensor:
        """(k, h, L) kernels; Cauchy + Woodbury for bilinear, dense powering for ZOH."""
        Lam, P, B, C_tilde, dt = self._parts()
        if self.discretization == "bilinear" and self.l_max >= L:
            K = kernel_dplr(Lam, P, P, B, C_tilde, dt, self.l_max, backend=self.kernel_backend)
            return K[..., :L]
        if self.discretization == "bilinear":  # longer than l_max: C_tilde for length L
            if self.kernel_backend == "ref":  # the definition: C from system(), then C (I - A^L)
                C = self.system().C[..., : Lam.shape[-1]]
                C_tilde_L = dplr_c_tilde(Lam, P, P, C, dt, L)
            else:  # shares A^(2^i) between both powers
                C_tilde_L = dplr_c_tilde_rescale(Lam, P, P, C_tilde, dt, self.l_max, L)
            return kernel_dplr(Lam, P, P, B, C_tilde_L, dt, L, backend=self.kernel_backend)
        sys = self.system()
        return kernel_dense(sys.A_bar, sys.B_bar, sys.C, L).real

    def system(self) -> System:
        """The full conjugate-symmetric system: dense (h, N, N) A_bar, C from C_tilde."""
        Lam, P, B, C_tilde, dt = self._parts()
        Lam, P, B, C_tilde = (expand_conj(x) for x in (Lam, P, B, C_tilde))
        A_bar, B_bar = discretize_dplr(Lam, P, P, B, dt, self.discretization)
        eye = torch.eye(A_bar.shape[-1], dtype=A_bar.dtype, device=A_bar.device)
        M = eye - torch.linalg.matrix_power(A_bar, self.l_max)  # (h, N, N)
        # C (I - A^l_max) = C_tilde  <=>  (I - A^l_max)^T C^T = C_tilde^T
        C = torch.linalg.solve(M.mT, C_tilde.unsqueeze(-1)).squeeze(-1)  # (k, h, N)
        return System(A_bar, B_bar, C, conj=False, dense=True)

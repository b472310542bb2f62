"""SpaceTime's companion-matrix SSM (Zhang, Saab, Poli, Dao, Goel, Re 2023; arXiv 2303.09489).

A discrete-time SISO SSM per channel whose transition is a companion matrix,

    A = S + a e_N^T:   (A x)_0 = a_0 x_{N-1},   (A x)_i = x_{i-1} + a_i x_{N-1}  (i >= 1),

a shift S plus a learned last column a. Its kernel k_l = C A^l B obeys the AR recursion
k_{l+N} = sum_i a_i k_{l+i} (Cayley-Hamilton), so it represents any AR(p) process with p <= N
exactly (a = the AR coefficients reversed, B = e_1, C = the first N taps of the impulse
response), including repeated roots and the pure shift (a = 0: an FIR filter over the last N
inputs), which a diagonal SSM cannot.

Kernel by FFT (the paper's O(L log L) algorithm, derived here from two identities): on the
L-th roots of unity z, sum_{l<L} k_l z^l = C_tilde (I - zA)^{-1} B with C_tilde = C (I - A^L),
and Sherman-Morrison on I - zA = (I - zS) - z a e_N^T, with (I - zS)^{-1} = M = sum_j z^j S^j:

    K_hat(z) = C_tilde M B + z (C_tilde M a)(e_N^T M B) / (1 - z e_N^T M a).

Each c^T M b is a polynomial in z of degree < N (a correlation of c and b), evaluated by FFT.
:func:`ssmkit.core.kernels.kernel_dense` (powering the dense A) is the slow twin.

Closed loop (``closed_loop=True``, the paper's forecasting mode): the layer also learns K,
a prediction of the next input from the state, u_hat_{t+1} = K x_t. :meth:`next_input`
gives these predictions over a sequence (trained against the true next inputs), and
:meth:`forecast` runs the loop u_{t+1} = K x_t, x_{t+1} = A x_t + B u_{t+1} past the end of
the context, i.e. x_{t+j} = (A + B K)^j x_t, with outputs C x + D u through the block.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.core.checks import check_int
from ssmkit.core.fftconv import fftconv
from ssmkit.core.params import SSM_LR, ssm_parameter
from ssmkit.layers.base import apply_factory, check_sequence
from ssmkit.layers.lti import MODES, BlockConfig, LTILayer, System

Tensor = torch.Tensor


def companion(a: Tensor) -> Tensor:
    """The companion matrix S + a e_N^T: (*, N) -> (*, N, N), ones below the diagonal."""
    N = a.shape[-1]
    S = torch.diag(torch.ones(N - 1, dtype=a.dtype, device=a.device), -1)  # (N, N)
    last = F.pad(a.unsqueeze(-1), (N - 1, 0))  # (*, N, N): a in the last column
    return S + last


def _correlate(c: Tensor, b: Tensor) -> Tensor:
    """Coefficients of c^T M b = sum_j z^j sum_{i >= j} c_i b_{i-j}: (*, N), (*, N) -> (*, N)."""
    N = b.shape[-1]
    lag = torch.arange(N, device=b.device)
    idx = lag.unsqueeze(0) - lag.unsqueeze(1)  # (N, N): [j, i] = i - j
    T = b[..., idx.clamp(min=0)] * (idx >= 0)  # (*, N, N): b_{i-j}
    return (T * c.unsqueeze(-2)).sum(-1)


def _at_roots(p: Tensor, L: int) -> Tensor:
    """sum_j p_j z^j at z = exp(-2 pi i m / L), m < L: (*, N) real -> (*, L) complex.

    Coefficients of degree >= L fold onto degree mod L (z^L = 1 on these points)."""
    N = p.shape[-1]
    if N > L:
        m = -(-N // L)
        p = F.pad(p, (0, m * L - N)).unflatten(-1, (m, L)).sum(-2)  # (*, L)
    return torch.fft.fft(p, n=L)


def kernel_companion(a: Tensor, B: Tensor, C: Tensor, L: int) -> Tensor:
    """Kernel k_l = C A^l B, l < L, of the companion SSM A = S + a e_N^T, by FFT.

    Args:
        a: (h, N) last column of A. B: (h, N). C: (k, h, N) (k output rows).
        L: kernel length.

    Returns:
        (k, h, L) real. Exact while no eigenvalue of A is an L-th root of unity's inverse
        (1 - z e_N^T M a = det(I - zA) = 0 there); a stable A (|eig| < 1) never meets one.
    """
    A_L = torch.linalg.matrix_power(companion(a), L)  # (h, N, N)
    C_t = C - (C.unsqueeze(-2) @ A_L).squeeze(-2)  # (k, h, N): C (I - A^L)
    m = torch.arange(L, device=a.device, dtype=a.dtype)
    z = torch.polar(torch.ones_like(m), -2 * math.pi * m / L)  # (L,)
    cb = _at_roots(_correlate(C_t, B), L)  # (k, h, L)
    ca = _at_roots(_correlate(C_t, a), L)
    eb = _at_roots(B.flip(-1), L)  # (h, L): e_N^T M B
    ea = _at_roots(a.flip(-1), L)
    K_hat = cb + z * ca * eb / (1 - z * ea)
    return torch.fft.ifft(K_hat, n=L).real


class SpaceTime(LTILayer):
    """Companion-matrix SSM layer (SISO per channel, in the block of :class:`LTILayer`).

    Args:
        d_model: channels d (one SSM each).
        N: state size (AR order it can represent).
        mode: "conv" (FFT kernel; training) or "scan" (the recurrence).
        closed_loop: learn K (u_hat_{t+1} = K x_t) for :meth:`next_input` and :meth:`forecast`.
        bidirectional: add an anti-causal SSM (second C; no recurrent state then).
        block: activation, dropout and output map around the SSM.
        lr: learning-rate cap of a and B (see :func:`ssmkit.param_groups`).
        device, dtype: factory arguments, as in ``torch.nn.Linear``: where the parameters
            are created and their floating dtype.
    """

    def __init__(
        self,
        d_model: int,
        N: int = 64,
        mode: str = "conv",
        closed_loop: bool = False,
        bidirectional: bool = False,
        block: BlockConfig = BlockConfig(),
        lr: float | None = SSM_LR,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(d_model, MODES, mode, bidirectional, block)
        self.N = check_int("N", N, minimum=1)
        h, k = d_model, self.directions
        # a = 0: A is the shift, the kernel an FIR filter over the last N inputs (stable)
        self.a = ssm_parameter(nn.Parameter(torch.zeros(h, N)), lr)
        self.B = ssm_parameter(nn.Parameter(torch.randn(h, N) / math.sqrt(N)), lr)
        self.C = nn.Parameter(torch.randn(k, h, N) / math.sqrt(N))
        self.K = nn.Parameter(torch.zeros(h, N)) if closed_loop else None
        apply_factory(self, device, dtype)

    def system(self) -> System:
        return System(companion(self.a), self.B, self.C, conj=False, dense=True)

    def kernel(self, L: int) -> Tensor:
        """Convolution kernels (k, h, L) by :func:`kernel_companion`."""
        return kernel_companion(self.a, self.B, self.C, L)

    def next_input(self, x: Tensor) -> Tensor:
        """Closed-loop predictions u_hat_{t+1} = K x_t over a sequence, by FFT convolution.

        Args:
            x: (b, l, d) input (the SSM's input u).

        Returns:
            (b, l, d): entry t predicts x[:, t + 1] from x[:, :t + 1] (train it against them).
        """
        self._require_closed_loop("next_input")
        self._require_causal("next_input")
        x = check_sequence("x", x, self.d_model, self.D.dtype)
        K_next = kernel_companion(self.a, self.B, self.K.unsqueeze(0), x.shape[1])[0]  # (h, l)
        return fftconv(x, K_next)

    def forecast(self, x: Tensor, horizon: int, lengths: Tensor | None = None) -> Tensor:
        """Closed-loop forecast: run the context, then feed u_{t+1} = K x_t back ``horizon`` times.

        Args:
            x: (b, l, d) context.
            horizon: steps to forecast.
            lengths: (b,) valid steps per item of a right-padded context.

        Returns:
            (b, horizon, d): the layer's outputs at the steps after each item's context.
        """
        self._require_closed_loop("forecast")
        check_int("horizon", horizon, minimum=1)
        _, state = self(x, lengths=lengths, return_state=True)  # (b, h, N)
        ys = []
        for _ in range(horizon):
            u_hat = (self.K * state).sum(-1).to(x.dtype)  # (b, h): K x_t
            y, state = self.step(u_hat, state)
            ys.append(y)
        return torch.stack(ys, dim=1)

    def _require_closed_loop(self, what: str) -> None:
        if self.K is None:
            raise ValueError(f"{what} needs SpaceTime(..., closed_loop=True); this layer has no K")

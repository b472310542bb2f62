"""Long convolutions with smooth kernels (Fu, Epstein, Nguyen, Thomas, Zhang, Dao, Rudra, Re
2023; arXiv 2302.06646).

The SSM's kernel K_l = C A_bar^l B_bar is replaced by a free kernel: one learned tap per
channel and lag, K in R^(h x l_max). Free kernels overfit to noise, so the paper regularises
them in the forward pass, before the FFT convolution:

* Squash: K <- sign(K) max(|K| - lambda, 0) (soft thresholding: small taps become exactly 0);
* Smooth: K <- AvgPool_p(K) (a moving average of width p along the lags).

The layer is LTI, so it runs in the same block as the SSM layers (:class:`LTILayer`:
y = K * u + D u, activation, dropout, output map) through :func:`ssmkit.core.fftconv`. It is
not a state space model: the kernel has no recurrence behind it, so there is no recurrent
state, and ``step``, ``initial_state`` and ``forward`` with a state refuse with a clear error.
Inputs longer than ``l_max`` see the kernel zero-padded (lags >= l_max weigh 0).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.core.checks import check_int
from ssmkit.core.params import SSM_LR, ssm_parameter
from ssmkit.layers.base import apply_factory
from ssmkit.layers.lti import BlockConfig, LTILayer, System

Tensor = torch.Tensor


def squash_smooth(K: Tensor, lam: float, width: int) -> Tensor:
    """The paper's kernel regularisers: soft threshold by ``lam``, then a moving average.

    Args:
        K: (..., L) raw kernel taps.
        lam: squash threshold lambda >= 0 (0: no squashing).
        width: odd moving-average width p >= 1 (1: no smoothing); at the two ends the average
            runs over the taps inside the window only.

    Returns:
        (..., L) regularised kernel.
    """
    K = torch.sign(K) * F.relu(K.abs() - lam) if lam > 0 else K
    if width == 1:
        return K
    shape = K.shape
    flat = K.reshape(-1, 1, shape[-1])  # (B, 1, L)
    smooth = F.avg_pool1d(flat, width, stride=1, padding=width // 2, count_include_pad=False)
    return smooth.reshape(shape)


class LongConv(LTILayer):
    """Long convolution layer: a directly parameterised length-``l_max`` kernel per channel.

    Args:
        d_model: channels d (one kernel each).
        l_max: kernel length L (the training length).
        lam: squash threshold lambda (the paper's sparsity regulariser; 0 turns it off).
        smooth: odd moving-average width p over the lags (1 turns smoothing off).
        init_scale: taps start as N(0, (init_scale / sqrt(l_max))^2), so a kernel's output
            has about ``init_scale`` times the input's scale.
        bidirectional: a second, anti-causal kernel (non-causal tasks).
        block: activation, dropout and output map around the convolution.
        lr: learning-rate cap of the kernel taps (see :func:`ssmkit.param_groups`).
        device, dtype: factory arguments, as in ``torch.nn.Linear``: where the parameters
            are created and their floating dtype.
    """

    def __init__(
        self,
        d_model: int,
        l_max: int = 1024,
        lam: float = 1e-3,
        smooth: int = 3,
        init_scale: float = 1.0,
        bidirectional: bool = False,
        block: BlockConfig = BlockConfig(),
        lr: float | None = SSM_LR,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(d_model, ("conv",), "conv", bidirectional, block)
        self.l_max = check_int("l_max", l_max, minimum=1)
        self.smooth = check_int("smooth", smooth, minimum=1)
        if smooth % 2 == 0:
            raise ValueError(
                f"smooth must be an odd width (the kernel keeps its length), got {smooth}"
            )
        if not (isinstance(lam, float | int) and 0 <= lam < math.inf):
            raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
        if not (isinstance(init_scale, float | int) and 0 < init_scale < math.inf):
            raise ValueError(f"init_scale must be a finite number > 0, got {init_scale!r}")
        self.lam = float(lam)
        std = init_scale / math.sqrt(l_max)
        taps = torch.randn(self.directions, d_model, l_max) * std  # (k, h, L)
        self.K_raw = ssm_parameter(nn.Parameter(taps), lr)
        apply_factory(self, device, dtype)

    def kernel(self, L: int) -> Tensor:
        """The regularised kernels (k, h, min(L, l_max)); k = 2 when bidirectional."""
        return squash_smooth(self.K_raw, self.lam, self.smooth)[..., : min(L, self.l_max)]

    def system(self) -> System:
        raise ValueError(
            "LongConv has no recurrent state: its kernel is a free length-l_max filter, not "
            "an SSM, so step, initial_state and forward with state or return_state are not "
            "available; run forward on whole sequences (or use an SSM layer to stream)"
        )

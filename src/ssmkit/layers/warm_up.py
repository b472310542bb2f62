"""Which numba kernels a model needs, compiled (or loaded from the on-disk cache) before use.

On first use the "auto" backends compile their numba kernels in a background thread and run
a PyTorch backend meanwhile. Training and benchmarks call :func:`warm_up_for` first, so that
every step runs one backend (bit-for-bit resume; timings of kernels, not of compilers).
"""

from __future__ import annotations

import torch
from torch import nn

from ssmkit.layers import mamba2_input
from ssmkit.layers.mamba import Mamba
from ssmkit.layers.mamba2 import Mamba2
from ssmkit.layers.norms import RMSNorm
from ssmkit.ops import gated_norm
from ssmkit.ops.selective_scan import cpu_numba as scan_numba
from ssmkit.ops.ssd import cpu_numba as ssd_numba

# module type -> the kernel family its CPU "auto" path runs
KERNELS = (
    (Mamba, scan_numba.warm_up),
    (Mamba2, ssd_numba.warm_up),
    (Mamba2, mamba2_input.warm_up),
    (RMSNorm, gated_norm.warm_up),
)


def warm_up_for(model: nn.Module, dtype: torch.dtype = torch.float32) -> None:
    """Compile every numba kernel family that ``model``'s modules use, and wait for them.

    Args:
        model: any module; its submodules decide (Mamba: the selective scan, Mamba-2: the
            SSD kernels and the fused input path, RMSNorm: the fused norm). A model with
            none of them costs nothing.
        dtype: the floating dtype the kernels are compiled for.
    """
    present = {type(m) for m in model.modules()}
    for kind, warm_up in KERNELS:
        if any(issubclass(t, kind) for t in present):
            warm_up(dtype, wait=True)

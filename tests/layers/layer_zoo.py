"""One tiny instance of every ssmkit layer, shared by the compile and device-hygiene tests."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ssmkit.layers import DSS, LRU, S4, S4D, S5
from ssmkit.layers.attention import CausalSelfAttention
from ssmkit.layers.bimamba import BiMamba
from ssmkit.layers.gss import GSS
from ssmkit.layers.h3 import H3
from ssmkit.layers.longconv import LongConv
from ssmkit.layers.mamba import Mamba
from ssmkit.layers.mamba2 import Mamba2
from ssmkit.layers.spacetime import SpaceTime

D = 8  # d_model of every layer here

# name -> constructor(**factory kwargs) -> layer
LAYERS: dict[str, Callable[..., nn.Module]] = {
    "s4d": lambda **f: S4D(D, N=4, **f),
    "s4d-scan": lambda **f: S4D(D, N=4, mode="scan", **f),
    "s4": lambda **f: S4(D, N=4, l_max=16, **f),
    "dss": lambda **f: DSS(D, N=4, l_max=16, **f),
    "s5": lambda **f: S5(D, N=4, **f),
    "lru": lambda **f: LRU(D, N=4, **f),
    "longconv": lambda **f: LongConv(D, l_max=16, **f),
    "spacetime": lambda **f: SpaceTime(D, N=4, **f),
    "mamba": lambda **f: Mamba(D, d_state=4, **f),
    "mamba2": lambda **f: Mamba2(D, d_state=8, headdim=4, chunk_size=4, **f),
    "h3": lambda **f: H3(D, N=4, shift_size=4, **f),
    "gss": lambda **f: GSS(D, d_ssm=8, expand=2, N=4, **f),
    "attention": lambda **f: CausalSelfAttention(D, n_heads=2, **f),
    "bimamba": lambda **f: BiMamba(D, d_state=4, **f),
}
LTI = ("s4d", "s4d-scan", "s4", "dss", "s5", "lru", "longconv", "spacetime")

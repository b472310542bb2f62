"""Small instances of every LTI layer, shared by the layer tests."""

from __future__ import annotations

import pytest
import torch

from ssmkit.layers import DSS, LRU, S4, S4D, S5, BlockConfig
from ssmkit.layers.spacetime import SpaceTime

D_MODEL = 3

# name -> (constructor(d_model, bidirectional, block) -> layer, has conv mode)
FACTORIES = {
    "s4d-legs": (lambda d, bi, blk: S4D(d, N=8, init="legs", bidirectional=bi, block=blk), True),
    "s4d-inv": (lambda d, bi, blk: S4D(d, N=8, init="inv", bidirectional=bi, block=blk), True),
    "s4d-lin-bilinear": (
        lambda d, bi, blk: S4D(
            d, N=8, init="lin", discretization="bilinear", bidirectional=bi, block=blk
        ),
        True,
    ),
    "s4d-real": (lambda d, bi, blk: S4D(d, N=5, init="real", bidirectional=bi, block=blk), True),
    "dss-exp": (lambda d, bi, blk: DSS(d, N=8, bidirectional=bi, block=blk), True),
    "dss-softmax": (
        lambda d, bi, blk: DSS(d, N=8, kernel="softmax", l_max=32, bidirectional=bi, block=blk),
        True,
    ),
    "s4": (lambda d, bi, blk: S4(d, N=8, l_max=16, bidirectional=bi, block=blk), True),
    "s4-zoh-rank2": (
        lambda d, bi, blk: S4(
            d, N=8, rank=2, l_max=8, discretization="zoh", bidirectional=bi, block=blk
        ),
        True,
    ),
    "s5": (lambda d, bi, blk: S5(d, N=8, bidirectional=bi, block=blk), False),
    "s5-blocks-bilinear": (
        lambda d, bi, blk: S5(
            d, N=8, blocks=2, discretization="bilinear", bidirectional=bi, block=blk
        ),
        False,
    ),
    "lru": (lambda d, bi, blk: LRU(d, N=6, r_min=0.5, bidirectional=bi, block=blk), False),
    "spacetime": (lambda d, bi, blk: SpaceTime(d, N=5, bidirectional=bi, block=blk), True),
}
NAMES = list(FACTORIES)
CONV_NAMES = [n for n in NAMES if FACTORIES[n][1]]


def make(
    name: str,
    bidirectional: bool = False,
    block: BlockConfig | None = None,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
):
    torch.manual_seed(seed)
    layer = FACTORIES[name][0](D_MODEL, bidirectional, block or BlockConfig())
    _perturb(layer, seed)
    return layer.to(dtype)


def _perturb(layer: torch.nn.Module, seed: int) -> None:
    """Move every parameter off its initial value, so tests exercise a trained-like layer
    (e.g. S4's extra low-rank rows and D start from values that would hide mistakes)."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def modes(name: str) -> list[str]:
    return ["conv", "scan"] if FACTORIES[name][1] else ["scan"]


def run_steps(layer, x: torch.Tensor, state: torch.Tensor | None = None):
    """The step loop over x: (b, l, d) -> (y, final state)."""
    state = layer.initial_state(x.shape[0]) if state is None else state
    ys = []
    for t in range(x.shape[1]):
        y_t, state = layer.step(x[:, t], state)
        ys.append(y_t)
    return torch.stack(ys, dim=1), state


@pytest.fixture(params=NAMES)
def name(request):
    return request.param

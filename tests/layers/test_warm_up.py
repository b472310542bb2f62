"""warm_up_for compiles exactly the kernel families a model's modules use."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ssmkit.layers import warm_up
from ssmkit.layers.mamba import Mamba
from ssmkit.layers.mamba2 import Mamba2
from ssmkit.layers.norms import RMSNorm
from ssmkit.ops import gated_norm

pytest.importorskip("numba")


def _recorded(monkeypatch) -> list[tuple[str, torch.dtype, bool]]:
    calls = []
    kernels = tuple(
        (kind, lambda dtype, wait, name=kind.__name__: calls.append((name, dtype, wait)))
        for kind, _ in warm_up.KERNELS
    )
    monkeypatch.setattr(warm_up, "KERNELS", kernels)
    return calls


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (nn.Linear(3, 3), set()),
        (nn.Sequential(Mamba(8, d_state=4)), {"Mamba"}),
        (nn.Sequential(Mamba2(32, d_state=8, headdim=8)), {"Mamba2", "RMSNorm"}),
        (nn.Sequential(nn.Linear(4, 4), RMSNorm(4)), {"RMSNorm"}),
    ],
)
def test_warm_up_for_picks_the_kernels_of_the_modules_present(monkeypatch, model, expected):
    calls = _recorded(monkeypatch)
    warm_up.warm_up_for(model, torch.float64)
    assert {name for name, _, _ in calls} == expected
    assert all(dtype == torch.float64 and wait for _, dtype, wait in calls)


def test_warm_up_for_leaves_the_norm_kernels_compiled():
    warm_up.warm_up_for(nn.Sequential(RMSNorm(4)), torch.float64)
    assert gated_norm.ready(torch.float64)

"""Every layer's forward compiles with torch.compile(fullgraph=True): no graph breaks.

backend="eager" traces with dynamo (a graph break fails under fullgraph=True) without
generating code, so the test stays fast on CPU. While compiling, the default checks mode is
"cheap" (no value checks in forwards) and "auto" backends pick pure-PyTorch implementations.
"""

from __future__ import annotations

import pytest
import torch

import ssmkit
from tests.layers.layer_zoo import LAYERS, D

SLOW = ("s4", "mamba2", "h3", "gss", "bimamba")  # the longest traces (several seconds each)


def _compiles_like_eager(name: str, mode: str | None) -> None:
    torch.manual_seed(0)
    layer = LAYERS[name]().eval()
    x = torch.randn(2, 7, D)
    torch._dynamo.reset()
    with ssmkit.checks(mode):
        y = torch.compile(layer, fullgraph=True, backend="eager")(x)[0]
    torch.testing.assert_close(y, layer(x)[0])


@pytest.mark.parametrize(
    "name", [n if n not in SLOW else pytest.param(n, marks=pytest.mark.slow) for n in LAYERS]
)
def test_layer_forward_compiles_without_graph_breaks(name):
    _compiles_like_eager(name, None)


def test_compiles_with_checks_off():
    _compiles_like_eager("mamba", "off")

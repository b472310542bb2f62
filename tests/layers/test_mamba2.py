"""The Mamba-2 layer: streaming forms agree, padding, gradients, errors."""

from __future__ import annotations

import pytest
import torch

from ssmkit.layers.mamba2 import Mamba2, Mamba2State
from ssmkit.testing import assert_close, randn

D = 8


def layer(backend="auto", dtype=torch.float64, chunk_size=4):
    torch.manual_seed(0)
    m = Mamba2(D, d_state=4, d_conv=3, expand=2, headdim=4, ngroups=2, chunk_size=chunk_size,
               backend=backend).to(dtype)  # fmt: skip
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return m


@pytest.mark.parametrize("backend", ["ref", "chunked"])
def test_steps_equal_forward(backend):
    m = layer(backend)
    x = randn(2, 11, D, dtype=torch.float64)
    y, s = m(x, return_state=True)
    state = m.initial_state(2)
    ys = []
    for t in range(11):
        y_t, state = m.step(x[:, t], state)
        ys.append(y_t)
    assert_close(torch.stack(ys, 1), y)
    assert_close(state.ssm, s.ssm)
    assert_close(state.conv, s.conv)


@pytest.mark.parametrize("k", [1, 5])
def test_split_with_state_equals_whole(k):
    m = layer()
    x = randn(2, 13, D, dtype=torch.float64, seed=1)
    y, s = m(x, return_state=True)
    y1, s1 = m(x[:, :k], return_state=True)
    y2, s2 = m(x[:, k:], state=s1, return_state=True)
    assert_close(torch.cat([y1, y2], 1), y)
    assert_close(s2.ssm, s.ssm)


def test_padded_batch_equals_items():
    m = layer()
    x = randn(3, 10, D, dtype=torch.float64, seed=2)
    lengths = torch.tensor([10, 6, 1])
    padded = x.clone()
    for i, n in enumerate(lengths):
        padded[i, n:] = 30.0
    y, s = m(padded, lengths=lengths, return_state=True)
    for i, n in enumerate(lengths.tolist()):
        yi, si = m(x[i : i + 1, :n], return_state=True)
        assert_close(y[i : i + 1, :n], yi)
        assert bool((y[i, n:] == 0).all())
        assert_close(s.ssm[i : i + 1], si.ssm)
        assert_close(s.conv[i : i + 1], si.conv)


def test_gradients_reach_every_parameter():
    m = layer(dtype=torch.float32)
    y, _ = m(randn(2, 9, D, dtype=torch.float32))
    y.pow(2).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


def test_bad_configs_and_states():
    with pytest.raises(ValueError, match="headdim"):
        Mamba2(8, expand=2, headdim=5)
    m = layer()
    with pytest.raises(TypeError, match="Mamba2State"):
        m(randn(1, 3, D, dtype=torch.float64), state=torch.zeros(1))
    bad = Mamba2State(torch.zeros(1, 3, 2), torch.zeros(1, 4, 4, 4))
    with pytest.raises(ValueError, match=r"state\.conv must have shape"):
        m(randn(1, 3, D, dtype=torch.float64), state=bad)

"""The Mamba layer: streaming forms agree, padding, gradients, parameter names, errors."""

from __future__ import annotations

import pytest
import torch

from ssmkit.layers.mamba import Mamba, MambaState
from ssmkit.testing import assert_close, randn

D = 8


def layer(backend="ref", dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    m = Mamba(D, d_state=4, d_conv=3, expand=2, backend=backend, **kw).to(dtype)
    with torch.no_grad():  # conv bias and D away from their defaults
        for p in m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return m


@pytest.mark.parametrize("backend", ["ref", "chunked", "numba"])
def test_steps_equal_forward(backend):
    m = layer(backend)
    x = randn(2, 13, D, dtype=torch.float64)
    y, s = m(x, return_state=True)
    state = m.initial_state(2)
    ys = []
    for t in range(13):
        y_t, state = m.step(x[:, t], state)
        ys.append(y_t)
    assert_close(torch.stack(ys, 1), y)
    assert_close(state.conv, s.conv)
    assert_close(state.ssm, s.ssm)


@pytest.mark.parametrize("k", [1, 2, 7])
def test_split_with_state_equals_whole(k):
    m = layer()
    x = randn(2, 13, D, dtype=torch.float64, seed=1)
    y, s = m(x, return_state=True)
    y1, s1 = m(x[:, :k], return_state=True)
    y2, s2 = m(x[:, k:], state=s1, return_state=True)
    assert_close(torch.cat([y1, y2], 1), y)
    assert_close(s2.ssm, s.ssm)
    assert_close(s2.conv, s.conv)


def test_padded_batch_equals_items_and_batch_consistency():
    m = layer()
    x = randn(3, 12, D, dtype=torch.float64, seed=2)
    lengths = torch.tensor([12, 5, 1])
    padded = x.clone()
    for i, n in enumerate(lengths):
        padded[i, n:] = 50.0
    y, s = m(padded, lengths=lengths, return_state=True)
    for i, n in enumerate(lengths.tolist()):
        yi, si = m(x[i : i + 1, :n], return_state=True)
        assert_close(y[i : i + 1, :n], yi)
        assert bool((y[i, n:] == 0).all())
        assert_close(s.ssm[i : i + 1], si.ssm)
        assert_close(s.conv[i : i + 1], si.conv)


def test_gradients_reach_every_parameter_and_the_initial_state():
    m = layer("auto", dtype=torch.float32)
    x = randn(2, 9, D, dtype=torch.float32)
    s0 = m(randn(2, 4, D, dtype=torch.float32, seed=5), return_state=True)[1]
    s0 = MambaState(s0.conv.detach().requires_grad_(), s0.ssm.detach().requires_grad_())
    y, _ = m(x, state=s0)
    y.pow(2).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name
    assert s0.ssm.grad.abs().max() > 0 and s0.conv.grad.abs().max() > 0


def test_parameter_names_and_shapes_match_the_reference_implementation():
    m = Mamba(16, d_state=8, d_conv=4, expand=2)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "in_proj.weight": (64, 16),
        "conv1d.weight": (32, 1, 4),
        "conv1d.bias": (32,),
        "x_proj.weight": (1 + 16, 32),
        "dt_proj.weight": (32, 1),
        "dt_proj.bias": (32,),
        "A_log": (32, 8),
        "D": (32,),
        "out_proj.weight": (16, 32),
    }
    dt = torch.nn.functional.softplus(m.dt_proj.bias.detach())
    assert float(dt.min()) >= 1e-4 and float(dt.max()) <= 0.1 + 1e-6
    assert_close(-torch.exp(m.A_log[0]), -torch.arange(1.0, 9.0))


def test_ssm_stays_float32_under_bf16_autocast():
    m = layer("auto", dtype=torch.float32)
    x = randn(1, 16, D, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, s = m(x, return_state=True)
    assert s.ssm.dtype == torch.float32
    assert bool(torch.isfinite(y).all())
    assert_close(y.float(), m(x)[0], rtol=5e-2, atol=5e-2)


def test_bad_inputs_raise():
    m = layer()
    x = randn(2, 5, D, dtype=torch.float64)
    with pytest.raises(ValueError, match="d_model = 8"):
        m(randn(2, 5, D + 1, dtype=torch.float64))
    with pytest.raises(TypeError, match="MambaState"):
        m(x, state=torch.zeros(2, 16, 4))
    with pytest.raises(ValueError, match=r"state\.ssm must have shape"):
        m(x, state=MambaState(torch.zeros(2, 16, 2), torch.zeros(2, 16, 5)))
    with pytest.raises(ValueError, match="lengths must lie"):
        m(x, lengths=torch.tensor([6, 1]))
    with pytest.raises(ValueError, match="dt_rank"):
        Mamba(8, dt_rank=0)
    with pytest.raises(ValueError, match="unknown backend"):
        Mamba(8, backend="cuda_graph")(torch.randn(1, 3, 8))


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_packed_sequences_equal_one_by_one(kind):
    from ssmkit.layers.mamba2 import Mamba2

    torch.manual_seed(0)
    if kind == "mamba":
        m = Mamba(D, d_state=4, d_conv=3, backend="auto").double()
    else:
        m = Mamba2(D, d_state=4, d_conv=3, headdim=4, ngroups=2, chunk_size=4).double()
    seqs = [randn(1, n, D, dtype=torch.float64, seed=n) for n in (5, 1, 9, 2)]
    cu = torch.tensor([0, 5, 6, 15, 17])
    y, s = m(torch.cat(seqs, 1), cu_seqlens=cu, return_state=True)
    for i, x in enumerate(seqs):
        yi, si = m(x, return_state=True)
        assert_close(y[:, cu[i] : cu[i + 1]], yi)
    assert_close(s.ssm, si.ssm)
    assert_close(s.conv, si.conv)
    with pytest.raises(ValueError, match="cu_seqlens must be increasing"):
        m(torch.cat(seqs, 1), cu_seqlens=torch.tensor([0, 5, 5, 17]))
    with pytest.raises(ValueError, match="batch 1"):
        m(randn(2, 17, D, dtype=torch.float64), cu_seqlens=cu)

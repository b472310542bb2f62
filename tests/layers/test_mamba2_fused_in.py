"""Mamba-2's fused input path (split, causal conv1d, SiLU, split in one kernel each way)
against its composition, as an op and inside the layer: outputs, states and all gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ssmkit.layers import mamba2_input
from ssmkit.layers.mamba2 import Mamba2
from ssmkit.layers.mamba2_input import Mamba2Sizes
from ssmkit.layers.warm_up import warm_up_for
from ssmkit.testing import assert_close, grads, randn

pytestmark = pytest.mark.skipif(not mamba2_input.available(), reason="numba is not installed")


def op(backend, sizes):
    def f(zxbcdt, weight, bias, *state):
        out = mamba2_input.mamba2_input(
            zxbcdt, weight, bias, state[0] if state else None, sizes, backend
        )
        return tuple(out)

    return f


def op_inputs(b, L, sizes, k, seed=0, with_state=True, dtype=torch.float64):
    d, g, n, h, _ = sizes
    conv_dim = d + 2 * g * n
    tensors = [
        randn(b, L, d + conv_dim + h, seed=seed, dtype=dtype),
        randn(conv_dim, 1, k, seed=seed + 1, dtype=dtype),
        randn(conv_dim, seed=seed + 2, dtype=dtype),
    ]
    if with_state:
        tensors.append(randn(b, conv_dim, k - 1, seed=seed + 3, dtype=dtype))
    return [t.requires_grad_(True) for t in tensors]


TWO_GROUPS = (Mamba2Sizes(8, 2, 3, 2, 4), 4, True)  # and a conv state
ODD_HEADDIM = (Mamba2Sizes(10, 1, 4, 2, 5), 3, False)  # no state
NO_WINDOW = (Mamba2Sizes(6, 1, 2, 3, 2), 1, False)  # k = 1
OP_CASES = [(L, *case) for L in (1, 2, 7, 63) for case in (TWO_GROUPS, ODD_HEADDIM, NO_WINDOW)]


@pytest.mark.parametrize(("L", "sizes", "k", "with_state"), [*OP_CASES, (1001, *TWO_GROUPS)])
def test_fused_input_matches_ref_outputs_and_all_gradients(L, sizes, k, with_state):
    """1001 steps: blocks of 64 with a partial last one; L = 2 < k - 1: the state reaches
    past the sequence's end."""
    inputs = op_inputs(2, L, sizes, k, seed=L, with_state=with_state)
    got, want = op("numba", sizes)(*inputs), op("ref", sizes)(*inputs)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b)
    for a, b in zip(
        grads(op("numba", sizes), inputs), grads(op("ref", sizes), inputs), strict=True
    ):
        assert_close(a, b)


def test_fused_input_gradcheck():
    sizes = Mamba2Sizes(4, 2, 2, 2, 2)
    inputs = op_inputs(2, 5, sizes, 3, seed=3)
    assert torch.autograd.gradcheck(op("numba", sizes), inputs)


def test_fused_input_without_bias_float32_and_repeatable():
    sizes = Mamba2Sizes(8, 1, 4, 2, 4)
    zx, w, _ = op_inputs(3, 130, sizes, 4, seed=4, with_state=False, dtype=torch.float32)
    inputs = [zx, w]
    got, want = op("numba", sizes)(zx, w, None), op("ref", sizes)(zx, w, None)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b)

    def f(backend):
        return lambda zx, w: op(backend, sizes)(zx, w, None)

    first, second = grads(f("numba"), inputs), grads(f("numba"), inputs)
    for a, b, c in zip(first, second, grads(f("ref"), inputs), strict=True):
        assert torch.equal(a, b)
        assert_close(a, c, rtol=1e-4, atol=1e-5)


def test_fused_input_bad_inputs_are_clear_errors():
    sizes = Mamba2Sizes(8, 1, 4, 2, 4)
    zx, w, bias, state = op_inputs(2, 5, sizes, 4)
    f = mamba2_input.mamba2_input
    with pytest.raises(ValueError, match=r"zxbcdt must have shape \(b, l, 26\).*got \(2, 5, 25\)"):
        f(zx[..., 1:], w, bias, state, sizes)
    with pytest.raises(ValueError, match=r"d_inner must be nheads \* headdim = 6, got 8"):
        f(zx, w, bias, state, Mamba2Sizes(8, 1, 4, 2, 3))
    with pytest.raises(ValueError, match=r"weight must have shape \(16, 1, k\), got \(15, 1, 4\)"):
        f(zx, w[1:], bias, state, sizes)
    with pytest.raises(ValueError, match=r"bias must have shape \(16,\), got \(15,\)"):
        f(zx, w, bias[1:], state, sizes)
    with pytest.raises(ValueError, match=r"state must have shape \(2, 16, 3\), got \(2, 16, 2\)"):
        f(zx, w, bias, state[..., 1:], sizes)
    with pytest.raises(ValueError, match=r"backend must be one of .* got 'fast'"):
        f(zx, w, bias, state, sizes, "fast")
    with pytest.raises(ValueError, match="backend 'numba' of mamba2_input takes CPU tensors"):
        f(zx, w.float(), bias, state, sizes, "numba")  # mixed dtypes
    with pytest.raises(ValueError, match=r"unknown input_backend 'fast'; expected one of"):
        Mamba2(8, d_state=4, headdim=4, input_backend="fast")


def layers(ngroups, headdim, d_model, d_conv=4):
    torch.manual_seed(0)
    kw = dict(d_state=5, d_conv=d_conv, expand=2, headdim=headdim, ngroups=ngroups)
    fused = Mamba2(d_model, input_backend="numba", **kw).double()
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(0.05 * torch.randn_like(p))
    composed = Mamba2(d_model, input_backend="ref", **kw).double()
    composed.load_state_dict(fused.state_dict())
    return fused, composed


def run_layer(m, x, state0, **kw):
    xg = x.clone().requires_grad_(True)
    h0 = state0.ssm.clone().requires_grad_(True)
    y, state = m(xg, state0._replace(ssm=h0), return_state=True, **kw)
    loss = (y * randn(*y.shape, seed=5)).sum() + (state.ssm * randn(*h0.shape, seed=6)).sum()
    loss = loss + (state.conv * randn(*state.conv.shape, seed=7)).sum()
    m.zero_grad(set_to_none=True)
    loss.backward()
    return (y, state.ssm, state.conv, xg.grad, h0.grad, *(p.grad for p in m.parameters()))


LAYER_CASES = [(L, *case) for L in (1, 7, 63) for case in ((2, 4, 8), (1, 5, 5))]


@pytest.mark.parametrize(("L", "ngroups", "headdim", "d_model"), [*LAYER_CASES, (1000, 2, 4, 8)])
def test_layer_with_fused_input_matches_composed(L, ngroups, headdim, d_model):
    """An initial conv and SSM state, per-item lengths; headdim 5 is odd."""
    fused, composed = layers(ngroups, headdim, d_model)
    x = randn(2, L, d_model, seed=L)
    state0 = composed.initial_state(2)
    state0 = state0._replace(
        conv=randn(*state0.conv.shape, seed=98), ssm=randn(*state0.ssm.shape, seed=99) * 0.3
    )
    lengths = torch.tensor([L, max(1, L - 3)])
    got = run_layer(fused, x, state0, lengths=lengths)
    want = run_layer(composed, x, state0, lengths=lengths)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b)


def test_layer_packed_sequences_take_the_composed_path():
    fused, composed = layers(1, 4, 8)
    x = randn(1, 12, 8, seed=3)
    cu = torch.tensor([0, 5, 12])
    state0 = composed.initial_state(1)
    for a, b in zip(
        run_layer(fused, x, state0, cu_seqlens=cu),
        run_layer(composed, x, state0, cu_seqlens=cu),
        strict=True,
    ):
        assert torch.equal(a, b)


def test_auto_picks_the_fused_input_once_compiled_and_warm_up_for_compiles_it():
    warm_up_for(nn.Sequential(Mamba2(8, d_state=4, headdim=4)), torch.float64)
    assert mamba2_input.ready(torch.float64)
    m = Mamba2(8, d_state=4, headdim=4).double()
    zx = torch.zeros(1, 3, m.in_proj.out_features, dtype=torch.float64)
    assert m._fused_input(zx, None)
    assert not Mamba2(8, d_state=4, headdim=4, backend="chunked").double()._fused_input(zx, None)
    assert not m._fused_input(zx.bfloat16(), None)

"""Causal self-attention (KV cache, RoPE) and bidirectional Mamba: the layer protocol."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from ssmkit.layers.attention import CausalSelfAttention, KVCache, attention_ref, rope
from ssmkit.layers.bimamba import BiMamba, reverse_valid
from ssmkit.layers.mamba import Mamba
from ssmkit.testing import assert_close, randn

D = 8


def _attention(backend: str = "sdpa", seed: int = 0) -> CausalSelfAttention:
    torch.manual_seed(seed)
    return CausalSelfAttention(D, n_heads=2, backend=backend).double()


def _steps(layer, x, state=None):
    state = layer.initial_state(x.shape[0]) if state is None else state
    ys = []
    for t in range(x.shape[1]):
        y, state = layer.step(x[:, t], state)
        ys.append(y)
    return torch.stack(ys, 1), state


@pytest.mark.parametrize("l", [1, 7, 63, 131])
def test_attention_step_and_split_equal_whole(l):
    layer = _attention()
    x = randn(2, l, D, dtype=torch.float64, seed=l)
    y, cache = layer(x, return_state=True)
    y_steps, cache_steps = _steps(layer, x)
    assert_close(y_steps, y)
    assert_close(cache_steps.k, cache.k)
    assert_close(cache_steps.v, cache.v)
    assert torch.equal(cache_steps.valid, cache.valid)
    k = l // 2
    if k:
        y1, s = layer(x[:, :k], return_state=True)
        y2, s2 = layer(x[:, k:], state=s, return_state=True)
        assert_close(torch.cat([y1, y2], 1), y)
        assert_close(s2.k, cache.k)


@pytest.mark.parametrize("l", [1, 7, 63])
def test_attention_sdpa_equals_reference_with_all_gradients(l):
    fast, ref = _attention("sdpa"), _attention("ref")
    x = randn(2, l, D, dtype=torch.float64, seed=3)
    lengths = torch.tensor([l, max(1, l - 3)])
    outs = []
    for layer in (fast, ref):
        xi = x.clone().requires_grad_(True)
        y, s = layer(xi, lengths=lengths, return_state=True)
        w = randn(*y.shape, dtype=y.dtype, seed=4)
        (y * w).sum().backward()
        grads = [p.grad for p in layer.parameters()]
        assert all(g is not None and g.abs().max() > 0 for g in grads)
        outs.append((y, s.k, s.v, xi.grad, *grads))
    for a, b in zip(*outs, strict=True):
        assert_close(a, b)


def test_attention_padded_batch_equals_items_and_continues_like_them():
    layer = _attention()
    x, more = randn(3, 9, D, dtype=torch.float64), randn(3, 4, D, dtype=torch.float64, seed=1)
    lengths = torch.tensor([9, 5, 1])
    y, s = layer(x, lengths=lengths, return_state=True)
    y_next, _ = layer(more, state=s)
    assert bool((y[1, 5:] == 0).all()) and bool((y[2, 1:] == 0).all())
    for i, n in enumerate(lengths.tolist()):
        yi, si = layer(x[i : i + 1, :n], return_state=True)
        assert_close(y[i : i + 1, :n], yi)
        assert_close(y_next[i : i + 1], layer(more[i : i + 1], state=si)[0])


def test_attention_is_causal_and_rope_is_relative():
    layer = _attention()
    x = randn(1, 10, D, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 6:] += 1.0
    assert_close(layer(x)[0][:, :6], layer(x2)[0][:, :6])
    assert not torch.allclose(layer(x)[0][:, 6:], layer(x2)[0][:, 6:])
    q, k = randn(1, 1, 1, 4, dtype=torch.float64), randn(1, 1, 1, 4, dtype=torch.float64, seed=1)
    scores = [
        (rope(q, torch.tensor([[a + s]])) * rope(k, torch.tensor([[b + s]]))).sum()
        for a, b, s in ((5, 2, 0), (5, 2, 11))
    ]
    assert_close(scores[0], scores[1])  # q_m . k_n depends on m - n only


def test_attention_reference_is_the_softmax_formula():
    q, k, v = (randn(1, 1, 2, 2, dtype=torch.float64, seed=s) for s in range(3))
    allowed = torch.tensor([[True, False], [True, True]]).view(1, 1, 2, 2)
    out = attention_ref(q, k, v, allowed)
    assert_close(out[0, 0, 0], v[0, 0, 0])  # the first query sees only the first key
    s = (q[0, 0, 1] @ k[0, 0].T) / 2**0.5
    assert_close(out[0, 0, 1], torch.softmax(s, -1) @ v[0, 0])


@pytest.mark.parametrize("backend", ["sdpa", "ref"])
def test_attention_gradcheck_float64(backend):
    layer = _attention(backend)
    params = dict(layer.named_parameters())
    x = randn(1, 4, D, dtype=torch.float64, seed=2).requires_grad_(True)

    def f(x, *values):
        return functional_call(layer, dict(zip(params, values, strict=True)), (x,))[0]

    inputs = (x, *(p.detach().clone().requires_grad_(True) for p in params.values()))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


def test_attention_rejects_bad_configs_and_states():
    with pytest.raises(ValueError, match=r"d_model \(6\) must be n_heads \(4\)"):
        CausalSelfAttention(6, n_heads=4)
    with pytest.raises(ValueError, match="even head size"):
        CausalSelfAttention(6, n_heads=2)
    with pytest.raises(ValueError, match="backend"):
        CausalSelfAttention(8, backend="flash")
    layer = _attention()
    with pytest.raises(TypeError, match="KVCache"):
        layer.step(randn(2, D, dtype=torch.float64), torch.zeros(2, 3))
    bad = KVCache(torch.zeros(2, 3, 1, 4), torch.zeros(2, 3, 1, 4), torch.ones(2, 1).bool())
    with pytest.raises(ValueError, match=r"state.k must have shape \(2, 2, 1, 4\)"):
        layer.step(randn(2, D, dtype=torch.float64), bad._replace(k=bad.k.double()))
    with pytest.raises(ValueError, match="shape"):
        layer(randn(2, 5, D + 1, dtype=torch.float64))


# -- bidirectional Mamba ----------------------------------------------------------------------


def _bimamba(shared: bool, seed: int = 0, d: int = D, expand: int = 2) -> BiMamba:
    torch.manual_seed(seed)
    layer = BiMamba(d, d_state=4, expand=expand, shared=shared, backend="ref").double()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # move off the init (D = 1, equal rows) so mistakes show
        for p in layer.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return layer


def _forward_twin(layer: BiMamba) -> tuple[Mamba, Mamba]:
    """Causal Mamba layers with the forward and the backward branch's parameters."""
    back = Mamba(D, d_state=4, backend="ref").double()
    branch = layer.mamba if layer.shared else layer.backward_branch
    state = dict(branch.state_dict())
    projections = layer.mamba.state_dict().items()
    state.update({k: v for k, v in projections if k.startswith(("in_proj.", "out_proj."))})
    back.load_state_dict(state)
    return layer.mamba, back


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("l", [1, 7, 63, 101])
def test_bimamba_is_a_forward_plus_a_reversed_mamba(shared, l):
    """Oracle: out_proj is linear, so y = Mamba_f(x) + flip(Mamba_b(flip(x)))."""
    layer = _bimamba(shared)
    fwd, back = _forward_twin(layer)
    x = randn(2, l, D, dtype=torch.float64, seed=l)
    expected = fwd(x)[0] + back(x.flip(1))[0].flip(1)
    assert_close(layer(x)[0], expected)


@pytest.mark.parametrize("shared", [True, False])
def test_bimamba_padded_batch_equals_items_and_sees_the_future(shared):
    layer = _bimamba(shared)
    x = randn(3, 11, D, dtype=torch.float64)
    lengths = torch.tensor([11, 6, 1])
    y, state = layer(x, lengths=lengths)
    assert state is None and bool((y[1, 6:] == 0).all())
    for i, n in enumerate(lengths.tolist()):
        assert_close(y[i : i + 1, :n], layer(x[i : i + 1, :n])[0])
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert not torch.allclose(layer(x2)[0][:, 0], layer(x)[0][:, 0])


def test_reverse_valid_reverses_each_item_and_is_an_involution():
    x = torch.arange(10.0).view(2, 5, 1)
    lengths = torch.tensor([5, 3])
    r = reverse_valid(x, lengths)
    assert r[1, :, 0].tolist() == [7.0, 6.0, 5.0, 8.0, 9.0]
    assert torch.equal(reverse_valid(r, lengths), x)


@pytest.mark.parametrize("shared", [True, False])
def test_bimamba_gradients_reach_every_parameter_and_gradcheck(shared):
    layer = _bimamba(shared)
    x = randn(2, 9, D, dtype=torch.float64)
    (layer(x, lengths=torch.tensor([9, 4]))[0] ** 2).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name
    n_params = sum(p.numel() for p in layer.parameters())
    assert (n_params < sum(p.numel() for p in _bimamba(False).parameters())) == shared
    layer = _bimamba(shared, d=2, expand=1)  # gradcheck: a tiny layer
    params = dict(layer.named_parameters())
    xs = randn(1, 3, 2, dtype=torch.float64, seed=5).requires_grad_(True)

    def f(x, *values):
        return functional_call(layer, dict(zip(params, values, strict=True)), (x,))[0]

    inputs = (xs, *(p.detach().clone().requires_grad_(True) for p in params.values()))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


def test_bimamba_refuses_streaming():
    layer = _bimamba(False)
    x = randn(1, 4, D, dtype=torch.float64)
    for call in (
        lambda: layer.step(x[:, 0], None),
        lambda: layer.initial_state(1),
        lambda: layer(x, return_state=True),
        lambda: layer(x, state=object()),
    ):
        with pytest.raises(ValueError, match="non-causal and has no recurrent state"):
            call()
    with pytest.raises(TypeError, match="shared must be a bool"):
        BiMamba(D, shared=1)

"""Recall fixes (polarization, mimetic init, training initial states) and hybrid attention
models: forms agree, the fixed channels do what they claim, bad options are refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from ssmkit.layers.attention import CausalSelfAttention
from ssmkit.layers.mamba import MIMETIC_A, Mamba
from ssmkit.models.sequence import IOSpec, ModelConfig, SequenceModel
from ssmkit.ops.selective_scan import cpu_numba
from ssmkit.testing import assert_close, randn

D = 4
TOKENS = IOSpec("tokens", 11, vocab_size=11, max_length=64, causal=True)
CLASSIFY = IOSpec("classification", 3, vocab_size=11, max_length=64, causal=False)


def _polarized(backend: str = "ref", seed: int = 0) -> Mamba:
    torch.manual_seed(seed)
    layer = Mamba(D, d_state=5, polarize=True, backend=backend).double()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return layer


@pytest.mark.parametrize("l", [1, 7, 63, 129])
def test_polarized_backends_agree_with_all_gradients_and_states(l):
    x = randn(2, l, D, dtype=torch.float64, seed=l)
    h0 = randn(2, 2 * D, 5, dtype=torch.float64, seed=9)
    results = []
    for backend in ("ref", "chunked", "numba") if cpu_numba.available() else ("ref", "chunked"):
        layer = _polarized(backend)
        xi, hi = x.clone().requires_grad_(True), h0.clone().requires_grad_(True)
        state = layer.initial_state(2)._replace(ssm=hi)
        y, s = layer(xi, state=state, return_state=True)
        ((y * randn(*y.shape, dtype=y.dtype, seed=1)).sum() + s.ssm.square().sum()).backward()
        grads = [p.grad for p in layer.parameters()]
        assert all(g is not None and g.abs().max() > 0 for g in grads), backend
        results.append((y, s.ssm, s.conv, xi.grad, hi.grad, *grads))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert_close(a, b)


def test_polarized_channels_are_a_running_sum_and_the_current_token():
    layer = _polarized()
    x = randn(2, 9, D, dtype=torch.float64)
    _, s = layer(x, return_state=True)
    xs, _ = layer.in_proj(x).chunk(2, -1)
    xs = F.silu(layer.conv1d(xs)[0])
    delta, B, _ = layer._selection(xs)
    inputs = delta.unsqueeze(-1) * B.unsqueeze(2) * xs.unsqueeze(-1)  # (b, l, d_inner, n)
    assert_close(s.ssm[..., -2], inputs[..., -2].sum(1))  # A_bar = 1: nothing decays
    assert_close(s.ssm[..., -1], inputs[:, -1, :, -1])  # A_bar = 0: only the last step
    assert layer.A_log.shape == (2 * D, 3)


@pytest.mark.parametrize("l", [1, 7, 63])
def test_polarized_step_split_padding_and_packing_equal_whole(l):
    layer = _polarized()
    x = randn(3, l, D, dtype=torch.float64, seed=l)
    y, s = layer(x, return_state=True)
    state, ys = layer.initial_state(3), []
    for t in range(l):
        y_t, state = layer.step(x[:, t], state)
        ys.append(y_t)
    assert_close(torch.stack(ys, 1), y)
    assert_close(state.ssm, s.ssm)
    k = (l + 1) // 2
    y1, s1 = layer(x[:, :k], return_state=True)
    if k < l:
        y2, s2 = layer(x[:, k:], state=s1, return_state=True)
        assert_close(torch.cat([y1, y2], 1), y)
        assert_close(s2.ssm, s.ssm)
    lengths = torch.tensor([l, max(1, l - 4), 1])
    yp, sp = layer(x, lengths=lengths, return_state=True)
    for i, n in enumerate(lengths.tolist()):
        yi, si = layer(x[i : i + 1, :n], return_state=True)
        assert_close(yp[i : i + 1, :n], yi)
        assert_close(sp.ssm[i : i + 1], si.ssm)
    if l > 2:  # two packed sequences = each alone
        cut = l // 2
        yk, _ = layer(x[:1], cu_seqlens=torch.tensor([0, cut, l]))
        assert_close(yk[:, cut:], layer(x[:1, cut:])[0])


def test_polarized_gradcheck_float64():
    torch.manual_seed(0)
    layer = Mamba(2, d_state=3, expand=1, polarize=True, backend="ref").double()
    params = dict(layer.named_parameters())
    x = randn(1, 4, 2, dtype=torch.float64, seed=3).requires_grad_(True)

    def f(x, *values):
        return functional_call(layer, dict(zip(params, values, strict=True)), (x,))[0]

    inputs = (x, *(p.detach().clone().requires_grad_(True) for p in params.values()))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


def test_mimetic_init_ties_c_to_b_and_starts_without_decay():
    torch.manual_seed(0)
    layer = Mamba(8, d_state=4, mimetic=True)
    S_B, S_C = layer.bc_matrices()
    assert torch.equal(S_B, S_C)
    assert_close(-torch.exp(layer.A_log), torch.full((16, 4), -MIMETIC_A))
    plain = Mamba(8, d_state=4)
    assert not torch.equal(*plain.bc_matrices())
    both = Mamba(8, d_state=4, mimetic=True, polarize=True)
    assert both.A_log.shape == (16, 2) and torch.equal(*both.bc_matrices())


def test_fix_options_are_validated():
    with pytest.raises(ValueError, match="needs d_state >= 3, got 2"):
        Mamba(4, d_state=2, polarize=True)
    with pytest.raises(ValueError, match="bc_param='none', got 'positive'"):
        Mamba(4, d_state=2, mimetic=True, bc_param="positive")
    with pytest.raises(TypeError, match="polarize must be a bool"):
        Mamba(4, polarize=1)
    with pytest.raises(ValueError, match="polarize is an option of layer='mamba', 'bimamba' or"):
        ModelConfig(layer="s4", polarize=True)
    with pytest.raises(ValueError, match="state_init"):
        ModelConfig(layer="mamba", state_init="random")
    with pytest.raises(ValueError, match="needs a causal recurrent SSM"):
        ModelConfig(layer="transformer", state_init="noise")
    with pytest.raises(ValueError, match="attn_every must be >= 0"):
        ModelConfig(layer="transformer", attn_every=2)
    with pytest.raises(ValueError, match="even head size"):
        ModelConfig(layer="mamba", attn_every=2, d_model=12, n_heads=4)
    with pytest.raises(ValueError, match="layer='bimamba' makes the model see the future"):
        SequenceModel(ModelConfig(layer="bimamba", d_model=8, d_state=4), TOKENS)


# -- training initial states -------------------------------------------------------------------


def _model(layer: str, io: IOSpec = TOKENS, **kw) -> SequenceModel:
    torch.manual_seed(0)
    cfg = ModelConfig(layer=layer, d_model=8, n_layers=2, d_state=4, headdim=4, chunk_size=4, **kw)
    return SequenceModel(cfg, io)


@pytest.mark.parametrize("layer", ["s4d", "lru", "mamba", "mamba2"])
def test_carry_state_is_the_next_items_final_state(layer):
    model = _model(layer, state_init="carry").train()
    x = torch.randint(11, (3, 7))
    lengths = torch.tensor([7, 3, 5])
    got = model.training_initial_state(x, lengths)
    model.eval()
    with torch.no_grad():
        _, final = model(x, lengths=lengths, return_state=True)
    for g, f in zip(got, final, strict=True):
        for a, b in zip(*(t if isinstance(t, tuple) else (t,) for t in (g, f)), strict=True):
            assert_close(a, b.roll(-1, 0))
    model.train()
    loss = model(x, lengths=lengths).square().mean()
    loss.backward()  # the carried state has no gradient; the run itself has
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("layer", ["s4d", "mamba"])
def test_noise_state_only_in_training(layer):
    model = _model(layer, CLASSIFY, state_init="noise", state_init_scale=0.5)
    x = torch.randint(11, (2, 6))
    model.eval()
    with torch.no_grad():
        clean = model(x)
        torch.manual_seed(1)
        model.train()
        noisy = model(x)
    assert not torch.allclose(clean, noisy)
    states = model.training_initial_state(x)
    ssm = states[0].ssm if layer == "mamba" else states[0]
    assert 0.2 < float(ssm.abs().square().mean().sqrt()) < 1.0  # std 0.5
    if layer == "mamba":
        assert bool((states[0].conv == 0).all())  # only the SSM state is drawn


# -- hybrid and transformer models ----------------------------------------------------------


def test_hybrid_interleaves_attention_at_the_ratio():
    torch.manual_seed(0)
    cfg = ModelConfig(layer="mamba", d_model=8, n_layers=4, d_state=4, attn_every=2, n_heads=2)
    model = SequenceModel(cfg, TOKENS)
    kinds = [type(b.layer).__name__ for b in model.blocks]
    assert kinds == ["Mamba", "CausalSelfAttention", "Mamba", "CausalSelfAttention"]
    tf = SequenceModel(ModelConfig(layer="transformer", d_model=8, n_layers=2, n_heads=2), TOKENS)
    assert all(isinstance(b.layer, CausalSelfAttention) for b in tf.blocks)


@pytest.mark.parametrize("layer", ["s4d", "mamba2"])
def test_hybrid_streams_chunks_and_pads_like_the_whole(layer):
    torch.manual_seed(0)
    cfg = ModelConfig(
        layer=layer, d_model=8, n_layers=3, d_state=4, headdim=4, chunk_size=4, attn_every=2
    )
    model = SequenceModel(cfg, TOKENS).eval()
    x = torch.randint(11, (3, 23))
    lengths = torch.tensor([23, 9, 1])
    with torch.no_grad():
        whole = model(x)
        state, outs = model.initial_state(3), []
        for t in range(23):
            y, state = model.step(x[:, t], state)
            outs.append(y)
        chunks = torch.cat([o for _, o in model.forward_chunks(x, chunk=7)], 1)
        padded = model(x, lengths=lengths)
        padded_chunks = torch.cat([o for _, o in model.forward_chunks(x, lengths, chunk=4)], 1)
    torch.testing.assert_close(torch.stack(outs, 1), whole, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(chunks, whole, atol=2e-5, rtol=1e-4)
    for i, n in enumerate(lengths.tolist()):
        item = model(x[i : i + 1, :n])
        torch.testing.assert_close(padded[i : i + 1, :n], item, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(padded_chunks[i : i + 1, :n], item, atol=2e-5, rtol=1e-4)


def test_bimamba_model_classifies_and_refuses_streaming():
    model = _model("bimamba", CLASSIFY, shared=True)
    out = model(torch.randint(11, (2, 9)), lengths=torch.tensor([9, 4]))
    assert out.shape == (2, 3)
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in model.parameters())
    with pytest.raises(ValueError, match="not recurrent"):
        next(model.forward_chunks(torch.randint(11, (1, 5)), chunk=2))

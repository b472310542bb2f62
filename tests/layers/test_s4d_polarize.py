"""Polarized S4D (Wang et al., ICLR 2025): two state channels per SSM fixed to A_bar = 1 and
A_bar = 0. The forms agree, the fixed channels are a running sum and the current token, the
config and CLI path builds it, bad sizes are refused."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from ssmkit.layers import DSS, S4D, BlockConfig
from ssmkit.models.model_config import IOSpec, ModelConfig, make_layer
from ssmkit.testing import assert_close, randn
from ssmkit.train.config import apply_overrides, default_run
from tests.layers.conftest import run_steps

D = 3
LINEAR = BlockConfig(activation="identity", output="none")  # y = SSM(u) + D u
# name -> keyword arguments of a small polarized S4D
KINDS = {
    "legs": {"N": 6, "init": "legs"},
    "lin-bilinear": {"N": 4, "init": "lin", "discretization": "bilinear"},
    "real": {"N": 5, "init": "real"},
}


def polarized(kind: str, seed: int = 0, dtype=torch.float64, **overrides) -> S4D:
    torch.manual_seed(seed)
    layer = S4D(D, polarize=True, **{**KINDS[kind], **overrides})
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # off the initial values (B_polar starts at ones)
        for p in layer.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return layer.to(dtype)


def isolate(layer: S4D, C_polar: list[list[float]]) -> S4D:
    """Zero every learned C and D, so y is the fixed channels read with ``C_polar`` (k, 2)."""
    with torch.no_grad():
        layer.C.zero_()
        layer.D.zero_()
        layer.C_polar.copy_(torch.tensor(C_polar).unsqueeze(1).expand_as(layer.C_polar))
    return layer


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("L", [1, 7, 63])
def test_conv_scan_and_step_agree(kind, L):
    layer = polarized(kind)
    x = randn(2, L, D, seed=L)
    y_step, s_step = run_steps(layer, x)
    for mode in ("conv", "scan"):
        layer.mode = mode
        y, s = layer(x, return_state=True)
        assert_close(y, y_step)
        assert_close(s, s_step)


@pytest.mark.parametrize("kind", ["legs", "real"])
@pytest.mark.parametrize("k", [1, 6])
def test_split_with_state_equals_whole(kind, k):
    layer = polarized(kind)
    x = randn(2, 13, D, seed=3)
    for mode in ("conv", "scan"):
        layer.mode = mode
        y, s = layer(x, return_state=True)
        y1, s1 = layer(x[:, :k], return_state=True)
        y2, s2 = layer(x[:, k:], state=s1, return_state=True)
        assert_close(torch.cat([y1, y2], dim=1), y)
        assert_close(s2, s)


@pytest.mark.parametrize("kind", ["legs", "real"])
def test_conv_with_state_and_lengths_equals_scan_with_gradients(kind):
    """Conv mode's free response and power-sum state take A_bar = 0 through a log: the
    outputs, states and all gradients must match the scan's and stay finite."""
    x = randn(2, 9, D, seed=6)
    s0 = polarized(kind)(randn(2, 5, D, seed=7), return_state=True)[1].detach()
    lengths = torch.tensor([9, 4])
    results = []
    for mode in ("conv", "scan"):
        layer = polarized(kind, mode=mode)
        state = s0.clone().requires_grad_(True)
        y, s = layer(x, state=state, lengths=lengths, return_state=True)
        loss = (y * randn(*y.shape, seed=1)).sum() + (s.abs() ** 2).sum()
        loss.backward()
        grads = [state.grad, *(p.grad for p in layer.parameters())]
        assert all(bool(torch.isfinite(g).all()) for g in grads), mode
        results.append((y, s, *grads))
    for a, b in zip(*results, strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("kind", ["legs", "real"])
def test_gradients_reach_every_parameter(kind):
    layer = polarized(kind, bidirectional=True, dtype=torch.float32)
    x = randn(2, 17, D, dtype=torch.float32)
    assert {"B_polar", "C_polar"} <= dict(layer.named_parameters()).keys()
    for mode in ("conv", "scan"):
        layer.mode = mode
        layer.zero_grad()
        y, _ = layer(x)
        (y * randn(*y.shape, dtype=y.dtype, seed=1)).sum().backward()
        for name, p in layer.named_parameters():
            assert p.grad is not None, f"{name} got no gradient in {mode} mode"
            assert bool(torch.isfinite(p.grad).all()), name
            assert p.grad.abs().max() > 0, f"{name} has an all-zero gradient in {mode} mode"


@pytest.mark.parametrize("kind", ["legs", "real"])
def test_gradcheck_float64(kind):
    layer = polarized(kind, block=BlockConfig(output="linear"))
    params = dict(layer.named_parameters())
    names = list(params)
    x = randn(1, 5, D, seed=2).requires_grad_(True)
    for mode in ("conv", "scan"):
        layer.mode = mode

        def f(x, *values, layer=layer):
            return functional_call(layer, dict(zip(names, values, strict=True)), (x,))[0]

        inputs = (x, *(p.detach().clone().requires_grad_(True) for p in params.values()))
        assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("kind", list(KINDS))
def test_fixed_channels_are_a_running_sum_and_the_current_token(kind):
    x = randn(2, 11, D, seed=4)
    for C_polar, which in (([[1.0, 0.0]], 0), ([[0.0, 1.0]], 1)):
        layer = isolate(polarized(kind, block=LINEAR), C_polar)
        gain = torch.exp(layer.log_dt) * layer.B_polar[:, which]  # (h,): B_bar = dt B_polar
        want = gain * (x.cumsum(1) if which == 0 else x)  # (b, l, h)
        y_step, s_step = run_steps(layer, x)
        assert_close(y_step, want)
        for mode in ("conv", "scan"):
            layer.mode = mode
            y, s = layer(x, return_state=True)
            assert_close(y, want)
            assert_close(s, s_step)
        # the state holds the sum of all inputs and the last input, exactly as the recurrence
        assert_close(s_step[..., -2].real, layer.B_polar[:, 0] * torch.exp(layer.log_dt) * x.sum(1))
        assert_close(s_step[..., -1].real, layer.B_polar[:, 1] * torch.exp(layer.log_dt) * x[:, -1])
        if s_step.is_complex():  # real modes of a complex state: no imaginary part
            assert bool((s_step[..., -2:].imag == 0).all())


@pytest.mark.parametrize("kind", ["legs", "real"])
def test_fixed_transitions_are_exact_and_stay_fixed_under_training(kind):
    layer = polarized(kind, dtype=torch.float32)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    for _ in range(2):
        A_bar = layer.system().A_bar  # (h, n + 2)
        assert torch.equal(A_bar[:, -2:], torch.tensor([1.0, 0.0]).to(A_bar.dtype).expand(D, 2))
        opt.zero_grad()
        layer(randn(2, 8, D, dtype=torch.float32))[0].square().sum().backward()
        opt.step()
    learned = 4 if kind == "legs" else 3  # N - 2 real dimensions: pairs or real modes
    assert layer.log_A_real.shape == (D, learned // 2 if layer.conj else learned)


def test_bidirectional_conv_equals_scan_and_reads_the_future_running_sum():
    x = randn(2, 19, D, seed=8)
    layer = polarized("legs", bidirectional=True)
    y_conv, _ = layer(x)
    layer.mode = "scan"
    assert_close(y_conv, layer(x)[0])
    # anti-causal running sum: y_t = dt B_0 sum_{s > t} u_s
    layer = isolate(polarized("legs", bidirectional=True, block=LINEAR), [[0.0, 0.0], [1.0, 0.0]])
    suffix = x.flip(1).cumsum(1).flip(1) - x  # (b, l, h): sum over s > t
    want = torch.exp(layer.log_dt) * layer.B_polar[:, 0] * suffix
    for mode in ("conv", "scan"):
        layer.mode = mode
        assert_close(layer(x)[0], want)


def test_config_and_cli_overrides_build_a_polarized_s4d():
    io = IOSpec("tokens", 11, vocab_size=11, max_length=32)
    layer = make_layer(ModelConfig(layer="s4d", d_state=8, polarize=True), io)
    assert isinstance(layer, S4D) and layer.polarize and layer.N == 8
    assert not make_layer(ModelConfig(layer="s4d", d_state=8), io).polarize
    run = apply_overrides(default_run("mqar", "s4d"), [("polarize", "true"), ("d_state", "6")])
    assert run.model.polarize and run.model.layer == "s4d"
    layer = make_layer(run.model, io)
    assert layer.polarize and layer.system().A_bar.shape == (run.model.d_model, 4)


@pytest.mark.parametrize("layer", ["s4", "dss", "s5", "lru", "mamba2", "h3"])
def test_config_refuses_polarize_for_other_lti_layers(layer):
    with pytest.raises(ValueError, match=f"polarize is an option of .*'s4d', not '{layer}'"):
        ModelConfig(layer=layer, polarize=True)
    with pytest.raises(ValueError, match="mimetic is an option of layer='mamba' or 'bimamba'"):
        ModelConfig(layer="s4d", mimetic=True)
    with pytest.raises(TypeError):
        DSS(D, N=8, polarize=True)  # no such option: the layer itself refuses it too


def test_bad_sizes_and_flags_are_refused():
    with pytest.raises(ValueError, match=r"needs an even N >= 4 with init='legs', got N=2"):
        S4D(D, N=2, polarize=True)
    with pytest.raises(ValueError, match=r"needs an even N >= 4 with init='inv', got N=5"):
        S4D(D, N=5, init="inv", polarize=True)
    with pytest.raises(ValueError, match=r"needs N >= 3 with init='real', got N=2"):
        S4D(D, N=2, init="real", polarize=True)
    with pytest.raises(TypeError, match="polarize must be a bool, got int"):
        S4D(D, N=8, polarize=1)
    plain = S4D(D, N=8)
    assert not plain.polarize and not hasattr(plain, "B_polar")
    assert plain.system().A_bar.shape == (D, 4)

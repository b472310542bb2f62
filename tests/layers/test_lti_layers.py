"""Per-layer properties: gradients, gradcheck, kernels against references, long inputs, errors."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from ssmkit import param_groups
from ssmkit.core.discretize import discretize_diag
from ssmkit.core.hippo import nplr
from ssmkit.core.kernels import dplr_c_tilde, kernel_dense, kernel_diag, kernel_dplr
from ssmkit.layers import DSS, LRU, S4, S4D, S5, BlockConfig
from ssmkit.testing import assert_close, randn
from tests.layers.conftest import D_MODEL, NAMES, make, modes, run_steps


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    layer = make(name, bidirectional=name.startswith("s4d-legs"), dtype=torch.float32)
    x = randn(2, 17, D_MODEL, dtype=torch.float32)
    for mode in modes(name):
        layer.mode = mode
        layer.zero_grad()
        y, _ = layer(x)
        (y * randn(*y.shape, dtype=y.dtype, seed=1)).sum().backward()
        for pname, p in layer.named_parameters():
            assert p.grad is not None, f"{pname} got no gradient in {mode} mode"
            assert bool(torch.isfinite(p.grad).all()), pname
            assert p.grad.abs().max() > 0, f"{pname} has an all-zero gradient in {mode} mode"


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    layer = make(name, block=BlockConfig(output="linear"))
    params = dict(layer.named_parameters())
    names = list(params)
    x = randn(1, 5, D_MODEL, dtype=torch.float64, seed=2).requires_grad_(True)
    for mode in modes(name):
        layer.mode = mode

        def f(x, *values, layer=layer):
            return functional_call(layer, dict(zip(names, values, strict=True)), (x,))[0]

        inputs = (x, *(p.detach().clone().requires_grad_(True) for p in params.values()))
        assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


def test_s4_dplr_kernel_equals_dense_powering():
    layer = make("s4")
    for L in [1, 7, 64, 257]:
        sys = layer.system()  # full conjugate-symmetric system, dense A_bar
        K_ref = kernel_dense(sys.A_bar, sys.B_bar, sys.C, L).real
        assert_close(layer.kernel(L), K_ref)


def test_s4_step_continues_a_conv_run():
    """A layer trained in conv mode generates in step mode: conv prefix, then steps."""
    layer = make("s4")
    x = randn(2, 20, D_MODEL, dtype=torch.float64)
    y_full, _ = layer(x)
    _, s = layer(x[:, :12], return_state=True)
    y_tail, _ = run_steps(layer, x[:, 12:], s)
    assert_close(y_tail, y_full[:, 12:])


def test_s4d_legs_approaches_s4_legs_as_n_grows():
    """S4D section 3: the diagonal restriction (Lambda, B/2) of HiPPO-LegS reproduces the full
    DPLR kernel as N grows. Measured on the kernels' spectrum over a fixed band
    (|omega| <= 10 in continuous time), where the error should fall about like 1/N."""
    dt = torch.tensor(0.01, dtype=torch.float64)
    L = 4096
    errors = []
    for N in (16, 64, 256):
        Lam, P, B, V = nplr("legs", N)
        n = N // 2
        Lam, P, B, C = Lam[:n], P[:, :n], B[:n], V[:3, :n]  # outputs: the first 3 coefficients
        K_s4 = kernel_dplr(Lam, P, P, B, dplr_c_tilde(Lam, P, P, C, dt, L), dt, L)
        A_bar, B_bar = discretize_diag(Lam, B / 2, dt, "bilinear")
        K_s4d = kernel_diag(A_bar, B_bar, C, L)
        F_s4, F_s4d = torch.fft.rfft(K_s4, n=2 * L), torch.fft.rfft(K_s4d, n=2 * L)
        theta = torch.arange(F_s4.shape[-1]) * math.pi / L
        band = theta < 2 * math.atan(10 * float(dt))  # bilinear map of |omega| <= 10
        diff = (F_s4 - F_s4d)[:, band].abs().norm() / F_s4[:, band].abs().norm()
        errors.append(float(diff))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.05 and errors[0] / errors[2] > 8, errors


def _rss_kib() -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+)", text, re.M).group(1))


@pytest.mark.slow
def test_length_65536_conv_and_constant_memory_steps():
    torch.manual_seed(0)
    layer = S4D(4, N=16)
    L = 65536
    x = torch.randn(1, L, 4)
    with torch.no_grad():
        y, s = layer(x, return_state=True)
        assert bool(torch.isfinite(y).all()) and bool(torch.isfinite(s).all())
        state = layer.initial_state(1)
        ys = []
        for t in range(L):
            y_t, state = layer.step(x[:, t], state)
            if t == 999:
                rss_early = _rss_kib() if Path("/proc/self/status").exists() else None
            if t % 4096 == 0 or t == L - 1:
                ys.append((t, y_t))
        assert bool(torch.isfinite(state).all())
        assert_close(state, s, rtol=1e-3, atol=1e-4)
        for t, y_t in ys:
            assert_close(y_t, y[:, t], rtol=1e-3, atol=1e-4)
        if rss_early is not None:  # 64k further steps allocate nothing that stays
            assert _rss_kib() - rss_early < 8 * 1024


def test_param_groups_give_ssm_parameters_their_own_lr_and_no_decay():
    model = torch.nn.Sequential(S4D(4, N=8), S5(4, N=8), LRU(4, N=4))
    groups = param_groups(model, lr=1e-2, weight_decay=0.1)
    by_id = {id(p): g for g in groups for p in g["params"]}
    s4d, s5, lru = model
    for p in (s4d.log_dt, s4d.log_A_real, s4d.A_imag, s4d.B, s5.log_Lambda_real, lru.nu_log):
        assert by_id[id(p)]["lr"] == 1e-3 and by_id[id(p)]["weight_decay"] == 0.0
    assert by_id[id(s4d.C)]["lr"] == 1e-2
    assert by_id[id(s4d.output[0].weight)]["weight_decay"] == 0.1
    assert by_id[id(s4d.output[0].bias)]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    low = param_groups(model, lr=1e-4, weight_decay=0.0)  # the cap is min(lr, 1e-3)
    assert {g["lr"] for g in low} == {1e-4}
    torch.optim.AdamW(groups)  # accepted as is


def test_s5_irregular_sampling():
    layer = make("s5")
    x = randn(2, 9, D_MODEL, dtype=torch.float64)
    y, s = layer(x, return_state=True)
    y1, s1 = layer(x, intervals=torch.ones(2, 9, dtype=torch.float64), return_state=True)
    assert_close(y1, y)
    assert_close(s1, s)
    # an interval of 2 everywhere = the same layer with every dt doubled
    y2, _ = layer(x, intervals=torch.full((2, 9), 2.0, dtype=torch.float64))
    with torch.no_grad():
        layer.log_dt += math.log(2.0)
    assert_close(y2, layer(x)[0])
    # per-step intervals: forward = step loop with the same intervals
    gaps = torch.rand(2, 9, dtype=torch.float64) + 0.1
    y3, s3 = layer(x, intervals=gaps, return_state=True)
    state = layer.initial_state(2)
    for t in range(9):
        y_t, state = layer.step(x[:, t], state, interval=gaps[:, t])
        assert_close(y_t, y3[:, t])
    assert_close(state, s3)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: S4D(4, N=7), "N must be even"),
        (lambda: S4(4, N=7), "N must be even"),
        (lambda: DSS(4, N=7), "N must be even"),
        (lambda: S5(4, N=10, blocks=2), "even size"),
        (lambda: S4D(4, init="hippo"), "unknown init"),
        (lambda: S4D(4, mode="recurrent"), "unknown mode"),
        (lambda: S5(4, N=0), "N must be >= 2"),
        (lambda: LRU(4, r_min=0.9, r_max=0.5), "r_min"),
        (lambda: S4D(4, dt_min=0.1, dt_max=0.01), "dt_min"),
        (lambda: BlockConfig(dropout=1.5), "dropout"),
        (lambda: BlockConfig(output="mlp"), "unknown output"),
        (lambda: DSS(4, kernel="tanh"), "unknown kernel"),
        (lambda: S4D(0), "d_model"),
    ],
)
def test_bad_configs_raise(build, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build()


def test_bad_inputs_raise():
    layer = S4D(4, N=8)
    x = torch.randn(2, 10, 4)
    with pytest.raises(ValueError, match=r"d_model = 4.*\(2, 10, 5\)"):
        layer(torch.randn(2, 10, 5))
    with pytest.raises(ValueError, match="shape"):
        layer(torch.randn(10, 4))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 10\]"):
        layer(x, lengths=torch.tensor([11, 3]))
    with pytest.raises(ValueError, match="lengths must have shape"):
        layer(x, lengths=torch.tensor([3]))
    with pytest.raises(TypeError, match="integer"):
        layer(x, lengths=torch.tensor([3.0, 2.0]))
    bad = x.clone()
    bad[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="x must be finite"):
        layer(bad)
    with pytest.raises(ValueError, match="state must have shape"):
        layer(x, state=torch.zeros(2, 4, 3, dtype=torch.complex64))
    with pytest.raises(TypeError, match="state must have dtype"):
        layer(x, state=torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="x_t must have shape"):
        layer.step(torch.randn(2, 10, 4), layer.initial_state(2))
    bi = S4D(4, N=8, bidirectional=True)
    with pytest.raises(ValueError, match="bidirectional"):
        bi.step(torch.randn(2, 4), torch.zeros(2, 4, 4, dtype=torch.complex64))
    with pytest.raises(ValueError, match="bidirectional"):
        bi(x, return_state=True)
    with pytest.raises(ValueError, match="intervals must be > 0"):
        S5(4, N=8)(x, intervals=torch.zeros(2, 10))
    with pytest.raises(ValueError, match="intervals must have shape"):
        S5(4, N=8)(x, intervals=torch.ones(2, 9))

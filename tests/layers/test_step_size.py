"""The selective step size dt = clamp(softplus(dt_raw + bias), *limit), written once.

It is checked against the closed form log(1 + e^z) and its derivative sigmoid(z), and the
mixers, the ops' ``dt_softplus`` option and the run plots are checked to use it.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssmkit.core.step_size import check_limit, step_size
from ssmkit.layers.mamba import Mamba
from ssmkit.layers.mamba2 import Mamba2
from ssmkit.ops import selective_scan, ssd
from ssmkit.testing import assert_close, randn
from ssmkit.train.plots import _step_sizes

F64 = torch.float64


@pytest.mark.parametrize("limit", [None, (0.3, 1.2)])
def test_definition_values_and_gradients(limit):
    raw = (2 * randn(3, 5, 4, seed=0)).requires_grad_()
    bias = randn(4, seed=1, requires_grad=True)
    dt = step_size(raw, bias, limit)
    z = (raw + bias).detach()
    expected = torch.log1p(torch.exp(z))  # softplus, closed form
    inside = torch.ones_like(z)
    if limit is not None:
        inside = ((expected >= limit[0]) & (expected <= limit[1])).to(F64)
        expected = expected.clamp(*limit)
        assert 0 < float(inside.sum()) < inside.numel()  # both sides of the clamp are tested
    assert_close(dt, expected)
    w = randn(*dt.shape, seed=2)
    (dt * w).sum().backward()
    d_raw = w * torch.sigmoid(z) * inside  # d softplus / dz = sigmoid(z); 0 where clamped
    assert_close(raw.grad, d_raw)
    assert_close(bias.grad, d_raw.sum((0, 1)))


def test_positive_without_bias_and_limit():
    dt = step_size(torch.tensor([-40.0, 0.0, 40.0], dtype=F64))
    assert bool((dt > 0).all())
    assert_close(dt, torch.tensor([math.exp(-40.0), math.log(2.0), 40.0], dtype=F64))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"dt_bias must have shape \(4,\).*got \(3,\)"):
        step_size(torch.zeros(2, 4), torch.zeros(3))
    for bad in [(1.0, 0.5), (-0.1, 1.0), (0.0,), (0.0, float("nan")), "ab", (True, 2.0)]:
        with pytest.raises(ValueError, match="dt_limit must be a pair"):
            step_size(torch.zeros(2, 4), limit=bad)
    with pytest.raises(TypeError, match="dt_raw"):
        step_size([0.0, 1.0])
    assert check_limit([0, math.inf]) == (0.0, math.inf)
    with pytest.raises(ValueError, match=r"dt_limit .*got \(0.5, 0.1\)"):
        Mamba2(8, d_state=4, headdim=4, dt_limit=(0.5, 0.1))


def test_mamba_selection_uses_the_step_size():
    torch.manual_seed(0)
    m = Mamba(8, d_state=4, backend="ref").double()
    xs = randn(2, 7, 16, seed=3)
    dt, B, C = m._selection(xs)
    dt_raw, B_ref, C_ref = m.x_proj(xs).split([m.dt_rank, 4, 4], -1)
    pre = dt_raw @ m.dt_proj.weight.T + m.dt_proj.bias  # the bias lives in dt_proj
    assert_close(dt, torch.log1p(torch.exp(pre)))
    assert_close(B, B_ref)
    assert_close(C, C_ref)


@pytest.mark.parametrize("l", [1, 7, 63])
def test_mamba2_equals_its_equations_with_a_clamped_step(l):
    """Whole Mamba-2 forward against its equations, with a dt_limit that clamps."""
    torch.manual_seed(l)
    m = Mamba2(8, d_state=4, headdim=4, chunk_size=8, dt_limit=(0.05, 0.5), backend="ref")
    m = m.double()
    with torch.no_grad():
        m.dt_bias.copy_(torch.tensor([-4.0, 2.0, 0.0, -1.0], dtype=F64))  # below, above, inside
    x = randn(2, l, 8, seed=l, requires_grad=True)
    y, _ = m(x)
    z, xBC, dt_raw = m.in_proj(x).split([16, m.conv_dim, 4], -1)
    xBC = F.silu(m.conv1d(xBC)[0])
    u, B, C = xBC.split([16, 4, 4], -1)
    dt = torch.log1p(torch.exp(dt_raw + m.dt_bias)).clamp(0.05, 0.5)  # (b, l, h)
    y_ssd = ssd(u.unflatten(-1, (4, 4)), dt, -torch.exp(m.A_log), B.unsqueeze(2), C.unsqueeze(2),
                D=m.D, backend="ref")  # fmt: skip
    expected = m.out_proj(m.norm(y_ssd.flatten(-2), z))
    assert_close(y, expected)
    g = randn(*y.shape, seed=9)
    grads = torch.autograd.grad((y * g).sum(), [x, m.dt_bias, m.in_proj.weight])
    grads_ref = torch.autograd.grad((expected * g).sum(), [x, m.dt_bias, m.in_proj.weight])
    for a, b in zip(grads, grads_ref, strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("l", [1, 7, 63, 101])
def test_ops_dt_softplus_is_the_step_size(l):
    """selective_scan/ssd(dt_softplus=True, dt_bias) = the op on step_size(dt, dt_bias)."""
    b, d, n = 2, 4, 3
    u, dt_raw = randn(b, l, d, seed=l), randn(b, l, d, seed=l + 1)
    bias, A = randn(d, seed=3), -randn(d, n, seed=6).abs() - 0.1
    B, C = randn(b, l, n, seed=4), randn(b, l, n, seed=5)
    for t in (dt_raw, bias):
        t.requires_grad_(True)
    y1 = selective_scan(u, dt_raw, A, B, C, dt_bias=bias, dt_softplus=True, backend="ref")
    y2 = selective_scan(u, step_size(dt_raw, bias), A, B, C, backend="ref")
    assert_close(y1, y2)
    g1 = torch.autograd.grad(y1.sum(), [dt_raw, bias])
    g2 = torch.autograd.grad(y2.sum(), [dt_raw, bias])
    for a, c in zip(g1, g2, strict=True):
        assert_close(a, c)
    x, dt_h = u.unflatten(-1, (2, 2)), dt_raw[..., :2]  # (b, l, h, p), (b, l, h)
    A_h, B4, C4 = A[:2, 0], B.unsqueeze(2), C.unsqueeze(2)
    y3 = ssd(x, dt_h, A_h, B4, C4, dt_bias=bias[:2], dt_softplus=True, backend="ref")
    assert_close(y3, ssd(x, step_size(dt_h, bias[:2]), A_h, B4, C4, backend="ref"))
    # without dt_softplus the ops add the bias only: delta = dt + dt_bias
    y4 = selective_scan(u, dt_raw.abs(), A, B, C, dt_bias=bias.abs(), backend="ref")
    assert_close(y4, selective_scan(u, dt_raw.abs() + bias.abs(), A, B, C, backend="ref"))


def test_plots_read_the_step_size_of_each_mixer():
    torch.manual_seed(0)
    m1 = Mamba(8, d_state=4)
    m2 = Mamba2(8, d_state=4, headdim=4, dt_limit=(0.01, 0.02))
    out = dict(_step_sizes([m1, torch.nn.Identity(), m2]))
    assert sorted(out) == [0, 2]
    assert_close(out[0], torch.log1p(torch.exp(m1.dt_proj.bias.detach())))
    expected = torch.log1p(torch.exp(m2.dt_bias.detach())).clamp(0.01, 0.02)
    assert_close(out[2], expected)

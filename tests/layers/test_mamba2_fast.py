"""The fused (gated) RMSNorm kernel against its composition, and the Mamba-2 layer on its fast
CPU path (numba SSD with the skip inside, fused gated norm) against the reference path."""

from __future__ import annotations

import pytest
import torch

from ssmkit.layers.mamba2 import Mamba2
from ssmkit.layers.norms import RMSNorm
from ssmkit.ops import gated_norm
from ssmkit.ops.gated_norm import gated_rms_norm, gated_rms_norm_ref
from ssmkit.testing import assert_close, grads, randn

pytestmark = pytest.mark.skipif(not gated_norm.available(), reason="numba is not installed")


def norm_fn(backend, eps, group_size, gated):
    def f(x, w, *z):
        return gated_rms_norm(x, z[0] if gated else None, w, eps, group_size, backend)

    return f


@pytest.mark.parametrize("L", [1, 7, 63, 1000])
@pytest.mark.parametrize(("d", "group_size"), [(12, 12), (12, 4), (10, 5)])
@pytest.mark.parametrize("gated", [True, False])
def test_numba_norm_matches_ref_outputs_and_all_gradients(L, d, group_size, gated):
    x, w = randn(2, L, d, seed=L), randn(d, seed=1)
    inputs = [x, w] + ([randn(2, L, d, seed=2) * 3] if gated else [])
    inputs = [t.requires_grad_(True) for t in inputs]
    got = norm_fn("numba", 1e-5, group_size, gated)(*inputs)
    want = norm_fn("ref", 1e-5, group_size, gated)(*inputs)
    assert_close(got, want)
    for a, b in zip(
        grads(norm_fn("numba", 1e-5, group_size, gated), inputs),
        grads(norm_fn("ref", 1e-5, group_size, gated), inputs),
        strict=True,
    ):
        assert_close(a, b)


@pytest.mark.parametrize("gated", [True, False])
def test_numba_norm_serial_and_parallel_forwards_and_the_no_grad_path(gated):
    """Below ``SERIAL_MAX`` entries the forward runs serially, above it in parallel: both
    against the reference (outputs and gradients), and without autograd the same bits."""
    for L in (gated_norm.SERIAL_MAX // 24 - 1, gated_norm.SERIAL_MAX // 24 + 7):
        x, w = randn(2, L, 12, seed=L), randn(12, seed=1)
        inputs = [x, w] + ([randn(2, L, 12, seed=2) * 3] if gated else [])
        inputs = [t.requires_grad_(True) for t in inputs]
        got = norm_fn("numba", 1e-5, 4, gated)(*inputs)
        assert_close(got, norm_fn("ref", 1e-5, 4, gated)(*inputs))
        with torch.no_grad():
            assert torch.equal(norm_fn("numba", 1e-5, 4, gated)(*inputs), got)
        for a, b in zip(
            grads(norm_fn("numba", 1e-5, 4, gated), inputs),
            grads(norm_fn("ref", 1e-5, 4, gated), inputs),
            strict=True,
        ):
            assert_close(a, b)
    # a zero row with eps = 0 divides by zero: NaN as in the reference, not an exception
    y = gated_rms_norm(torch.zeros(1, 12), None, torch.ones(12), 0.0, 4, "numba")
    assert torch.isnan(y).all()


def test_numba_norm_float32_and_strided_gate():
    """float32, z a strided view of a wider projection (as Mamba2's in_proj split gives)."""
    proj = randn(3, 20, 40, dtype=torch.float32, seed=3).requires_grad_(True)
    x = randn(3, 20, 16, dtype=torch.float32, seed=4).requires_grad_(True)
    w = randn(16, dtype=torch.float32, seed=5).requires_grad_(True)

    def run(backend):
        def f(x, w, proj):
            return gated_rms_norm(x, proj[..., 8:24], w, 1e-5, 8, backend)

        return f

    assert_close(run("numba")(x, w, proj), run("ref")(x, w, proj))
    got, want = grads(run("numba"), [x, w, proj]), grads(run("ref"), [x, w, proj])
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("gated", [True, False])
def test_numba_norm_gradcheck(gated):
    x, w, z = randn(2, 3, 6, seed=6), randn(6, seed=7), randn(2, 3, 6, seed=8)
    inputs = [t.requires_grad_(True) for t in ([x, w, z] if gated else [x, w])]
    assert torch.autograd.gradcheck(norm_fn("numba", 1e-3, 3, gated), inputs)


def test_numba_norm_gradients_are_the_same_on_every_run():
    inputs = [randn(4, 33, 8, seed=9), randn(8, seed=10), randn(4, 33, 8, seed=11)]
    inputs = [t.requires_grad_(True) for t in inputs]
    first, second = (grads(norm_fn("numba", 1e-5, 4, True), inputs) for _ in range(2))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_auto_norm_uses_the_kernel_when_ready_and_ref_for_other_dtypes():
    gated_norm.warm_up(torch.float64)
    x, z, w = randn(2, 5, 6, seed=12), randn(2, 5, 6, seed=13), randn(6, seed=14)
    assert torch.equal(gated_rms_norm(x, z, w, 1e-5, 6), gated_rms_norm(x, z, w, 1e-5, 6, "numba"))
    xb, zb = x.bfloat16(), z.bfloat16()
    assert torch.equal(gated_rms_norm(xb, zb, w, 1e-5, 6), gated_rms_norm_ref(xb, zb, w, 1e-5, 6))


def test_norm_bad_inputs_are_clear_errors():
    x, w = randn(2, 3, 6), randn(6)
    with pytest.raises(ValueError, match=r"weight must have shape \(6,\), got \(5,\)"):
        gated_rms_norm(x, None, randn(5), 1e-5, 6)
    with pytest.raises(ValueError, match=r"z must have the shape of x \(2, 3, 6\), got \(2, 3\)"):
        gated_rms_norm(x, randn(2, 3), w, 1e-5, 6)
    with pytest.raises(ValueError, match="group_size must divide d = 6, got 4"):
        gated_rms_norm(x, None, w, 1e-5, 4)
    with pytest.raises(ValueError, match=r"backend must be one of .* got 'fast'"):
        gated_rms_norm(x, None, w, 1e-5, 6, "fast")
    with pytest.raises(ValueError, match="backend 'numba' of gated_rms_norm takes CPU x"):
        gated_rms_norm(x.bfloat16(), None, w.bfloat16(), 1e-5, 6, "numba")
    with pytest.raises(ValueError, match="backend 'numba' of gated_rms_norm takes CPU x"):
        gated_rms_norm(x, None, w.float(), 1e-5, 6, "numba")  # mixed dtypes
    with pytest.raises(ValueError, match=r"backend must be one of .* got 'fast'"):
        RMSNorm(6, backend="fast")


def fast_and_ref_layers(ngroups, headdim, d_model):
    torch.manual_seed(0)
    fast = Mamba2(d_model, d_state=5, d_conv=3, expand=2, headdim=headdim, ngroups=ngroups)
    fast = fast.double()
    with torch.no_grad():
        for p in fast.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref = Mamba2(d_model, d_state=5, d_conv=3, expand=2, headdim=headdim, ngroups=ngroups,
                 backend="ref").double()  # fmt: skip
    ref.load_state_dict(fast.state_dict())
    ref.norm.backend = "ref"
    fast.backend, fast.norm.backend = "numba", "numba"
    return fast, ref


@pytest.mark.parametrize("L", [1, 7, 63])
@pytest.mark.parametrize(("ngroups", "headdim", "d_model"), [(2, 4, 8), (1, 5, 5)])
def test_mamba2_fast_path_matches_ref_outputs_states_and_all_gradients(
    L, ngroups, headdim, d_model
):
    """headdim 5: odd, not a multiple of the kernels' four-row blocks; an initial state."""
    fast, ref = fast_and_ref_layers(ngroups, headdim, d_model)
    x = randn(2, L, d_model, seed=L)
    state0 = ref.initial_state(2)
    state0 = state0._replace(ssm=randn(*state0.ssm.shape, seed=99) * 0.3)
    outs = {}
    for name, m in (("fast", fast), ("ref", ref)):
        xg = x.clone().requires_grad_(True)
        h0 = state0.ssm.clone().requires_grad_(True)
        y, state = m(xg, state0._replace(ssm=h0), return_state=True)
        loss = (y * randn(*y.shape, seed=5)).sum() + (state.ssm * randn(*h0.shape, seed=6)).sum()
        m.zero_grad(set_to_none=True)
        loss.backward()
        outs[name] = (y, state.ssm, state.conv, xg.grad, h0.grad, *(p.grad for p in m.parameters()))
    for a, b in zip(outs["fast"], outs["ref"], strict=True):
        assert_close(a, b)

"""The causal depthwise conv1d: the fused form against the F.conv1d reference."""

from __future__ import annotations

import pytest
import torch

from ssmkit.layers.conv1d import CausalConv1d, causal_conv1d, causal_conv1d_ref
from ssmkit.testing import assert_close, grads, randn

C = 3


def inputs(b, l, k, state, bias=True, dtype=torch.float64):
    x = randn(b, l, C, dtype=dtype, seed=1, requires_grad=True)
    w = randn(C, 1, k, dtype=dtype, seed=2, requires_grad=True)
    bb = randn(C, dtype=dtype, seed=3, requires_grad=True) if bias else None
    s = randn(b, C, k - 1, dtype=dtype, seed=4, requires_grad=True) if state else None
    return x, w, bb, s


@pytest.mark.parametrize("l", [1, 2, 3, 7, 63, 1000])
@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("state", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_fused_equals_reference_outputs_states_and_gradients(l, k, state, with_lengths):
    x, w, bias, s = inputs(3, l, k, state)
    lengths = torch.tensor([l, max(l // 2, 0), 0 if l > 1 else 1]) if with_lengths else None
    args = [t for t in (x, w, bias, s) if t is not None]

    def run(fn):
        def f(*_):
            return fn(x, w, bias, s, lengths)

        return f

    y, last = causal_conv1d(x, w, bias, s, lengths)
    y_ref, last_ref = causal_conv1d_ref(x, w, bias, s, lengths)
    assert y.shape == (3, l, C) and last.shape == (3, C, k - 1)
    assert_close(y, y_ref)
    assert_close(last, last_ref)
    for g, g_ref, name in zip(
        grads(run(causal_conv1d), args), grads(run(causal_conv1d_ref), args), "xwbs", strict=False
    ):
        assert_close(g, g_ref, msg=f"gradient of {name}")


def test_without_bias_and_in_float32():
    x, w, _, s = inputs(2, 33, 4, True, bias=False, dtype=torch.float32)
    got = grads(lambda *a: causal_conv1d(*a[:2], None, a[2]), [x, w, s])
    want = grads(lambda *a: causal_conv1d_ref(*a[:2], None, a[2]), [x, w, s])
    for g, g_ref in zip(got, want, strict=True):
        assert_close(g, g_ref)
    assert_close(causal_conv1d(x, w, None, s)[0], causal_conv1d_ref(x, w, None, s)[0])


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("l", [1, 2, 5])
def test_gradcheck_float64(k, l):
    x, w, bias, s = inputs(2, l, k, True)
    lengths = torch.tensor([l, l // 2])
    assert torch.autograd.gradcheck(
        lambda *a: causal_conv1d(*a, lengths), (x, w, bias, s), check_undefined_grad=False
    )


def test_module_backends_agree_and_steps_equal_forward():
    torch.manual_seed(0)
    fused = CausalConv1d(C, 4).double()
    ref = CausalConv1d(C, 4, backend="ref").double()
    ref.load_state_dict(fused.state_dict())
    x = randn(2, 9, C, seed=5)
    y, last = fused(x)
    y_ref, last_ref = ref(x)
    assert_close(y, y_ref)
    assert_close(last, last_ref)
    state, ys = fused.initial_state(2, dtype=torch.float64), []
    for t in range(9):
        y_t, state = fused.step(x[:, t], state)
        ys.append(y_t)
    assert_close(torch.stack(ys, 1), y)
    assert_close(state, last)


def test_packed_sequences_take_the_reference():
    torch.manual_seed(0)
    m = CausalConv1d(C, 4).double()
    x = randn(1, 8, C, seed=6)
    reset = torch.zeros(1, 8, dtype=torch.bool)
    reset[0, [0, 3]] = True
    y, _ = m(x, reset=reset)
    assert_close(y, causal_conv1d_ref(x, m.weight, m.bias, reset=reset)[0])
    assert_close(y[:, 3:], m(x[:, 3:])[0])


def test_bad_backend_raises():
    with pytest.raises(ValueError, match=r"backend 'triton'.*'fused'"):
        CausalConv1d(C, 4, backend="triton")

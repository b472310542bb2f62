"""Scan backends against the sequential definition: outputs, final states, gradients."""

import pytest
import torch

from ssmkit.ops import registry, scan
from ssmkit.ops.scan import scan_associative, scan_chunked, scan_ref
from ssmkit.ops.scan.autograd import LinearScan
from ssmkit.testing import assert_close, generator, grads

FAST = [b.name for b in registry.backends("scan") if b.name != "ref"]
LENGTHS = [1, 7, 63, 1000]


def make_inputs(length, dtype, state=(3, 2), batch=2, seed=0, grad=True):
    """Decays inside the unit disc (as a stable SSM has) and arbitrary inputs."""
    g = generator(seed)
    real = torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32
    mag = 0.5 + 0.5 * torch.rand(batch, length, *state, generator=g, dtype=real)
    if dtype.is_complex:
        phase = torch.rand(batch, length, *state, generator=g, dtype=real) * 6.28
        a = torch.polar(mag, phase)
    else:
        a = mag * torch.sign(torch.randn(batch, length, *state, generator=g, dtype=real))
    b = torch.randn(batch, length, *state, generator=g, dtype=dtype)
    h0 = torch.randn(batch, *state, generator=g, dtype=dtype)
    return [x.requires_grad_(grad) for x in (a, b, h0)]


def test_registry_lists_ref_and_a_fast_backend():
    names = {b.name for b in registry.backends("scan")}
    assert {"ref", "chunked", "associative"} <= names
    assert registry.resolve("scan", "auto", "cpu").name != "ref"


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128, torch.float32])
def test_backend_matches_ref(backend, length, dtype):
    inputs = make_inputs(length, dtype)

    def run(name):
        return lambda a, b, h0: scan(a, b, initial_state=h0, return_final_state=True, backend=name)

    h_ref, last_ref = run("ref")(*inputs)
    h, last = run(backend)(*inputs)
    assert h.dtype == dtype
    assert_close(h, h_ref)
    assert_close(last, last_ref)
    for g, g_ref in zip(grads(run(backend), inputs), grads(run("ref"), inputs), strict=True):
        assert_close(g, g_ref)


@pytest.mark.parametrize("chunk", [1, 2, 7, 62, 63, 64, 1000])
def test_chunk_sizes_agree(chunk):
    a, b, h0 = make_inputs(63, torch.complex128, grad=False)
    assert_close(scan_chunked(a, b, h0, chunk_size=chunk), scan_ref(a, b, h0))


def test_associative_kernel_matches_ref_without_autograd():
    a, b, h0 = make_inputs(100, torch.float64, grad=False)
    assert_close(scan_associative(a, b, h0), scan_ref(a, b, h0))


@pytest.mark.parametrize("kernel", [scan_chunked, scan_associative])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_gradcheck_custom_function(kernel, dtype):
    a, b, h0 = make_inputs(9, dtype, state=(2,), batch=2)
    assert torch.autograd.gradcheck(
        lambda a, b, h0: LinearScan.apply(a, b, h0, kernel, False), (a, b, h0)
    )


def test_gradgradcheck_custom_function():
    a, b, h0 = make_inputs(6, torch.float64, state=(2,), batch=1)
    fn = lambda a, b, h0: LinearScan.apply(a, b, h0, scan_chunked, False)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (a, b, h0))


@pytest.mark.parametrize("backend", ["ref", *FAST])
def test_split_with_state_equals_whole(backend):
    a, b, h0 = make_inputs(50, torch.float64, grad=False)
    opts = dict(return_final_state=True, backend=backend)
    h, last = scan(a, b, initial_state=h0, **opts)
    h1, mid = scan(a[:, :17], b[:, :17], initial_state=h0, **opts)
    h2, last2 = scan(a[:, 17:], b[:, 17:], initial_state=mid, **opts)
    assert_close(torch.cat([h1, h2], 1), h)
    assert_close(last2, last)


@pytest.mark.parametrize("backend", FAST)
def test_batch_items_equal_batch(backend):
    a, b, h0 = make_inputs(40, torch.complex128, batch=3, grad=False)
    h = scan(a, b, initial_state=h0, backend=backend)
    for i in range(3):
        hi = scan(a[i : i + 1], b[i : i + 1], initial_state=h0[i : i + 1], backend=backend)
        assert_close(hi, h[i : i + 1])


@pytest.mark.parametrize("backend", ["ref", *FAST])
def test_broadcast_time_invariant_decay(backend):
    """A (1, 1, *s) decay is the LTI case; its gradient is summed over batch and time."""
    _, b, h0 = make_inputs(30, torch.float64)
    a = (0.9 * torch.ones(1, 1, 3, 2, dtype=torch.float64)).requires_grad_()
    h = scan(a, b, initial_state=h0, backend=backend)
    h_full = scan(a.expand_as(b), b, initial_state=h0, backend="ref")
    assert_close(h, h_full)
    (ga,) = torch.autograd.grad(h.sum(), a)
    (ga_ref,) = torch.autograd.grad(h_full.sum(), a)
    assert ga.shape == a.shape
    assert_close(ga, ga_ref)


def test_real_decay_complex_input_promotes():
    a, _, _ = make_inputs(10, torch.float64, grad=False)
    _, b, h0 = make_inputs(10, torch.complex128, grad=False)
    h = scan(a, b, initial_state=h0)
    assert h.dtype == torch.complex128
    assert_close(h, scan_ref(a.to(b.dtype), b, h0))


def test_zero_initial_state_default():
    a, b, _ = make_inputs(10, torch.float64, grad=False)
    h = scan(a, b)
    assert_close(h, scan_ref(a, b, torch.zeros_like(b[:, 0])))


def test_float32_long_sequence_stays_finite_and_close():
    a, b, h0 = make_inputs(4096, torch.float32, state=(8,), grad=False)
    h = scan(a, b, initial_state=h0)
    ref = scan_ref(a.double(), b.double(), h0.double())
    assert torch.isfinite(h).all()
    assert_close(h.double(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(a=torch.rand(2, 5, 3), b=torch.rand(2, 5, 4)), ValueError, "a must broadcast"),
        (dict(a=torch.rand(5), b=torch.rand(5)), ValueError, "b must have shape"),
        (dict(a=torch.rand(2, 0, 3), b=torch.rand(2, 0, 3)), ValueError, "length"),
        (dict(a=[1.0], b=torch.rand(2, 5)), TypeError, "a must be a torch.Tensor"),
        (
            dict(a=torch.rand(2, 5, 3), b=torch.rand(2, 5, 3), initial_state=torch.rand(3)),
            ValueError,
            "initial_state must have shape",
        ),
        (
            dict(a=torch.rand(2, 5), b=torch.tensor([[1.0, float("nan"), 0, 0, 0]] * 2)),
            ValueError,
            "b must be finite",
        ),
        (dict(a=torch.ones(2, 5, dtype=torch.long), b=torch.rand(2, 5)), TypeError, "a must be"),
        (dict(a=torch.rand(2, 5), b=torch.rand(2, 5), backend="cuda-magic"), ValueError, "chunked"),
    ],
)
def test_bad_inputs(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        scan(**kwargs)


@pytest.mark.parametrize("kernel", [scan_chunked, scan_associative])
@pytest.mark.parametrize("length", [1, 7, 63])
def test_reverse_kernels_equal_flipped_ref(kernel, length):
    a, b, h0 = make_inputs(length, torch.complex128, grad=False)
    expected = scan_ref(a.flip(1), b.flip(1), h0).flip(1)
    assert_close(kernel(a, b, h0, reverse=True), expected)


def test_gradcheck_reverse_function():
    a, b, h0 = make_inputs(8, torch.complex128, state=(2,), batch=1)
    fn = lambda a, b, h0: LinearScan.apply(a, b, h0, scan_chunked, True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (a, b, h0))

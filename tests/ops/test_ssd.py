"""ssd (Mamba-2): every registered backend against the loop, and against selective_scan."""

from __future__ import annotations

import pytest
import torch

from ssmkit.ops import registry, selective_scan, ssd
from ssmkit.ops.ssd import cpu_numba, ssd_chunked
from ssmkit.testing import assert_close, grads, randn

FAST = [b.name for b in registry.backends("ssd", "cpu") if b.name != "ref"]


def problem(b=2, l=13, h=4, p=3, n=5, g=2, dtype=torch.float64, seed=0):
    x = randn(b, l, h, p, dtype=dtype, seed=seed)
    dt = randn(b, l, h, dtype=dtype, seed=seed + 1) * 0.5 - 1
    A = -torch.rand(h, dtype=dtype, generator=torch.Generator().manual_seed(seed)) * 2 - 0.1
    B = randn(b, l, g, n, dtype=dtype, seed=seed + 2)
    C = randn(b, l, g, n, dtype=dtype, seed=seed + 3)
    D = randn(h, dtype=dtype, seed=seed + 4)
    z = randn(b, l, h, p, dtype=dtype, seed=seed + 5)
    bias = randn(h, dtype=dtype, seed=seed + 6)
    h0 = randn(b, h, p, n, dtype=dtype, seed=seed + 7)
    return [x, dt, A, B, C, D, z, bias, h0]


def call(backend, chunk):
    def f(x, dt, A, B, C, D, z, bias, h0):
        return ssd(
            x, dt, A, B, C, chunk_size=chunk, D=D, z=z, dt_bias=bias, dt_softplus=True,
            initial_state=h0, return_final_state=True, backend=backend,
        )  # fmt: skip

    return f


LENGTHS_AND_CHUNKS = [
    *[(L, chunk) for L in (1, 7, 63, 200) for chunk in (1, 7, 16, 64)],
    (1000, 7),
    (1000, 64),
]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize(("L", "chunk"), LENGTHS_AND_CHUNKS)
def test_backend_matches_ref_outputs_states_and_gradients(backend, L, chunk):
    inputs = [x.requires_grad_(True) for x in problem(l=L, seed=L)]
    y_ref, h_ref = call("ref", chunk)(*inputs)
    y, h = call(backend, chunk)(*inputs)
    assert_close(y, y_ref)
    assert_close(h, h_ref)
    for a, b in zip(
        grads(call(backend, chunk), inputs), grads(call("ref", chunk), inputs), strict=True
    ):
        assert_close(a, b)


def test_auto_picks_numba_on_cpu_when_installed_else_chunked():
    want = "numba" if cpu_numba.available() else "chunked"
    assert registry.resolve("ssd", "auto", "cpu").name == want


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("output", [0, 1])
def test_gradient_through_one_output_only(backend, output):
    """Only y or only the final state reaches the loss: the other's gradient is zero."""
    inputs = [x.requires_grad_(True) for x in problem(l=19, seed=3)]

    def one(backend):
        return lambda *t: call(backend, 8)(*t)[output]

    for a, b in zip(grads(one(backend), inputs), grads(one("ref"), inputs), strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("with_reset", [False, True])
def test_chunked_function_gradcheck(with_reset):
    """float64 gradcheck of the hand-written backward: groups, padding, resets, h0."""
    x, dt, A, B, C, _, _, _, h0 = problem(b=2, l=9, h=4, p=2, n=3, g=2, seed=4)
    delta = torch.nn.functional.softplus(dt)
    keep = None
    if with_reset:
        keep = torch.ones(2, 9, dtype=torch.float64)
        keep[0, 3] = keep[1, 4] = keep[1, 5] = 0.0
    inputs = [t.requires_grad_(True) for t in (x, delta, A, B, C, h0)]
    assert torch.autograd.gradcheck(lambda *t: ssd_chunked(*t, keep, chunk_size=4), inputs)


def test_chunked_twice_differentiated_is_a_clear_error():
    x, dt, A, B, C, D, z, bias, h0 = [t.requires_grad_(True) for t in problem(l=5)]
    y = ssd(
        x,
        dt,
        A,
        B,
        C,
        chunk_size=4,
        D=D,
        z=z,
        dt_bias=bias,
        dt_softplus=True,
        initial_state=h0,
        backend="chunked",
    )
    (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.sum().backward()


def test_chunk_of_whole_length_and_per_channel_D():
    x, dt, A, B, C, _, z, bias, h0 = problem(l=20)
    D = randn(4, 3, dtype=torch.float64)
    opts = dict(chunk_size=20, D=D, z=z, dt_bias=bias, dt_softplus=True, initial_state=h0)
    want = ssd(x, dt, A, B, C, **opts, backend="ref")
    assert_close(ssd(x, dt, A, B, C, **opts), want)


def test_ssd_equals_selective_scan_with_heads_as_channels():
    x, dt, A, B, C, D, z, bias, h0 = problem(l=17)
    b, l, h, p = x.shape
    n = B.shape[-1]
    y, last = ssd(
        x, dt, A, B, C, chunk_size=8, D=D, z=z, dt_bias=bias, dt_softplus=True, initial_state=h0,
        return_final_state=True,
    )  # fmt: skip
    y2, last2 = selective_scan(
        x.reshape(b, l, h * p),
        dt.repeat_interleave(p, dim=-1),
        A.repeat_interleave(p).unsqueeze(-1).expand(h * p, n),
        B, C,
        D=D.repeat_interleave(p),
        z=z.reshape(b, l, h * p),
        dt_bias=bias.repeat_interleave(p),
        dt_softplus=True,
        initial_state=h0.reshape(b, h * p, n),
        return_final_state=True,
        backend="ref",
    )  # fmt: skip
    assert_close(y.reshape(b, l, h * p), y2)
    assert_close(last.reshape(b, h * p, n), last2)


def test_split_with_state_equals_whole():
    x, dt, A, B, C, D, z, bias, h0 = problem(l=30)
    opts = dict(chunk_size=8, D=D, dt_bias=bias, dt_softplus=True, return_final_state=True)
    y, last = ssd(x, dt, A, B, C, z=z, initial_state=h0, **opts)
    k = 11
    parts = [t[:, :k] for t in (x, dt)], [t[:, k:] for t in (x, dt)]
    y1, s1 = ssd(*parts[0], A, B[:, :k], C[:, :k], z=z[:, :k], initial_state=h0, **opts)
    y2, s2 = ssd(*parts[1], A, B[:, k:], C[:, k:], z=z[:, k:], initial_state=s1, **opts)
    assert_close(torch.cat([y1, y2], 1), y)
    assert_close(s2, last)


def test_float32_long_sequence_is_finite_and_close_to_float64():
    inputs = problem(b=1, l=1000, h=2, p=4, n=8, seed=9)
    y64 = call("ref", 64)(*inputs)[0]
    y32 = call("auto", 64)(*(t.float() for t in inputs))[0]
    assert bool(torch.isfinite(y32).all())
    assert_close(y32, y64.float())


@pytest.mark.parametrize(
    ("index", "value", "match"),
    [
        (2, lambda A: -A, "A must be <= 0"),
        (3, lambda B: B[:, :, :, :2], "B and C must have the same shape"),
        (1, lambda dt: dt[:, :5], "dt must have shape"),
        (3, lambda B: B.repeat(1, 1, 3, 1)[:, :, :3], "g dividing"),
    ],
)
def test_bad_inputs_raise(index, value, match):
    inputs = problem()
    inputs[index] = value(inputs[index])
    if match == "g dividing":
        inputs[4] = inputs[3].clone()
    with pytest.raises(ValueError, match=match):
        call("auto", 8)(*inputs)


@pytest.mark.parametrize("backend", ["ref", *FAST])
@pytest.mark.parametrize("chunk", [4, 16, 64])
def test_packed_sequences_reset_the_state(backend, chunk):
    x, dt, A, B, C, D, z, bias, h0 = [t.requires_grad_(True) for t in problem(b=1, l=50)]
    starts = [0, 3, 4, 17, 33]
    reset = torch.zeros(1, 50, dtype=torch.bool)
    reset[0, starts[1:]] = True

    def packed(*t):
        x, dt, A, B, C, D, z, bias, h0 = t
        return ssd(
            x, dt, A, B, C, chunk_size=chunk, D=D, z=z, dt_bias=bias, dt_softplus=True,
            initial_state=h0, return_final_state=True, reset=reset, backend=backend,
        )  # fmt: skip

    def one_by_one(*t):
        x, dt, A, B, C, D, z, bias, h0 = t
        ys, state = [], None
        for i, (a, b) in enumerate(zip(starts, [*starts[1:], 50], strict=True)):
            s = slice(a, b)
            y, state = ssd(
                x[:, s], dt[:, s], A, B[:, s], C[:, s], chunk_size=chunk, D=D, z=z[:, s],
                dt_bias=bias, dt_softplus=True, initial_state=h0 if i == 0 else None,
                return_final_state=True, backend="ref",
            )  # fmt: skip
            ys.append(y)
        return torch.cat(ys, 1), state

    inputs = [x, dt, A, B, C, D, z, bias, h0]
    y, h = packed(*inputs)
    y_ref, h_ref = one_by_one(*inputs)
    assert_close(y, y_ref)
    assert_close(h, h_ref)
    for a, b in zip(grads(packed, inputs), grads(one_by_one, inputs), strict=True):
        assert_close(a, b)

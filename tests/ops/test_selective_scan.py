"""selective_scan: every registered backend against the loop definition."""

from __future__ import annotations

import pytest
import torch

from ssmkit.ops import registry, selective_scan
from ssmkit.ops.selective_scan import cpu_numba
from ssmkit.ops.selective_scan.chunked import selective_scan_chunked
from ssmkit.ops.selective_scan.ref import selective_scan_ref
from ssmkit.testing import assert_close, grads, randn

FAST = [b.name for b in registry.backends("selective_scan", "cpu") if b.name != "ref"]


def problem(b=2, l=7, d=6, n=4, g=None, dtype=torch.float64, seed=0, extras=True):
    """Inputs in the order of selective_scan's positional arguments (u .. dt_bias), h0."""
    shape_bc = (b, l, n) if g is None else (b, l, g, n)
    u = randn(b, l, d, dtype=dtype, seed=seed)
    dt = randn(b, l, d, dtype=dtype, seed=seed + 1) * 0.5 - 1.0
    A = -torch.rand(d, n, dtype=dtype, generator=torch.Generator().manual_seed(seed)) * 3
    B = randn(*shape_bc, dtype=dtype, seed=seed + 2)
    C = randn(*shape_bc, dtype=dtype, seed=seed + 3)
    D = randn(d, dtype=dtype, seed=seed + 4) if extras else None
    z = randn(b, l, d, dtype=dtype, seed=seed + 5) if extras else None
    bias = randn(d, dtype=dtype, seed=seed + 6) if extras else None
    h0 = randn(b, d, n, dtype=dtype, seed=seed + 7) if extras else None
    return [u, dt, A, B, C, D, z, bias, h0]


def run(backend, inputs, softplus=True):
    u, dt, A, B, C, D, z, bias, h0 = inputs
    return selective_scan(
        u, dt, A, B, C, D=D, z=z, dt_bias=bias, dt_softplus=softplus, initial_state=h0,
        return_final_state=True, backend=backend,
    )  # fmt: skip


def compare(backend, inputs, softplus=True):
    want = [x.clone().requires_grad_(True) if x is not None else None for x in inputs]
    got = [x.clone().requires_grad_(True) if x is not None else None for x in inputs]
    present = [i for i, x in enumerate(inputs) if x is not None]

    def f(be, xs):
        def call(*vals):
            full = list(xs)
            for i, v in zip(present, vals, strict=True):
                full[i] = v
            return run(be, full, softplus)

        return call

    y_ref, h_ref = run("ref", want, softplus)
    y, h = run(backend, got, softplus)
    assert_close(y, y_ref)
    assert_close(h, h_ref)
    g_ref = grads(f("ref", want), [want[i] for i in present])
    g = grads(f(backend, got), [got[i] for i in present])
    for a, b in zip(g, g_ref, strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("L", [1, 7, 63, 1000])
def test_backend_matches_ref(backend, L):
    compare(backend, problem(l=L, b=1 if L == 1000 else 2, d=3 if L == 1000 else 6, seed=L))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("extras", [False, True])
@pytest.mark.parametrize("softplus", [False, True])
def test_backend_matches_ref_with_and_without_extras(backend, extras, softplus):
    inputs = problem(l=9, extras=extras)
    if not softplus:  # raw dt must then be positive
        inputs[1] = inputs[1].abs() + 0.05
    compare(backend, inputs, softplus)


@pytest.mark.parametrize("backend", FAST)
def test_grouped_B_and_C(backend):
    compare(backend, problem(l=11, d=6, g=3))


@pytest.mark.parametrize("backend", FAST)
def test_float32_matches_float64_ref(backend):
    inputs64 = problem(b=2, l=300, d=8, n=16, seed=3)
    inputs32 = [x.float() if x is not None else None for x in inputs64]
    y64, h64 = run("ref", inputs64)
    y32, h32 = run(backend, inputs32)
    assert_close(y32, y64.float())
    assert_close(h32, h64.float())


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_chunk_sizes_agree(chunk):
    u, dt, A, B, C, _, _, _, h0 = problem(l=64, g=2)
    dt = dt.abs()
    y_ref, h_ref = selective_scan_ref(u, dt, A, B, C, h0)
    y, h = selective_scan_chunked(u, dt, A, B, C, h0, chunk_size=chunk)
    assert_close(y, y_ref)
    assert_close(h, h_ref)


@pytest.mark.skipif(not cpu_numba.available(), reason="numba not installed")
def test_numba_gradcheck_and_state_chunks():
    u, dt, A, B, C, _, _, _, h0 = problem(b=1, l=cpu_numba.CHUNK + 5, d=2, n=3, g=1)
    inputs = [x.clone().requires_grad_(True) for x in (u, dt.abs(), A, B, C, h0)]
    assert torch.autograd.gradcheck(cpu_numba.selective_scan_numba, inputs)


@pytest.mark.skipif(not cpu_numba.available(), reason="numba not installed")
def test_numba_many_state_chunks_match_ref():
    compare("numba", problem(l=3 * cpu_numba.CHUNK + 5, d=3, seed=4))


@pytest.mark.parametrize("backend", FAST)
def test_backward_is_deterministic(backend):
    inputs = problem(b=2, l=150, d=16, n=8, dtype=torch.float32, seed=5)
    first = grads(lambda *xs: run(backend, xs), [x.requires_grad_(True) for x in inputs])
    for _ in range(2):
        again = grads(lambda *xs: run(backend, xs), inputs)
        for a, b in zip(first, again, strict=True):
            assert torch.equal(a, b)


def test_initial_state_is_differentiable_in_every_backend():
    for backend in ["ref", *FAST]:
        inputs = problem(l=5)
        h0 = inputs[-1].requires_grad_(True)
        y, _ = run(backend, inputs)
        (g,) = torch.autograd.grad(y.sum(), h0)
        assert g.abs().max() > 0


def test_split_with_state_equals_whole():
    u, dt, A, B, C, D, z, bias, h0 = problem(l=20)
    opts = dict(D=D, dt_bias=bias, dt_softplus=True, return_final_state=True)
    y, h = selective_scan(u, dt, A, B, C, z=z, initial_state=h0, **opts)
    y1, h1 = selective_scan(
        u[:, :8], dt[:, :8], A, B[:, :8], C[:, :8], z=z[:, :8], initial_state=h0, **opts
    )
    y2, h2 = selective_scan(
        u[:, 8:], dt[:, 8:], A, B[:, 8:], C[:, 8:], z=z[:, 8:], initial_state=h1, **opts
    )
    assert_close(torch.cat([y1, y2], 1), y)
    assert_close(h2, h)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda p: p.__setitem__(2, -p[2]), "A must be <= 0"),
        (lambda p: p[1].__setitem__((0, 0, 0), float("nan")), "dt must be finite"),
        (lambda p: p.__setitem__(3, p[3][:, :, :2]), "B must have shape"),
        (lambda p: p.__setitem__(4, p[4][:, :3]), "C must have shape"),
        (lambda p: p.__setitem__(5, p[5][:2]), "D must have shape"),
        (lambda p: p.__setitem__(8, p[8][:, :2]), "initial_state must have shape"),
        (lambda p: p.__setitem__(1, p[1][:, :3]), "dt must have shape"),
    ],
)
def test_bad_inputs_raise(change, match):
    inputs = problem()
    change(inputs)
    with pytest.raises(ValueError, match=match):
        run("auto", inputs)


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="unknown backend for selective_scan 'cuda-fast'"):
        run("cuda-fast", problem())


def test_groups_must_divide_channels():
    inputs = problem(d=6, g=4)
    with pytest.raises(ValueError, match="g dividing d = 6"):
        run("ref", inputs)


@pytest.mark.parametrize("backend", ["ref", *FAST])
def test_packed_sequences_reset_the_state(backend):
    """A reset at the start of each packed sequence = the sequences run one by one."""
    u, dt, A, B, C, D, z, bias, h0 = problem(b=1, l=70, d=4, n=3, seed=11)
    starts = [0, 5, 6, 40]
    reset = torch.zeros(1, 70, dtype=torch.bool)
    reset[0, starts[1:]] = True
    inputs = [u, dt, A, B, C, D, z, bias, h0]
    xs = [x.requires_grad_(True) for x in inputs]

    def packed(*xs):
        u, dt, A, B, C, D, z, bias, h0 = xs
        return selective_scan(
            u, dt, A, B, C, D=D, z=z, dt_bias=bias, dt_softplus=True, initial_state=h0,
            return_final_state=True, reset=reset, backend=backend,
        )  # fmt: skip

    def one_by_one(*xs):
        u, dt, A, B, C, D, z, bias, h0 = xs
        ys, state = [], h0
        for i, (a, b) in enumerate(zip(starts, [*starts[1:], 70], strict=True)):
            part = slice(a, b)
            y, state = selective_scan(
                u[:, part], dt[:, part], A, B[:, part], C[:, part], D=D, z=z[:, part],
                dt_bias=bias, dt_softplus=True, initial_state=h0 if i == 0 else None,
                return_final_state=True, backend="ref",
            )  # fmt: skip
            ys.append(y)
        return torch.cat(ys, 1), state

    y, h = packed(*xs)
    y_ref, h_ref = one_by_one(*xs)
    assert_close(y, y_ref)
    assert_close(h, h_ref)
    for a, b in zip(grads(packed, xs), grads(one_by_one, xs), strict=True):
        assert_close(a, b)


@pytest.mark.skipif(not cpu_numba.available(), reason="numba not installed")
def test_numba_tiles_cover_each_group_once():
    for d, g in [(6, 1), (6, 3), (134, 2), (2 * cpu_numba.W, 1), (300, 4)]:
        tiles = cpu_numba._tiles(d, g)
        per = d // g
        covered = torch.zeros(d, dtype=torch.long)
        for start, width, group in tiles.tolist():
            assert 1 <= width <= cpu_numba.W
            assert group * per <= start and start + width <= (group + 1) * per
            covered[start : start + width] += 1
        assert bool((covered == 1).all())


@pytest.mark.skipif(not cpu_numba.available(), reason="numba not installed")
def test_numba_many_tiles_groups_and_chunks_match_ref():
    """Several channel tiles per group, narrow last tiles, several blocks and state chunks."""
    d = 2 * cpu_numba.W + 6  # per group W + 3: one full and one 3-wide tile each
    compare("numba", problem(b=2, l=cpu_numba.CHUNK + 9, d=d, n=3, g=2, seed=8))


@pytest.mark.skipif(not cpu_numba.available(), reason="numba not installed")
def test_numba_many_tiles_float32_and_deterministic():
    inputs64 = problem(b=2, l=150, d=cpu_numba.W + 40, n=8, seed=9)
    inputs = [x.float().requires_grad_(True) for x in inputs64]
    y, h = run("numba", inputs)
    y64, h64 = run("ref", inputs64)
    assert_close(y, y64.float())
    assert_close(h, h64.float())
    first = grads(lambda *xs: run("numba", xs), inputs)
    again = grads(lambda *xs: run("numba", xs), inputs)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)


@pytest.mark.skipif(not cpu_numba.available(), reason="numba not installed")
def test_numba_fast_float32_exp2():
    """The kernels' float32 2^y: relative error about 1e-7 over float32's normal range,
    2^0 = 1 exactly, 2^-126 below the normal range; float64 goes through libm."""
    import numba
    import numpy as np

    @numba.njit
    def exp2_all(y):
        out = np.empty_like(y)
        for i in range(y.size):
            out[i] = cpu_numba._exp2(y[i])
        return out

    y = np.linspace(-126.0, 127.0, 300_001).astype(np.float32)
    rel = np.abs(exp2_all(y).astype(np.float64) / np.exp2(y.astype(np.float64)) - 1)
    assert rel.max() < 3e-7
    edge = exp2_all(np.array([0.0, -200.0], dtype=np.float32))
    assert edge[0] == 1.0 and edge[1] == np.float32(2.0**-126)
    rel64 = np.abs(exp2_all(np.array([-1.5, 0.3, -40.0])) / np.exp2([-1.5, 0.3, -40.0]) - 1)
    assert rel64.max() < 1e-14

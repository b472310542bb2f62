"""ssd's Triton backend against the loop, on CPU tensors under Triton's interpreter.

The interpreter is slow (a numpy call per block operation), so shapes are tiny; the grouped
case (g < h), padding of the last chunk, resets and h0 are all exercised.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: its kernels run on CPU tensors

import subprocess
import sys

import pytest
import torch

from ssmkit.ops import registry, ssd
from ssmkit.ops.ssd.triton_backend import ssd_triton
from ssmkit.testing import assert_close, grads, randn
from tests.ops.test_ssd import problem


def call(backend, chunk, reset=None):
    def f(x, dt, A, B, C, D, z, bias, h0):
        return ssd(
            x, dt, A, B, C, chunk_size=chunk, D=D, z=z, dt_bias=bias, dt_softplus=True,
            initial_state=h0, return_final_state=True, reset=reset, backend=backend,
        )  # fmt: skip

    return f


def check_against_ref(inputs, chunk, reset=None):
    inputs = [t.requires_grad_(True) for t in inputs]
    y, h = call("triton", chunk, reset)(*inputs)
    y_ref, h_ref = call("ref", chunk, reset)(*inputs)
    assert_close(y, y_ref)
    assert_close(h, h_ref)
    got = grads(call("triton", chunk, reset), inputs)
    want = grads(call("ref", chunk, reset), inputs)
    names = ["x", "dt", "A", "B", "C", "D", "z", "dt_bias", "h0"]
    for name, a, b in zip(names, got, want, strict=True):
        assert_close(a, b, msg=name)


# (L, chunk): one step; a chunk larger than L; a partial last chunk; several chunks, chunks
# below tl.dot's 16 (padded blocks), and an odd length over 7 chunks.
@pytest.mark.parametrize(("L", "chunk"), [(1, 64), (7, 4), (7, 64), (63, 16), (101, 16)])
def test_triton_matches_ref_outputs_states_and_gradients(L, chunk):
    check_against_ref(problem(l=L, seed=L), chunk)


def test_triton_one_head_per_group_and_per_channel_D():
    x, dt, A, B, C, _, z, bias, h0 = problem(b=1, l=9, h=2, p=2, n=3, g=2, seed=5)
    D = randn(2, 2, dtype=torch.float64, seed=11)
    check_against_ref([x, dt, A, B, C, D, z, bias, h0], 4)


def test_triton_packed_sequences_reset_the_state():
    inputs = problem(b=2, l=21, seed=7)
    reset = torch.zeros(2, 21, dtype=torch.bool)
    reset[0, [3, 4, 8, 16]] = True  # a reset at a chunk's first step (8, 16), two in a row
    reset[1, [10]] = True
    check_against_ref(inputs, 8, reset)


def test_triton_float32_is_close_to_float64():
    inputs = problem(b=1, l=40, h=2, p=4, n=8, g=1, seed=9)
    y64, h64 = call("ref", 16)(*inputs)
    y32, h32 = call("triton", 16)(*(t.float() for t in inputs))
    assert y32.dtype == h32.dtype == torch.float32
    assert_close(y32, y64.float())
    assert_close(h32, h64.float())


@pytest.mark.parametrize("with_reset", [False, True])
def test_triton_function_gradcheck(with_reset):
    x, dt, A, B, C, _, _, _, h0 = problem(b=1, l=5, h=2, p=1, n=2, g=1, seed=4)
    delta = torch.nn.functional.softplus(dt)
    keep = None
    if with_reset:
        keep = torch.ones(1, 5, dtype=torch.float64)
        keep[0, 2] = 0.0
    inputs = [t.requires_grad_(True) for t in (x, delta, A, B, C, h0)]
    # fast_mode: random projections of the Jacobian, a few interpreted forwards instead of two
    # per input entry
    assert torch.autograd.gradcheck(
        lambda *t: ssd_triton(*t, keep, chunk_size=2), inputs, fast_mode=True
    )


def test_auto_never_picks_triton_on_cpu_and_prefers_it_on_cuda():
    assert registry.resolve("ssd", "auto", "cpu").name in ("chunked", "numba")
    assert "triton" not in [b.name for b in registry.backends("ssd", "cpu")]
    assert registry.resolve("ssd", "auto", "cuda").name == "triton"


def test_triton_twice_differentiated_is_a_clear_error():
    x, dt, A, B, C, D, z, bias, h0 = [t.requires_grad_(True) for t in problem(l=5)]
    y = call("triton", 4)(x, dt, A, B, C, D, z, bias, h0)[0]
    (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    # the backward is the custom op ssd_triton_bwd, which has no derivative of its own
    with pytest.raises(RuntimeError, match=r"ssd_triton_bwd.*no autograd formula"):
        gx.sum().backward()


def test_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    inputs = problem(l=3)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        call("triton", 4)(*inputs)


def test_bad_chunk_size_names_the_argument():
    x, dt, A, B, C, _, _, _, h0 = problem(l=3)
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        ssd_triton(x, dt.exp(), A, B, C, h0, None, chunk_size=0)


def test_import_ssmkit_does_not_import_triton():
    code = "import sys, ssmkit, ssmkit.ops; assert 'triton' not in sys.modules, 'imported'"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)

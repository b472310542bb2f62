"""lti_scan's Triton backend against the reference, on CPU under Triton's interpreter.

TRITON_INTERPRET must be set before triton is first imported (the kernels are compiled or
interpreted as their module is imported), hence before everything else here.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest
import torch

pytest.importorskip("triton")  # CI installs it (extra "gpu"): there this never skips

from ssmkit.ops import registry
from ssmkit.ops.lti_scan import triton_backend, triton_kernels
from ssmkit.testing import assert_close, randn
from tests.ops.test_lti_scan import problem, run

NAMES = ["u", "A_bar", "B_bar", "C", "initial_state"]


def outputs_and_grads(backend, inputs, conj, lengths=None):
    """(y, x_last) and the gradients of a fixed random projection of both, from one forward."""
    xs = [x.clone().requires_grad_(True) if x is not None else None for x in inputs]
    leaves = [x for x in xs if x is not None]
    y, h = run(*xs, conj=conj, lengths=lengths, backend=backend)
    total = (y * randn(*y.shape, dtype=y.dtype, seed=1)).sum()
    w = randn(*h.shape, dtype=h.dtype, seed=2)
    total = total + ((h * w.conj()).real if h.is_complex() else h * w).sum()
    return y, h, torch.autograd.grad(total, leaves)


def compare(inputs, conj, lengths=None):
    """Outputs, final state and the gradient of every given input: triton = ref."""
    y_ref, h_ref, g_ref = outputs_and_grads("ref", inputs, conj, lengths)
    y, h, g = outputs_and_grads("triton", inputs, conj, lengths)
    assert y.dtype == y_ref.dtype and h.dtype == h_ref.dtype
    assert_close(y, y_ref, msg="y")
    assert_close(h, h_ref, msg="final state")
    names = [n for n, x in zip(NAMES, inputs, strict=True) if x is not None]
    for name, a, r in zip(names, g, g_ref, strict=True):
        assert a.dtype == r.dtype
        assert_close(a, r, msg=f"gradient of {name}")


@pytest.mark.parametrize("kind", ["siso", "real", "mimo"])
@pytest.mark.parametrize("L", [1, 7, 63])
def test_matches_ref(kind, L):
    """Complex conjugate-pair (S4D), real (LRU real modes) and MIMO (S5, LRU: the reference
    path) systems, with an initial state; lengths 1, 7 and 63 (one stored-state chunk)."""
    big = L == 63
    inputs, conj = problem(kind, b=1 if big else 2, l=L, h=3 if big else 5, n=2, seed=L)
    compare(inputs, conj)


@pytest.mark.parametrize("kind", ["siso", "real"])
def test_odd_length_across_chunks_and_channel_blocks_with_lengths(kind, monkeypatch):
    """23 steps over 6 stored-state chunks, 3 channels in blocks of 2 (one partial), right-padded
    items whose returned state is from the middle of a chunk, the first step, the last."""
    monkeypatch.setattr(triton_kernels, "CHUNK", 4)
    monkeypatch.setattr(triton_kernels, "BLOCK_H", 2)
    inputs, conj = problem(kind, b=3, l=23, h=3, n=2, seed=9)
    compare(inputs, conj, lengths=torch.tensor([23, 10, 1]))


def test_without_initial_state_float32(monkeypatch):
    monkeypatch.setattr(triton_kernels, "CHUNK", 4)
    inputs, conj = problem("siso", b=2, l=13, h=3, n=3, dtype=torch.float32, seed=4, x0=False)
    compare(inputs, conj, lengths=torch.tensor([13, 6]))


@pytest.mark.parametrize("kind", ["siso", "real"])
def test_gradcheck_float64(kind, monkeypatch):
    """The autograd Function itself, across stored-state chunks of 2 steps."""
    monkeypatch.setattr(triton_kernels, "CHUNK", 2)
    (u, A, B, C, x0), conj = problem(kind, b=2, l=4, h=1, n=2, seed=5)
    last = torch.tensor([3, 1])
    xs = [x.clone().requires_grad_(True) for x in (u, A, B, C, x0)]

    def f(*xs):
        return triton_backend.lti_scan_triton(*xs, conj, last)

    assert torch.autograd.gradcheck(f, xs)


def test_backward_is_deterministic():
    inputs, conj = problem("siso", b=2, l=6, h=5, n=3, dtype=torch.float32, seed=6)
    _, _, first = outputs_and_grads("triton", inputs, conj)
    _, _, again = outputs_and_grads("triton", inputs, conj)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)


def test_auto_prefers_triton_on_cuda_but_never_on_cpu():
    assert "triton" not in [b.name for b in registry.backends("lti_scan", "cpu")]
    assert registry.resolve("lti_scan", "auto", "cpu").name != "triton"
    assert registry.resolve("lti_scan", "auto", "cuda").name == "triton"
    assert registry.resolve("lti_scan", "triton", "cpu").name == "triton"  # by name


def test_cpu_without_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    inputs, conj = problem("siso", l=3)
    with pytest.raises(RuntimeError, match="only under Triton's interpreter: set TRITON_INTERPRET"):
        run(*inputs, conj=conj, backend="triton")

"""selective_scan's Triton backend against the loop definition, on CPU under Triton's interpreter.

TRITON_INTERPRET must be set before triton is first imported (the kernels are compiled or
interpreted as their module is imported), hence before everything else here.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")  # CI installs it (extra "gpu"): there this never skips

from ssmkit.ops import registry, selective_scan
from ssmkit.ops.selective_scan import triton_backend, triton_kernels
from ssmkit.testing import assert_close, randn
from tests.ops.test_selective_scan import problem


def run(backend, xs, softplus=True, reset=None):
    u, dt, A, B, C, D, z, bias, h0 = xs
    return selective_scan(
        u, dt, A, B, C, D=D, z=z, dt_bias=bias, dt_softplus=softplus, initial_state=h0,
        return_final_state=True, reset=reset, backend=backend,
    )  # fmt: skip


def outputs_and_grads(backend, inputs, softplus=True, reset=None):
    """(y, h_last) and the gradients of a fixed random projection of both, from one forward."""
    xs = [x.clone().requires_grad_(True) if x is not None else None for x in inputs]
    leaves = [x for x in xs if x is not None]
    y, h = run(backend, xs, softplus, reset)
    total = (y * randn(*y.shape, dtype=y.dtype, seed=1)).sum()
    total = total + (h * randn(*h.shape, dtype=h.dtype, seed=2)).sum()
    return y, h, torch.autograd.grad(total, leaves)


def compare(inputs, softplus=True, reset=None):
    """Outputs, final state and the gradient of every given input: triton = ref."""
    y_ref, h_ref, g_ref = outputs_and_grads("ref", inputs, softplus, reset)
    y, h, g = outputs_and_grads("triton", inputs, softplus, reset)
    assert y.dtype == y_ref.dtype and h.dtype == h_ref.dtype
    assert_close(y, y_ref, msg="y")
    assert_close(h, h_ref, msg="final state")
    names = ["u", "dt", "A", "B", "C", "D", "z", "dt_bias", "h0"]
    names = [n for n, x in zip(names, inputs, strict=True) if x is not None]
    for name, a, r in zip(names, g, g_ref, strict=True):
        assert a.dtype == r.dtype
        assert_close(a, r, msg=f"gradient of {name}")


def packed(b, l, starts):
    """(b, l) bool reset mask, True at the given (item, step) starts."""
    reset = torch.zeros(b, l, dtype=torch.bool)
    for item, step in starts:
        reset[item, step] = True
    return reset


@pytest.mark.parametrize("L", [1, 7, 63])
def test_matches_ref_with_every_extra(L):
    """D, z, dt_bias, initial state, softplus: lengths 1, 7 and 63 (one stored-state chunk)."""
    compare(problem(b=1 if L == 63 else 2, l=L, d=6, n=4, seed=L))


def test_matches_ref_without_extras_and_raw_dt():
    inputs = problem(b=2, l=9, d=5, n=3, seed=2, extras=False)
    inputs[1] = inputs[1].abs() + 0.05  # raw dt (no softplus) must be positive
    compare(inputs, softplus=False)


def test_odd_length_across_chunks_and_channel_blocks_grouped_with_reset(monkeypatch):
    """37 steps over 5 stored-state chunks, 2 groups of 3 channels in blocks of 2 (a partial
    block per group: the dB, dC partial sums), packed sequences with resets."""
    monkeypatch.setattr(triton_kernels, "CHUNK", 8)
    monkeypatch.setattr(triton_kernels, "BLOCK_D", 2)
    inputs = problem(b=1, l=37, d=6, n=3, g=2, seed=7)
    compare(inputs, reset=packed(1, 37, [(0, 5), (0, 16), (0, 36)]))


def test_reset_at_the_start_without_initial_state(monkeypatch):
    monkeypatch.setattr(triton_kernels, "CHUNK", 8)
    inputs = problem(b=2, l=19, d=3, n=2, seed=8)
    inputs[-1] = None  # zeros
    compare(inputs, reset=packed(2, 19, [(0, 0), (0, 8), (1, 11)]))


def test_float32_across_chunks(monkeypatch):
    monkeypatch.setattr(triton_kernels, "CHUNK", 8)
    inputs = [x.float() if x is not None else None for x in problem(b=2, l=29, d=4, seed=3)]
    compare(inputs)


def test_gradcheck_float64(monkeypatch):
    """The autograd Function itself, across stored-state chunks of 2 steps, with a reset."""
    monkeypatch.setattr(triton_kernels, "CHUNK", 2)
    u, dt, A, B, C, _, _, _, h0 = problem(b=1, l=4, d=2, n=2, g=1, seed=4)
    keep = torch.ones(1, 4, dtype=torch.float64)
    keep[0, 2] = 0
    xs = [x.clone().requires_grad_(True) for x in (u, dt.abs() + 0.1, A, B, C, h0)]

    def f(*xs):
        return triton_backend.selective_scan_triton(*xs, keep)

    assert torch.autograd.gradcheck(f, xs)


def test_backward_is_deterministic():
    inputs = [x.float() if x is not None else None for x in problem(b=2, l=6, d=8, seed=5)]
    _, _, first = outputs_and_grads("triton", inputs)
    _, _, again = outputs_and_grads("triton", inputs)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)


def test_auto_prefers_triton_on_cuda_but_never_on_cpu():
    assert "triton" not in [b.name for b in registry.backends("selective_scan", "cpu")]
    assert registry.resolve("selective_scan", "auto", "cpu").name != "triton"
    assert registry.resolve("selective_scan", "auto", "cuda").name == "triton"
    assert registry.resolve("selective_scan", "triton", "cpu").name == "triton"  # by name


def test_cpu_without_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="only under Triton's interpreter: set TRITON_INTERPRET"):
        run("triton", problem(l=3))


def test_import_without_triton_and_the_error_naming_it():
    """``import ssmkit`` never imports triton; without triton, "auto" on cuda falls back and
    ``backend="triton"`` says what is missing."""
    code = (
        "import sys\n"
        "import ssmkit\n"
        "assert 'triton' not in sys.modules, 'import ssmkit imported triton'\n"
        "sys.modules['triton'] = None  # as if not installed\n"
        "from ssmkit.ops import registry\n"
        "assert registry.resolve('selective_scan', 'auto', 'cuda').name == 'chunked'\n"
        "assert registry.resolve('lti_scan', 'auto', 'cuda').name == 'ref'\n"
        "try:\n"
        "    registry.resolve('selective_scan', 'triton', 'cpu')\n"
        "except ValueError as e:\n"
        "    print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "is not available on device 'cpu' (it needs the triton package" in done.stdout

"""Every backend registered for CUDA against the loop definition, on a GPU (``-m gpu``).

Run by ``bench/gpu_check.sh`` in a process without ``TRITON_INTERPRET`` (the interpreter
tests set it when they are imported, so that script names this file alone). Float32 inputs
(as models run), moderate sizes that cross several chunks and blocks, outputs, final states
and every gradient.
"""

from __future__ import annotations

import pytest
import torch

from ssmkit.ops import lti_scan, registry, selective_scan, ssd
from ssmkit.testing import assert_close
from tests.ops import test_lti_scan, test_selective_scan, test_ssd

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _cuda_backends(op: str) -> list[str]:
    if not torch.cuda.is_available():
        return []
    return [b.name for b in registry.backends(op, "cuda") if b.name != "ref"]


def _check(fn, inputs, backend):
    """fn(backend, *inputs) -> tuple of tensors: outputs, and the gradients of all inputs."""
    xs = [x.cuda().float().requires_grad_(True) if x is not None else None for x in inputs]
    leaves = [x for x in xs if x is not None]
    got, want = fn(backend, *xs), fn("ref", *xs)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, rtol=1e-3, atol=1e-4)
    weights = [torch.randn_like(t) for t in want]

    def grads(outs):
        total = sum((o * w).sum() for o, w in zip(outs, weights, strict=True))
        return torch.autograd.grad(total, leaves)

    for a, b in zip(grads(fn(backend, *xs)), grads(want), strict=True):
        assert_close(a, b, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("backend", _cuda_backends("selective_scan"))
@pytest.mark.parametrize("L", [1, 63, 1031])
def test_selective_scan_on_cuda(backend, L):
    def fn(be, u, dt, A, B, C, D, z, bias, h0):
        return selective_scan(
            u, dt, A, B, C, D=D, z=z, dt_bias=bias, dt_softplus=True, initial_state=h0,
            return_final_state=True, backend=be,
        )  # fmt: skip

    _check(fn, test_selective_scan.problem(b=2, l=L, d=64, n=16, g=2), backend)


@pytest.mark.parametrize("backend", _cuda_backends("ssd"))
@pytest.mark.parametrize("L", [1, 63, 1031])
def test_ssd_on_cuda(backend, L):
    def fn(be, x, dt, A, B, C, D, z, bias, h0):
        return ssd(
            x, dt, A, B, C, chunk_size=64, D=D, z=z, dt_bias=bias, dt_softplus=True,
            initial_state=h0, return_final_state=True, backend=be,
        )  # fmt: skip

    inputs = test_ssd.problem(b=2, l=L, h=4, p=16, n=16, g=2)
    _check(fn, inputs, backend)


@pytest.mark.parametrize("backend", _cuda_backends("lti_scan"))
@pytest.mark.parametrize("kind", ["siso", "mimo"])  # MIMO: S5's fused diagonal scan
@pytest.mark.parametrize("L", [1, 63, 1031])
def test_lti_scan_on_cuda(backend, kind, L):
    n = 16 if kind == "siso" else 65  # MIMO: modes across two program blocks, one partial
    inputs, conj = test_lti_scan.problem(kind, b=2, l=L, h=64, n=n, dtype=torch.float32)
    u, A, B, C, state = inputs

    def fn(be, u):  # the system's parameters fixed, on the device
        return lti_scan(
            u, A.cuda(), B.cuda(), C.cuda(), conj=conj, initial_state=state.cuda(),
            return_final_state=True, backend=be,
        )  # fmt: skip

    _check(fn, [u], backend)

"""Cold start of the selective scan: "auto" does not wait for numba to compile."""

from __future__ import annotations

import pytest
import torch

from ssmkit.ops import selective_scan
from ssmkit.ops.selective_scan import cpu_numba, custom_op
from ssmkit.testing import assert_close, randn

pytestmark = pytest.mark.skipif(not cpu_numba.available(), reason="numba not installed")


def problem(l):
    u = randn(2, l, 6, dtype=torch.float32, seed=1)
    dt = randn(2, l, 6, dtype=torch.float32, seed=2)
    A = -torch.rand(6, 3, generator=torch.Generator().manual_seed(3)) - 0.1
    B = randn(2, l, 3, dtype=torch.float32, seed=4)
    C = randn(2, l, 3, dtype=torch.float32, seed=5)
    return u, dt, A, B, C


@pytest.mark.parametrize("l", [7, 63])
def test_auto_runs_a_pure_pytorch_backend_while_the_kernels_compile(monkeypatch, l):
    started = []
    monkeypatch.setattr(cpu_numba, "ready", lambda dtype: False)
    monkeypatch.setattr(cpu_numba, "warm_up", lambda dtype, wait=True: started.append(wait))
    called = []
    original = custom_op.selective_scan_numba
    monkeypatch.setattr(
        custom_op, "selective_scan_numba", lambda *a: called.append(1) or original(*a)
    )
    args = problem(l)
    y = selective_scan(*args, dt_softplus=True, backend="auto")
    assert started == [False] and not called  # compiling in the background, not waited for
    assert_close(y, selective_scan(*args, dt_softplus=True, backend="ref"))
    selective_scan(*args, dt_softplus=True, backend="numba")  # an explicit choice waits
    assert called


def test_warm_up_makes_auto_use_the_kernels():
    cpu_numba.warm_up(torch.float32)
    assert cpu_numba.ready(torch.float32)
    args = problem(7)
    assert_close(
        selective_scan(*args, dt_softplus=True, backend="auto"),
        selective_scan(*args, dt_softplus=True, backend="numba"),
        rtol=0,
        atol=0,
    )

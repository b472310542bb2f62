"""The fused kernels as torch.library custom ops: opcheck, reference equality through the ops,
torch.compile(fullgraph=True) and torch.export seeing one opaque op.

The Triton ops run on CPU tensors under Triton's interpreter: TRITON_INTERPRET must be set
before triton is first imported, hence before everything else here. Compiled graphs use AOT
autograd without code generation (``aot_eager``, or ``aot_autograd`` keeping the graphs to
look for the ops): it traces forward and backward through the fake implementations and the
registered autograd, in seconds on CPU.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import contextlib
import importlib.util
from collections.abc import Iterator

import pytest
import torch
from torch._dynamo.backends.common import aot_autograd
from torch.utils._python_dispatch import TorchDispatchMode

import ssmkit
from ssmkit.ops import lti_scan, selective_scan, ssd
from ssmkit.ops.lti_scan import custom_op as lti_ops
from ssmkit.ops.selective_scan import cpu_numba as ss_numba
from ssmkit.ops.selective_scan import custom_op as ss_ops
from ssmkit.ops.ssd import custom_op as ssd_ops
from ssmkit.testing import assert_close, randn
from tests.layers.layer_zoo import LAYERS, D
from tests.ops import test_lti_scan, test_selective_scan

needs_numba = pytest.mark.skipif(not ss_numba.available(), reason="numba not installed")
# CI installs triton (extra "gpu"): there this never skips
needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton not installed"
)


@contextlib.contextmanager
def ops_called() -> Iterator[set[str]]:
    """The names ("ns::op") of the operators dispatched inside the block."""
    names: set[str] = set()

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            names.add(func.name().split(".")[0])
            return func(*args, **(kwargs or {}))

    with Record():
        yield names


def _grad(*xs: torch.Tensor) -> list[torch.Tensor]:
    return [x.clone().requires_grad_(x.is_floating_point() or x.is_complex()) for x in xs]


def selective_inputs(b=2, l=5, d=3, n=2, g=1, seed=0):
    """u, delta, A, B, C, h0, keep (with a reset), float64, as the backends take them."""
    u, dt, A, B, C, _, _, _, h0 = test_selective_scan.problem(b=b, l=l, d=d, n=n, g=g, seed=seed)
    keep = torch.ones(b, l, dtype=u.dtype)
    keep[0, l // 2] = 0
    return [u, torch.nn.functional.softplus(dt), A, B, C, h0, keep]


def lti_inputs(kind, b=2, l=5, h=3, n=2, seed=0):
    """u, A_bar, B_bar, C, x0, last (one item's state from the middle), scale."""
    (u, A, B, C, x0), conj = test_lti_scan.problem(kind, b=b, l=l, h=h, n=n, seed=seed)
    return [u, A, B, C, x0, torch.tensor([l - 1, l // 2]), 2.0 if conj else 1.0]


def ssd_inputs(reset, b=2, l=5, h=2, p=2, n=3, g=1, seed=0):
    """x, delta, A, B, C, h0, keep (None or with a reset), chunk_size 2."""
    x = randn(b, l, h, p, dtype=torch.float64, seed=seed)
    delta = torch.nn.functional.softplus(randn(b, l, h, dtype=torch.float64, seed=seed + 1))
    A = -torch.rand(h, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    B = randn(b, l, g, n, dtype=torch.float64, seed=seed + 2)
    C = randn(b, l, g, n, dtype=torch.float64, seed=seed + 3)
    h0 = randn(b, h, p, n, dtype=torch.float64, seed=seed + 4)
    keep = None
    if reset:
        keep = torch.ones(b, l, dtype=torch.float64)
        keep[1, 2] = 0
    return [x, delta, A, B, C, h0, keep, 2]


# ---- opcheck: schema, fake (meta) implementation, registered autograd, AOT dispatch ----


@needs_numba
def test_opcheck_selective_scan_numba():
    args = [*_grad(*selective_inputs()), 2]
    torch.library.opcheck(ss_ops.selective_scan_numba, args)
    u, delta, A, B, C, h0, keep, chunk = (a.detach() if torch.is_tensor(a) else a for a in args)
    y, h, ckpt = ss_ops.selective_scan_numba(u, delta, A, B, C, h0, keep, chunk)
    bwd = torch.ops.ssmkit.selective_scan_numba_bwd.default
    torch.library.opcheck(bwd, [u, delta, A, B, C, keep, ckpt, y.clone(), h.clone(), chunk])


@needs_numba
@pytest.mark.parametrize("kind", ["siso", "real"])
def test_opcheck_lti_scan_numba(kind):
    *xs, last, scale = lti_inputs(kind)
    torch.library.opcheck(lti_ops.lti_scan_numba, [*_grad(*xs), last, scale, 2])
    y, h, ckpt = lti_ops.lti_scan_numba(*xs, last, scale, 2)
    bwd = torch.ops.ssmkit.lti_scan_numba_bwd.default
    torch.library.opcheck(bwd, [*xs, last, ckpt, y.clone(), h.clone(), scale, 2])


@needs_triton
def test_opcheck_selective_scan_triton():
    torch.library.opcheck(ss_ops.selective_scan_triton, [*_grad(*selective_inputs(g=1)), 2])


@needs_triton
@pytest.mark.parametrize("kind", ["siso", "mimo"])
def test_opcheck_lti_scan_triton(kind):
    *xs, last, scale = lti_inputs(kind)
    if kind == "mimo":
        torch.library.opcheck(lti_ops.lti_scan_mimo_triton, [*_grad(*xs), last, scale])
    else:
        torch.library.opcheck(lti_ops.lti_scan_triton, [*_grad(*xs), last, scale, 2])


@needs_triton
@pytest.mark.parametrize("reset", [False, True])
def test_opcheck_ssd_triton(reset):
    *xs, keep, chunk = ssd_inputs(reset)
    torch.library.opcheck(ssd_ops.ssd_triton, [*_grad(*xs), keep, chunk])


@needs_numba
def test_fake_implementations_run_on_meta():
    """Shape propagation without the kernels: the ``meta`` device gets the fake outputs."""
    meta = [x.to("meta") for x in selective_inputs(l=7)]
    y, h, ckpt = ss_ops.selective_scan_numba(*meta, 2)
    assert (y.shape, h.shape, ckpt.shape) == ((2, 7, 3), (2, 3, 2), (2, 4, 2, 3))
    *xs, last, scale = lti_inputs("siso", l=7)
    y, h, ckpt = lti_ops.lti_scan_numba(*(x.to("meta") for x in [*xs, last]), scale, 4)
    assert (y.shape, h.shape, h.dtype, ckpt.shape) == ((2, 7, 3), (2, 3, 2), xs[4].dtype,
                                                      (2, 2, 2, 2, 3))  # fmt: skip


# ---- the public ops through the custom ops equal the reference (outputs, states, grads) ----


@needs_numba
@pytest.mark.parametrize("L", [1, 7, 63])
def test_numba_ops_through_custom_ops_match_ref(L):
    with ops_called() as called:
        test_selective_scan.compare("numba", test_selective_scan.problem(l=L, g=2, seed=L))
        inputs, conj = test_lti_scan.problem("siso", l=L, seed=L)
        test_lti_scan.compare("numba", inputs, conj)
    want = {"ssmkit::selective_scan_numba", "ssmkit::selective_scan_numba_bwd"}
    assert want | {"ssmkit::lti_scan_numba", "ssmkit::lti_scan_numba_bwd"} <= called


# ---- torch.compile(fullgraph=True) and torch.export see one opaque op ----


def _numba_ops(u, dt, A, B, C, h0, v, A_bar, B_bar, C_bar, x0):
    y, h = selective_scan(
        u, dt, A, B, C, dt_softplus=True, initial_state=h0, return_final_state=True,
        backend="numba",
    )  # fmt: skip
    w, x = lti_scan(
        v, A_bar, B_bar, C_bar, conj=True, initial_state=x0, return_final_state=True,
        backend="numba",
    )  # fmt: skip
    return y, h, w, x


def _outputs_and_grads(fn, inputs):
    xs = _grad(*inputs)
    outs = fn(*xs)
    total = sum((o.abs() ** 2 if o.is_complex() else o * o).sum() for o in outs)
    return outs, torch.autograd.grad(total, xs)


@needs_numba
def test_compile_fullgraph_numba_selective_and_lti_match_eager():
    u, dt, A, B, C, _, _, _, h0 = test_selective_scan.problem(l=9, d=3, n=2, g=1, seed=1)
    (v, A_bar, B_bar, C_bar, x0), _ = test_lti_scan.problem("siso", l=9, h=3, n=2, seed=2)
    inputs = [u, dt, A, B, C, h0, v, A_bar, B_bar, C_bar, x0]
    graphs: list[str] = []  # the forward and backward graphs AOT autograd traced

    def keep_graph(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm

    torch._dynamo.reset()
    backend = aot_autograd(fw_compiler=keep_graph, bw_compiler=keep_graph)
    compiled = torch.compile(_numba_ops, fullgraph=True, backend=backend)
    got, got_grads = _outputs_and_grads(compiled, inputs)
    forward, backward = graphs
    assert "ssmkit.selective_scan_numba.default" in forward
    assert "ssmkit.lti_scan_numba.default" in forward
    assert "ssmkit.selective_scan_numba_bwd.default" in backward
    assert "ssmkit.lti_scan_numba_bwd.default" in backward
    want, want_grads = _outputs_and_grads(_numba_ops, inputs)
    for a, b in zip([*got, *got_grads], [*want, *want_grads], strict=True):
        assert_close(a, b)


@needs_numba
def test_mamba_compiled_fullgraph_with_numba_matches_eager():
    torch.manual_seed(0)
    layer = LAYERS["mamba"](backend="numba")
    x = torch.randn(2, 7, D)
    torch._dynamo.reset()
    with ssmkit.checks("cheap"):
        compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
        y = compiled(x)[0]
        grads = torch.autograd.grad(y.square().sum(), list(layer.parameters()))
    y_eager = layer(x)[0]
    assert_close(y, y_eager)
    want = torch.autograd.grad(y_eager.square().sum(), list(layer.parameters()))
    for a, b in zip(grads, want, strict=True):
        assert_close(a, b)


@needs_triton
def test_triton_ops_trace_without_graph_breaks():
    """Dynamo traces the Triton backends (selective scan, SSD, MIMO LTI) as opaque ops."""
    u, dt, A, B, C, _, _, _, h0 = test_selective_scan.problem(l=5, d=2, n=2, g=1, seed=3)
    x, delta, a, Bs, Cs, s0, _, _ = ssd_inputs(False, l=5)
    (v, A_bar, B_bar, C_bar, x0), _ = test_lti_scan.problem("mimo", l=5, h=3, n=3, seed=4)

    def f():
        kw = {"return_final_state": True, "backend": "triton"}
        return (
            *selective_scan(u, dt, A, B, C, initial_state=h0, **kw),
            *ssd(x, delta, a, Bs, Cs, chunk_size=2, initial_state=s0, **kw),
            *lti_scan(v, A_bar, B_bar, C_bar, initial_state=x0, **kw),
        )

    torch._dynamo.reset()
    with ssmkit.checks("cheap"):
        got = torch.compile(f, fullgraph=True, backend="eager")()
    for a_, b_ in zip(got, f(), strict=True):
        assert_close(a_, b_)


@needs_numba
def test_export_keeps_the_op_opaque():
    class Scan(torch.nn.Module):
        def forward(self, v, A_bar, B_bar, C_bar):
            return lti_scan(v, A_bar, B_bar, C_bar, conj=True, backend="numba")

    (v, A_bar, B_bar, C_bar, _), _ = test_lti_scan.problem("siso", l=6, h=3, n=2, seed=5)
    with ssmkit.checks("cheap"):
        program = torch.export.export(Scan(), (v, A_bar, B_bar, C_bar))
    assert "ssmkit.lti_scan_numba" in str(program.graph)
    assert_close(program.module()(v, A_bar, B_bar, C_bar), Scan()(v, A_bar, B_bar, C_bar))

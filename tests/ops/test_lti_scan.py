"""lti_scan: every registered backend against the reference (inject, scan, readout)."""

from __future__ import annotations

import pytest
import torch

from ssmkit.ops import lti_scan, registry
from ssmkit.ops.lti_scan import cpu_numba, inject, readout
from ssmkit.ops.scan import scan_ref
from ssmkit.testing import assert_close, grads, randn

FAST = [b.name for b in registry.backends("lti_scan", "cpu") if b.name != "ref"]
KINDS = ["siso", "real", "mimo"]


def system(kind, h=5, n=4, dtype=torch.float64, seed=0):
    """(A_bar, B_bar, C, conj) of a stable random system of the given kind."""
    g = torch.Generator().manual_seed(seed)
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    shape = (n,) if kind == "mimo" else (h, n)
    radius = 0.5 + 0.49 * torch.rand(shape, generator=g, dtype=dtype)
    if kind == "real":
        A = radius * torch.where(torch.rand(shape, generator=g) < 0.2, -1.0, 1.0).to(dtype)
        return (
            A,
            randn(h, n, dtype=dtype, seed=seed + 1),
            randn(h, n, dtype=dtype, seed=seed + 2),
            False,
        )
    A = torch.polar(radius, 3 * torch.rand(shape, generator=g, dtype=dtype)).to(cdtype)
    B = randn(*((n, h) if kind == "mimo" else (h, n)), dtype=cdtype, seed=seed + 1)
    C = randn(h, n, dtype=cdtype, seed=seed + 2)
    return A, B, C, kind == "siso"  # LRU-like MIMO: conj=False


def problem(kind, b=2, l=7, h=5, n=4, dtype=torch.float64, seed=0, x0=True):
    A, B, C, conj = system(kind, h, n, dtype, seed)
    u = randn(b, l, h, dtype=dtype, seed=seed + 3)
    s = (n,) if kind == "mimo" else (h, n)
    state = randn(b, *s, dtype=torch.promote_types(A.dtype, B.dtype), seed=seed + 4)
    return [u, A, B, C, state if x0 else None], conj


def run(u, A, B, C, x0, conj=False, lengths=None, backend="auto"):
    """lti_scan with the problem's tensors in order, returning (y, final state)."""
    return lti_scan(
        u, A, B, C, conj=conj, initial_state=x0, return_final_state=True, lengths=lengths,
        backend=backend,
    )  # fmt: skip


def compare(backend, inputs, conj, lengths=None):
    present = [i for i, x in enumerate(inputs) if x is not None]

    def call(be, xs):
        def f(*vals):
            full = list(xs)
            for i, v in zip(present, vals, strict=True):
                full[i] = v
            return run(*full, conj=conj, lengths=lengths, backend=be)

        return f

    want = [x.clone().requires_grad_(True) if x is not None else None for x in inputs]
    got = [x.clone().requires_grad_(True) if x is not None else None for x in inputs]
    y_ref, h_ref = call("ref", want)(*[want[i] for i in present])
    y, h = call(backend, got)(*[got[i] for i in present])
    assert y.dtype == inputs[0].dtype and h.dtype == h_ref.dtype
    assert_close(y, y_ref)
    assert_close(h, h_ref)
    g_ref = grads(call("ref", want), [want[i] for i in present])
    g = grads(call(backend, got), [got[i] for i in present])
    for i, a, r in zip(present, g, g_ref, strict=True):
        assert a.dtype == inputs[i].dtype
        assert_close(a, r, msg=f"gradient of input {i}")


def test_reference_is_the_recurrence():
    """The reference against x_t = A_bar x_{t-1} + B_bar u_t written out step by step."""
    for kind in KINDS:
        (u, A, B, C, x0), conj = problem(kind, l=6)
        mimo = kind == "mimo"
        y, h = run(u, A, B, C, x0, conj, backend="ref")
        x, ys = x0, []
        for t in range(u.shape[1]):
            x = A * x + inject(u[:, t : t + 1], B, mimo)[:, 0]
            ys.append(readout(x.unsqueeze(1), C, conj, mimo)[:, 0])
        assert_close(y, torch.stack(ys, 1))
        assert_close(h, x)
        bu = inject(u, B, mimo).to(x0.dtype)
        states = scan_ref(A.expand(*bu.shape), bu, x0)
        assert_close(readout(states, C, conj, mimo), y)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("L", [1, 7, 63, 1000])
def test_backend_matches_ref(backend, kind, L):
    big = L == 1000
    inputs, conj = problem(kind, b=2, l=L, h=3 if big else 5, n=3 if big else 4, seed=L)
    compare(backend, inputs, conj)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("kind", KINDS)
def test_backend_matches_ref_without_initial_state_and_with_lengths(backend, kind):
    inputs, conj = problem(kind, b=3, l=300, h=4, x0=False, seed=1)
    compare(backend, inputs, conj)
    lengths = torch.tensor([300, 129, 1])  # across stored-state chunks, and a single step
    compare(backend, problem(kind, b=3, l=300, h=4, seed=2)[0], conj, lengths)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("kind", KINDS)
def test_float32_matches_float64_ref(backend, kind):
    (u, A, B, C, x0), conj = problem(kind, b=2, l=500, h=40, n=8, seed=3)  # h: 2 tiles
    lengths = torch.tensor([500, 77])
    y64, h64 = run(u, A, B, C, x0, conj, lengths, backend="ref")
    low = [x.to(torch.float32 if not x.is_complex() else torch.complex64) for x in (u, A, B, C, x0)]
    y32, h32 = run(*low, conj, lengths, backend=backend)
    assert y32.dtype == torch.float32
    assert_close(y32, y64.float())
    assert_close(h32, h64.to(h32.dtype))
    compare(backend, low, conj, lengths)  # and float32 against the float32 reference


def test_numba_gradcheck_across_state_chunks(monkeypatch):
    if not cpu_numba.available():
        pytest.skip("numba not installed")
    monkeypatch.setattr(cpu_numba, "CHUNK", 4)  # a run-time kernel argument: no recompile
    for kind in ("siso", "real"):
        (u, A, B, C, x0), conj = problem(kind, b=2, l=11, h=2, n=2, seed=5)
        lengths = torch.tensor([11, 6])
        inputs = [x.clone().requires_grad_(True) for x in (u, A, B, C, x0)]

        def f(*xs, conj=conj, lengths=lengths):
            return run(*xs, conj=conj, lengths=lengths, backend="numba")

        assert torch.autograd.gradcheck(f, inputs)
        compare("numba", [u, A, B, C, x0], conj, lengths)


def test_numba_is_auto_on_cpu_when_installed():
    want = "numba" if cpu_numba.available() else "ref"
    assert registry.resolve("lti_scan", "auto", "cpu").name == want


@pytest.mark.parametrize("backend", FAST)
def test_backward_is_deterministic(backend):
    inputs, conj = problem("siso", b=3, l=150, h=40, n=8, dtype=torch.float32, seed=6)
    xs = [x.requires_grad_(True) for x in inputs]
    first = grads(lambda *a: run(*a, conj=conj, backend=backend), xs)
    again = grads(lambda *a: run(*a, conj=conj, backend=backend), xs)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["ref", *FAST])
def test_split_with_state_equals_whole(backend):
    (u, A, B, C, x0), conj = problem("siso", l=20)
    y, h = run(u, A, B, C, x0, conj, backend=backend)
    y1, h1 = run(u[:, :8], A, B, C, x0, conj, backend=backend)
    y2, h2 = run(u[:, 8:], A, B, C, h1, conj, backend=backend)
    assert_close(torch.cat([y1, y2], 1), y)
    assert_close(h2, h)


def _bad(change, kind="siso"):
    inputs, conj = problem(kind)
    args = dict(zip(["u", "A_bar", "B_bar", "C", "initial_state"], inputs, strict=True))
    args["conj"] = conj
    change(args)
    return args


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda a: a.update(u=a["u"][0]), ValueError, r"u must be .* shape \(b, l, h\)"),
        (lambda a: a.update(u=a["u"].to(torch.float16)), ValueError, "u must be a float32"),
        (lambda a: a.update(u=a["u"][:, :0]), ValueError, "length l >= 1"),
        (lambda a: a.update(A_bar=a["A_bar"][:3]), ValueError, r"A_bar must have shape \(h, n\)"),
        (lambda a: a.update(B_bar=a["B_bar"].T), ValueError, r"B_bar must have shape \(h, n\)"),
        (lambda a: a.update(C=a["C"][:, :2]), ValueError, r"C must have shape \(h, n\) = \(5, 4\)"),
        (
            lambda a: a.update(C=a["C"].to(torch.complex64)),
            TypeError,
            "C must be real or complex of",
        ),
        (lambda a: a.update(A_bar=a["A_bar"].abs().long()), TypeError, "A_bar must be real or"),
        (lambda a: a["u"].__setitem__((0, 0, 0), float("nan")), ValueError, "u must be finite"),
        (
            lambda a: a.update(initial_state=a["initial_state"][:1]),
            ValueError,
            r"initial_state must have shape \(b, \*s\) = \(2, 5, 4\)",
        ),
        (
            lambda a: a.update(initial_state=a["initial_state"].real),
            ValueError,
            "and dtype torch.complex128",
        ),
        (
            lambda a: a.update(lengths=torch.tensor([7, 8])),
            ValueError,
            r"lengths must be .* \[1, 7\]",
        ),
        (lambda a: a.update(lengths=torch.tensor([7.0, 1.0])), ValueError, "integer tensor"),
        (lambda a: a.update(conj=1), TypeError, "conj must be a bool"),
        (lambda a: a.update(backend="cuda-fast"), ValueError, "unknown backend for lti_scan"),
    ],
)
def test_bad_inputs_raise(change, error, match):
    args = _bad(change)
    with pytest.raises(error, match=match):
        lti_scan(**args)


def test_bad_mimo_input_matrix_names_its_shape():
    args = _bad(lambda a: a.update(B_bar=a["B_bar"].T), kind="mimo")
    with pytest.raises(ValueError, match=r"B_bar must have shape \(n, h\) \(MIMO\) = \(4, 5\)"):
        lti_scan(**args)

"""C_tilde moved to a longer length (shared squarings, custom backwards) = the definition."""

import pytest
import torch

from ssmkit.core.discretize import discretize_dplr
from ssmkit.core.kernels import dplr_c_tilde, expand_conj
from ssmkit.core.kernels_dplr_long import (
    _Squares,
    dplr_c_tilde_rescale,
    matrix_power_squares,
    row_powers,
)
from ssmkit.layers import S4
from ssmkit.testing import assert_close, generator, grads

C128 = torch.complex128
F64 = torch.float64
NAMES = ("Lambda", "P", "Q", "C_tilde", "dt")


def system(h=2, n=3, r=1, k=None, seed=0):
    """A stable DPLR system: Lambda, P, Q, C_tilde ((k,) h, n) and dt, in float64."""
    g = generator(seed)
    Lam = torch.complex(
        -torch.rand(h, n, generator=g, dtype=F64) - 0.1,
        torch.randn(h, n, generator=g, dtype=F64) * 3,
    )
    P = torch.randn(h, r, n, generator=g, dtype=C128) * 0.3
    Q = torch.randn(h, r, n, generator=g, dtype=C128) * 0.3
    Ct = torch.randn(*(() if k is None else (k,)), h, n, generator=g, dtype=C128)
    dt = torch.rand(h, generator=g, dtype=F64) * 0.3 + 0.01
    return [Lam, P, Q, Ct, dt]


def rescale_ref(Lam, P, Q, Ct, dt, l, L, conj=True):
    """The definition: C = C_tilde (I - A^l)^{-1} by matrix_power and a solve, then
    :func:`dplr_c_tilde` (C (I - A^L)) for the new length."""
    n = Lam.shape[-1]
    full = [expand_conj(x) for x in (Lam, P, Q, Ct)] if conj else [Lam, P, Q, Ct]
    A_bar, _ = discretize_dplr(full[0], full[1], full[2], torch.ones_like(full[0]), dt)
    M = torch.eye(A_bar.shape[-1], dtype=C128) - torch.linalg.matrix_power(A_bar, l)
    C = torch.linalg.solve(M.mT, full[3].unsqueeze(-1)).squeeze(-1)
    return dplr_c_tilde(Lam, P, Q, C[..., :n] if conj else C, dt, L, conj=conj)


def compare(inputs, l, L, conj=True):
    out = {}
    for name, fn in (("fast", dplr_c_tilde_rescale), ("ref", rescale_ref)):
        xs = [x.clone().requires_grad_() for x in inputs]

        def f(*a, fn=fn):
            return fn(*a, l, L, conj=conj)

        out[name] = (f(*xs), grads(f, xs))
    (Ct, g), (Ct_ref, g_ref) = out["fast"], out["ref"]
    assert Ct.shape == inputs[3].shape
    assert_close(Ct, Ct_ref, atol=1e-11)
    for name, a, b in zip(NAMES, g, g_ref, strict=True):
        assert a is not None and a.shape == b.shape, name
        assert_close(a, b, atol=1e-10, msg=name)


@pytest.mark.parametrize("L", [1, 7, 63, 1000, 1001])
@pytest.mark.parametrize("N", [2, 4, 64])
def test_rescale_equals_definition_values_and_all_gradients(N, L):
    """l = 16: L = 1000 takes 62 products with A^l, 1001 = 62 l + 9 adds the bits of 9."""
    compare(system(n=N // 2, seed=N), 16, L)


@pytest.mark.parametrize(("l", "L"), [(1, 300), (5, 1001), (7, 7), (24, 5)])
def test_rescale_other_lengths_and_rank(l, L):
    """L far beyond 64 l (binary powering of the vector), L = l, L < l; rank 2."""
    compare(system(n=3, r=2, seed=l), l, L)


def test_rescale_without_conjugate_pairs_and_two_directions():
    Lam, P, Q, Ct, dt = system(n=3, r=2, k=2, seed=3)
    compare([Lam, P, Q, Ct, dt], 8, 50)  # (2, h, n) C_tilde, as a bidirectional S4
    full = [expand_conj(x) for x in (Lam, P, Q, Ct)] + [dt]
    compare(full, 8, 50, conj=False)


def test_rescale_to_same_length_is_identity():
    Lam, P, Q, Ct, dt = system(seed=5)
    assert_close(dplr_c_tilde_rescale(Lam, P, Q, Ct, dt, 32, 32), Ct, atol=1e-12)


@pytest.mark.parametrize("e", [1, 2, 5, 8, 13])
def test_matrix_power_squares_equals_matrix_power(e):
    A = torch.randn(3, 4, 4, generator=generator(e), dtype=C128) * 0.5
    squares = [A]
    assert_close(matrix_power_squares(A, e, squares), torch.linalg.matrix_power(A, e))
    assert len(squares) == e.bit_length()
    for i, S in enumerate(squares):
        assert_close(S, torch.linalg.matrix_power(A, 2**i))


@pytest.mark.parametrize("q", [0, 1, 3])
@pytest.mark.parametrize("lead", [(), (2,)])
def test_gradcheck_row_powers(q, lead):
    """v (lead, h, N) against A (h, N, N): the broadcast axis is summed out of A's gradient."""
    g = generator(q)
    A = (torch.randn(3, 4, 4, generator=g, dtype=C128) * 0.5).requires_grad_()
    v = torch.randn(*lead, 3, 4, generator=g, dtype=C128).requires_grad_()
    assert torch.autograd.gradcheck(lambda v, A: row_powers(v, A, q), (v, A))
    expected = (v.unsqueeze(-2) @ torch.linalg.matrix_power(A, q)).squeeze(-2)
    assert_close(row_powers(v, A, q), expected)


@pytest.mark.parametrize("k", [1, 3])
def test_gradcheck_squares(k):
    """All outputs used, and only the last (the other gradients arrive as None)."""
    A = (torch.randn(2, 3, 3, generator=generator(k), dtype=C128) * 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda A: _Squares.apply(A, k), (A,))
    assert torch.autograd.gradcheck(lambda A: _Squares.apply(A, k)[-1], (A,))
    A2 = A[0].detach().clone().requires_grad_()  # no batch axis
    assert torch.autograd.gradcheck(lambda A: _Squares.apply(A, k), (A2,))


def test_gradcheck_rescale():
    inputs = [x.clone().requires_grad_() for x in system(h=1, n=2, r=1, seed=7)]
    assert torch.autograd.gradcheck(lambda *a: dplr_c_tilde_rescale(*a, 3, 20), inputs)


@pytest.mark.parametrize("L", [17, 40, 63])
def test_s4_longer_than_l_max_backends_agree(L):
    """S4 beyond l_max: the rescaled C_tilde (auto) = system() + dplr_c_tilde (ref)."""
    torch.manual_seed(0)
    layers = {b: S4(3, N=8, rank=2, l_max=16, kernel_backend=b).double() for b in ("ref", "auto")}
    with torch.no_grad():
        layers["ref"].P.add_(0.1 * torch.randn_like(layers["ref"].P))
    layers["auto"].load_state_dict(layers["ref"].state_dict())
    x = torch.randn(2, L, 3, dtype=F64)
    out = {}
    for b, layer in layers.items():
        y, _ = layer(x)
        y.square().sum().backward()
        out[b] = [y] + [p.grad for p in layer.parameters()]
    for a, b in zip(out["auto"], out["ref"], strict=True):
        assert_close(a, b, atol=1e-10)


def test_bad_lengths_and_steps():
    Lam, P, Q, Ct, dt = system()
    with pytest.raises(ValueError, match="l must be >= 1, got 0"):
        dplr_c_tilde_rescale(Lam, P, Q, Ct, dt, 0, 8)
    with pytest.raises(ValueError, match="L must be >= 1, got 0"):
        dplr_c_tilde_rescale(Lam, P, Q, Ct, dt, 8, 0)
    with pytest.raises(TypeError, match="l must be an int, got float"):
        dplr_c_tilde_rescale(Lam, P, Q, Ct, dt, 8.0, 16)
    with pytest.raises(ValueError, match="q must be >= 0, got -1"):
        row_powers(Ct, torch.eye(3, dtype=C128), -1)

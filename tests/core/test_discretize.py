"""Discretisation: every rule against its dense / matrix-exponential reference."""

import pytest
import torch

from ssmkit.core.discretize import (
    discretize_dense,
    discretize_diag,
    discretize_dplr,
    dplr_to_dense,
    zoh_dense_ref,
)
from ssmkit.testing import assert_close, generator, grads

C128 = torch.complex128


def stable_diag(h, n, seed=0, dtype=C128):
    g = generator(seed)
    re = -torch.rand(h, n, generator=g, dtype=torch.float64) * 2 - 0.1
    im = torch.randn(h, n, generator=g, dtype=torch.float64) * 3
    A = torch.complex(re, im) if dtype.is_complex else re
    B = torch.randn(h, n, generator=g, dtype=dtype)
    dt = torch.rand(h, generator=g, dtype=torch.float64) * 0.5 + 0.01
    return A, B, dt


@pytest.mark.parametrize("method", ["zoh", "bilinear", "euler"])
@pytest.mark.parametrize("dtype", [C128, torch.float64])
def test_diag_equals_dense(method, dtype):
    A, B, dt = stable_diag(3, 5, dtype=dtype)
    A_bar, B_bar = discretize_diag(A, B, dt, method)
    Ad, Bd = discretize_dense(torch.diag_embed(A), B.unsqueeze(-1), dt, method)
    assert_close(torch.diag_embed(A_bar), Ad)
    assert_close(B_bar, Bd.squeeze(-1))


@pytest.mark.parametrize("dtype", [C128, torch.float64])
def test_zoh_diag_equals_augmented_expm(dtype):
    A, B, dt = stable_diag(4, 6, dtype=dtype)
    A_bar, B_bar = discretize_diag(A, B, dt, "zoh")
    Ar, Br = zoh_dense_ref(torch.diag_embed(A), B.unsqueeze(-1), dt)
    assert_close(torch.diag_embed(A_bar), Ar)
    assert_close(B_bar, Br.squeeze(-1))


def test_zoh_dense_equals_augmented_expm():
    g = generator(1)
    A = torch.randn(3, 5, 5, generator=g, dtype=torch.float64) - 2 * torch.eye(5)
    B = torch.randn(3, 5, 2, generator=g, dtype=torch.float64)
    dt = torch.tensor([0.01, 0.3, 1.7], dtype=torch.float64)
    A_bar, B_bar = discretize_dense(A, B, dt, "zoh")
    Ar, Br = zoh_dense_ref(A, B, dt)
    assert_close(A_bar, Ar)
    assert_close(B_bar, Br)


def test_zoh_singular_A_uses_the_limit():
    """A = 0 (a pure integrator): B_bar = dt B, in both the diagonal and the dense forms."""
    B = torch.ones(2, 3, dtype=torch.float64)
    dt = torch.tensor([0.5, 2.0], dtype=torch.float64)
    A_bar, B_bar = discretize_diag(torch.zeros(2, 3, dtype=torch.float64), B, dt, "zoh")
    assert_close(A_bar, torch.ones_like(A_bar))
    assert_close(B_bar, dt[:, None] * B)
    Ad, Bd = discretize_dense(torch.zeros(2, 3, 3, dtype=torch.float64), B.unsqueeze(-1), dt)
    assert_close(Bd.squeeze(-1), dt[:, None] * B)
    assert_close(Ad, torch.eye(3, dtype=torch.float64).expand(2, 3, 3))


def test_zoh_small_dtA_is_accurate():
    """expm1 keeps relative accuracy where exp(dtA) - 1 would cancel."""
    A = torch.tensor([[-1e-3 + 1e-3j]], dtype=C128)
    B = torch.ones(1, 1, dtype=C128)
    dt = torch.tensor([1e-5], dtype=torch.float64)
    _, B_bar = discretize_diag(A, B, dt, "zoh")
    exact = (torch.exp(dt * A[0, 0]) - 1) / A[0, 0]
    assert abs(complex(B_bar[0, 0]) - complex(exact)) / abs(complex(exact)) < 1e-8
    _, B32 = discretize_diag(A.to(torch.complex64), B.to(torch.complex64), dt.float(), "zoh")
    assert abs(complex(B32[0, 0]) - complex(exact)) / abs(complex(exact)) < 1e-5


def test_per_step_dt_broadcasts():
    """dt of shape (b, l, h) against A of shape (h, n): the selective / irregular case."""
    A, B, _ = stable_diag(3, 4)
    dt = torch.rand(2, 5, 3, dtype=torch.float64) + 0.01
    A_bar, B_bar = discretize_diag(A, B, dt, "zoh")
    assert A_bar.shape == B_bar.shape == (2, 5, 3, 4)
    one, _ = discretize_diag(A, B, dt[1, 2], "zoh")
    assert_close(A_bar[1, 2], one)


@pytest.mark.parametrize("method", ["bilinear", "zoh", "euler"])
@pytest.mark.parametrize("rank", [1, 2])
def test_dplr_equals_dense(method, rank):
    Lam, B, dt = stable_diag(2, 6)
    g = generator(3)
    P = torch.randn(2, rank, 6, generator=g, dtype=C128) * 0.3
    Q = torch.randn(2, rank, 6, generator=g, dtype=C128) * 0.3
    A_bar, B_bar = discretize_dplr(Lam, P, Q, B, dt, method)
    Ad, Bd = discretize_dense(dplr_to_dense(Lam, P, Q), B.unsqueeze(-1), dt, method)
    assert_close(A_bar, Ad)
    assert_close(B_bar, Bd.squeeze(-1))


def test_gradients_flow_through_diag_zoh():
    A, B, dt = stable_diag(2, 3)
    A.requires_grad_()
    dt.requires_grad_()
    g1 = grads(lambda A, dt: discretize_diag(A, B, dt, "zoh"), [A, dt])
    g2 = grads(
        lambda A, dt: tuple(
            x.diagonal(dim1=-2, dim2=-1) if i == 0 else x.squeeze(-1)
            for i, x in enumerate(zoh_dense_ref(torch.diag_embed(A), B.unsqueeze(-1), dt))
        ),
        [A, dt],
    )
    for x, y in zip(g1, g2, strict=True):
        assert_close(x, y)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (
            lambda: discretize_diag(*stable_diag(2, 3)[:2], torch.tensor([0.1, -0.1])),
            ValueError,
            "dt",
        ),
        (
            lambda: discretize_diag(*stable_diag(2, 3)[:2], torch.tensor([0.1, float("nan")])),
            ValueError,
            "dt",
        ),
        (lambda: discretize_diag(*stable_diag(2, 3), method="rk4"), ValueError, "method"),
        (
            lambda: discretize_dense(torch.ones(2, 3), torch.ones(2, 3, 1), torch.ones(2)),
            ValueError,
            "A must have shape",
        ),
        (
            lambda: discretize_dense(torch.eye(3), torch.ones(2, 1), torch.ones(())),
            ValueError,
            "B must have shape",
        ),
        (
            lambda: discretize_dplr(
                torch.ones(3, dtype=C128),
                torch.ones(1, 3, dtype=C128),
                torch.ones(1, 2, dtype=C128),
                torch.ones(3, dtype=C128),
                torch.ones(()),
            ),
            ValueError,
            "P and Q",
        ),
        (
            lambda: discretize_diag("A", torch.ones(3), torch.ones(())),
            TypeError,
            "A must be a torch.Tensor",
        ),
    ],
)
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()

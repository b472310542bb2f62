"""FFT convolution against the direct sums, values and gradients."""

import pytest
import torch

from ssmkit.core.fftconv import (
    conv_bidirectional_ref,
    conv_ref,
    fftconv,
    fftconv_bidirectional,
)
from ssmkit.testing import assert_close, generator, grads

F64 = torch.float64


def inputs(length, kernel_length=None, h=3, seed=0):
    g = generator(seed)
    u = torch.randn(2, length, h, generator=g, dtype=F64, requires_grad=True)
    Lk = kernel_length or length
    K = torch.randn(h, Lk, generator=g, dtype=F64, requires_grad=True)
    K2 = torch.randn(h, Lk, generator=g, dtype=F64, requires_grad=True)
    D = torch.randn(h, generator=g, dtype=F64, requires_grad=True)
    return u, K, K2, D


@pytest.mark.parametrize("length", [1, 7, 63, 1000])
@pytest.mark.parametrize("kernel_ratio", [0.5, 1, 2])
def test_causal_equals_direct_sum(length, kernel_ratio):
    u, K, _, D = inputs(length, max(1, int(length * kernel_ratio)))
    assert_close(fftconv(u, K, D), conv_ref(u, K, D))
    for g, g_ref in zip(grads(fftconv, [u, K, D]), grads(conv_ref, [u, K, D]), strict=True):
        assert_close(g, g_ref)


@pytest.mark.parametrize("length", [1, 7, 63, 1000])
@pytest.mark.parametrize("kernel_ratio", [0.5, 1, 2])
def test_bidirectional_equals_direct_sum(length, kernel_ratio):
    u, K, K2, D = inputs(length, max(1, int(length * kernel_ratio)))
    args = [u, K, K2, D]
    assert_close(fftconv_bidirectional(*args), conv_bidirectional_ref(*args))
    for g, g_ref in zip(
        grads(fftconv_bidirectional, args), grads(conv_bidirectional_ref, args), strict=True
    ):
        assert_close(g, g_ref)


def test_conv_ref_is_the_textbook_sum():
    """The reference itself, checked by hand: y_t = sum_{s<=t} K[t-s] u_s + D u_t."""
    u = torch.tensor([[[1.0], [2.0], [3.0]]], dtype=F64)
    K = torch.tensor([[1.0, 10.0, 100.0]], dtype=F64)
    D = torch.tensor([0.5], dtype=F64)
    expected = torch.tensor([[[1.5], [13.0], [124.5]]], dtype=F64)
    assert_close(conv_ref(u, K, D), expected)
    K_bwd = torch.tensor([[1000.0, 10000.0, 0.0]], dtype=F64)
    # y_0 += 1000 u_1 + 10000 u_2; y_1 += 1000 u_2
    expected_bi = expected + torch.tensor([[[32000.0], [3000.0], [0.0]]], dtype=F64)
    assert_close(conv_bidirectional_ref(u, K, K_bwd, D), expected_bi)
    assert_close(fftconv_bidirectional(u, K, K_bwd, D), expected_bi)


def test_float32_long():
    g = generator(3)
    u = torch.randn(1, 16384, 4, generator=g)
    K = torch.randn(4, 16384, generator=g) * torch.exp(-torch.arange(16384) / 2000.0)
    y = fftconv(u, K)
    y64 = fftconv(u.double(), K.double())
    assert y.dtype == torch.float32
    assert float((y.double() - y64).norm() / y64.norm()) < 1e-5


def test_no_skip_term():
    u, K, _, _ = inputs(20)
    assert_close(fftconv(u, K), conv_ref(u, K))


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (
            lambda: fftconv(torch.ones(2, 5), torch.ones(3, 5)),
            ValueError,
            r"u must have shape \(b, l, h\)",
        ),
        (lambda: fftconv(torch.ones(2, 5, 3), torch.ones(4, 5)), ValueError, "K must have shape"),
        (lambda: fftconv(torch.ones(2, 5, 3), torch.ones(3, 0)), ValueError, "L >= 1"),
        (
            lambda: fftconv(torch.ones(2, 5, 3), torch.ones(3, 5), torch.ones(4)),
            ValueError,
            "D must have shape",
        ),
        (
            lambda: fftconv(torch.full((2, 5, 3), float("inf")), torch.ones(3, 5)),
            ValueError,
            "u must be finite",
        ),
        (
            lambda: fftconv(torch.ones(2, 5, 3, dtype=torch.complex64), torch.ones(3, 5)),
            TypeError,
            "u must be a real",
        ),
        (
            lambda: fftconv_bidirectional(torch.ones(2, 5, 3), torch.ones(3, 5), torch.ones(2, 5)),
            ValueError,
            "K_bwd must have shape",
        ),
    ],
)
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()

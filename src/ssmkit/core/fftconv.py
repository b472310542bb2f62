"""Convolution of a sequence with an SSM kernel, by FFT, plus the D skip term.

Causal (S4 eq. 5):          y_t = sum_{s<=t} K[t-s] u_s + D u_t
Bidirectional (S4, LRA):    y_t = sum_{s<=t} K_fwd[t-s] u_s + sum_{s>t} K_bwd[s-t-1] u_s + D u_t

Inputs are zero-padded to at least l + L - 1 points so the FFT's circular convolution equals
the linear one. Kernel taps beyond ``l`` never touch the output (they are dropped); a kernel
shorter than ``l`` acts as if zero-padded. ``conv_ref`` and ``conv_bidirectional_ref`` are the
direct O(l^2) sums: the slow twins.
"""

from __future__ import annotations

import torch

from ssmkit.core.checks import check_finite, check_ndim, check_tensor

Tensor = torch.Tensor


def _check(u: Tensor, kernels: dict[str, Tensor], D: Tensor | None) -> None:
    check_ndim("u", u, 3, "(b, l, h)")
    if u.is_complex() or not u.is_floating_point():
        raise TypeError(f"u must be a real floating-point tensor, got {u.dtype}")
    check_finite("u", u, hot=True)
    h = u.shape[-1]
    for name, K in kernels.items():
        check_ndim(name, K, 2, "(h, L)")
        if K.shape[0] != h or K.shape[1] < 1:
            raise ValueError(
                f"{name} must have shape (h, L) with h = {h} (channels of u) and L >= 1, "
                f"got shape {tuple(K.shape)}"
            )
        check_finite(name, K, hot=True)
    if D is not None:
        check_tensor("D", D)
        if D.shape != (h,):
            raise ValueError(f"D must have shape (h,) = ({h},), got shape {tuple(D.shape)}")
        check_finite("D", D, hot=True)


def _fft_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n (fast sizes for pocketfft and cuFFT)."""
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def _skip(y: Tensor, u: Tensor, D: Tensor | None) -> Tensor:
    return y if D is None else y + u * D


def fftconv(u: Tensor, K: Tensor, D: Tensor | None = None) -> Tensor:
    """Causal convolution y_t = sum_{s<=t} K[t-s] u_s + D u_t by FFT.

    Args:
        u: (b, l, h) real input.
        K: (h, L) kernel; taps beyond l are unused.
        D: (h,) skip term, optional.

    Returns:
        y: (b, l, h), dtype of ``u``.
    """
    _check(u, {"K": K}, D)
    if u.shape[0] == 0:  # an empty batch (pocketfft/MKL reject zero-size transforms)
        return _skip(torch.zeros_like(u), u, D)
    length = u.shape[1]
    K = K[:, :length]
    n = _fft_size(length + K.shape[1] - 1)
    u_f = torch.fft.rfft(u.transpose(1, 2), n=n)  # (b, h, n//2+1)
    K_f = torch.fft.rfft(K.to(u.dtype), n=n)  # (h, n//2+1)
    y = torch.fft.irfft(u_f * K_f, n=n)[..., :length].transpose(1, 2)  # (b, l, h)
    return _skip(y, u, D)


def fftconv_bidirectional(
    u: Tensor, K_fwd: Tensor, K_bwd: Tensor, D: Tensor | None = None
) -> Tensor:
    """Non-causal convolution: a causal kernel plus an anti-causal one, by one FFT.

    y_t = sum_{s<=t} K_fwd[t-s] u_s + sum_{s>t} K_bwd[s-t-1] u_s + D u_t.

    Args:
        u: (b, l, h) real input.
        K_fwd: (h, L) causal kernel (lag 0 included).
        K_bwd: (h, L) anti-causal kernel: K_bwd[j] weighs the input j + 1 steps ahead.
        D: (h,) skip term, optional.

    Returns:
        y: (b, l, h).
    """
    _check(u, {"K_fwd": K_fwd, "K_bwd": K_bwd}, D)
    if u.shape[0] == 0:  # an empty batch
        return _skip(torch.zeros_like(u), u, D)
    length = u.shape[1]
    K_fwd = K_fwd[:, :length].to(u.dtype)
    K_bwd = K_bwd[:, : max(length - 1, 0)].to(u.dtype)
    n = _fft_size(length + max(K_fwd.shape[1], K_bwd.shape[1] + 1))
    # One circular kernel of size n: lags 0.. at the front, lags -1, -2, ... wrapped to the end.
    K = u.new_zeros(u.shape[-1], n)  # (h, n)
    K[:, : K_fwd.shape[1]] = K_fwd
    if K_bwd.shape[1]:
        K[:, n - K_bwd.shape[1] :] = K_bwd.flip(-1)
    u_f = torch.fft.rfft(u.transpose(1, 2), n=n)  # (b, h, n//2+1)
    y = torch.fft.irfft(u_f * torch.fft.rfft(K, n=n), n=n)[..., :length].transpose(1, 2)
    return _skip(y, u, D)


def conv_ref(u: Tensor, K: Tensor, D: Tensor | None = None) -> Tensor:
    """Causal convolution as a direct sum over lags (the reference for :func:`fftconv`)."""
    _check(u, {"K": K}, D)
    length = u.shape[1]
    y = torch.zeros_like(u)
    for lag in range(min(length, K.shape[1])):
        y[:, lag:] = y[:, lag:] + K[:, lag].to(u.dtype) * u[:, : length - lag]
    return _skip(y, u, D)


def conv_bidirectional_ref(
    u: Tensor, K_fwd: Tensor, K_bwd: Tensor, D: Tensor | None = None
) -> Tensor:
    """Direct-sum reference for :func:`fftconv_bidirectional`."""
    _check(u, {"K_fwd": K_fwd, "K_bwd": K_bwd}, D)
    length = u.shape[1]
    y = conv_ref(u, K_fwd)
    for j in range(min(length - 1, K_bwd.shape[1])):  # input j + 1 steps ahead
        y[:, : length - j - 1] = y[:, : length - j - 1] + K_bwd[:, j].to(u.dtype) * u[:, j + 1 :]
    return _skip(y, u, D)

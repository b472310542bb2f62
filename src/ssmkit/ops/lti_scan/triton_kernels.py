"""Triton kernels of the SISO diagonal LTI scan (complex), forward and recomputing backward.

Triton has no complex dtype: every complex number is a pair of real tiles (real, imaginary
part); a real system runs as a complex one with zero imaginary parts. Each program owns
``BLOCK_H`` channels of one batch item, its state x (BLOCK_H, n) in registers, and computes

    x_t = A_bar x_{t-1} + B_bar u_t        y_t = Re(sum_n C x_t)

(C arrives scaled by 2 for conjugate pairs), storing x every ``CHUNK`` steps
(b, l / CHUNK, 2, n, h) and the state after step ``last`` of each item. The backward runs the
chunks from the last, recomputes a chunk's states into a per-program scratch of ``CHUNK``
tiles (the only history, O(CHUNK)), and goes back through them with the adjoint
g = dL/dRe x + i dL/dIm x (PyTorch's convention for complex gradients):

    g_t = g_{t+1} conj(A_bar) + dy_t conj(C) (+ dL/dx_last at t = last)
    dC += dy_t conj(x_t)    dB_bar += g_t u_t    dA_bar += g_t conj(x_{t-1})
    du_t = Re(sum_n conj(B_bar) g_t)

dA_bar, dB_bar and dC are written per batch item and summed by the launcher in a fixed order:
no atomics, the same gradients bit for bit on every run. Parameters (6, n, h) hold the real
and imaginary parts of A_bar, B_bar, C in that order.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Channels per program, at most: a (32, n = 16) complex state is 2 x 512 values, 8 per thread
# of the default 4 warps; the backward keeps about 18 such (real) tiles live (parameters, state,
# adjoint, gradient sums), so a tile is capped at TILE_VALUES: 8 channels for S4D's n = 64.
# b h / BLOCK_H programs run in parallel. Not tuned on a GPU yet.
BLOCK_H = 32
TILE_VALUES = 512
# Steps between stored states: the backward's scratch holds CHUNK complex state tiles per
# program, the forward stores l / CHUNK of them.
CHUNK = 64


@triton.jit
def _step(ar, ai, br, bi, xr, xi, uu):
    """x_t = A_bar x_{t-1} + B_bar u_t on (real, imaginary) tiles (BLOCK_H, BLOCK_N)."""
    return ar * xr - ai * xi + br * uu[:, None], ar * xi + ai * xr + bi * uu[:, None]


@triton.jit
def lti_scan_fwd_kernel(
    u_ptr, P_ptr, x0_ptr, last_ptr,  # inputs
    y_ptr, xlast_ptr, ckpt_ptr,  # outputs
    L, H, N, n_chunks, chunk,
    BLOCK: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Grid (b, cdiv(h, BLOCK)). u, y: (b, l, h); P: (6, n, h); x0, xlast: (b, 2, n, h);
    last: (b,) int64; ckpt: (b, n_chunks, 2, n, h)."""
    pid_b = tl.program_id(0).to(tl.int64)
    ch = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,)
    mask_h = ch < H
    k = tl.arange(0, BLOCK_N)
    mask = mask_h[:, None] & (k < N)[None, :]
    tile = k[None, :] * H + ch[:, None]  # (BLOCK, BLOCK_N) offsets in an (n, h) array
    NH = N * H
    acc = ckpt_ptr.dtype.element_ty
    ar = tl.load(P_ptr + tile, mask=mask, other=0.0)
    ai = tl.load(P_ptr + NH + tile, mask=mask, other=0.0)
    br = tl.load(P_ptr + 2 * NH + tile, mask=mask, other=0.0)
    bi = tl.load(P_ptr + 3 * NH + tile, mask=mask, other=0.0)
    cr = tl.load(P_ptr + 4 * NH + tile, mask=mask, other=0.0)
    ci = tl.load(P_ptr + 5 * NH + tile, mask=mask, other=0.0)
    xr = tl.load(x0_ptr + pid_b * 2 * NH + tile, mask=mask, other=0.0).to(acc)
    xi = tl.load(x0_ptr + (pid_b * 2 + 1) * NH + tile, mask=mask, other=0.0).to(acc)
    last = tl.load(last_ptr + pid_b)
    for c in range(n_chunks):
        at = ckpt_ptr + (pid_b * n_chunks + c) * 2 * NH
        tl.store(at + tile, xr, mask=mask)
        tl.store(at + NH + tile, xi, mask=mask)
        for t in range(c * chunk, tl.minimum(c * chunk + chunk, L)):
            row = pid_b * L + t
            uu = tl.load(u_ptr + row * H + ch, mask=mask_h, other=0.0).to(acc)
            xr, xi = _step(ar, ai, br, bi, xr, xi, uu)
            tl.store(y_ptr + row * H + ch, tl.sum(cr * xr - ci * xi, axis=1), mask=mask_h)
            # a full mask: Triton's interpreter rejects one broadcast from a scalar comparison
            keep = mask & ((tl.zeros_like(tile) + t) == last)
            tl.store(xlast_ptr + pid_b * 2 * NH + tile, xr, mask=keep)
            tl.store(xlast_ptr + (pid_b * 2 + 1) * NH + tile, xi, mask=keep)


@triton.jit
def lti_scan_bwd_kernel(
    u_ptr, P_ptr, last_ptr, ckpt_ptr, dy_ptr, dxlast_ptr,  # inputs
    du_ptr, dP_ptr, dx0_ptr, scratch_ptr,  # outputs, scratch
    L, H, N, n_chunks, chunk,
    BLOCK: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Grid as the forward's. dy: (b, l, h); dxlast, dx0: (b, 2, n, h); du: (b, l, h);
    dP: (b, 6, n, h) per batch item; scratch: (b * cdiv(h, BLOCK), chunk, 2, BLOCK, BLOCK_N)."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_h = tl.program_id(1)
    ch = pid_h * BLOCK + tl.arange(0, BLOCK)
    mask_h = ch < H
    k = tl.arange(0, BLOCK_N)
    mask = mask_h[:, None] & (k < N)[None, :]
    tile = k[None, :] * H + ch[:, None]
    NH = N * H
    acc = ckpt_ptr.dtype.element_ty
    own = tl.arange(0, BLOCK)[:, None] * BLOCK_N + k[None, :]  # offsets in a scratch tile
    TILE = BLOCK * BLOCK_N
    scratch = scratch_ptr + (pid_b * tl.num_programs(1) + pid_h) * chunk * 2 * TILE
    ar = tl.load(P_ptr + tile, mask=mask, other=0.0)
    ai = tl.load(P_ptr + NH + tile, mask=mask, other=0.0)
    br = tl.load(P_ptr + 2 * NH + tile, mask=mask, other=0.0)
    bi = tl.load(P_ptr + 3 * NH + tile, mask=mask, other=0.0)
    cr = tl.load(P_ptr + 4 * NH + tile, mask=mask, other=0.0)
    ci = tl.load(P_ptr + 5 * NH + tile, mask=mask, other=0.0)
    dxr = tl.load(dxlast_ptr + pid_b * 2 * NH + tile, mask=mask, other=0.0).to(acc)
    dxi = tl.load(dxlast_ptr + (pid_b * 2 + 1) * NH + tile, mask=mask, other=0.0).to(acc)
    last = tl.load(last_ptr + pid_b)
    gr = tl.zeros((BLOCK, BLOCK_N), dtype=acc)
    gi = tl.zeros((BLOCK, BLOCK_N), dtype=acc)
    dar = tl.zeros((BLOCK, BLOCK_N), dtype=acc)
    dai = tl.zeros((BLOCK, BLOCK_N), dtype=acc)
    dbr = tl.zeros((BLOCK, BLOCK_N), dtype=acc)
    dbi = tl.zeros((BLOCK, BLOCK_N), dtype=acc)
    dcr = tl.zeros((BLOCK, BLOCK_N), dtype=acc)
    dci = tl.zeros((BLOCK, BLOCK_N), dtype=acc)
    for cc in range(n_chunks):
        c = n_chunks - 1 - cc
        t0 = c * chunk
        t1 = tl.minimum(t0 + chunk, L)
        at = ckpt_ptr + (pid_b * n_chunks + c) * 2 * NH
        xr = tl.load(at + tile, mask=mask, other=0.0)
        xi = tl.load(at + NH + tile, mask=mask, other=0.0)
        for t in range(t0, t1):  # recompute the chunk's states: x_{t-1} into scratch[t - t0]
            tl.store(scratch + (t - t0) * 2 * TILE + own, xr)
            tl.store(scratch + ((t - t0) * 2 + 1) * TILE + own, xi)
            uu = tl.load(u_ptr + (pid_b * L + t) * H + ch, mask=mask_h, other=0.0).to(acc)
            xr, xi = _step(ar, ai, br, bi, xr, xi, uu)
        tl.debug_barrier()
        for tt in range(t0, t1):  # and back through them
            t = t1 - 1 - (tt - t0)
            row = pid_b * L + t
            pr = tl.load(scratch + (t - t0) * 2 * TILE + own)  # x_{t-1}
            pi = tl.load(scratch + ((t - t0) * 2 + 1) * TILE + own)
            uu = tl.load(u_ptr + row * H + ch, mask=mask_h, other=0.0).to(acc)
            xr, xi = _step(ar, ai, br, bi, pr, pi, uu)
            dyt = tl.load(dy_ptr + row * H + ch, mask=mask_h, other=0.0).to(acc)[:, None]
            at_last = t == last
            gr += dyt * cr + tl.where(at_last, dxr, 0.0)
            gi += tl.where(at_last, dxi, 0.0) - dyt * ci
            dcr += dyt * xr
            dci -= dyt * xi
            dbr += gr * uu[:, None]
            dbi += gi * uu[:, None]
            dar += gr * pr + gi * pi
            dai += gi * pr - gr * pi
            tl.store(du_ptr + row * H + ch, tl.sum(gr * br + gi * bi, axis=1), mask=mask_h)
            gr, gi = ar * gr + ai * gi, ar * gi - ai * gr  # g_{t-1} = conj(A_bar) g_t
        tl.debug_barrier()  # the next chunk overwrites the scratch
    tl.store(dx0_ptr + pid_b * 2 * NH + tile, gr, mask=mask)
    tl.store(dx0_ptr + (pid_b * 2 + 1) * NH + tile, gi, mask=mask)
    out = dP_ptr + pid_b * 6 * NH + tile  # rows as in P: A_bar, B_bar, C (real, imaginary)
    tl.store(out, dar, mask=mask)
    tl.store(out + NH, dai, mask=mask)
    tl.store(out + 2 * NH, dbr, mask=mask)
    tl.store(out + 3 * NH, dbi, mask=mask)
    tl.store(out + 4 * NH, dcr, mask=mask)
    tl.store(out + 5 * NH, dci, mask=mask)

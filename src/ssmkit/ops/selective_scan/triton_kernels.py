"""Triton kernels of the selective scan (Mamba-1), forward and recomputing backward.

Each program owns ``BLOCK_D`` channels of one group of one batch item and walks the sequence,
its state tile h (BLOCK_D, n) in registers:

    a_t = keep_t exp(delta_t A)      h_t = a_t * h_{t-1} + (delta_t u_t) B_t      y_t = C_t . h_t

(keep_t = 0 where a packed sequence starts; B_t, C_t are the group's (n,) rows). The forward
stores h every ``CHUNK`` steps (b, l / CHUNK, d, n): nothing else of the history. The backward
runs the chunks from the last: it recomputes a chunk's states from the stored one into a
per-program scratch of ``CHUNK`` tiles (the only history that exists, O(CHUNK), not O(l)),
then goes back through them with the adjoint g = dL/dh_t:

    g_t = g_{t+1} a_{t+1} + dy_t C_t     dC_t = sum_d dy_t h_t     dB_t = sum_d g_t delta_t u_t
    r_t = g_t h_{t-1} a_t  (= dL/d(delta_t A))     dA += r_t delta_t
    d(delta_t) = sum_n r_t A + (g_t . B_t) u_t     du_t = (g_t . B_t) delta_t

dB and dC are written per (step, program) and dA per (batch item, channel), then summed by the
launcher in a fixed order: no atomics, the gradients are the same bit for bit on every run.
Arithmetic is in the dtype of the checkpoint buffer (float32, or float64 for float64 inputs).
"""

from __future__ import annotations

import triton
import triton.language as tl

# Channels per program, at most. The state tile (32, n = 16) is 512 values: 4 per thread of the
# default 4 warps, in registers across the whole sequence (the backward keeps about 8 such
# tiles live); b d / 32 programs fill the GPU's SMs for Mamba sizes (d = 1536 .. 5120). Fewer
# channels when n is large, so a tile stays within TILE_VALUES. Not tuned on a GPU yet.
BLOCK_D = 32
TILE_VALUES = 1024
# Steps between stored states. The backward's scratch holds CHUNK state tiles per program
# (64 x 512 float32 = 128 KiB, cache resident); a longer chunk stores fewer checkpoints.
CHUNK = 64


@triton.jit
def _step(h, A, dl, x, Bt, kt):
    """One step of the recurrence: returns (h_t, a_t) from h_{t-1} (BLOCK_D, BLOCK_N)."""
    a = kt * tl.exp(dl[:, None] * A)  # (BLOCK_D, BLOCK_N)
    return a * h + x[:, None] * Bt[None, :], a


@triton.jit
def _inputs(u_ptr, delta_ptr, B_ptr, keep_ptr, row, ch, k, mask_d, mask_n, bg, D, N, acc):
    """The step's delta (BLOCK_D,), x = delta u (BLOCK_D,), u, B_t (BLOCK_N,) and keep_t."""
    dl = tl.load(delta_ptr + row * D + ch, mask=mask_d, other=0.0).to(acc)
    uu = tl.load(u_ptr + row * D + ch, mask=mask_d, other=0.0).to(acc)
    Bt = tl.load(B_ptr + bg * N + k, mask=mask_n, other=0.0).to(acc)
    kt = tl.load(keep_ptr + row).to(acc)
    return dl, dl * uu, uu, Bt, kt


@triton.jit
def selective_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, h0_ptr, keep_ptr,  # inputs
    y_ptr, hlast_ptr, ckpt_ptr,  # outputs
    L, D, G, N, DG, n_chunks, chunk,
    BLOCK: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Grid (b, g, cdiv(d / g, BLOCK)). u, delta, y: (b, l, d); A: (d, n); B, C: (b, l, g, n);
    h0, hlast: (b, d, n); keep: (b, l); ckpt: (b, n_chunks, d, n)."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_g = tl.program_id(1)
    ch = pid_g * DG + tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,)
    mask_d = ch < (pid_g + 1) * DG
    k = tl.arange(0, BLOCK_N)
    mask_n = k < N
    mask = mask_d[:, None] & mask_n[None, :]
    tile = ch[:, None] * N + k[None, :]  # (BLOCK, BLOCK_N) offsets in a (d, n) array
    acc = ckpt_ptr.dtype.element_ty
    A = tl.load(A_ptr + tile, mask=mask, other=0.0).to(acc)
    h = tl.load(h0_ptr + pid_b * D * N + tile, mask=mask, other=0.0).to(acc)
    for c in range(n_chunks):
        tl.store(ckpt_ptr + (pid_b * n_chunks + c) * D * N + tile, h, mask=mask)
        for t in range(c * chunk, tl.minimum(c * chunk + chunk, L)):
            row = pid_b * L + t
            bg = row * G + pid_g
            dl, x, _uu, Bt, kt = _inputs(
                u_ptr, delta_ptr, B_ptr, keep_ptr, row, ch, k, mask_d, mask_n, bg, D, N, acc
            )
            h, _a = _step(h, A, dl, x, Bt, kt)
            Ct = tl.load(C_ptr + bg * N + k, mask=mask_n, other=0.0).to(acc)
            tl.store(y_ptr + row * D + ch, tl.sum(h * Ct[None, :], axis=1), mask=mask_d)
    tl.store(hlast_ptr + pid_b * D * N + tile, h, mask=mask)


@triton.jit
def selective_scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, keep_ptr, ckpt_ptr, dy_ptr, dhlast_ptr,  # inputs
    du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dh0_ptr, scratch_ptr,  # outputs, scratch
    L, D, G, N, DG, NBLK, n_chunks, chunk,
    BLOCK: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Grid as the forward's. dA: (b, d, n) per batch item; dB, dC: (b, l, g, NBLK, n) per
    program; dh0: (b, d, n); scratch: (b * g * NBLK, chunk, BLOCK, BLOCK_N)."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_g = tl.program_id(1)
    pid_blk = tl.program_id(2)
    ch = pid_g * DG + pid_blk * BLOCK + tl.arange(0, BLOCK)
    mask_d = ch < (pid_g + 1) * DG
    k = tl.arange(0, BLOCK_N)
    mask_n = k < N
    mask = mask_d[:, None] & mask_n[None, :]
    tile = ch[:, None] * N + k[None, :]
    acc = ckpt_ptr.dtype.element_ty
    own = tl.arange(0, BLOCK)[:, None] * BLOCK_N + k[None, :]  # offsets in a scratch tile
    scratch = scratch_ptr + ((pid_b * G + pid_g) * NBLK + pid_blk) * chunk * BLOCK * BLOCK_N
    A = tl.load(A_ptr + tile, mask=mask, other=0.0).to(acc)
    g = tl.load(dhlast_ptr + pid_b * D * N + tile, mask=mask, other=0.0).to(acc)
    dA = tl.zeros((BLOCK, BLOCK_N), dtype=acc)
    for cc in range(n_chunks):
        c = n_chunks - 1 - cc
        t0 = c * chunk
        t1 = tl.minimum(t0 + chunk, L)
        h = tl.load(ckpt_ptr + (pid_b * n_chunks + c) * D * N + tile, mask=mask, other=0.0)
        for t in range(t0, t1):  # recompute the chunk's states: h_{t-1} into scratch[t - t0]
            tl.store(scratch + (t - t0) * BLOCK * BLOCK_N + own, h)
            row = pid_b * L + t
            dl, x, _uu, Bt, kt = _inputs(
                u_ptr, delta_ptr, B_ptr, keep_ptr, row, ch, k, mask_d, mask_n, row * G + pid_g,
                D, N, acc,
            )  # fmt: skip
            h, _a = _step(h, A, dl, x, Bt, kt)
        tl.debug_barrier()
        for tt in range(t0, t1):  # and back through them
            t = t1 - 1 - (tt - t0)
            row = pid_b * L + t
            bg = row * G + pid_g
            h_prev = tl.load(scratch + (t - t0) * BLOCK * BLOCK_N + own)
            dl, x, uu, Bt, kt = _inputs(
                u_ptr, delta_ptr, B_ptr, keep_ptr, row, ch, k, mask_d, mask_n, bg, D, N, acc
            )
            h, a = _step(h_prev, A, dl, x, Bt, kt)
            Ct = tl.load(C_ptr + bg * N + k, mask=mask_n, other=0.0).to(acc)
            dyt = tl.load(dy_ptr + row * D + ch, mask=mask_d, other=0.0).to(acc)
            g = g + dyt[:, None] * Ct[None, :]  # dL/dh_t
            r = g * h_prev * a  # dL/d(delta_t A)
            dA += r * dl[:, None]
            gB = tl.sum(g * Bt[None, :], axis=1)  # (BLOCK,)
            tl.store(ddelta_ptr + row * D + ch, tl.sum(r * A, axis=1) + gB * uu, mask=mask_d)
            tl.store(du_ptr + row * D + ch, gB * dl, mask=mask_d)
            part = (bg * NBLK + pid_blk) * N + k
            tl.store(dB_ptr + part, tl.sum(g * x[:, None], axis=0), mask=mask_n)
            tl.store(dC_ptr + part, tl.sum(dyt[:, None] * h, axis=0), mask=mask_n)
            g = g * a  # dL/dh_{t-1} through the recurrence
        tl.debug_barrier()  # the next chunk overwrites the scratch
    tl.store(dh0_ptr + pid_b * D * N + tile, g, mask=mask)
    tl.store(dA_ptr + pid_b * D * N + tile, dA, mask=mask)

"""Mamba-2: the SSD block (Dao and Gu 2024; arXiv 2405.21060).

    in_proj -> (z, xBC, dt_raw);  xBC -> causal depthwise conv1d -> SiLU -> (x, B, C)
    dt = softplus(dt_raw + dt_bias), clamped to dt_limit;  A = -exp(A_log), one per head
    y = ssd(x by heads, dt, A, B, C, D) -> gated RMSNorm(y, z) -> out_proj

The step size dt is :func:`ssmkit.core.step_size.step_size`, shared with Mamba.

Parameter names follow the reference implementation (``in_proj, conv1d, dt_bias, A_log, D,
norm, out_proj``). The state is the conv window and the (h, p, n) SSM state per item.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.core.checks import check_choice
from ssmkit.core.dtypes import full_precision
from ssmkit.core.init import dt_bias_init
from ssmkit.core.params import ssm_parameter
from ssmkit.core.step_size import check_limit, step_size
from ssmkit.layers import mamba2_input
from ssmkit.layers.base import (
    SequenceLayer,
    apply_factory,
    check_lengths,
    check_overflow,
    check_sequence,
    check_state_tuple,
    check_step_input,
    length_mask,
    packed_resets,
)
from ssmkit.layers.conv1d import CausalConv1d, last_inputs
from ssmkit.layers.norms import RMSNorm
from ssmkit.ops import ssd
from ssmkit.ops.ssd.ref import ssd_ref

Tensor = torch.Tensor


class Mamba2State(NamedTuple):
    conv: Tensor  # (b, conv_dim, d_conv - 1): the last inputs of conv1d (x, B and C)
    ssm: Tensor  # (b, nheads, headdim, d_state)


class Mamba2(SequenceLayer):
    """Mamba-2 layer (mixer).

    Args:
        d_model: channels d.
        d_state: state size n per head (paper: 64 or 128).
        d_conv: width of the causal depthwise convolution.
        expand: d_inner = expand * d_model.
        headdim: channels p per head (nheads = d_inner / headdim).
        ngroups: groups of heads sharing B and C.
        chunk_size: chunk length of the SSD algorithm (``chunked`` and ``triton`` backends;
            ``numba``, the CPU default, walks the recurrence and ignores it).
        dt_min, dt_max, dt_init_floor: initial softplus(dt_bias) log-uniform in the range.
        dt_limit: the step size dt is clamped to this interval (low, high), 0 <= low <= high.
        bias, conv_bias: biases of in/out_proj and of conv1d.
        norm_eps: epsilon of the gated RMSNorm.
        backend: ssd backend ("auto", "ref", "chunked", "numba", "triton").
        input_backend: the path from in_proj's output to (z, x, B, C, dt_raw) in ``forward``:
            "ref" (split, :class:`CausalConv1d`, SiLU, split), "numba" (one fused kernel each
            way, :func:`ssmkit.layers.mamba2_input.mamba2_input`) or "auto" (numba on CPU
            float32/float64 once compiled, when ``backend`` is "auto" or "numba"; packed
            sequences (``cu_seqlens``) always take "ref").
        device, dtype: factory arguments, as in ``torch.nn.Linear``: where the parameters
            are created and their floating dtype.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        chunk_size: int = 256,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        dt_limit: tuple[float, float] = (0.0, math.inf),
        bias: bool = False,
        conv_bias: bool = True,
        norm_eps: float = 1e-5,
        backend: str = "auto",
        input_backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        d_inner = expand * d_model
        if d_inner % headdim or (d_inner // headdim) % ngroups:
            raise ValueError(
                f"expand * d_model = {d_inner} must split into heads of headdim = {headdim}, "
                f"and the heads into ngroups = {ngroups} groups"
            )
        self.d_model, self.d_state, self.d_conv, self.d_inner = d_model, d_state, d_conv, d_inner
        self.headdim, self.ngroups, self.nheads = headdim, ngroups, d_inner // headdim
        self.chunk_size, self.backend = chunk_size, backend
        self.input_backend = check_choice("input_backend", input_backend, mamba2_input.BACKENDS)
        self.dt_limit = check_limit(dt_limit)
        self.conv_dim = d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, d_inner + self.conv_dim + self.nheads, bias=bias)
        self.conv1d = CausalConv1d(self.conv_dim, d_conv, bias=conv_bias)
        h = self.nheads
        self.dt_bias = ssm_parameter(
            nn.Parameter(dt_bias_init(h, dt_min, dt_max, dt_init_floor)), lr=None
        )
        A = torch.empty(h).uniform_(1, 16)
        self.A_log = ssm_parameter(nn.Parameter(torch.log(A)), lr=None)
        self.D = ssm_parameter(nn.Parameter(torch.ones(h)), lr=None)
        self.norm = RMSNorm(d_inner, norm_eps, group_size=d_inner // ngroups)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)
        apply_factory(self, device, dtype)

    def initial_state(self, batch: int) -> Mamba2State:
        device = self.A_log.device
        conv = self.conv1d.initial_state(batch, device, self.in_proj.weight.dtype)
        work = torch.promote_types(self.A_log.dtype, torch.float32)
        shape = (batch, self.nheads, self.headdim, self.d_state)
        return Mamba2State(conv, torch.zeros(shape, device=device, dtype=work))

    def forward(
        self,
        x: Tensor,
        state: Mamba2State | None = None,
        lengths: Tensor | None = None,
        return_state: bool = False,
        cu_seqlens: Tensor | None = None,
    ) -> tuple[Tensor, Mamba2State | None]:
        """x: (b, l, d) -> (y (b, l, d), state after each item's last valid step or None).

        ``cu_seqlens`` (n + 1,): n packed sequences in one item, as for :class:`Mamba`.
        """
        x = check_sequence("x", x, self.d_model, self.in_proj.weight.dtype)
        b, l, _ = x.shape
        lengths = check_lengths(lengths, b, l)
        reset = packed_resets(cu_seqlens, b, l, lengths)
        if state is not None:
            self._check_state(state, b)
        zxbcdt = self.in_proj(x)  # (b, l, d_inner + conv_dim + h)
        mask = None if lengths is None else length_mask(lengths, l).unsqueeze(-1)
        h0 = None if state is None else state.ssm
        conv0 = None if state is None else state.conv.to(zxbcdt.dtype)
        if reset is None and self._fused_input(zxbcdt, conv0):
            sizes = mamba2_input.Mamba2Sizes(
                self.d_inner, self.ngroups, self.d_state, self.nheads, self.headdim
            )
            conv = self.conv1d
            z, xs, B, C, dt_raw = mamba2_input.mamba2_input(
                zxbcdt, conv.weight, conv.bias, conv0, sizes, backend="numba"
            )
            conv_last = None
            if return_state:
                xBC = zxbcdt[..., self.d_inner : self.d_inner + self.conv_dim]
                prev = xBC.new_zeros(b, self.conv_dim, self.d_conv - 1) if conv0 is None else conv0
                conv_last = last_inputs(xBC, prev, lengths)
            y, h = self._ssm_heads(xs, B, C, dt_raw, h0, mask)
        else:
            z, xBC, dt_raw = zxbcdt.split([self.d_inner, self.conv_dim, self.nheads], -1)
            xBC, conv_last = self.conv1d(xBC, conv0, lengths, reset)
            y, h = self._ssm(F.silu(xBC), dt_raw, h0, mask, reset=reset)
        y = check_overflow(self, self.out_proj(self.norm(y, z)), x)
        if mask is not None:
            y = y * mask
        return y, (Mamba2State(conv_last, h) if return_state else None)

    def step(self, x_t: Tensor, state: Mamba2State) -> tuple[Tensor, Mamba2State]:
        """One token: x_t (b, d) -> y_t (b, d) and the next state."""
        x_t = check_step_input(x_t, self.d_model, self.in_proj.weight.dtype)
        self._check_state(state, x_t.shape[0])
        y_t, state = self._step_unchecked(x_t, state)
        return check_overflow(self, y_t, x_t), state

    def _step_unchecked(self, x_t: Tensor, state: Mamba2State) -> tuple[Tensor, Mamba2State]:
        """:meth:`step` without validating its arguments, for callers that built them."""
        z, xBC, dt_raw = self.in_proj(x_t).split([self.d_inner, self.conv_dim, self.nheads], -1)
        xBC, conv = self.conv1d.step(xBC, state.conv)
        y, h = self._ssm(F.silu(xBC).unsqueeze(1), dt_raw.unsqueeze(1), state.ssm, None, "step")
        return self.out_proj(self.norm(y[:, 0], z)), Mamba2State(conv, h)

    def _fused_input(self, zxbcdt: Tensor, conv0: Tensor | None) -> bool:
        """Whether ``forward`` takes the fused input kernels (see ``input_backend``)."""
        if self.input_backend != "auto":
            return self.input_backend == "numba"
        if self.backend not in ("auto", "numba"):
            return False
        bias = self.conv1d.bias
        return mamba2_input.picks_numba(zxbcdt, self.conv1d.weight, bias, conv0)

    def _ssm(self, xBC, dt_raw, h0, mask, backend=None, reset=None):
        """SSD on the conv output xBC (b, l, conv_dim) with raw step sizes dt_raw (b, l, h)."""
        gn = self.ngroups * self.d_state
        xs, B, C = xBC.split([self.d_inner, gn, gn], dim=-1)
        g, n = self.ngroups, self.d_state
        x = xs.unflatten(-1, (self.nheads, self.headdim))  # (b, l, h, p)
        B, C = B.unflatten(-1, (g, n)), C.unflatten(-1, (g, n))  # (b, l, g, n)
        return self._ssm_heads(x, B, C, dt_raw, h0, mask, backend, reset)

    def _ssm_heads(self, x, B, C, dt_raw, h0, mask, backend=None, reset=None):
        """SSD on x (b, l, h, p), B, C (b, l, g, n) with raw step sizes dt_raw (b, l, h);
        returns y (b, l, d_inner) and the final state."""
        dtype = x.dtype
        work = torch.promote_types(dtype, torch.float32)
        with full_precision(x.device):
            dt = step_size(dt_raw.to(work), self.dt_bias.to(work), self.dt_limit)  # (b, l, h)
            if mask is not None:  # dt = 0 past the end: the state stays, nothing enters
                dt = dt * mask
            x, B, C = x.to(work), B.to(work), C.to(work)
            if backend == "step":  # one token, checked state: the loop definition directly
                y, h = ssd_ref(x, dt, -torch.exp(self.A_log.to(work)), B, C, h0.to(work))
                y = y + self.D.to(work).unsqueeze(-1) * x  # the skip term D x
                return y.flatten(-2).to(dtype), h
            y, h = ssd(
                x, dt, -torch.exp(self.A_log.to(work)), B, C,
                chunk_size=self.chunk_size, D=self.D.to(work),
                initial_state=None if h0 is None else h0.to(work),
                return_final_state=True, reset=reset, backend=backend or self.backend,
            )  # fmt: skip
        return y.flatten(-2).to(dtype), h

    def _check_state(self, state: Mamba2State, batch: int) -> None:
        shapes = {
            "state.conv": (batch, self.conv_dim, self.d_conv - 1),
            "state.ssm": (batch, self.nheads, self.headdim, self.d_state),
        }
        check_state_tuple(state, Mamba2State, shapes)

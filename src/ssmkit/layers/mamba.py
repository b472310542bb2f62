"""Mamba: the selective SSM block (Gu and Dao 2023; arXiv 2312.00752).

    in_proj -> (x, z);  x -> causal depthwise conv1d -> SiLU
    x_proj(x) -> (dt_raw, B, C);  dt = softplus(dt_proj(dt_raw))
    y = selective_scan(x, dt, A = -exp(A_log), B, C, D, z)  -> out_proj

dt is the positive step size (Delta in the paper), :func:`ssmkit.core.step_size.step_size`.

Parameter names follow the reference implementation (``in_proj, conv1d, x_proj, dt_proj,
A_log, D, out_proj``) so its checkpoints load without a renaming table. The state is the
conv window and the SSM state, both of constant size: ``step`` decodes one token with it.

Two optional refinements of Vo et al. (arXiv 2410.03292), both off by default:

* ``bc_param``: sign-constrained B and C rows of x_proj, S_C^T S_B = U^T diag(d) U, held as
  a selection strategy (:func:`ssmkit.layers.selective_params.bc_selection`); the parameter
  names stay the same.
* ``reorder``: tokens sorted by importance with a SoftSort permutation before dt, B and C are
  computed. ``Mamba(..., reorder=True, causal=False)`` builds the subclass
  :class:`ssmkit.layers.token_order.ReorderedMamba`, which owns that option (its parameter K,
  the permutation, the refusal of streaming); this class is the plain mixer.

Two recall fixes, also off by default:

* ``polarize``: two of the n state channels have a fixed transition (Wang et al., ICLR 2025,
  "Understanding and mitigating bottlenecks of SSMs through the lens of recency and
  over-smoothing"): channel n-2 has A = 0, so A_bar = 1 (no decay: a running
  sum of dt B u), channel n-1 has A_bar = 0 (full decay: only the current token). A_log then
  holds the n-2 learned channels.
* ``mimetic``: an initialisation that makes the layer start close to linear attention
  (Trockman et al., arXiv 2410.11135): the C rows of x_proj equal the B rows, so C_t^T B_s is
  a correlation of tokens t and s, and A is near 0 (A_bar near 1), so the state barely decays.
"""

from __future__ import annotations

import inspect
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.core.dtypes import full_precision
from ssmkit.core.init import dt_bias_init, s4d_real
from ssmkit.core.params import ssm_parameter
from ssmkit.core.step_size import step_size
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
from ssmkit.layers.conv1d import CausalConv1d
from ssmkit.layers.selective_params import bc_selection
from ssmkit.ops import selective_scan
from ssmkit.ops.selective_scan.ref import finish, selective_scan_ref

Tensor = torch.Tensor

# |A| of the mimetic initialisation: A_bar = exp(dt A) stays above 0.97 for 30 steps of
# the largest initial dt (0.1), so the state starts as an almost undecayed sum
MIMETIC_A = 1e-2


class MambaState(NamedTuple):
    """The recurrent state of a Mamba layer."""

    conv: Tensor  # (b, d_inner, d_conv - 1): the last inputs of the conv1d
    ssm: Tensor  # (b, d_inner, d_state): float32 whatever the compute dtype


class Mamba(SequenceLayer):
    """Mamba layer (the mixer; see :class:`ssmkit.models.MambaLM` for the residual stack).

    Args:
        d_model: channels d.
        d_state: SSM state size n per channel (paper: 16).
        d_conv: width of the causal depthwise convolution (paper: 4).
        expand: d_inner = expand * d_model.
        dt_rank: rank of the dt projection ("auto": ceil(d_model / 16)).
        dt_min, dt_max: softplus(dt_proj.bias) is log-uniform in [dt_min, dt_max].
        dt_init_floor: smallest initial dt.
        bias: biases of in_proj and out_proj. conv_bias: bias of conv1d.
        backend: selective-scan backend ("auto", "ref", "chunked", "numba").
        bc_param: "none" (default), "positive", "negative" or "mixed": S_C^T S_B =
            U^T diag(d) U with d > 0, d < 0 or both signs (Vo et al.; needs d_state <= d_inner).
        reorder: True builds a :class:`~ssmkit.layers.token_order.ReorderedMamba` (tokens
            sorted by a learned importance score before the scan; O(l^2); needs
            ``causal=False``). None (default): the class's own choice (False here).
        causal: whether the layer serves an autoregressive model (the default). ``False``
            declares a non-causal use (e.g. a classifier) and changes nothing else here.
        polarize: fix state channel n-2 to A_bar = 1 and channel n-1 to A_bar = 0 (needs
            d_state >= 3).
        mimetic: attention-like initialisation (W_C = W_B, A = -MIMETIC_A).
        device, dtype: factory arguments, as in ``torch.nn.Linear``: where the parameters
            are created and their floating dtype.
    """

    reorder: bool = False  # the plain mixer scans tokens in their order (see ReorderedMamba)

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        bias: bool = False,
        conv_bias: bool = True,
        backend: str = "auto",
        bc_param: str = "none",
        reorder: bool | None = None,
        causal: bool = True,
        polarize: bool = False,
        mimetic: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, v in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        if isinstance(dt_rank, bool) or not isinstance(dt_rank, int) or dt_rank < 1:
            raise ValueError(f"dt_rank must be 'auto' or a positive int, got {dt_rank!r}")
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner, self.dt_rank, self.backend = expand * d_model, dt_rank, backend
        d_inner = self.d_inner
        self.selection = bc_selection(bc_param, dt_rank, d_state, d_inner)
        flags = (("reorder", self.reorder if reorder is None else reorder), ("causal", causal))
        for name, v in (*flags, ("polarize", polarize), ("mimetic", mimetic)):
            if not isinstance(v, bool):
                raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
        if reorder is not None and reorder is not self.reorder:
            raise ValueError(
                f"{type(self).__name__} always has reorder={self.reorder}, got "
                f"reorder={reorder}; Mamba(..., reorder=True) builds a ReorderedMamba"
            )
        if polarize and d_state < 3:
            raise ValueError(
                f"polarize fixes 2 of d_state channels: needs d_state >= 3, got {d_state}"
            )
        if mimetic and bc_param != "none":
            raise ValueError(f"mimetic sets W_C = W_B and needs bc_param='none', got {bc_param!r}")
        self.causal, self.polarize = causal, polarize
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        self.conv1d = CausalConv1d(d_inner, d_conv, bias=conv_bias)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)
        with torch.no_grad():
            bound = dt_rank**-0.5
            self.dt_proj.weight.uniform_(-bound, bound)
            self.dt_proj.bias.copy_(dt_bias_init(d_inner, dt_min, dt_max, dt_init_floor))
        n_learned = d_state - 2 if polarize else d_state
        A = -s4d_real(n_learned).repeat(d_inner, 1)  # S4D-Real: A_log = log(n + 1)
        if mimetic:
            A = torch.full_like(A, MIMETIC_A)
            with torch.no_grad():  # W_C = W_B
                rows = self.x_proj.weight
                rows[dt_rank + d_state :].copy_(rows[dt_rank : dt_rank + d_state])
        self.A_log = ssm_parameter(nn.Parameter(torch.log(A)), lr=None)
        self.D = ssm_parameter(nn.Parameter(torch.ones(d_inner)), lr=None)
        ssm_parameter(self.dt_proj.bias, lr=None)
        self._init_variant()
        apply_factory(self, device, dtype)

    def __new__(cls, *args: object, **kwargs: object) -> Mamba:
        """``Mamba(..., reorder=True)`` builds a ReorderedMamba; ``__init__`` checks the rest."""
        if cls is Mamba and _reorder_argument(args, kwargs) is True:
            from ssmkit.layers.token_order import ReorderedMamba  # it builds on this module

            cls = ReorderedMamba
        return super().__new__(cls)

    def _init_variant(self) -> None:
        """Hook at the end of ``__init__``, before the factory arguments: the plain mixer has
        nothing to add; a subclass adds its own parameters and checks (ReorderedMamba: K)."""

    @property
    def bc_param(self) -> str:
        """The B/C parameterisation: "none", "positive", "negative" or "mixed"."""
        return self.selection.bc_param

    def initial_state(self, batch: int) -> MambaState:
        device = self.A_log.device
        conv = self.conv1d.initial_state(batch, device, self.in_proj.weight.dtype)
        work = torch.promote_types(self.A_log.dtype, torch.float32)
        ssm = torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=work)
        return MambaState(conv, ssm)

    def forward(
        self,
        x: Tensor,
        state: MambaState | None = None,
        lengths: Tensor | None = None,
        return_state: bool = False,
        cu_seqlens: Tensor | None = None,
    ) -> tuple[Tensor, MambaState | None]:
        """x: (b, l, d) -> (y (b, l, d), state after each item's last valid step or None).

        ``cu_seqlens`` (n + 1,) packs n sequences into one item (b = 1): cumulative lengths
        from 0 to l; the conv window and the SSM state restart at every boundary.
        """
        x = check_sequence("x", x, self.d_model, self.in_proj.weight.dtype)
        b, l, _ = x.shape
        lengths = check_lengths(lengths, b, l)
        reset = packed_resets(cu_seqlens, b, l, lengths)
        if state is not None:
            self._check_state(state, b)
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (b, l, d_inner) each
        y, new_state = self.mix(xs, z, state, lengths, reset)
        y = check_overflow(self, self.out_proj(y), x)
        if lengths is not None:
            y = y * length_mask(lengths, l).unsqueeze(-1)
        return y, (new_state if return_state else None)

    def mix(
        self,
        xs: Tensor,
        z: Tensor,
        state: MambaState | None = None,
        lengths: Tensor | None = None,
        reset: Tensor | None = None,
    ) -> tuple[Tensor, MambaState]:
        """The part between in_proj and out_proj: conv1d, SiLU, selection, gated scan.

        Args:
            xs, z: (b, l, d_inner) the two halves of in_proj's output (checked by the caller).
            state, lengths, reset: as in :meth:`forward`.

        Returns:
            y: (b, l, d_inner) before out_proj, and the state after each item's last step.
        """
        xs, conv_last = self.conv1d(xs, None if state is None else state.conv, lengths, reset)
        h0 = None if state is None else state.ssm
        y, h = self._ssm(F.silu(xs), z, h0, lengths, reset)
        return y, MambaState(conv_last, h)

    def _ssm(
        self, xs: Tensor, z: Tensor, h0: Tensor | None, lengths: Tensor | None, reset: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Selection and gated scan of the conv output xs (b, l, d_inner): (y, final state)."""
        dt, B, C = self._selection(xs)
        if lengths is not None:  # dt = 0 past the end: the state stays, nothing enters
            dt = dt * length_mask(lengths, xs.shape[1]).unsqueeze(-1)  # (b, l, d_inner)
        last = None if lengths is None else lengths - 1
        return self._scan(xs, dt, B, C, z, h0, reset=reset, last=last)

    def step(self, x_t: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        """One token: x_t (b, d) -> y_t (b, d) and the next state (same sizes)."""
        x_t = check_step_input(x_t, self.d_model, self.in_proj.weight.dtype)
        self._check_state(state, x_t.shape[0])
        y_t, state = self._step_unchecked(x_t, state)
        return check_overflow(self, y_t, x_t), state

    def _step_unchecked(self, x_t: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        """:meth:`step` without validating its arguments, for callers that built them (a
        model's decoding loop): a few hundred small ops fewer per token."""
        xs, z = self.in_proj(x_t).chunk(2, dim=-1)  # (b, d_inner)
        xs, conv = self.conv1d.step(xs, state.conv)
        xs = F.silu(xs).unsqueeze(1)  # (b, 1, d_inner)
        dt, B, C = self._selection(xs)
        y, h = self._scan(xs, dt, B, C, z.unsqueeze(1), state.ssm, backend="step")
        return self.out_proj(y[:, 0]), MambaState(conv, h)

    def x_proj_weight(self) -> Tensor:
        """The effective x_proj weight (dt_rank + 2 n, d_inner), after ``bc_param``."""
        return self.selection.weight(self.x_proj.weight)

    def bc_matrices(self) -> tuple[Tensor, Tensor]:
        """S_B, S_C (n, d_inner): the B and C rows of the effective x_proj weight."""
        _, S_B, S_C = self.x_proj_weight().split([self.dt_rank, self.d_state, self.d_state])
        return S_B, S_C

    def _selection(self, xs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The step size dt (b, l, d_inner) > 0 and B, C (b, l, n) from the conv output xs."""
        proj = self.selection.project(xs, self.x_proj)  # (b, l, dt_rank + 2 n)
        dt_raw, B, C = proj.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        work = torch.promote_types(dt_raw.dtype, torch.float32)
        return step_size(self.dt_proj(dt_raw).to(work)), B, C  # dt_proj holds the bias

    def _scan(self, xs, dt, B, C, z, h0, backend: str | None = None, reset=None, last=None):
        """The SSM in float32 at least (float64 models stay float64), whatever autocast says.

        ``backend="step"``: one token from a checked state; the loop definition is called
        directly, skipping the entry point's input checks and backend lookup. ``last`` (b,):
        each item's last valid step (default the last step), where a polarized layer reads
        its full-decay channel's state.
        """
        work = torch.promote_types(xs.dtype, torch.float32)
        A = -torch.exp(self.A_log.to(work))  # (d_inner, n), or (d_inner, n - 2) polarized
        xs_w, dt, B, C = xs.to(work), dt.to(work), B.to(work), C.to(work)
        D, z_w = self.D.to(work), z.to(work)
        if self.polarize:  # the no-decay channel (A = 0) joins the scan, the full-decay one not
            A = F.pad(A, (0, 1))  # (d_inner, n - 1)
            (B, B_full), (C, C_full) = (
                B.split([self.d_state - 1, 1], -1),
                C.split([self.d_state - 1, 1], -1),
            )
            h0 = None if h0 is None else h0[..., :-1]
        with full_precision(xs.device):
            if backend == "step":
                y, h = selective_scan_ref(xs_w, dt, A, B.unsqueeze(2), C.unsqueeze(2), h0.to(work))
                if not self.polarize:
                    return finish(y, xs_w, D, z_w).to(xs.dtype), h
            else:
                y, h = selective_scan(
                    xs_w, dt, A, B, C, D=None if self.polarize else D,
                    z=None if self.polarize else z_w,
                    initial_state=None if h0 is None else h0.to(work),
                    return_final_state=True, reset=reset, backend=backend or self.backend,
                )  # fmt: skip
                if not self.polarize:
                    return y.to(xs.dtype), h
            h_full = dt * B_full * xs_w  # (b, l, d_inner): A_bar = 0 keeps only this step
            y = finish(y + C_full * h_full, xs_w, D, z_w)
            rows = torch.arange(xs.shape[0], device=xs.device)
            at = torch.full_like(rows, xs.shape[1] - 1) if last is None else last
            h = torch.cat([h, h_full[rows, at].unsqueeze(-1)], -1)  # (b, d_inner, n)
        return y.to(xs.dtype), h

    def _check_state(self, state: MambaState, batch: int) -> None:
        shapes = {
            "state.conv": (batch, self.d_inner, self.d_conv - 1),
            "state.ssm": (batch, self.d_inner, self.d_state),
        }
        check_state_tuple(state, MambaState, shapes)


def _reorder_argument(args: tuple[object, ...], kwargs: dict[str, object]) -> object:
    """The ``reorder`` argument of a ``Mamba(...)`` call (None when absent or unbindable)."""
    try:
        bound = inspect.signature(Mamba.__init__).bind(None, *args, **kwargs)
    except TypeError:
        return None  # __init__ itself reports the bad call
    return bound.arguments.get("reorder")

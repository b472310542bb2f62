"""Differentiable token reordering: SoftSort (Prillo & Eisenschlos 2020, arXiv 2006.16038).

For scores s (l,), the soft permutation is

    P[i, j] = softmax_j( -|sort(s)_i - s_j| / tau ),

so ``P @ x`` lists the tokens of x in the order of their scores, each row a convex combination
of tokens that concentrates on the i-th ranked token as tau -> 0 (the hard sort,
:func:`hard_sort`, is its limit and its exact twin). Vo et al. (arXiv 2410.03292) use it with
importance scores s_l = K^T (S_Delta x_l + b_Delta) to reorder tokens before a Mamba scan.

Reordering mixes the whole sequence, so a layer that uses it is not causal. Cost: O(l^2)
memory and time per item, fine for short windows. :class:`ReorderedMamba` is that layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.core.checks import check_finite, check_positive, check_tensor, values_checked
from ssmkit.layers.mamba import Mamba, MambaState

Tensor = torch.Tensor


def _check_scores(scores: Tensor, lengths: Tensor | None) -> Tensor | None:
    check_tensor("scores", scores)
    if scores.ndim != 2 or not scores.is_floating_point():
        raise ValueError(
            f"scores must be a floating-point tensor of shape (batch, length), got {scores.dtype} "
            f"of shape {tuple(scores.shape)}"
        )
    check_finite("scores", scores, hot=True)
    if lengths is None:
        return None
    b, l = scores.shape
    check_tensor("lengths", lengths)
    if lengths.shape != (b,) or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be integers of shape ({b},), got {lengths.dtype} "
                         f"of shape {tuple(lengths.shape)}")  # fmt: skip
    if values_checked(lengths, hot=True) and bool((lengths < 1).any() | (lengths > l).any()):
        raise ValueError(f"lengths must lie in [1, {l}], got {lengths.tolist()}")
    return torch.arange(l, device=scores.device) < lengths.to(scores.device).unsqueeze(-1)


def _sorted_valid(scores: Tensor, valid: Tensor | None, descending: bool) -> Tensor:
    """Scores sorted with the padded ones pushed past the valid ones, (b, l)."""
    if valid is None:
        return scores.sort(dim=-1, descending=descending).values
    pad = float("-inf") if descending else float("inf")
    return scores.masked_fill(~valid, pad).sort(dim=-1, descending=descending).values


def soft_sort(
    scores: Tensor, tau: float = 1.0, descending: bool = False, lengths: Tensor | None = None
) -> Tensor:
    """Soft permutation matrices that sort ``scores``.

    Args:
        scores: (b, l) one score per token.
        tau: temperature > 0 (the paper's tau = 1); smaller is closer to the hard sort.
        descending: sort from the largest score (default: from the smallest, so the most
            important token comes last in the scan).
        lengths: (b,) valid lengths; padded tokens stay out of the sort: the first
            ``lengths[i]`` rows mix only valid tokens and padded rows are identity rows.

    Returns:
        P: (b, l, l), rows summing to 1; ``P @ x`` with x (b, l, d) is the sorted sequence.
    """
    valid = _check_scores(scores, lengths)
    check_positive("tau", tau, hot=True)
    b, l = scores.shape
    ranked = _sorted_valid(scores, valid, descending)  # (b, l) the i-th ranked score
    if valid is not None:  # padded rows: a finite placeholder, replaced by identity rows below
        ranked = torch.where(valid, ranked, torch.zeros_like(ranked))
    logits = -(ranked.unsqueeze(-1) - scores.unsqueeze(-2)).abs() / tau  # (b, i, j)
    if valid is None:
        return logits.softmax(dim=-1)
    row_valid, col_valid = valid.unsqueeze(-1), valid.unsqueeze(-2)  # (b, l, 1), (b, 1, l)
    logits = logits.masked_fill(row_valid & ~col_valid, float("-inf"))
    eye = torch.eye(l, dtype=scores.dtype, device=scores.device).expand(b, l, l)
    return torch.where(row_valid, logits.softmax(dim=-1), eye)


def hard_sort(scores: Tensor, descending: bool = False, lengths: Tensor | None = None) -> Tensor:
    """The exact permutation matrices (b, l, l) that :func:`soft_sort` tends to as tau -> 0.

    Row i is one-hot at the token of rank i (ties: the first occurrence, ``torch.sort`` is
    stable); padded rows (with ``lengths``) are identity rows. Not differentiable in scores.
    """
    valid = _check_scores(scores, lengths)
    b, l = scores.shape
    keyed = scores if valid is None else scores.masked_fill(
        ~valid, float("-inf") if descending else float("inf")
    )  # fmt: skip
    order = keyed.sort(dim=-1, descending=descending, stable=True).indices  # (b, l)
    if valid is not None:
        order = torch.where(valid, order, torch.arange(l, device=scores.device).expand(b, l))
    P = torch.zeros(b, l, l, dtype=scores.dtype, device=scores.device)
    return P.scatter_(-1, order.unsqueeze(-1), 1.0)


def importance_scores(dt_pre: Tensor, K: Tensor) -> Tensor:
    """s_l = K^T (S_Delta x_l + b_Delta): dt_pre (b, l, d_inner) and K (d_inner,) -> (b, l)."""
    return dt_pre @ K


class ReorderedMamba(Mamba):
    """Mamba with its tokens sorted by importance before the selection (Vo et al. 2024).

    The importance of token l is s_l = K^T (S_Delta x_l + b_Delta), with the layer's dt
    projection (S_Delta, b_Delta) and a learned K (d_inner,). The SoftSort permutation P of the
    scores (tau = 1, :func:`soft_sort`) reorders the conv output and the gate before dt, B and
    C are computed; the scan output is mapped back with P^T (exact for a hard permutation; the
    authors' vision code leaves it in sorted order). It mixes the whole sequence, so it needs
    ``causal=False`` (classification) and refuses streaming (``state``, ``return_state``,
    ``cu_seqlens``, ``step``).

    Build it as ``Mamba(..., reorder=True, causal=False)`` or ``ReorderedMamba(...,
    causal=False)``: the arguments are those of :class:`~ssmkit.layers.mamba.Mamba`. Its
    parameters are Mamba's plus ``K``, so state dicts keep their names.
    """

    reorder = True

    def _init_variant(self) -> None:
        if self.causal:
            raise ValueError(
                "token reordering breaks causality; use it only in non-causal (classification) "
                "models, causal=False"
            )
        d_inner = self.d_inner  # K of the importance score s_l = K^T (S_Delta x_l + b_Delta)
        self.K = nn.Parameter(torch.empty(d_inner).uniform_(-(d_inner**-0.5), d_inner**-0.5))

    def forward(
        self,
        x: Tensor,
        state: MambaState | None = None,
        lengths: Tensor | None = None,
        return_state: bool = False,
        cu_seqlens: Tensor | None = None,
    ) -> tuple[Tensor, None]:
        """x: (b, l, d) -> (y (b, l, d), None); only whole sequences (no state, no packing)."""
        for given, what in (
            (state is not None, "a state (state=, step)"),
            (return_state, "return_state=True"),
            (cu_seqlens is not None, "packed sequences (cu_seqlens)"),
        ):
            if given:
                _refuse_streaming(what)
        return super().forward(x, lengths=lengths)

    def step(self, x_t: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        """Refused: the order of the tokens is known only once the sequence is complete."""
        _refuse_streaming("a state (state=, step)")

    def _step_unchecked(self, x_t: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        _refuse_streaming("a state (state=, step)")

    def soft_permutation(self, xs: Tensor, lengths: Tensor | None = None) -> Tensor:
        """SoftSort matrix (b, l, l) of the importance scores of xs (b, l, d_inner), tau = 1."""
        dt_raw = F.linear(xs, self.x_proj_weight()[: self.dt_rank])  # (b, l, dt_rank)
        work = torch.promote_types(xs.dtype, torch.float32)
        dt_pre = self.dt_proj(dt_raw).to(work)  # S_Delta x_l + b_Delta, (b, l, d_inner)
        return soft_sort(importance_scores(dt_pre, self.K.to(work)), tau=1.0, lengths=lengths)

    def _ssm(
        self, xs: Tensor, z: Tensor, h0: Tensor | None, lengths: Tensor | None, reset: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """The plain mixer's selection and scan on the sorted tokens, then back to their order."""
        P = self.soft_permutation(xs, lengths)  # (b, l, l): valid tokens stay first
        y, h = super()._ssm(P.to(xs.dtype) @ xs, P.to(z.dtype) @ z, h0, lengths, reset)
        return P.transpose(-1, -2).to(y.dtype) @ y, h  # back to the input order


def _refuse_streaming(what: str) -> None:
    raise ValueError(
        f"token reordering (reorder=True) sorts the whole sequence at once and cannot be used "
        f"with {what}; run full sequences, or build the layer with reorder=False"
    )


__all__ = ["ReorderedMamba", "hard_sort", "importance_scores", "soft_sort"]

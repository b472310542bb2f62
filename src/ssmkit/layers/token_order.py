"""Differentiable token reordering: SoftSort (Prillo & Eisenschlos 2020, arXiv 2006.16038).

For scores s (l,), the soft permutation is

    P[i, j] = softmax_j( -|sort(s)_i - s_j| / tau ),

so ``P @ x`` lists the tokens of x in the order of their scores, each row a convex combination
of tokens that concentrates on the i-th ranked token as tau -> 0 (the hard sort,
:func:`hard_sort`, is its limit and its exact twin). Vo et al. (arXiv 2410.03292) use it with
importance scores s_l = K^T (S_Delta x_l + b_Delta) to reorder tokens before a Mamba scan.

Reordering mixes the whole sequence, so a layer that uses it is not causal. Cost: O(l^2)
memory and time per item, fine for short windows.
"""

from __future__ import annotations

import torch

from ssmkit.core.checks import check_finite, check_positive, check_tensor, values_checked

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


__all__ = ["hard_sort", "importance_scores", "soft_sort"]

"""Summaries of an ablation: mean and spread of final metrics and loss curves per variant.

The trainer produces one :class:`AblationRun` per (variant, seed); :func:`summarize_ablation`
groups them and :func:`ablation_table` prints a Markdown table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class AblationRun:
    """One training run."""

    variant: str  # e.g. "baseline", "positive", "negative", "reorder"
    seed: int  # random seed of the run
    final_loss: float  # loss at the end of training (e.g. validation loss)
    loss_curve: tuple[float, ...]  # loss per evaluation point, same points for every run
    final_accuracy: float | None = None  # accuracy at the end (None: not a classification task)


@dataclass(frozen=True)
class VariantSummary:
    """Mean and spread over the seeds of one variant (std: sample standard deviation)."""

    variant: str
    seeds: tuple[int, ...]
    loss_mean: float
    loss_std: float  # nan with a single seed
    accuracy_mean: float | None
    accuracy_std: float | None
    curve_mean: Tensor  # (T,) mean loss curve over seeds
    curve_std: Tensor  # (T,) its sample standard deviation (nan with a single seed)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if t.numel() > 1 else math.nan


def summarize_ablation(runs: Sequence[AblationRun]) -> list[VariantSummary]:
    """Group runs by variant (in order of first appearance) and summarise each group.

    Raises:
        ValueError: no runs, a repeated (variant, seed), loss curves of different lengths
            within a variant, or accuracy given for some runs of a variant and not others.
    """
    if not runs:
        raise ValueError("runs is empty: nothing to summarise")
    groups: dict[str, list[AblationRun]] = {}
    for r in runs:
        if not isinstance(r, AblationRun):
            raise TypeError(f"runs must hold AblationRun objects, got {type(r).__name__}")
        groups.setdefault(r.variant, []).append(r)
    out = []
    for variant, rs in groups.items():
        seeds = [r.seed for r in rs]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"variant {variant!r} has repeated seeds {sorted(seeds)}")
        lengths = {len(r.loss_curve) for r in rs}
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError(
                f"variant {variant!r}: loss curves must be non-empty and of equal length, got "
                f"lengths {sorted(lengths)}"
            )
        accs = [r.final_accuracy for r in rs]
        if any(a is None for a in accs) and not all(a is None for a in accs):
            raise ValueError(f"variant {variant!r}: final_accuracy given for some runs only")
        curves = torch.tensor([list(r.loss_curve) for r in rs], dtype=torch.float64)  # (s, T)
        loss_mean, loss_std = _mean_std([r.final_loss for r in rs])
        acc_mean, acc_std = (None, None) if accs[0] is None else _mean_std(accs)
        out.append(VariantSummary(
            variant=variant, seeds=tuple(seeds), loss_mean=loss_mean, loss_std=loss_std,
            accuracy_mean=acc_mean, accuracy_std=acc_std, curve_mean=curves.mean(0),
            curve_std=curves.std(0) if len(rs) > 1 else torch.full_like(curves[0], math.nan),
        ))  # fmt: skip
    return out


def ablation_table(summaries: Sequence[VariantSummary]) -> str:
    """A Markdown table: variant, seeds, final loss and accuracy as mean ± std."""
    show_acc = any(s.accuracy_mean is not None for s in summaries)
    head = "| variant | seeds | final loss |" + (" accuracy |" if show_acc else "")
    rule = "|---|---|---|" + ("---|" if show_acc else "")
    rows = [head, rule]
    for s in summaries:
        row = f"| {s.variant} | {len(s.seeds)} | {s.loss_mean:.4f} ± {s.loss_std:.4f} |"
        if show_acc:
            acc = "n/a" if s.accuracy_mean is None else (
                f"{s.accuracy_mean:.4f} ± {s.accuracy_std:.4f}")  # fmt: skip
            row += f" {acc} |"
        rows.append(row)
    return "\n".join(rows)


__all__ = ["AblationRun", "VariantSummary", "ablation_table", "summarize_ablation"]

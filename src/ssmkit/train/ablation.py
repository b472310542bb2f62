"""The token-dynamics ablation (Vo et al.): train Mamba variants over seeds and compare.

Variants: ``baseline`` (unconstrained S_C^T S_B), ``positive`` / ``negative`` (sign-
constrained B and C rows, ``bc_param``), and for non-causal tasks ``reorder`` (SoftSort
token reordering on the baseline) and ``positive+reorder``. Every run trains the same task
with the same budget; the loss curve is the validation loss after each epoch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

from ssmkit.analysis.ablation import AblationRun
from ssmkit.train.config import RunConfig
from ssmkit.train.loop import train

VARIANTS = {
    "baseline": {"bc_param": "none", "reorder": False},
    "positive": {"bc_param": "positive", "reorder": False},
    "negative": {"bc_param": "negative", "reorder": False},
    "reorder": {"bc_param": "none", "reorder": True},
    "positive+reorder": {"bc_param": "positive", "reorder": True},
}


def default_variants(causal: bool) -> list[str]:
    """All variants; reordering only where the task allows it (non-causal)."""
    return [v for v in VARIANTS if causal is False or not VARIANTS[v]["reorder"]]


def run_ablation(
    base: RunConfig,
    variants: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    log: Callable[[str], None] = print,
) -> list[AblationRun]:
    """Train every (variant, seed) of ``base`` (a Mamba run) into ``out/VARIANT-sSEED``."""
    if base.model.layer != "mamba":
        raise ValueError(f"the ablation varies Mamba layers; got layer={base.model.layer!r}")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if not seeds:
        raise ValueError("give at least one seed")
    runs = []
    for variant in variants:
        for seed in seeds:
            model = dataclasses.replace(base.model, **VARIANTS[variant])
            train_cfg = dataclasses.replace(base.train, seed=seed)
            run = RunConfig(base.task, base.task_config, model, train_cfg)
            curve: list[float] = []

            def keep(step: int, record: dict, curve: list[float] = curve) -> None:
                if record["split"] == "val":
                    curve.append(record["loss"])

            summary = train(run, Path(out) / f"{variant}-s{seed}", progress="off",
                            callbacks=[keep], log=lambda s: None)  # fmt: skip
            test = summary["test"]
            runs.append(AblationRun(variant, seed, test["loss"], tuple(curve),
                                    test.get("accuracy")))  # fmt: skip
            acc = test.get("accuracy")
            log(f"{variant:>18} seed {seed}: test loss {test['loss']:.4f}"
                + (f", accuracy {acc:.4f}" if acc is not None else ""))  # fmt: skip
    return runs

"""``precision=bf16``: autocast training whose loss tracks the float32 run."""

from __future__ import annotations

import json

import pytest

from ssmkit.train import train
from ssmkit.train.config import TrainConfig


def losses(run_dir) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["split"] == "train"]


@pytest.mark.parametrize("layer", ["mamba", "s4d"])
def test_bf16_training_loss_tracks_float32(tmp_path, tiny, layer):
    runs = {}
    for precision in ("fp32", "bf16"):
        run = tiny("adding", layer, epochs=8, lr=0.01, precision=precision)
        train(run, tmp_path / precision, progress="off", log=lambda *a: None)
        runs[precision] = losses(tmp_path / precision)
    fp32, bf16 = runs["fp32"], runs["bf16"]
    assert len(fp32) == len(bf16) == 24
    assert bf16 != fp32  # autocast did change the arithmetic
    for a, b in zip(fp32, bf16, strict=True):
        assert abs(a - b) <= 0.02 * a + 1e-3, (layer, fp32, bf16)
    assert sum(bf16[-6:]) < sum(bf16[:6])  # and it learns


def test_precision_must_be_known():
    with pytest.raises(
        ValueError, match=r"precision must be one of \('fp32', 'bf16'\), got 'fp16'"
    ):
        TrainConfig(precision="fp16")

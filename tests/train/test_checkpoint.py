"""Checkpoints: exact round trip, atomic under a crash mid-write, clear errors otherwise."""

import json
import os

import pytest
import torch

from ssmkit.train import checkpoint as ckpt
from ssmkit.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _model_and_optimizer(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 5))
    model[1].weight = model[0].weight  # tied weights must survive safetensors
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.tensor([[1, 2]])).sum().backward()
    opt.step()
    return model, opt


def test_round_trip_restores_weights_and_optimizer_moments(tmp_path):
    model, opt = _model_and_optimizer(0)
    save_checkpoint(tmp_path, model, opt, {"step": 7, "epoch": 1})
    other, other_opt = _model_and_optimizer(1)
    meta = load_checkpoint(tmp_path, other, other_opt)
    assert meta == {"step": 7, "epoch": 1}
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
    assert other[1].weight is other[0].weight
    s1, s2 = opt.state_dict()["state"], other_opt.state_dict()["state"]
    assert all(torch.equal(s1[i][k], s2[i][k]) for i in s1 for k in s1[i])


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model, opt = _model_and_optimizer(0)
    save_checkpoint(tmp_path, model, opt, {"step": 1})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[1].bias.add_(1.0)
    real_replace = os.replace

    def crash_on_index(src, dst):
        if str(dst).endswith(ckpt.INDEX):
            raise OSError("disk full")  # the crash lands between the two renames
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", crash_on_index)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, model, opt, {"step": 2})
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    fresh, _ = _model_and_optimizer(3)
    assert load_checkpoint(tmp_path, fresh)["step"] == 1
    assert all(torch.equal(fresh.state_dict()[k], before[k]) for k in before)


def test_old_tensor_files_are_removed_after_the_index_moves_on(tmp_path):
    model, opt = _model_and_optimizer(0)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, model, opt, {"step": step})
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [
        "checkpoint-00000003.safetensors"
    ]


def test_corrupted_foreign_and_mismatched_checkpoints_give_clear_errors(tmp_path):
    model, opt = _model_and_optimizer(0)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path, model)
    path = save_checkpoint(tmp_path, model, opt, {"step": 1})
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(tmp_path, model)
    index = tmp_path / ckpt.INDEX
    index.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path, model)
    index.write_text(json.dumps({"state_dict": "model.pt"}))
    with pytest.raises(CheckpointError, match="not an ssmkit checkpoint"):
        load_checkpoint(tmp_path, model)
    # a pickle under the expected name is never unpickled: safetensors rejects it
    save_checkpoint(tmp_path, model, opt, {"step": 2})
    pickled = tmp_path / "checkpoint-00000002.safetensors"
    torch.save(model.state_dict(), pickled)
    meta = json.loads(index.read_text())
    meta["sha256"] = ckpt._sha256(pickled)
    index.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(tmp_path, model)
    save_checkpoint(tmp_path, model, opt, {"step": 3})
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_checkpoint(tmp_path, torch.nn.Linear(4, 5))
    bigger = torch.nn.Sequential(torch.nn.Embedding(6, 4), torch.nn.Linear(4, 6))
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(tmp_path, bigger)

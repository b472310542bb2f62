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


# --- issue 16: names read from checkpoint.json, weight hashes, temporary files ---


def _point_index_at(run_dir, name, sha):
    index = run_dir / ckpt.INDEX
    meta = json.loads(index.read_text())
    meta["tensors"], meta["sha256"] = name, sha
    index.write_text(json.dumps(meta))


@pytest.mark.parametrize("kind", ["parent", "absolute", "subfolder", "dotdot", "not-a-string"])
def test_tensor_names_outside_the_run_are_refused_before_any_file_is_opened(
    tmp_path, kind, monkeypatch
):
    model, opt = _model_and_optimizer(0)
    run = tmp_path / "run"
    run.mkdir()
    (run / "sub").mkdir()
    # a valid checkpoint tensor file outside the run directory, with the right hash
    outside = save_checkpoint(tmp_path, model, opt, {"step": 1})
    name = {"parent": "../" + outside.name, "absolute": str(outside), "subfolder": "sub/x",
            "dotdot": "..", "not-a-string": 5}[kind]  # fmt: skip
    save_checkpoint(run, model, opt, {"step": 1})
    _point_index_at(run, name, ckpt._sha256(outside))
    opened = []
    real_open = open

    def spy(path, *args, **kw):
        opened.append(str(path))
        return real_open(path, *args, **kw)

    monkeypatch.setattr("builtins.open", spy)
    with pytest.raises(CheckpointError, match="plain file name inside the run directory"):
        load_checkpoint(run, model, opt)
    assert not any(outside.name in p for p in opened)  # not even hashed
    monkeypatch.setattr("builtins.open", real_open)
    save_checkpoint(run, model, opt, {"step": 2})  # the next checkpoint deletes nothing outside
    assert outside.exists()


def test_only_checkpoint_tensor_files_are_ever_deleted(tmp_path):
    model, opt = _model_and_optimizer(0)
    save_checkpoint(tmp_path, model, opt, {"step": 1})
    ckpt.save_weights(tmp_path / "best.safetensors", model)
    _point_index_at(tmp_path, "best.safetensors", ckpt._sha256(tmp_path / "best.safetensors"))
    save_checkpoint(tmp_path, model, opt, {"step": 2})
    assert (tmp_path / "best.safetensors").exists()


def test_a_symbolic_link_in_the_run_is_not_followed(tmp_path):
    model, opt = _model_and_optimizer(0)
    outside = save_checkpoint(tmp_path, model, opt, {"step": 1})
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run, model, opt, {"step": 1})
    (run / "link.safetensors").symlink_to(outside)
    _point_index_at(run, "link.safetensors", ckpt._sha256(outside))
    with pytest.raises(CheckpointError, match="symbolic link"):
        load_checkpoint(run, model)


def test_every_weight_file_is_verified_against_its_recorded_sha256(tmp_path):
    model, _ = _model_and_optimizer(0)
    best = tmp_path / "best.safetensors"
    ckpt.save_weights(best, model)
    ckpt.load_weights(best, model)  # intact: loads
    raw = bytearray(best.read_bytes())
    raw[-2] ^= 0x40  # one bit of the last float: 3.4e38-style garbage, still parseable
    best.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupted"):
        ckpt.load_weights(best, model)
    # a weight file with no recorded hash cannot be verified: refused, naming the way out
    from safetensors.torch import save_file

    save_file(ckpt.model_tensors(model), str(best))
    with pytest.raises(CheckpointError, match=r"no recorded SHA-256.*--weights last"):
        ckpt.load_weights(best, model)


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        ckpt.atomic_write_json(tmp_path / "summary.json", {"a": 1})
    model, opt = _model_and_optimizer(0)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path, model, opt, {"step": 1})
    assert list(tmp_path.iterdir()) == []


def test_clean_stale_removes_dead_writers_files_and_orphan_tensors(tmp_path):
    model, opt = _model_and_optimizer(0)
    save_checkpoint(tmp_path, model, opt, {"step": 2})
    dead = tmp_path / ".checkpoint.json.tmp-999999999"  # above any pid_max: not running
    alive = tmp_path / f".summary.json.tmp-{os.getppid()}"  # a running process: kept
    orphan = tmp_path / "checkpoint-00000003.safetensors"  # tensors written, index not
    for p in (dead, alive, orphan):
        p.write_bytes(b"x")
    assert sorted(ckpt.clean_stale(tmp_path)) == [dead.name, orphan.name]
    assert alive.exists() and (tmp_path / "checkpoint-00000002.safetensors").exists()

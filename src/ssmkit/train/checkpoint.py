"""Checkpoints: safetensors for tensors, JSON for the rest, written atomically, never pickled.

A checkpoint in a run directory is two files: ``checkpoint-<step>.safetensors`` (model
weights under ``model/``, optimiser moments under ``optim/<index>/``) and ``checkpoint.json``
(format tag, step counters, optimiser hyper-parameters, the tensor file's name and SHA-256).
Each file is written to a temporary name, flushed to disk and renamed into place; the JSON is
replaced last and the previous tensor file removed only after that, so a crash at any moment
leaves the previous or the new checkpoint complete. Loading checks the format tag, the hash
and the tensor names, and raises :class:`CheckpointError` (a ValueError) on anything else.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = "ssmkit-checkpoint"
VERSION = 1
INDEX = "checkpoint.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupted, foreign or does not fit the model."""


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as independent contiguous CPU tensors (tied weights are copied)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def save_weights(path: Path, model: torch.nn.Module, meta: dict[str, str] | None = None) -> None:
    """Model weights alone, atomically (``best.safetensors``)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(model_tensors(model), str(tmp), metadata={"format": FORMAT, **(meta or {})})
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def load_weights(path: Path, model: torch.nn.Module) -> None:
    """Load ``path`` (from :func:`save_weights` or a checkpoint) into ``model``, strictly."""
    tensors = _read_tensors(Path(path))
    prefix = "model/" if any(k.startswith("model/") for k in tensors) else ""
    weights = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
    _load_strict(model, weights, path)


def save_checkpoint(
    run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, meta: dict
) -> Path:
    """Write the model, the optimiser state and ``meta`` (JSON-able counters) atomically."""
    run_dir = Path(run_dir)
    tensors = {f"model/{k}": v for k, v in model_tensors(model).items()}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"optimizer state {key!r} is not a tensor; cannot save")
            tensors[f"optim/{idx}/{key}"] = value.detach().cpu().contiguous().clone()
    name = f"checkpoint-{int(meta['step']):08d}.safetensors"
    target = run_dir / name
    tmp = run_dir / f".{name}.tmp-{os.getpid()}"
    save_file(tensors, str(tmp), metadata={"format": FORMAT})
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)
    index_path = run_dir / INDEX
    previous = _previous_tensor_file(index_path)
    index = {
        "format": FORMAT,
        "version": VERSION,
        "tensors": name,
        "sha256": _sha256(target),
        "param_groups": opt["param_groups"],
        "meta": meta,
    }
    atomic_write_json(index_path, index)
    if previous and previous != name:
        (run_dir / previous).unlink(missing_ok=True)
    return target


def _previous_tensor_file(index_path: Path) -> str | None:
    try:
        return json.loads(index_path.read_text())["tensors"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / INDEX).exists()


def load_checkpoint(
    run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict:
    """Restore the model (and optimiser) from ``run_dir``; returns the saved ``meta``."""
    run_dir = Path(run_dir)
    index_path = run_dir / INDEX
    if not index_path.exists():
        raise CheckpointError(f"no checkpoint in {run_dir} (missing {INDEX})")
    try:
        index = json.loads(index_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{index_path} is corrupted (not valid JSON: {e})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise CheckpointError(f"{index_path} is not an ssmkit checkpoint (format tag missing)")
    if index.get("version") != VERSION:
        raise CheckpointError(
            f"{index_path}: unsupported checkpoint version {index.get('version')}"
        )
    tensor_path = run_dir / str(index.get("tensors"))
    if not tensor_path.is_file():
        raise CheckpointError(f"{index_path} names a missing tensor file {tensor_path.name}")
    if _sha256(tensor_path) != index.get("sha256"):
        raise CheckpointError(f"{tensor_path} is corrupted (SHA-256 differs from {INDEX})")
    tensors = _read_tensors(tensor_path)
    weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}
    _load_strict(model, weights, tensor_path)
    if optimizer is not None:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim/"):
                _, idx, name = key.split("/", 2)
                state.setdefault(int(idx), {})[name] = value
        try:
            optimizer.load_state_dict({"state": state, "param_groups": index["param_groups"]})
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"optimizer state in {run_dir} does not fit: {e}") from None
    return index["meta"]


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None


def _load_strict(model: torch.nn.Module, weights: dict[str, torch.Tensor], path) -> None:
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, value in model.state_dict().items():
        if weights[name].shape != value.shape:
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(weights[name].shape)}, "
                f"the model expects {tuple(value.shape)}"
            )
    model.load_state_dict(weights)

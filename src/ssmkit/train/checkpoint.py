"""Checkpoints: safetensors for tensors, JSON for the rest, written atomically, never pickled.

A checkpoint in a run directory is two files: ``checkpoint-<step>.safetensors`` (model
weights under ``model/``, optimiser moments under ``optim/<index>/``) and ``checkpoint.json``
(format tag, step counters, optimiser hyper-parameters, the tensor file's name and SHA-256,
the run's resolved configuration and the ssmkit version that wrote it).
Each file is written to a temporary name, flushed to disk and renamed into place; the JSON is
replaced last and the previous tensor file removed only after that, so a crash at any moment
leaves the previous or the new checkpoint complete. A failed write removes its temporary file;
one left by a killed process is removed by :func:`clean_stale` on the next start.

Every weight file ssmkit writes (checkpoints and ``best.safetensors``) records the SHA-256 of
its tensors (names, dtypes, shapes and bytes) in its safetensors metadata, verified on load.
File names read from ``checkpoint.json`` must be plain names of files inside the run
directory. Anything else raises :class:`CheckpointError` (a ValueError) before a file is
opened, hashed or deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ssmkit import __version__
from ssmkit.core.paths import is_plain_name

FORMAT = "ssmkit-checkpoint"
VERSION = 2  # 2: the index records the run's config and the ssmkit version
READABLE = (1, 2)
INDEX = "checkpoint.json"
HASH_KEY = "sha256"  # safetensors metadata: SHA-256 of the tensors (see tensors_sha256)
TENSOR_FILE = re.compile(r"checkpoint-\d{8}\.safetensors")
TMP_FILE = re.compile(r"\..+\.tmp-(\d+)")


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupted, foreign or does not fit the model."""


def plain_name(value: object, where: str) -> str:
    """``value`` if it is a plain file name (no directory part, not ``..``, not absolute).

    Raises:
        CheckpointError: naming ``where`` the value came from, before anything is opened.
    """
    if not is_plain_name(value):
        raise CheckpointError(
            f"{where} must be a plain file name inside the run directory, got {value!r}"
        )
    return value


def file_in(folder: Path, name: object, where: str) -> Path:
    """``folder/name`` for a plain ``name`` that is not a symbolic link (see :func:`plain_name`)."""
    path = Path(folder) / plain_name(name, where)
    if path.is_symlink():
        raise CheckpointError(
            f"{where}: {path} is a symbolic link; only plain files inside {folder} are read"
        )
    return path


def atomic_replace(path: Path, write: Callable[[Path], None]) -> None:
    """Replace ``path`` atomically with what ``write(tmp)`` writes to a temporary file.

    The one atomic write of a run directory (tensors, JSON, metrics): ``write`` fills
    ``.NAME.tmp-PID``, which is flushed to disk and renamed over ``path``, and the folder is
    synced, so readers see the old or the new file, never half; a failed write removes the
    temporary file.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that readers see the old or the new file, never half."""
    atomic_replace(Path(path), lambda tmp: tmp.write_bytes(payload))


def atomic_write_json(path: Path, obj: object) -> None:
    """Write ``obj`` as indented JSON to ``path``, atomically."""
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


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process has only just started: the file is from an earlier one
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists under another user, or no signal 0 on this platform
        return True
    return True


def clean_stale(run_dir: Path) -> list[str]:
    """Remove what a killed or failed write left in ``run_dir``; returns the removed names.

    That is ``.NAME.tmp-PID`` files whose process no longer runs, and checkpoint tensor files
    that a readable ``checkpoint.json`` does not name (a crash between writing the tensors and
    the index).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    try:
        current = read_index(run_dir)["tensors"] if has_checkpoint(run_dir) else None
    except CheckpointError:
        current = None  # unreadable index: leave the tensor files for the error to name
    removed = []
    for path in sorted(run_dir.iterdir()):
        tmp = TMP_FILE.fullmatch(path.name)
        stale = tmp is not None and not _pid_alive(int(tmp[1]))
        orphan = current is not None and TENSOR_FILE.fullmatch(path.name) and path.name != current
        if (stale or orphan) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors: every name, dtype, shape and byte (independent of file layout)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    metadata = {**meta, "format": FORMAT, HASH_KEY: tensors_sha256(tensors)}
    atomic_replace(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as independent contiguous CPU tensors (tied weights are copied)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def save_weights(path: Path, model: torch.nn.Module, meta: dict[str, str] | None = None) -> None:
    """Model weights alone with their SHA-256, atomically (``best.safetensors``)."""
    path = Path(path)
    _save_tensors(path, model_tensors(model), meta or {})


def load_weights(path: Path, model: torch.nn.Module) -> None:
    """Load ``path`` (from :func:`save_weights` or a checkpoint) into ``model``, strictly.

    Raises:
        CheckpointError: the file is a symbolic link, unreadable, has no recorded SHA-256,
            its tensors differ from it, or they do not fit ``model``.
    """
    path = Path(path)
    path = file_in(path.parent, path.name, "weights file")
    tensors = _read_tensors(path, require_hash=True)
    prefix = "model/" if any(k.startswith("model/") for k in tensors) else ""
    weights = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
    _load_strict(model, weights, path)


def save_checkpoint(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: dict,
    config: dict | None = None,
) -> Path:
    """Write the model, the optimiser state, ``meta`` (JSON-able counters) and the run's
    resolved ``config`` (``RunConfig.to_json()``) atomically; returns the tensor file."""
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
    _save_tensors(target, tensors, {})
    index_path = run_dir / INDEX
    previous = _previous_tensor_file(index_path)
    index = {
        "format": FORMAT,
        "version": VERSION,
        "ssmkit_version": __version__,
        "tensors": name,
        "sha256": _sha256(target),
        "param_groups": opt["param_groups"],
        "meta": meta,
        "config": config,
    }
    atomic_write_json(index_path, index)
    if previous and previous != name:
        (run_dir / previous).unlink(missing_ok=True)
    return target


def _previous_tensor_file(index_path: Path) -> str | None:
    """The tensor file the current index names, if it is one ssmkit wrote (else never deleted)."""
    try:
        name = json.loads(index_path.read_text())["tensors"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return name if isinstance(name, str) and TENSOR_FILE.fullmatch(name) else None


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / INDEX).exists()


def read_index(run_dir: Path) -> dict:
    """The validated ``checkpoint.json`` of ``run_dir`` (no tensor file is opened).

    Raises:
        CheckpointError: missing, not JSON, foreign, an unknown version, or an entry of the
            wrong type (a tensor file that is not a plain name inside ``run_dir``).
    """
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
    if index.get("version") not in READABLE:
        raise CheckpointError(
            f"{index_path}: unsupported checkpoint version {index.get('version')}"
        )
    plain_name(index.get("tensors"), f"{index_path} entry 'tensors'")
    expected = {"sha256": str, "meta": dict, "param_groups": list}
    if index["version"] >= 2:  # config: None when saved without one (not by ``train``)
        expected |= {"config": (dict, type(None)), "ssmkit_version": str}
    for key, kind in expected.items():
        if not isinstance(index.get(key), kind):
            kind = kind if isinstance(kind, type) else kind[0]
            raise CheckpointError(
                f"{index_path} entry {key!r} must be a {kind.__name__}, got {index.get(key)!r:.60}"
            )
    return index


def load_checkpoint(
    run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict:
    """Restore the model (and optimiser) from ``run_dir``; returns the saved ``meta``."""
    run_dir = Path(run_dir)
    index = read_index(run_dir)
    tensor_path = file_in(run_dir, index["tensors"], f"{run_dir / INDEX} entry 'tensors'")
    if not tensor_path.is_file():
        raise CheckpointError(f"{INDEX} names a missing tensor file {tensor_path.name}")
    if _sha256(tensor_path) != index["sha256"]:
        raise CheckpointError(f"{tensor_path} is corrupted (SHA-256 differs from {INDEX})")
    tensors = _read_tensors(tensor_path, require_hash=False)  # the index's hash covers it
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
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"optimizer state in {run_dir} does not fit: {e}") from None
    return index["meta"]


def _read_tensors(path: Path, require_hash: bool) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, checked against the SHA-256 in its metadata."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
    recorded = meta.get(HASH_KEY)
    if recorded is None and require_hash:
        raise CheckpointError(
            f"{path} has no recorded SHA-256 (written by an older ssmkit), so it cannot be "
            "verified; load the last checkpoint instead (--weights last)"
        )
    if recorded is not None and tensors_sha256(tensors) != recorded:
        raise CheckpointError(f"{path} is corrupted (its tensors differ from their SHA-256)")
    return tensors


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

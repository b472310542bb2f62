"""Load local Hugging Face ``transformers`` Mamba checkpoints into ssmkit models.

Only ``config.json`` and ``*.safetensors`` are read (a pickled ``pytorch_model.bin`` is never
unpickled); a sharded checkpoint's index may name only plain file names inside the directory.
Parameter names already match (:mod:`ssmkit.models.mamba_lm`), so loading is a
strict state-dict load that names any missing or unexpected tensor. Every failure (a
malformed ``config.json`` or shard index, an unreadable safetensors file, a tensor defined by
two shards, a tensor of the wrong shape) is one ``ValueError`` naming the file and the tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ssmkit.core.paths import is_plain_name
from ssmkit.models.mamba_lm import MambaConfig, MambaLM

Tensor = torch.Tensor


def load_pretrained(path: str | Path, backend: str = "auto") -> MambaLM:
    """An ssmkit model from a checkpoint directory (config.json + safetensors), in float32.

    Args:
        path: directory written by ``save_pretrained`` of transformers' ``MambaForCausalLM``.
        backend: selective-scan backend of the returned model.
    """
    root = Path(path)
    cfg = _read_config(root)
    try:
        model = MambaLM(cfg, backend=backend)
    except (TypeError, ValueError, RuntimeError) as e:  # e.g. a size given as a string
        raise ValueError(f"{root / 'config.json'} describes no valid model: {e}") from None
    state, origin = _read_safetensors(root)
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
        if "backbone.embeddings.weight" in state:
            state["lm_head.weight"] = state["backbone.embeddings.weight"]
            origin["lm_head.weight"] = origin["backbone.embeddings.weight"]
    for name, want in model.state_dict().items():  # shapes first: torch's error names no file
        if name in state and tuple(state[name].shape) != tuple(want.shape):
            raise ValueError(
                f"{origin[name]}: tensor {name} has shape {tuple(state[name].shape)}, the model "
                f"built from config.json expects {tuple(want.shape)}"
            )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {root} does not match the model: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}"
        )
    return model.float().eval()


def _read_config(root: Path) -> MambaConfig:
    """The model config from ``root/config.json``; any malformed content is a ValueError."""
    file = root / "config.json"
    if not file.is_file():
        raise ValueError(f"path must be a checkpoint directory with config.json, got {root}")
    try:
        config = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file} must hold a JSON object, got {type(config).__name__}")
    model_type = config.get("model_type")
    if model_type not in ("mamba", "mamba2"):
        raise ValueError(
            f"unsupported model_type {model_type!r} in {root}; expected 'mamba' or 'mamba2'"
        )
    build = mamba_config_from_hf if model_type == "mamba" else mamba2_config_from_hf
    try:
        return build(config)
    except KeyError as e:
        raise ValueError(f"{file} lacks the field {e.args[0]!r}") from None
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise ValueError(f"{file} has an invalid value: {e}") from None


def mamba_config_from_hf(config: dict) -> MambaConfig:
    """MambaConfig from a transformers Mamba ``config.json`` dict."""
    expand = config.get("expand", 2)
    inner = config.get("intermediate_size", expand * config["hidden_size"])
    if inner != expand * config["hidden_size"]:
        raise ValueError(f"intermediate_size {inner} != expand * hidden_size is not supported")
    return MambaConfig(
        d_model=config["hidden_size"],
        n_layer=config["num_hidden_layers"],
        vocab_size=config["vocab_size"],
        d_state=config.get("state_size", 16),
        d_conv=config.get("conv_kernel", 4),
        expand=expand,
        dt_rank=int(config.get("time_step_rank", -(-config["hidden_size"] // 16))),
        bias=config.get("use_bias", False),
        conv_bias=config.get("use_conv_bias", True),
        norm_eps=config.get("layer_norm_epsilon", 1e-5),
        residual_in_fp32=config.get("residual_in_fp32", True),
        tie_embeddings=config.get("tie_word_embeddings", True),
    )


def mamba2_config_from_hf(config: dict) -> MambaConfig:
    """MambaConfig (version 2) from a transformers Mamba-2 ``config.json`` dict."""
    limit = tuple(_number(v) for v in config.get("time_step_limit", (0.0, float("inf"))))
    heads = config["num_heads"]
    expand = config.get("expand", 2)
    if heads * config["head_dim"] != expand * config["hidden_size"]:
        raise ValueError("num_heads * head_dim must equal expand * hidden_size")
    return MambaConfig(
        d_model=config["hidden_size"],
        n_layer=config["num_hidden_layers"],
        vocab_size=config["vocab_size"],
        d_state=config.get("state_size", 128),
        d_conv=config.get("conv_kernel", 4),
        expand=expand,
        bias=config.get("use_bias", False),
        conv_bias=config.get("use_conv_bias", True),
        norm_eps=config.get("layer_norm_epsilon", 1e-5),
        residual_in_fp32=config.get("residual_in_fp32", True),
        tie_embeddings=config.get("tie_word_embeddings", True),
        version=2,
        headdim=config["head_dim"],
        ngroups=config.get("n_groups", 1),
        chunk_size=config.get("chunk_size", 256),
        dt_limit=limit,
    )


def _number(value: object) -> float:
    """A float from JSON, where transformers writes infinity as {"__float__": "Infinity"}."""
    if isinstance(value, dict) and "__float__" in value:
        return float(value["__float__"])
    return float(value)


INDEX = "model.safetensors.index.json"  # transformers' map of a sharded checkpoint


def _shards(root: Path) -> list[Path]:
    """The safetensors files to read: those the shard index names, else every one in ``root``.

    Names read from the index must be plain file names of files in ``root`` (checked before
    any file is opened).
    """
    index = root / INDEX
    if not index.is_file():
        return sorted(root.glob("*.safetensors"))
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(
            f"{index} is not a shard index (no weight_map of file names): {e}"
        ) from None
    for name in names:
        if not is_plain_name(name):
            raise ValueError(
                f"{index} names {name!r}; shards must be plain file names inside {root}"
            )
        if not (root / name).is_file():
            raise ValueError(f"{index} names a missing shard {name!r}")
    return [root / name for name in names]


def _read_safetensors(root: Path) -> tuple[dict[str, Tensor], dict[str, Path]]:
    """All tensors of the checkpoint (floats as float32) and the file each came from."""
    files = _shards(root)
    if not files:
        raise ValueError(
            f"no *.safetensors in {root}: only safetensors checkpoints are read "
            "(re-save with save_pretrained(..., safe_serialization=True))"
        )
    state: dict[str, Tensor] = {}
    origin: dict[str, Path] = {}
    for f in files:
        try:
            tensors = load_file(str(f))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ValueError(f"{f} is not a readable safetensors file: {e}") from None
        for name, tensor in tensors.items():
            if name in state:
                raise ValueError(f"tensor {name} is defined twice: in {origin[name]} and in {f}")
            state[name] = tensor.float() if tensor.is_floating_point() else tensor
            origin[name] = f
    return state, origin

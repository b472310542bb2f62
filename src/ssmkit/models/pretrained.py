"""Mamba checkpoints in and out: transformers' and mamba_ssm's layouts.

:func:`load_pretrained` recognises the layout from ``config.json``: transformers
(``model_type`` mamba / mamba2, ``*.safetensors``) or native mamba_ssm (``d_model, n_layer,
ssm_cfg``, ``pytorch_model.bin``; see :mod:`ssmkit.models.mamba_ssm_format`). Tensors come
from ``*.safetensors`` or, when there are none, from ``pytorch_model.bin`` unpickled with
``torch.load(weights_only=True)`` (a file that needs code execution is refused); a sharded
checkpoint's index may name only plain file names inside the directory. Parameter names
already match (:mod:`ssmkit.models.mamba_lm`), so loading is a strict state-dict load that
names any missing or unexpected tensor. Every failure (a malformed ``config.json`` or shard
index, an unreadable file, a tensor defined by two shards, a tensor whose shape disagrees
with the config) is one ``ValueError`` naming the file and the tensor.

:func:`save_pretrained` (``MambaLM.save_pretrained``) writes transformers' layout, which
``MambaForCausalLM`` / ``Mamba2ForCausalLM.from_pretrained`` read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ssmkit.core.paths import is_plain_name
from ssmkit.models.mamba_lm import MambaConfig, MambaLM
from ssmkit.models.mamba_ssm_format import (
    BIN,
    config_from_mamba_ssm,
    is_mamba_ssm_config,
    read_bin,
    rename_from_mamba_ssm,
)

Tensor = torch.Tensor


def load_pretrained(path: str | Path, backend: str = "auto") -> MambaLM:
    """An ssmkit model from a checkpoint directory, in float32.

    Args:
        path: directory written by ``save_pretrained`` of transformers' ``MambaForCausalLM`` /
            ``Mamba2ForCausalLM``, of mamba_ssm's ``MambaLMHeadModel``, or of ssmkit's
            :meth:`MambaLM.save_pretrained`.
        backend: selective-scan backend of the returned model.
    """
    root = Path(path)
    cfg, native = _read_config(root)
    try:
        model = MambaLM(cfg, backend=backend)
    except (TypeError, ValueError, RuntimeError) as e:  # e.g. a size given as a string
        raise ValueError(f"{root / 'config.json'} describes no valid model: {e}") from None
    state, origin = _read_tensors(root)
    if native:
        state, origin = rename_from_mamba_ssm(state), rename_from_mamba_ssm(origin)
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


def save_pretrained(model: MambaLM, path: str | Path) -> Path:
    """Write ``model`` as a transformers checkpoint: ``config.json`` + ``model.safetensors``.

    Returns the directory (created if missing). A tied ``lm_head`` is not stored, as in
    transformers.

    Raises:
        ValueError: options transformers' Mamba models do not have (``bc_param``,
            ``reorder``, non-causal mixers).
    """
    cfg = model.cfg
    config = hf_config(cfg)
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        state.pop("lm_head.weight")
    save_file(state, str(root / "model.safetensors"), metadata={"format": "pt"})
    (root / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return root


def hf_config(cfg: MambaConfig) -> dict:
    """transformers' ``config.json`` dict (MambaConfig / Mamba2Config fields) of ``cfg``."""
    if cfg.bc_param != "none" or cfg.reorder or not cfg.causal:
        raise ValueError(
            "transformers' Mamba has no bc_param, reorder or non-causal mixers; got "
            f"bc_param={cfg.bc_param!r}, reorder={cfg.reorder}, causal={cfg.causal}"
        )
    config = {
        "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layer,
        "vocab_size": cfg.vocab_size, "state_size": cfg.d_state, "conv_kernel": cfg.d_conv,
        "expand": cfg.expand, "use_bias": cfg.bias, "use_conv_bias": cfg.conv_bias,
        "layer_norm_epsilon": cfg.norm_eps, "residual_in_fp32": cfg.residual_in_fp32,
        "tie_word_embeddings": cfg.tie_embeddings, "hidden_act": "silu",
    }  # fmt: skip
    if cfg.version == 1:
        rank = math.ceil(cfg.d_model / 16) if cfg.dt_rank == "auto" else int(cfg.dt_rank)
        return {
            "model_type": "mamba", "architectures": ["MambaForCausalLM"], **config,
            "intermediate_size": cfg.expand * cfg.d_model, "time_step_rank": rank,
            "use_mambapy": False,
        }  # fmt: skip
    return {
        "model_type": "mamba2", "architectures": ["Mamba2ForCausalLM"], **config,
        "num_heads": cfg.expand * cfg.d_model // cfg.headdim, "head_dim": cfg.headdim,
        "n_groups": cfg.ngroups, "chunk_size": cfg.chunk_size,
        "time_step_limit": list(cfg.dt_limit), "rms_norm": True, "norm_before_gate": False,
    }  # fmt: skip


def _read_config(root: Path) -> tuple[MambaConfig, bool]:
    """The model config from ``root/config.json`` and whether it is mamba_ssm's layout (else
    transformers'); any malformed content is a ValueError."""
    file = root / "config.json"
    if not file.is_file():
        raise ValueError(f"path must be a checkpoint directory with config.json, got {root}")
    try:
        config = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file} must hold a JSON object, got {type(config).__name__}")
    native = is_mamba_ssm_config(config)
    model_type = config.get("model_type")
    if not native and model_type not in ("mamba", "mamba2"):
        raise ValueError(
            f"unsupported model_type {model_type!r} in {root}; expected 'mamba' or 'mamba2' "
            "(transformers), or mamba_ssm's d_model, n_layer, vocab_size"
        )
    if native:
        build = config_from_mamba_ssm
    else:
        build = mamba_config_from_hf if model_type == "mamba" else mamba2_config_from_hf
    try:
        return build(config), native
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


def _read_tensors(root: Path) -> tuple[dict[str, Tensor], dict[str, Path]]:
    """All tensors of the checkpoint (floats as float32) and the file each came from:
    the safetensors files, else ``pytorch_model.bin`` (``weights_only``)."""
    files = _shards(root)
    if not files and not (root / BIN).is_file():
        raise ValueError(f"no *.safetensors (or {BIN}) in {root}: no checkpoint tensors to read")
    state: dict[str, Tensor] = {}
    origin: dict[str, Path] = {}
    for f in files or [root / BIN]:
        if f.suffix == ".bin":
            tensors = read_bin(f)
        else:
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

"""The native ``mamba_ssm`` checkpoint layout (``MambaLMHeadModel.save_pretrained``).

Its ``config.json`` holds ``d_model, n_layer, vocab_size, ssm_cfg, rms_norm,
residual_in_fp32, fused_add_norm, pad_vocab_size_multiple, tie_embeddings`` (plus
``d_intermediate, attn_layer_idx, attn_cfg`` in mamba_ssm >= 2); its weights are
``pytorch_model.bin`` with ``backbone.embedding``, ``backbone.layers.{i}.mixer/norm``,
``backbone.norm_f`` and ``lm_head``. The embedding has ``vocab_size`` rounded up to a
multiple of ``pad_vocab_size_multiple``; so does the returned :class:`MambaConfig`, and the
logits keep those extra rows, as mamba_ssm's do.

Only what ssmkit's :class:`~ssmkit.models.mamba_lm.MambaLM` computes is accepted: RMSNorm
blocks without MLPs or attention layers; a config asking for anything else is refused with
the field's name. Fields that only set the initialisation are ignored.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import torch

from ssmkit.models.mamba_lm import MambaConfig

Tensor = torch.Tensor

BIN = "pytorch_model.bin"
# ssm_cfg fields that only shape the initialisation or the kernels chosen, not the function
INIT_ONLY = {
    "dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor", "A_init_range", "use_fast_path",
    "use_mem_eff_path", "layer_idx", "sequence_parallel", "process_group", "device", "dtype",
}  # fmt: skip
MAMBA1 = {"d_state", "d_conv", "expand", "dt_rank", "conv_bias", "bias"}
MAMBA2 = {"d_state", "d_conv", "expand", "headdim", "ngroups", "chunk_size", "dt_limit",
          "conv_bias", "bias", "d_ssm", "rmsnorm", "norm_before_gate", "D_has_hdim"}  # fmt: skip


def is_mamba_ssm_config(config: dict) -> bool:
    """Whether a ``config.json`` dict is in mamba_ssm's layout (not transformers')."""
    return "model_type" not in config and {"d_model", "n_layer", "vocab_size"} <= set(config)


def config_from_mamba_ssm(config: dict) -> MambaConfig:
    """:class:`MambaConfig` of a mamba_ssm ``config.json`` dict.

    Raises:
        ValueError: a field ssmkit does not compute (naming it), or an invalid value.
        KeyError: a required field is missing.
    """
    if not config.get("rms_norm", True):
        raise ValueError("rms_norm=false (LayerNorm blocks) is not supported; ssmkit uses RMSNorm")
    if config.get("d_intermediate", 0):
        raise ValueError("d_intermediate > 0 (MLP blocks) is not supported")
    if config.get("attn_layer_idx") or config.get("attn_cfg"):
        raise ValueError("attention layers (attn_layer_idx, attn_cfg) are not supported")
    ssm = dict(config.get("ssm_cfg") or {})
    layer = ssm.pop("layer", "Mamba1")
    if layer not in ("Mamba1", "Mamba2"):
        raise ValueError(f"ssm_cfg.layer must be 'Mamba1' or 'Mamba2', got {layer!r}")
    known = (MAMBA2 if layer == "Mamba2" else MAMBA1) | INIT_ONLY
    unknown = sorted(set(ssm) - known)
    if unknown:
        raise ValueError(f"ssm_cfg has fields ssmkit does not know for {layer}: {unknown}")
    d_model, vocab = int(config["d_model"]), int(config["vocab_size"])
    pad = int(config.get("pad_vocab_size_multiple", 8))
    if pad < 1:
        raise ValueError(f"pad_vocab_size_multiple must be >= 1, got {pad}")
    vocab += -vocab % pad  # mamba_ssm's embedding has this many rows
    common = dict(
        d_model=d_model, n_layer=int(config["n_layer"]), vocab_size=vocab,
        d_conv=int(ssm.get("d_conv", 4)), expand=int(ssm.get("expand", 2)),
        bias=bool(ssm.get("bias", False)), conv_bias=bool(ssm.get("conv_bias", True)),
        residual_in_fp32=bool(config.get("residual_in_fp32", True)),
        tie_embeddings=bool(config.get("tie_embeddings", True)),
    )  # fmt: skip
    if layer == "Mamba1":
        return MambaConfig(**common, d_state=int(ssm.get("d_state", 16)),
                           dt_rank=ssm.get("dt_rank", "auto"))  # fmt: skip
    d_inner = common["expand"] * d_model
    for name, value, want in (
        ("d_ssm", ssm.get("d_ssm"), None),
        ("rmsnorm", ssm.get("rmsnorm", True), True),
        ("norm_before_gate", ssm.get("norm_before_gate", False), False),
        ("D_has_hdim", ssm.get("D_has_hdim", False), False),
    ):
        if value != want and not (name == "d_ssm" and value == d_inner):
            raise ValueError(f"ssm_cfg.{name}={value!r} is not supported (ssmkit: {want!r})")
    limit = tuple(float(v) for v in ssm.get("dt_limit", (0.0, math.inf)))
    return MambaConfig(
        **common, version=2, d_state=int(ssm.get("d_state", 128)),
        headdim=int(ssm.get("headdim", 64)), ngroups=int(ssm.get("ngroups", 1)),
        chunk_size=int(ssm.get("chunk_size", 256)), dt_limit=limit,
    )  # fmt: skip


def rename_from_mamba_ssm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """mamba_ssm parameter names -> ssmkit's (only the embedding differs)."""
    old, new = "backbone.embedding.", "backbone.embeddings."
    return {(new + k[len(old) :] if k.startswith(old) else k): v for k, v in state.items()}


def read_bin(file: Path) -> dict[str, Tensor]:
    """The state dict in a ``torch.save`` file, unpickled with ``weights_only=True``.

    Raises:
        ValueError: the file needs more than tensors and plain containers to unpickle (it
            would run code), is not a state dict, or is unreadable (naming the file).
    """
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{file} needs code execution to unpickle, which is refused (only tensors and "
            f"plain containers are read, torch.load(weights_only=True)): {first}"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise ValueError(f"{file} is not a readable torch.save file: {e}") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{file} must hold a state dict (parameter name -> tensor)")
    return state

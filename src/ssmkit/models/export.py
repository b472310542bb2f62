"""Self-contained model directories: ssmkit's own ``SequenceModel`` export, and one reader.

``ssmkit export RUN_DIR --to DIR`` writes a trained run as ``DIR/config.json`` (the
architecture, the inputs/outputs and the text vocabulary, if any) and ``DIR/model.safetensors``
(the weights; shared tensors stored once). No optimiser state, metrics or training data:
the directory only serves the model. A Mamba language model (:class:`MambaLM`) is written in
transformers' layout instead (:meth:`MambaLM.save_pretrained`).

:func:`from_pretrained` reads any of these: an exported ``SequenceModel``, or a Mamba
checkpoint of transformers, mamba_ssm or ssmkit (:func:`~ssmkit.models.load_pretrained`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from ssmkit.models.pretrained import load_pretrained
from ssmkit.models.sequence import IOSpec, ModelConfig, SequenceModel

FORMAT = "ssmkit-sequence-model"
WEIGHTS = "model.safetensors"


def save_sequence_model(
    model: SequenceModel, path: str | Path, itos: Sequence[str] | None = None
) -> Path:
    """Write ``model`` (and a text vocabulary ``itos``) as an exported directory; returns it."""
    if not isinstance(model, SequenceModel):
        raise TypeError(f"model must be a SequenceModel, got {type(model).__name__}")
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "model": dataclasses.asdict(model.cfg),
        "io": dataclasses.asdict(model.io),
        "itos": None if itos is None else list(itos),
    }
    save_model(model, str(root / WEIGHTS))
    (root / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return root


def from_pretrained(path: str | Path, backend: str = "auto") -> nn.Module:
    """The model in a directory, in float32 and eval mode: a :class:`SequenceModel` exported
    by ``ssmkit export``, else a :class:`MambaLM` from a transformers / mamba_ssm / ssmkit
    Mamba checkpoint (``backend`` picks its scan backend).

    Raises:
        ValueError: no or a malformed ``config.json``, weights that do not fit it, or a
            training run directory (export it first: ``ssmkit export RUN_DIR --to DIR``).
    """
    root = Path(path)
    file = root / "config.json"
    try:
        config = json.loads(file.read_text()) if file.is_file() else None
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        if isinstance(config, dict) and {"task", "train", "model"} <= set(config):
            raise ValueError(
                f"{root} is an ssmkit training run directory; load it with "
                f"ssmkit.train.load_run({str(root)!r}).model, or export it first with "
                f"`ssmkit export {root} --to DIR`"
            )
        model: nn.Module = load_pretrained(root, backend)
        return model
    return _load_sequence_model(root, config)


def _load_sequence_model(root: Path, config: dict) -> SequenceModel:
    try:
        model = SequenceModel(ModelConfig(**config["model"]), IOSpec(**config["io"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{root / 'config.json'} describes no valid model: {e}") from None
    try:
        missing, unexpected = load_model(model, str(root / WEIGHTS), strict=False)
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{root / WEIGHTS} does not hold this model's weights: {first}") from None
    if missing or unexpected:
        raise ValueError(
            f"{root / WEIGHTS} does not match {root / 'config.json'}: missing "
            f"{sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    return model.float().eval()

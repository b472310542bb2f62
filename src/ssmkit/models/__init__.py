"""Models built from ssmkit layers, and checkpoint import/export with other libraries."""

from ssmkit.models.export import from_pretrained, save_sequence_model
from ssmkit.models.generation import PromptState
from ssmkit.models.mamba_lm import MambaConfig, MambaLM
from ssmkit.models.pretrained import load_pretrained
from ssmkit.models.sequence import IOSpec, ModelConfig, SequenceModel

__all__ = [
    "IOSpec",
    "MambaConfig",
    "MambaLM",
    "ModelConfig",
    "PromptState",
    "SequenceModel",
    "from_pretrained",
    "load_pretrained",
    "save_sequence_model",
]

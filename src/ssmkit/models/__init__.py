"""Models built from ssmkit layers, and checkpoint import from other libraries."""

from ssmkit.models.mamba_lm import MambaConfig, MambaLM
from ssmkit.models.pretrained import load_pretrained

__all__ = ["MambaConfig", "MambaLM", "load_pretrained"]

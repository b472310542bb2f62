"""ssmkit: state space models of long sequences in PyTorch.

The curated public API; everything else lives in the subpackages (``ssmkit.core`` for the
pure functions, ``ssmkit.ops`` for the sequence operators, ``ssmkit.layers`` for modules).
"""

from ssmkit.core.checks import checks, set_checks
from ssmkit.core.params import param_groups, ssm_parameter
from ssmkit.layers import DSS, LRU, S4, S4D, S5, BlockConfig, LTILayer, SequenceLayer
from ssmkit.layers.mamba import Mamba
from ssmkit.layers.mamba2 import Mamba2
from ssmkit.ops import scan, selective_scan, ssd

__version__ = "0.1.0"

__all__ = [
    "DSS",
    "LRU",
    "S4",
    "S4D",
    "S5",
    "BlockConfig",
    "LTILayer",
    "Mamba",
    "Mamba2",
    "SequenceLayer",
    "checks",
    "param_groups",
    "scan",
    "selective_scan",
    "set_checks",
    "ssd",
    "ssm_parameter",
]

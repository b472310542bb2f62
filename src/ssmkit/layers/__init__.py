"""Sequence layers: thin parameterisations over the shared core (see ``lti.py``)."""

from ssmkit.layers.base import SequenceLayer
from ssmkit.layers.dss import DSS
from ssmkit.layers.lru import LRU
from ssmkit.layers.lti import BlockConfig, LTILayer, System
from ssmkit.layers.mamba import Mamba
from ssmkit.layers.mamba2 import Mamba2
from ssmkit.layers.s4 import S4
from ssmkit.layers.s4d import S4D
from ssmkit.layers.s5 import S5

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
    "System",
]

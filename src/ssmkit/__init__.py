"""ssmkit: state space models of long sequences in PyTorch."""

__version__ = "0.1.0"

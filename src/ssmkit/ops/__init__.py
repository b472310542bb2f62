"""Sequence operators with registered backends (see :mod:`ssmkit.ops.registry`)."""

from ssmkit.ops import registry
from ssmkit.ops.scan import scan

__all__ = ["registry", "scan"]

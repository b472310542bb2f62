"""Sequence operators with registered backends (see :mod:`ssmkit.ops.registry`)."""

from ssmkit.ops import registry
from ssmkit.ops.lti_scan import lti_scan
from ssmkit.ops.scan import scan
from ssmkit.ops.selective_scan import selective_scan
from ssmkit.ops.ssd import ssd

__all__ = ["lti_scan", "registry", "scan", "selective_scan", "ssd"]

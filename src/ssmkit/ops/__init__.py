"""Sequence operators with registered backends (see :mod:`ssmkit.ops.registry`).

One contract for every operator (:func:`scan`, :func:`lti_scan`, :func:`selective_scan`,
:func:`ssd`):

- the tensors that define the system are positional (``a, b``; ``u, A_bar, B_bar, C``;
  ``u, dt, A, B, C``; ``x, dt, A, B, C``); every option after them is keyword-only;
- options come in one order: the system's extras (``ssd``'s ``chunk_size``, ``D``, ``z``,
  ``dt_bias``, ``lti_scan``'s ``conj``, ...), then ``initial_state``, ``return_final_state``,
  the batch-layout masks (``reset`` of packed sequences, ``lti_scan``'s ``lengths`` of padded
  ones) and ``backend`` last;
- the result is the output alone, or ``(output, final_state)`` when
  ``return_final_state=True`` (the output of ``scan`` is every state h);
- the public function validates once and hands every backend of an operator the same
  arguments (a backend that ignores one, like ``ssd``'s ``ref`` and ``chunk_size``, says so).
"""

from ssmkit.ops import registry
from ssmkit.ops.lti_scan import lti_scan
from ssmkit.ops.scan import scan
from ssmkit.ops.selective_scan import selective_scan
from ssmkit.ops.ssd import ssd

__all__ = ["lti_scan", "registry", "scan", "selective_scan", "ssd"]

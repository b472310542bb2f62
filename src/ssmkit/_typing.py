"""Shape glossary: the one place that names the axes used in ssmkit's shape comments.

Every public function documents its tensors with these letters, e.g. ``u: (b, l, h)``.
Comments inside function bodies carry the shape of the value they describe: ``# (b, l, h, n)``.

=====  ==============================================================================
axis   meaning
=====  ==============================================================================
b      batch: independent sequences
l      length: time steps of a sequence (``L`` when it is a fixed kernel length)
d      model channels (``d_model``) seen by a layer
h      SSM channels: independent SISO systems, or Mamba-2 heads
p      head dimension (Mamba-2: channels per head)
n      state size (for conjugate-pair parameterisations: number of stored modes)
g      groups of heads that share B and C (Mamba-2)
c      chunks (chunked algorithms split ``l`` into ``c`` chunks of ``t`` steps)
t      steps inside one chunk
r      rank of the low-rank term of a DPLR matrix (S4: r = 1)
m      inputs of a MIMO system (columns of B)
=====  ==============================================================================

``*s`` stands for any trailing state shape, e.g. ``(h, n)``.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

AXES: dict[str, str] = {
    "b": "batch",
    "l": "length",
    "d": "model channels",
    "h": "SSM channels / heads",
    "p": "head dimension",
    "n": "state size",
    "g": "B/C groups",
    "c": "chunks",
    "t": "steps inside a chunk",
    "r": "low-rank rank",
    "m": "MIMO inputs",
}

__all__ = ["AXES", "Tensor"]

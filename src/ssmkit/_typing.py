"""Shape glossary: the one place that names the axes used in ssmkit's shape comments.

Every public function documents its tensors with these letters, e.g. ``u: (b, l, h)``.
Comments inside function bodies carry the shape of the value they describe: ``# (b, l, h, n)``;
einsum subscripts use the same letters (``"bgctn,bgcjn->bgctj"``).

Axes with one meaning everywhere:

=====  ==============================================================================
axis   meaning
=====  ==============================================================================
b      batch: independent sequences (series, in :mod:`ssmkit.probabilistic`)
l      length: time steps of a sequence (``L`` when it is a fixed kernel length)
d      model channels (``d_model``) seen by a layer
h      SSM channels: independent SISO systems, or Mamba-2 heads
p      head dimension (Mamba-2: channels per head)
n      state size (for conjugate-pair parameterisations: number of stored modes)
g      groups of heads that share B and C (Mamba-2)
c      chunks (chunked algorithms split ``l`` into ``c`` chunks of ``t`` steps)
t      steps inside one chunk
j      a second time index, an earlier step than ``t`` (or ``l``) in a causal pair (j <= t)
m      inputs of a MIMO system (columns of B)
o      observation size (entries of y_t in a linear Gaussian SSM)
z      latent size of a deep latent model (DMM, latent ODE / SDE)
q      query times at which a continuous-time model is evaluated
s      samples: draws of a simulation smoother, seeds of an ablation
v      vocabulary size (logits)
f      frequencies of a kernel evaluated in the frequency domain
N      particles of a particle filter
=====  ==============================================================================

Letters whose meaning depends on the module (each says which in its docstring or comment):

=====  ==============================================================================
axis   meaning
=====  ==============================================================================
r      rank of the low-rank term of a DPLR matrix (S4: r = 1); in the chunked SSD, heads
       per group (h = g r); ``r p`` is the heads of a group side by side as columns
k      a block or parameter count: a structural component's states, a fit's parameters
a      the candidates still active in a batched fit
B, T   flattened leading axes in kernel and token-dynamics code (systems, depth points)
M      resampling draws in particle smoothing
=====  ==============================================================================

``*`` stands for any leading batch shape and ``*s`` for any trailing state shape, e.g. ``(h, n)``.

This module holds the glossary only (no aliases): ``core`` and ``ops`` may not import it under
the layering rule of ``tests/test_layering.py``, so the letters live in comments and einsums.
"""

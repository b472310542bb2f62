"""A generic associative scan over tuples of tensors whose axis 1 is time.

Hillis & Steele (1986): ceil(log2 l) rounds, each one vectorised call of ``op``; prefix t
after the round with offset k combines elements t - 2k + 1 .. t. ``ssmkit.ops.scan`` handles
only the elementwise linear recurrence; the Kalman elements (Sarkka & Garcia-Fernandez 2021)
are tuples of matrices, hence this generic form.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Tensor = torch.Tensor
Elements = tuple[Tensor, ...]


def associative_scan(op: Callable[[Elements, Elements], Elements], elems: Elements) -> Elements:
    """Inclusive scan: out_t = e_0 . e_1 . ... . e_t for an associative ``op``.

    Args:
        op: ``op(left, right)`` combines an earlier block ``left`` with a later ``right``;
            both are tuples of tensors shaped (b, k, ...) and the result is shaped alike.
        elems: tuple of tensors, each (b, l, ...).

    Returns:
        The tuple of prefix combinations, each (b, l, ...). Depth O(log l), work O(l log l).
    """
    length = elems[0].shape[1]
    offset = 1
    while offset < length:
        left = tuple(e[:, :-offset] for e in elems)
        right = tuple(e[:, offset:] for e in elems)
        combined = op(left, right)
        elems = tuple(
            torch.cat([e[:, :offset], c], 1) for e, c in zip(elems, combined, strict=True)
        )
        offset *= 2
    return elems


def associative_scan_ref(op: Callable[[Elements, Elements], Elements], elems: Elements) -> Elements:
    """The sequential definition of :func:`associative_scan` (a Python loop over time)."""
    acc = tuple(e[:, :1] for e in elems)
    out = [acc]
    for t in range(1, elems[0].shape[1]):
        acc = op(acc, tuple(e[:, t : t + 1] for e in elems))
        out.append(acc)
    return tuple(torch.cat(parts, 1) for parts in zip(*out, strict=True))

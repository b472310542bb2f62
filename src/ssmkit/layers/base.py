"""The sequence-layer protocol every ssmkit layer follows, and its input checks.

A layer maps ``x: (b, l, d)`` to ``y: (b, l, d)``. Causal layers also carry a recurrent state:

* ``forward(x, state=None, lengths=None, return_state=False) -> (y, state)`` runs a whole
  sequence, optionally continuing from ``state`` and returning the state after the last
  valid step of each item;
* ``step(x_t, state) -> (y_t, state)`` advances one step (generation, streaming);
* ``initial_state(batch)`` is the state before the first step.

``lengths: (b,)`` marks right-padded batches: item i is valid for its first ``lengths[i]``
steps, padded outputs are zero and the returned state is the one after step
``lengths[i] - 1``, so a padded batch gives what its items give alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

from ssmkit.core.checks import check_finite, check_tensor, values_checked

Tensor = torch.Tensor
_TRUSTED_LENGTHS: ContextVar[Tensor | None] = ContextVar("ssmkit_trusted_lengths", default=None)


class SequenceLayer(nn.Module):
    """Base class: (b, l, d) -> (b, l, d) with a recurrent state (see the module docstring)."""

    d_model: int

    def forward(
        self,
        x: Tensor,
        state: Tensor | None = None,
        lengths: Tensor | None = None,
        return_state: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def initial_state(self, batch: int) -> Tensor:
        raise NotImplementedError


def apply_factory(
    module: nn.Module, device: torch.device | str | None, dtype: torch.dtype | None
) -> None:
    """Move a freshly built layer to the ``device=``/``dtype=`` factory arguments it was given.

    Layers take these as ``torch.nn.Linear`` does; building under ``with torch.device(...)``
    works too. ``dtype`` must be a floating dtype; it applies to floating parameters and
    buffers only.
    """
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    if device is not None and not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    if device is not None:
        module.to(device=torch.device(device))
    if dtype is not None:
        module.to(dtype=dtype)


def check_sequence(name: str, x: Tensor, d_model: int, dtype: torch.dtype | None = None) -> Tensor:
    """Validate a (b, l, d) float input with d = ``d_model``, length >= 1 and finite values.

    ``dtype`` is the layer's parameter dtype: outside ``torch.autocast`` the input must have
    it (no silent cast); under ``torch.autocast`` any float input is cast to ``dtype`` and
    autocast picks each op's precision. Batch size 0 is allowed. Returns ``x`` (cast).
    """
    check_tensor(name, x)
    if x.ndim != 3 or x.shape[-1] != d_model or x.shape[1] < 1:
        raise ValueError(
            f"{name} must have shape (batch, length, d_model) with d_model = {d_model} and "
            f"length >= 1, got shape {tuple(x.shape)}"
        )
    return check_finite(name, _check_float(name, x, dtype), hot=True)


def check_step_input(x_t: Tensor, d_model: int, dtype: torch.dtype | None = None) -> Tensor:
    """Validate a (b, d) float input of one step (``dtype`` as in :func:`check_sequence`)."""
    check_tensor("x_t", x_t)
    if x_t.ndim != 2 or x_t.shape[-1] != d_model:
        raise ValueError(
            f"x_t must have shape (batch, d_model) with d_model = {d_model}, "
            f"got shape {tuple(x_t.shape)}"
        )
    return check_finite("x_t", _check_float("x_t", x_t, dtype), hot=True)


def _check_float(name: str, x: Tensor, dtype: torch.dtype | None) -> Tensor:
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if dtype is None or x.dtype == dtype:
        return x
    if torch.is_autocast_enabled(x.device.type):
        return x.to(dtype)
    raise TypeError(
        f"{name} must have the layer's dtype {dtype}, got {x.dtype}; convert the input "
        f"({name}.to({dtype})) or the layer (layer.to({x.dtype})), or use torch.autocast "
        "for mixed precision"
    )


def check_overflow(layer: nn.Module, y: Tensor, x: Tensor) -> Tensor:
    """Raise ``FloatingPointError`` if ``y`` is not finite although the input ``x`` was.

    Selective layers multiply the input by input-dependent step sizes and projections, so a
    finite but huge ``x`` (|x| ~ 1e20 in float32) overflows to inf and then NaN. The error
    names the cause: a non-finite parameter, else the size of ``x``.
    """
    if not values_checked(y, hot=True):
        return y
    if bool(torch.isfinite(y.detach().sum())) or bool(torch.isfinite(y.detach()).all()):
        return y
    for pname, p in layer.named_parameters():
        if not bool(torch.isfinite(p.detach()).all()):
            raise FloatingPointError(
                f"{type(layer).__name__} parameter {pname} is not finite (NaN or inf), so the "
                "output is not finite"
            )
    big = float(x.detach().abs().amax()) if x.numel() else 0.0
    raise FloatingPointError(
        f"x is too large for {type(layer).__name__}: with max |x| = {big:.3g} its activations "
        f"overflow {y.dtype} and the output is not finite; scale the input down (normalise it)"
    )


@contextmanager
def trusted_lengths(lengths: Tensor | None) -> Iterator[None]:
    """Inside the block, :func:`check_lengths` passes this very tensor through unchecked.

    A model validates ``lengths`` once (with :func:`check_lengths`) and runs its layers in
    this block, so n layers do not check (and, on CPU, read) the same tensor n more times.
    Any other tensor, and every layer call outside the block, is still checked.
    """
    token = _TRUSTED_LENGTHS.set(lengths)
    try:
        yield
    finally:
        _TRUSTED_LENGTHS.reset(token)


def check_lengths(lengths: Tensor | None, batch: int, length: int) -> Tensor | None:
    """Validate ``lengths: (b,)`` integers in [1, length]; returns them as int64 or None.

    The tensor a model validated and handed to :func:`trusted_lengths` passes unchecked.
    """
    if lengths is None:
        return None
    if not torch.compiler.is_compiling() and lengths is _TRUSTED_LENGTHS.get():
        return lengths  # validated once by the model (int64 already)
    check_tensor("lengths", lengths)
    if lengths.shape != (batch,):
        raise ValueError(
            f"lengths must have shape (batch,) = ({batch},), got shape {tuple(lengths.shape)}"
        )
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must be an integer tensor, got {lengths.dtype}")
    if not values_checked(lengths, hot=True):
        return lengths.long()
    if bool((lengths < 1).any()) or bool((lengths > length).any()):
        raise ValueError(
            f"lengths must lie in [1, {length}] (the input length), got min "
            f"{int(lengths.min())} and max {int(lengths.max())}"
        )
    return lengths.long()


def packed_resets(
    cu_seqlens: Tensor | None, batch: int, length: int, lengths: Tensor | None
) -> Tensor | None:
    """(1, l) bool, True at the first step of every packed sequence after the first.

    ``cu_seqlens`` (n + 1,) are cumulative lengths 0 = c_0 < c_1 < ... < c_n = l of n
    sequences packed into one batch item (the flash-linear-attention convention).
    """
    if cu_seqlens is None:
        return None
    check_tensor("cu_seqlens", cu_seqlens)
    if batch != 1 or lengths is not None:
        raise ValueError(
            f"cu_seqlens packs sequences into one item: x must have batch 1 and no lengths, "
            f"got batch {batch}{' and lengths' if lengths is not None else ''}"
        )
    c = cu_seqlens
    ok = c.ndim == 1 and c.numel() >= 2 and not c.is_floating_point()
    if not ok or (
        values_checked(c, hot=True)
        and (int(c[0]) != 0 or int(c[-1]) != length or bool((c[1:] <= c[:-1]).any()))
    ):
        raise ValueError(
            f"cu_seqlens must be increasing integers from 0 to the input length {length}, "
            f"got {c.tolist() if c.numel() < 20 else tuple(c.shape)}"
        )
    reset = torch.zeros(1, length, dtype=torch.bool, device=c.device)
    reset[0, c[1:-1].long()] = True
    return reset


def length_mask(lengths: Tensor, length: int) -> Tensor:
    """(b, l) bool mask, True at the valid steps of each item."""
    return torch.arange(length, device=lengths.device) < lengths.unsqueeze(-1)


def check_state_tuple(state: object, cls: type, shapes: dict[str, tuple[int, ...]]) -> None:
    """Validate a NamedTuple state (e.g. a Mamba cache): its type, each field's shape, finite."""
    if not isinstance(state, cls):
        raise TypeError(f"state must be a {cls.__name__}, got {type(state).__name__}")
    for (name, shape), value in zip(shapes.items(), state, strict=True):
        check_tensor(name, value)
        if tuple(value.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
        check_finite(name, value, hot=True)


def check_state(state: Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """Validate a recurrent state against the layer's expected (b, *s) shape and dtype."""
    check_tensor("state", state)
    if tuple(state.shape) != shape:
        raise ValueError(
            f"state must have shape {shape} (see initial_state), got shape {tuple(state.shape)}"
        )
    if state.dtype != dtype:
        raise TypeError(f"state must have dtype {dtype} (see initial_state), got {state.dtype}")
    return check_finite("state", state, hot=True)

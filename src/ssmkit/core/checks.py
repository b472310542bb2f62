"""Argument validation shared by every public entry point.

Each helper raises ``ValueError``/``TypeError`` whose message names the argument, what was
expected and what was given, so a user never has to read a traceback to find the mistake.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

Tensor = torch.Tensor


def check_tensor(name: str, x: object) -> Tensor:
    """Raise ``TypeError`` unless ``x`` is a tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_ndim(name: str, x: Tensor, ndim: int | Sequence[int], shape_doc: str) -> Tensor:
    """Raise ``ValueError`` unless ``x.ndim`` is one of ``ndim``; ``shape_doc`` names the axes."""
    check_tensor(name, x)
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if x.ndim not in allowed:
        raise ValueError(f"{name} must have shape {shape_doc}, got shape {tuple(x.shape)}")
    return x


def check_shape(name: str, x: Tensor, expected: Sequence[int | None], shape_doc: str) -> Tensor:
    """Raise ``ValueError`` unless ``x.shape`` matches ``expected`` (``None`` = any size)."""
    check_tensor(name, x)
    ok = x.ndim == len(expected) and all(
        e is None or e == s for e, s in zip(expected, x.shape, strict=True)
    )
    if not ok:
        want = "(" + ", ".join("?" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{name} must have shape {shape_doc} = {want}, got shape {tuple(x.shape)}")
    return x


def check_finite(name: str, x: Tensor) -> Tensor:
    """Raise ``ValueError`` if ``x`` holds NaN or inf."""
    # A sum is finite only if every entry is (NaN and inf propagate); it reads x once and makes
    # no (b, l, d) temporary. Only a non-finite (or overflowed) sum takes the exact check.
    if (x.is_floating_point() or x.is_complex()) and bool(torch.isfinite(x.sum()).all()):
        return x
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} must be finite, got {bad} non-finite value(s) (NaN or inf)")
    return x


def check_positive(name: str, x: Tensor | float) -> Tensor | float:
    """Raise ``ValueError`` unless every entry of ``x`` is finite and > 0."""
    if isinstance(x, torch.Tensor):
        check_finite(name, x)
        if not bool((x > 0).all()):
            raise ValueError(f"{name} must be > 0 everywhere, got min {float(x.min()):.4g}")
    elif not (x > 0 and x == x and x != float("inf")):
        raise ValueError(f"{name} must be a finite number > 0, got {x!r}")
    return x


def check_choice(name: str, value: str, choices: Iterable[str]) -> str:
    """Raise ``ValueError`` unless ``value`` is one of ``choices`` (listed in the message)."""
    options = list(choices)
    if value not in options:
        raise ValueError(f"unknown {name} {value!r}; expected one of {options}")
    return value


def check_int(name: str, value: object, minimum: int = 0) -> int:
    """Raise ``TypeError``/``ValueError`` unless ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_bool_mask(name: str, x: object, shape: Sequence[int]) -> Tensor:
    """Raise unless ``x`` is a bool tensor of exactly ``shape``."""
    check_tensor(name, x)
    if x.dtype != torch.bool or tuple(x.shape) != tuple(shape):
        raise ValueError(
            f"{name} must be a bool tensor of shape {tuple(shape)}, got {x.dtype} {tuple(x.shape)}"
        )
    return x

"""Argument validation shared by every public entry point.

Each helper raises ``ValueError``/``TypeError`` whose message names the argument, what was
expected and what was given, so a user never has to read a traceback to find the mistake.

Shape and type checks always run. Value checks (NaN/inf, signs, ranges) read the tensor, which
on an accelerator waits for the device (a host sync) and breaks ``torch.compile`` graphs, so
they follow a mode, :func:`set_checks` or the :func:`checks` context manager:

* ``"full"``: every value check runs (the default on CPU);
* ``"cheap"``: only the checks at entry points where users hand data in (readers, trainer,
  Kalman fit) run; the ``hot=True`` checks inside layer forwards and sequence operators are
  skipped (the default on accelerators and while ``torch.compile`` traces);
* ``"off"``: no value checks.

Meta tensors hold no values, so value checks never run on them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch

Tensor = torch.Tensor

CHECK_MODES = ("off", "cheap", "full")
_mode: str | None = None  # None: "full" on CPU, "cheap" on accelerators and while compiling


def set_checks(mode: str | None) -> None:
    """Choose which value checks run: ``"off"``, ``"cheap"``, ``"full"`` or None (default).

    Args:
        mode: see the module docstring; None restores the default ("full" on CPU, "cheap" on
            accelerators and while ``torch.compile`` traces).
    """
    global _mode
    if mode is not None:
        if not isinstance(mode, str):
            raise TypeError(f"mode must be a str or None, got {type(mode).__name__}")
        check_choice("checks mode", mode, CHECK_MODES)
    _mode = mode


def get_checks(device: torch.device | str = "cpu") -> str:
    """The value-check mode in force for tensors on ``device`` (resolving the default)."""
    if _mode is not None:
        return _mode
    if torch.device(device).type != "cpu" or torch.compiler.is_compiling():
        return "cheap"
    return "full"


@contextmanager
def checks(mode: str | None) -> Iterator[None]:
    """Run a block under value-check ``mode`` (as :func:`set_checks`), then restore the old one.

    Example: ``with ssmkit.checks("off"): y, _ = layer(x)``.
    """
    global _mode
    previous = _mode
    set_checks(mode)
    try:
        yield
    finally:
        _mode = previous


def values_checked(x: Tensor, hot: bool = False) -> bool:
    """Whether a value check on ``x`` runs now.

    Args:
        x: the tensor the check would read.
        hot: the check sits on a hot path (a layer forward, a sequence operator), where the
            "cheap" mode skips it; False for entry points where users hand data in.
    """
    if x.device.type == "meta":
        return False
    mode = _mode
    if mode is None:
        cheap = x.device.type != "cpu" or torch.compiler.is_compiling()
        mode = "cheap" if cheap else "full"
    return mode == "full" or (mode == "cheap" and not hot)


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


def check_finite(name: str, x: Tensor, hot: bool = False) -> Tensor:
    """Raise ``ValueError`` if ``x`` holds NaN or inf (a value check, see :func:`values_checked`).

    Args:
        name: the argument's name, for the message.
        x: the tensor to check.
        hot: True on hot paths (layer forwards, operators): skipped in the "cheap" mode.
    """
    if not values_checked(x, hot):
        return x
    # A sum is finite only if every entry is (NaN and inf propagate); it reads x once and makes
    # no (b, l, d) temporary. Only a non-finite (or overflowed) sum takes the exact check.
    if (x.is_floating_point() or x.is_complex()) and bool(torch.isfinite(x.sum()).all()):
        return x
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} must be finite, got {bad} non-finite value(s) (NaN or inf)")
    return x


def check_positive(name: str, x: Tensor | float, hot: bool = False) -> Tensor | float:
    """Raise ``ValueError`` unless every entry of ``x`` is finite and > 0.

    Numbers are always checked; tensors follow :func:`values_checked` (``hot`` as there).
    """
    if isinstance(x, torch.Tensor):
        if not values_checked(x, hot):
            return x
        check_finite(name, x, hot)
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

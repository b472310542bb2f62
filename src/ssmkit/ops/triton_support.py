"""What every Triton backend needs before a launch: triton itself, and on CPU its interpreter.

Triton is an optional dependency (extra ``gpu``) and is never imported by ``import ssmkit``:
the backends import their kernel modules on first use. On CUDA tensors the kernels are
compiled; on CPU tensors they run only under Triton's interpreter (``TRITON_INTERPRET=1`` set
before triton is imported), which is how CI tests them without a GPU.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

NEEDS = "the triton package (pip install 'ssmkit[gpu]'); on cpu, TRITON_INTERPRET=1"


def available() -> bool:
    """Whether triton is installed (found without importing it: importing takes a second)."""
    if "triton" in sys.modules:  # imported, or blocked (None)
        return sys.modules["triton"] is not None
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's interpreter (as triton reads it)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def check_launch(device: torch.device, kernel: object) -> None:
    """Raise a clear error unless ``kernel`` (a ``@triton.jit`` function) can run on ``device``.

    Args:
        device: the device of the tensors the kernel is launched on, cuda or cpu (the registry
            admits no other).
        kernel: the decorated kernel; triton decides at decoration time (when the kernel
            module is imported) whether it is compiled or interpreted.
    """
    if device.type == "cuda":
        if type(kernel).__name__ == "InterpretedFunction":
            raise RuntimeError(
                "the triton kernels were imported under TRITON_INTERPRET=1 (interpreter), so "
                "they cannot be compiled for CUDA tensors; unset it and restart the process"
            )
        return
    if not interpreting() or type(kernel).__name__ != "InterpretedFunction":
        value = os.environ.get("TRITON_INTERPRET")
        raise RuntimeError(
            "backend 'triton' runs on CPU tensors only under Triton's interpreter: set "
            "TRITON_INTERPRET=1 before triton and ssmkit's triton kernels are first imported "
            f"(TRITON_INTERPRET is {value!r}; use a CUDA tensor to run the compiled kernels)"
        )


def register(op: str, fn: object, priority: int, description: str) -> None:
    """Register ``fn`` as backend "triton" of ``op``: preferred by "auto" on CUDA; on CPU only
    an explicit ``backend="triton"`` reaches it (Triton's interpreter: the tests)."""
    from ssmkit.ops import registry

    registry.register(
        op,
        "triton",
        fn,
        devices=("cuda",),
        explicit_devices=("cpu",),
        priority=priority,
        description=description,
        is_available=available,
        needs=NEEDS,
        traceable=True,  # a torch.library custom op: one node in a compiled graph
    )

"""Backend registry: one signature per operator, several registered implementations.

Every operator registers a ``"ref"`` backend (the pure-PyTorch definition) and any number of
fast ones. ``backend="auto"`` picks the available backend with the highest priority for the
input's device; ``backend="ref"`` or any registered name forces that implementation. Unknown
names are errors that list the valid ones. A backend may also run on ``explicit_devices`` only
when named (Triton kernels on CPU tensors under Triton's interpreter: a test vehicle, never a
choice of ``"auto"``). On the ``meta`` device (shape propagation) and while ``torch.compile``
traces, ``"auto"`` picks the best ``traceable`` backend usable on that device: the pure-PyTorch
ones, and the fused kernels registered as ``torch.library`` custom ops (a fake implementation
for shapes, a registered backward), which the compiled graph holds as one opaque node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ssmkit.core.checks import check_choice


@dataclass(frozen=True)
class Backend:
    """A registered implementation of an operator."""

    op: str  # operator name, e.g. "scan"
    name: str  # backend name, e.g. "ref", "chunked"
    fn: Callable  # the implementation, with the operator's signature
    devices: frozenset[str]  # device types it runs on ("cpu", "cuda", ...)
    priority: int  # "auto" picks the highest available priority
    description: str = ""
    is_available: Callable[[], bool] = field(default=lambda: True)
    explicit_devices: frozenset[str] = frozenset()  # reached only by name there, never "auto"
    needs: str = ""  # what is_available() requires, named in the error when it is False
    traceable: bool = False  # pure PyTorch: runs on meta tensors and traces with torch.compile

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        """``with register(...):`` unregisters the backend on leaving the block (tests,
        experiments), also when it raises, so the global registry never keeps it."""
        unregister(self.op, self.name)


_REGISTRY: dict[str, dict[str, Backend]] = {}


def register(
    op: str,
    name: str,
    fn: Callable,
    devices: tuple[str, ...] = ("cpu", "cuda"),
    priority: int = 0,
    description: str = "",
    is_available: Callable[[], bool] | None = None,
    explicit_devices: tuple[str, ...] = (),
    needs: str = "",
    traceable: bool = False,
) -> Backend:
    """Register ``fn`` as backend ``name`` of operator ``op``; re-registering a name is an error.

    The returned :class:`Backend` is also a context manager: ``with register(...):`` keeps
    the backend for the block only (see :func:`unregister`).
    """
    table = _REGISTRY.setdefault(op, {})
    if name in table:
        raise ValueError(f"backend {name!r} is already registered for op {op!r}")
    if name == "auto":
        raise ValueError("'auto' is reserved and cannot be registered as a backend name")
    backend = Backend(
        op=op,
        name=name,
        fn=fn,
        devices=frozenset(devices),
        priority=priority,
        description=description,
        is_available=is_available or (lambda: True),
        explicit_devices=frozenset(explicit_devices),
        needs=needs,
        traceable=traceable,
    )
    table[name] = backend
    return backend


def unregister(op: str, name: str) -> None:
    """Remove backend ``name`` of ``op`` (and ``op`` itself when it has no backend left)."""
    check_choice("op", op, ops())
    check_choice(f"backend for {op}", name, sorted(_REGISTRY[op]))
    del _REGISTRY[op][name]
    if not _REGISTRY[op]:
        del _REGISTRY[op]


def ops() -> list[str]:
    """Names of all operators that have backends."""
    return sorted(_REGISTRY)


def backends(op: str, device: torch.device | str | None = None) -> list[Backend]:
    """Registered backends of ``op`` (those usable on ``device`` if given), best first."""
    check_choice("op", op, ops())
    found = _REGISTRY[op].values()
    if device is not None:
        dev = torch.device(device).type
        found = [b for b in found if dev in b.devices and b.is_available()]
    return sorted(found, key=lambda b: (-b.priority, b.name))


def resolve(op: str, backend: str, device: torch.device | str) -> Backend:
    """The backend that runs ``op`` on ``device``: ``"auto"`` or a registered name."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    check_choice("op", op, ops())
    table = _REGISTRY[op]
    check_choice(f"backend for {op}", backend, ["auto", *sorted(table)])
    dev = torch.device(device).type
    if backend == "auto" and (dev == "meta" or torch.compiler.is_compiling()):
        best = None  # a plain loop: dynamo traces it
        for b in table.values():
            usable = dev == "meta" or (dev in b.devices and b.is_available())
            if b.traceable and usable and (best is None or b.priority > best.priority):
                best = b
        return best
    if backend == "auto":
        usable = backends(op, dev)
        if not usable:
            raise ValueError(f"no backend of {op!r} runs on device {dev!r}")
        return usable[0]
    chosen = table[backend]
    runs_here = dev in chosen.devices or dev in chosen.explicit_devices
    runs_here = runs_here or (dev == "meta" and chosen.traceable)
    if not runs_here or not chosen.is_available():
        usable = [b.name for b in backends(op, dev)]
        why = f" (it needs {chosen.needs})" if runs_here and chosen.needs else ""
        raise ValueError(
            f"backend {backend!r} of {op!r} is not available on device {dev!r}{why}; "
            f"available there: {usable}"
        )
    return chosen

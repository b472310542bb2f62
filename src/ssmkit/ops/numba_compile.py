"""Compiling numba kernels off the critical path: one registry of background compile threads
for every kernel module, the one-line note while a compile (not a load from the disk cache)
runs, the check that a kernel has a compiled signature for a dtype, and the exit hook that
waits for compiles still running.

Compiling a module's kernels for one dtype takes tens of seconds (parallel loops);
``cache=True`` keeps them on disk afterwards (in ``__pycache__`` next to the module, or
numba's user-wide cache directory where that is read-only). ``backend="auto"`` does not wait:
its first calls run a PyTorch backend while a thread compiles (or loads) the kernels.
"""

from __future__ import annotations

import atexit
import contextlib
import sys
import threading
from collections.abc import Callable, Iterator

import torch

try:
    import numba
except ImportError:  # the kernels are optional (extra "fast")
    numba = None

_WARMING: dict[object, threading.Thread] = {}  # by dtype, or (module, dtype)
_WARM_LOCK = threading.Lock()


def compiled_for(dtype: torch.dtype, kernels: tuple[object, ...]) -> bool:
    """Whether every numba kernel in ``kernels`` has a compiled signature whose first
    argument is an array of ``dtype`` (the ``ready`` check of each kernel module)."""
    if numba is None:
        return False
    key = (dtype, *map(id, kernels))
    if key in _COMPILED:  # a compiled signature stays: decoding asks per layer and token
        return True
    want = numba.from_dtype(torch.empty(0, dtype=dtype).numpy().dtype)
    if all(any(sig[0].dtype == want for sig in k.signatures) for k in kernels):
        _COMPILED.add(key)
        return True
    return False


_COMPILED: set[tuple] = set()  # the positive answers of compiled_for


NOTE_AFTER_S = 1.0  # a compile takes longer (and is noted); a load from the disk cache not
_NOTED: list[bool] = []  # one note per process, however many kernels compile


@contextlib.contextmanager
def compiling_note() -> Iterator[None]:
    """Around code that may compile numba kernels: if it runs longer than ``NOTE_AFTER_S``
    (a compile, not a load from the disk cache), say so in one line on stderr, once per
    process, while it runs."""
    timer = threading.Timer(NOTE_AFTER_S, _note)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _note() -> None:
    with _WARM_LOCK:
        if _NOTED:
            return
        _NOTED.append(True)
    print("ssmkit: compiling the CPU kernels, once (numba keeps them on disk for later runs)",
          file=sys.stderr, flush=True)  # fmt: skip


def compile_once(key: object, run: Callable[[], None], wait: bool) -> None:
    """Run ``run`` (a tiny problem that compiles some kernels) once per ``key``, in a daemon
    thread under the compiling note; ``wait`` joins it. Every numba kernel module warms up
    through this one registry of threads."""
    with _WARM_LOCK:
        thread = _WARMING.get(key)
        if thread is None:
            if not _WARMING:
                atexit.register(finish_compiles)
            thread = threading.Thread(target=_compile, args=(run,), daemon=True)
            _WARMING[key] = thread
            thread.start()
    if wait:
        thread.join()


def finish_compiles() -> None:
    """Wait for the background compiles still running (registered with ``atexit``): a
    daemon thread stopped inside LLVM at interpreter exit aborts the process ("terminate
    called without an active exception"), so a short first script in a fresh environment
    waits for the kernels instead (once: they are cached on disk for the next run)."""
    pending = [t for t in list(_WARMING.values()) if t.is_alive()]
    if pending:
        print(
            "ssmkit: finishing the CPU kernels' compilation before exit (once; they are "
            "cached on disk for the next run)",
            file=sys.stderr,
            flush=True,
        )
    for t in pending:
        t.join()


def _compile(run: Callable[[], None]) -> None:
    with compiling_note():
        run()

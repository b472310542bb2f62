"""A first script in a fresh environment (no numba cache) ends cleanly: the kernels compile
in a background thread while the PyTorch backends run, and at exit ssmkit waits for that
compile instead of letting the interpreter stop it inside LLVM (which aborted the process)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ssmkit.ops.selective_scan import cpu_numba

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not cpu_numba.available(), reason="numba is not installed"),
]

SCRIPT = """
import torch
from ssmkit.layers.mamba import Mamba
torch.manual_seed(0)
y, _ = Mamba(16, d_state=4)(torch.randn(2, 9, 16))
y.sum().backward()
print("first call done", flush=True)
"""


def test_first_script_with_an_empty_kernel_cache_exits_cleanly(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert "first call done" in done.stdout
    assert "terminate called" not in done.stderr
    assert "finishing the CPU kernels' compilation before exit" in done.stderr

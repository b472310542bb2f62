"""Peak memory of the fast kernels at H=1024, N=64, L=16384 (float32), in a fresh process.

The bound of the foundation issue: within 3x the kernel's own size plus the per-chunk
temporary. The naive Vandermonde (an (H, N, L) complex table) would need 8.6 GB here.
"""

import json
import os
import subprocess
import sys

import pytest

CHILD = r"""
import json, re, sys, torch
from pathlib import Path
from ssmkit.core.kernels import default_chunk, kernel_diag, kernel_dplr
torch.set_num_threads(2)
def kib(key):
    return int(re.search(rf"^{key}:\s+(\d+)", Path("/proc/self/status").read_text(), re.M).group(1))
which = sys.argv[1]
H, n, L = 1024, 64, 16384      # n stored modes: the N = 64 of the issue, counted strictly
g = torch.Generator().manual_seed(0)
A_bar = torch.polar(torch.rand(H, n, generator=g) * 0.5 + 0.49, torch.rand(H, n, generator=g) * 3)
B_bar = torch.randn(H, n, dtype=torch.complex64, generator=g)
C = torch.randn(H, n, dtype=torch.complex64, generator=g)
P = 0.1 * torch.randn(H, 1, n, dtype=torch.complex64, generator=g)
dt = torch.full((H,), 0.01)
Lam = torch.complex(-0.5 * torch.ones(H, n), torch.rand(H, n, generator=g) * 10)
Path("/proc/self/clear_refs").write_text("5")
base = kib("VmRSS")
with torch.no_grad():
    if which == "diag":
        K = kernel_diag(A_bar, B_bar, C, L)
        chunk_bytes = H * n * default_chunk(H, n, L) * 8  # the (H, n, c) powers, complex64
    else:
        K = kernel_dplr(Lam, P, P, B_bar, C, dt, L)
        # the (H, 2c, n) table of 1/d at c frequencies and their mirrors, complex64
        chunk_bytes = H * 2 * n * default_chunk(H, 2 * n, L // 2 + 1) * 8
print(json.dumps({"peak": (kib("VmHWM") - base) * 1024, "kernel": K.numel() * 4,
                  "chunk": chunk_bytes, "finite": bool(torch.isfinite(K).all())}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux procfs")
@pytest.mark.parametrize("which", ["diag", "dplr"])
def test_peak_memory_at_h1024_n64_l16384(which):
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, which], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr
    m = json.loads(done.stdout.strip().splitlines()[-1])
    bound = 3 * m["kernel"] + m["chunk"] + 32 * 2**20  # + 32 MiB slack for FFT plans etc.
    assert m["finite"]
    assert m["peak"] <= bound, (
        f"{which}: peak {m['peak'] / 2**20:.0f} MiB > bound {bound / 2**20:.0f} MiB "
        f"(kernel {m['kernel'] / 2**20:.0f} MiB, chunk temporary {m['chunk'] / 2**20:.0f} MiB)"
    )

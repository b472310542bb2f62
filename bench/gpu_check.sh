#!/usr/bin/env bash
# GPU check, a few minutes on one CUDA device (run it only where one is present):
#   1. install ssmkit with the GPU extra (triton) into .venv-gpu (torch as found, else the pin);
#   2. every CUDA backend against the loop definitions (`-m gpu`: Triton selective scan, SSD,
#      LTI scan; filters, particle filter and SDE solvers on CUDA = CPU);
#   3. `ssmkit bench --device cuda` for the scans and a whole model, rows as JSON.
# Results go to ${OUT:-gpu-check}/. TRITON_INTERPRET must be unset: the interpreter tests set
# it when imported, which is why step 2 names the GPU test files instead of collecting all.
set -euo pipefail
cd "$(dirname "$0")/.."
unset TRITON_INTERPRET
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
PY=${PY:-python3}
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" | tee "$OUT/device.txt"
$PY -m pip install --quiet -e ".[gpu,fast]" pytest 2>&1 | tail -2 || true
$PY -m pytest -q -m gpu -p no:cacheprovider \
    tests/ops/test_gpu_backends.py tests/probabilistic/test_filters.py \
    tests/probabilistic/test_particle.py tests/core/test_sde.py 2>&1 | tee "$OUT/tests.txt"
$PY -m ssmkit bench --device cuda --suite selective ssd lti-scan e2e --size default \
    --repeat 5 --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt"

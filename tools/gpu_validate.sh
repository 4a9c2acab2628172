#!/usr/bin/env bash
# GPU validation in one call, on a machine with a CUDA build of torch: build in place, run the
# CUDA tests, then the CUDA microbenchmarks. Everything lands in $OUT (default
# benchmarks/results/gpu). Used as: `run` -> `bash tools/gpu_validate.sh`.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$out/device.txt" 2>&1 || true
if ! MAX_JOBS=${MAX_JOBS:-16} PYFUSEDBN_CUDA=1 "$PY" -m pip install --no-build-isolation --no-deps -e . \
    > "$out/build.log" 2>&1; then
  tail -60 "$out/build.log"
  echo "gpu-validate: build FAILED"
  exit 1
fi
"$PY" -c "import torch, pyfusedbn; print(torch.__version__, pyfusedbn.backends())" | tee "$out/backends.txt"
"$PY" -m pytest -q -m cuda tests -p no:cacheprovider 2>&1 | tee "$out/cuda_tests.txt" | tail -40
tests_rc=${PIPESTATUS[0]}
"$PY" -m benchmarks.microbench --quick --device cuda --out "$out" --no-progress 2>&1 \
  | tee "$out/microbench.txt" | tail -80
exit "$tests_rc"

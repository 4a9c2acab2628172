#!/usr/bin/env bash
# Compile-checks every CUDA kernel file for sm_80 and sm_90 with nvcc, without torch and without
# a GPU: a syntax or template error in a .cu fails here (and so in CI). Warnings are errors.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || true)}
if [ -z "$NVCC" ]; then
  echo "cuda-check: nvcc not found; CUDA kernels not compile-checked on this machine"
  exit 0
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$NVCC" --version | tail -n 2
for cu in csrc/cuda/*.cu; do
  echo "cuda-check: $cu (sm_80, sm_90)"
  "$NVCC" -std=c++17 -O3 -Xcompiler -Wall,-Werror -Werror all-warnings \
    -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=sm_90 \
    -c "$cu" -o "$out/$(basename "$cu").o" &
done
fail=0
for job in $(jobs -p); do wait "$job" || fail=1; done
[ "$fail" = 0 ] && echo "cuda-check: all CUDA kernel files compiled" || { echo "cuda-check: FAILED"; exit 1; }

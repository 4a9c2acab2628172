#!/usr/bin/env bash
# Compile-checks every CUDA kernel file for sm_80 and sm_90 with nvcc, without torch and without
# a GPU: a syntax or template error in a .cu fails here (and so in CI). Warnings are errors.
# The half/bfloat16 macros are the ones torch's CUDAExtension passes: no implicit conversions.
# One nvcc at a time: each already instantiates every activation x dtype x layout variant.
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
  start=$SECONDS
  if ! "$NVCC" -std=c++17 -O3 -Xcompiler -Wall,-Wextra,-Werror -Werror all-warnings \
      -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
      -D__CUDA_NO_HALF2_OPERATORS__ \
      -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=sm_90 \
      -c "$cu" -o "$out/$(basename "$cu").o"; then
    echo "cuda-check: FAILED on $cu"
    exit 1
  fi
  echo "cuda-check: compiled $cu for sm_80 and sm_90 ($((SECONDS - start)) s)"
done
echo "cuda-check: all CUDA kernel files compiled"

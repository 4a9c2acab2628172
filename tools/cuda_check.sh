#!/usr/bin/env bash
# Compile-checks every CUDA kernel file for sm_80 and sm_90 with nvcc, without torch and without
# a GPU: a syntax or template error in a .cu fails here (and so in CI). Warnings are errors.
# sm_90 is compiled to machine code (ptxas too); sm_80 to PTX only: its front end still checks
# every arch-dependent branch, and skipping its ptxas run took the stage from 320 to 259 s in CI.
# The half/bfloat16 macros are the ones torch's CUDAExtension passes: no implicit conversions.
# CUDA_CHECK_JOBS nvcc at a time (default: the core count; each takes ~1 GiB, single-threaded).
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
export NVCC out
compile_one() {
  local cu=$1 start=$SECONDS name
  name=$(basename "$cu")
  if ! "$NVCC" -std=c++17 -O3 -Xcompiler -Wall,-Wextra,-Werror -Werror all-warnings \
      -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
      -D__CUDA_NO_HALF2_OPERATORS__ \
      -gencode=arch=compute_80,code=compute_80 -gencode=arch=compute_90,code=sm_90 \
      -c "$cu" -o "$out/$name.o" > "$out/$name.log" 2>&1; then
    cat "$out/$name.log"
    echo "cuda-check: FAILED on $cu"
    return 1
  fi
  cat "$out/$name.log"
  echo "cuda-check: compiled $cu for sm_80 (PTX) and sm_90 ($((SECONDS - start)) s)"
}
export -f compile_one
ls csrc/cuda/*.cu | xargs -P "${CUDA_CHECK_JOBS:-$(nproc)}" -I{} bash -c 'compile_one "$1"' _ {}
echo "cuda-check: all CUDA kernel files compiled"

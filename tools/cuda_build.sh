#!/usr/bin/env bash
# Builds pyfusedbn with its CUDA kernels against torch 2.14.1 (CUDA 13.0 build) in a separate
# venv and a scratch copy of the tree, so the CPU build in place is left alone. Does not run it.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(realpath -m "${1:-.venv-cuda}")
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.14.1 numpy ninja setuptools wheel
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
git ls-files -co --exclude-standard | tar cf - -T - | tar xf - -C "$scratch"
cd "$scratch"
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} PYFUSEDBN_CUDA=1 TORCH_CUDA_ARCH_LIST="8.0;9.0" MAX_JOBS=${MAX_JOBS:-2} \
  "$venv/bin/python" setup.py -q build_ext --inplace
ls -l pyfusedbn/_C*.so
# Loading needs no GPU: it resolves every launcher symbol and runs the CUDA registrations.
"$venv/bin/python" - <<'PY'
import torch
import pyfusedbn
backends = pyfusedbn.backends()
assert backends == {"cpu": True, "cuda": True}, backends
x = torch.randn(4, 3, 5, 5, requires_grad=True)
pyfusedbn.BatchNormAct2d(3)(x).sum().backward()
print(f"cuda-build: loaded with torch {torch.__version__}: kernels {backends}; CPU forward/backward ran")
PY
echo "cuda-build: the CUDA extension built and loads (CUDA kernels not run: no GPU needed)"

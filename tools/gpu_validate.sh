#!/usr/bin/env bash
# GPU validation in one call on a machine with a CUDA build of torch (the lent H100/H200: 16
# cores, no network): build for this card's arch only, then the CUDA tests, the CUDA
# microbenchmarks and the end-to-end benchmark, each under its own `timeout` and all inside one
# overall deadline (GPU_VALIDATE_S, default 540 s), so a slow stage eats no other stage's time
# beyond it. Results land in $OUT (default benchmarks/results/gpu), at most 8 files:
#   gpu_validate.log   every stage's output, with its exit status and seconds
#   build.log          the whole compiler output (only its tail goes into gpu_validate.log)
#   cuda_tests.xml     pytest's junit report of the CUDA tests
#   microbench.json    the CUDA microbenchmarks (benchmarks.microbench)
#   e2e.json           ResNet-50 eager/converted/compiled and the memory-saving stack (benchmarks.e2e)
#   group_norm_bench.json  GroupNorm(32)+SiLU on UNet shapes vs eager and compile (issue 13)
#   model_zoo.json     converted torchvision/timm models, bf16 channels_last training (issue 14)
#   model_zoo_norms.json  the GroupNorm / LayerNorm models: diffusers UNet2DModel,
#                      UNet2DConditionModel, AutoencoderKL, timm convnext_atto, resnet50_gn, BiT,
#                      torchvision convnext_tiny (issue 20): coverage, exactness, GPU training
# Used as: `run` -> `bash tools/gpu_validate.sh` (or `make gpu-validate`). Exit status: the
# first failing stage's.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
log="$out/gpu_validate.log"
PY=${PYTHON:-python3}
deadline=$((SECONDS + ${GPU_VALIDATE_S:-540}))
status=0
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# stage NAME CAP_S COMMAND...: runs COMMAND under timeout min(CAP_S, time left); its output goes to
# the log and to stdout (the device tool returns stdout's tail).
stage() {
  local name=$1 cap=$2
  shift 2
  local left=$((deadline - SECONDS))
  local limit=$((cap < left ? cap : left))
  if [ "$limit" -lt 20 ]; then
    echo "== $name: skipped, ${left} s left of the overall deadline" | tee -a "$log"
    [ "$status" -ne 0 ] || status=124
    return
  fi
  echo "== $name (timeout ${limit} s): $*" | tee -a "$log"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit ${rc} after $((SECONDS - start)) s$([ $rc -eq 124 ] && echo ' (timed out)')" \
    | tee -a "$log"
  [ "$status" -ne 0 ] || status=$rc
}

{
  echo "== device"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv 2>&1
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1
  nvcc --version 2>&1 | tail -n 1
} > "$log"
# This card's arch only (e.g. 9.0): a third of the build time of several.
arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>>"$log")
echo "== arch ${arch:-unknown}" | tee -a "$log"

start=$SECONDS
if ! TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch} PYFUSEDBN_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} \
    timeout 300 "$PY" setup.py -q build_ext --inplace > "$out/build.log" 2>&1; then
  tail -n 60 "$out/build.log" | tee -a "$log"
  echo "== build: FAILED after $((SECONDS - start)) s" | tee -a "$log"
  exit 1
fi
echo "== build: done in $((SECONDS - start)) s" | tee -a "$log"
"$PY" -c "import torch, pyfusedbn; print('backends', pyfusedbn.backends())" 2>&1 | tee -a "$log"

stage cuda-tests 150 "$PY" -m pytest -q -m cuda -n 8 tests -p no:cacheprovider \
  --junitxml="$out/cuda_tests.xml"
stage microbench 100 "$PY" -m benchmarks.microbench --quick --device cuda --out "$out" --no-progress
# --budget-s: rows that would start later are skipped (the compiled ones come last), leaving the
# timeout's margin for the row already running.
e2e_cap=190
e2e_left=$((deadline - SECONDS))
e2e_budget=$(( (e2e_cap < e2e_left ? e2e_cap : e2e_left) * 2 / 3 ))
stage e2e "$e2e_cap" "$PY" -m benchmarks.e2e --device cuda --budget-s "$e2e_budget" --out "$out"

stage group-norm-bench 50 "$PY" -m benchmarks.group_norm_bench --quick --device cuda --compile headline \
  --out "$out"
# Four models, eager only (compiling each would take the stage's whole time).
stage model-zoo 80 "$PY" -m benchmarks.model_zoo --device cuda --no-compile --repeats 1 --gpu-steps 10 \
  --models resnet50,mobilenet_v2,timm/efficientnet_b0,timm/resnet26d --out "$out"
# The GroupNorm / LayerNorm models at 64x64 (the UNets' attention at 224x224 would need tens of
# GiB); a library the machine lacks is skipped with one line.
stage model-zoo-norms 90 "$PY" -m benchmarks.model_zoo --device cuda --no-compile --repeats 1 \
  --gpu-steps 10 --gpu-batch 32 --gpu-size 64 --batch 2 --size 32 --json-name model_zoo_norms.json \
  --models diffusers/UNet2DModel,diffusers/UNet2DConditionModel,diffusers/AutoencoderKL,timm/convnext_atto,timm/resnet50_gn,timm/resnetv2_50x1_bit,torchvision/convnext_tiny \
  --out "$out"

echo "== gpu-validate: exit ${status} after ${SECONDS} s" | tee -a "$log"
exit "$status"

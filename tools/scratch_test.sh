#!/usr/bin/env bash
# Builds the extension in its own build directory (build/NAME: a copy of the tree, so the normal
# in-place build is left alone) with a given Python (its venv's torch), and runs pytest there.
#   tools/scratch_test.sh NAME PYTHON [pytest args...]
# SANITIZE=1: compiled with AddressSanitizer + UndefinedBehaviorSanitizer; any invalid access or
# undefined behaviour aborts the run with a report (-fno-sanitize-recover), so a crash that only
# some compilers turn into a SIGSEGV shows up here as a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: tools/scratch_test.sh NAME PYTHON [pytest args...]}
python=${2:?usage: tools/scratch_test.sh NAME PYTHON [pytest args...]}
python=$(cd "$(dirname "$python")" && pwd)/$(basename "$python")  # absolute; a venv's symlink kept
shift 2
root=$PWD/build/$name
mkdir -p "$root"
# tar keeps modification times: ninja rebuilds only what changed since the last run.
git ls-files -co --exclude-standard | tar cf - -T - | tar xf - -C "$root"
cd "$root"
rm -f pyfusedbn/_C*.so  # never test a library left from another build
flags=""
if [ "${SANITIZE:-0}" = 1 ]; then
  flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
  # -g1 (setup.py builds with -g0 otherwise): line tables only, all a report's stack trace needs
  # (file:line); full -g made the build ~25% longer (CI's stage 779 s with -g, 591 s with -g1).
  export PYFUSEDBN_DEBUG_INFO=-g1
  # -O0: with the instrumentation on, the batch norm binding compiles in 229 s at -O0, 505 s at
  # -O1 and ~17 CI minutes at -O3 (one core of an AVX2 Zen 3); the checks are the same at every
  # level, only the tests run slower.
  export PYFUSEDBN_OPT_LEVEL=-O0
fi
# CFLAGS/LDFLAGS reach torch's cpp_extension through distutils (compiler_so and ldshared).
CFLAGS="$flags" LDFLAGS="$flags" PYFUSEDBN_CUDA=0 MAX_JOBS=${MAX_JOBS:-2} \
  "$python" setup.py -q build_ext --inplace >build.log 2>&1 || { cat build.log; exit 1; }
if [ "${SANITIZE:-0}" = 1 ]; then
  # Python and torch are not instrumented: the ASan runtime must be loaded first (LD_PRELOAD),
  # with libstdc++ (python does not link it; ASan's __cxa_throw interceptor needs the real one at
  # start-up, or every C++ exception aborts), Python's own allocations are not leak-checked, and
  # memory may be allocated by uninstrumented code and freed by ours (or the reverse) through
  # operators ASan cannot pair.
  export LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)"
  export ASAN_OPTIONS=detect_leaks=0:alloc_dealloc_mismatch=0:abort_on_error=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
fi
export PYTHONPATH=$root PYTHONFAULTHANDLER=1
"$python" - <<'PY'
import os
import torch
import pyfusedbn._C as c
assert os.path.dirname(c.__file__).startswith(os.environ["PYTHONPATH"]), (
    f"loaded {c.__file__}, not this build")
print(f"{c.__file__} (torch {torch.__version__})")
PY
# --capture=sys: a sanitizer report (written to file descriptor 2) reaches the log.
"$python" -m pytest -p no:cacheprovider --capture=sys "$@"

"""Builds the emulated CUDA test drivers: csrc is copied through rewrite.py into a build
directory, the kernel files below are compiled with g++ against tools/cuda_emulator/include, and
each driver in tests/cuda_emulated/ is linked with them and the emulator's runtime. Objects are
rebuilt only when one of their dependencies changed (g++ -MMD).

    python3 tools/cuda_emulator/build.py [--sanitize] [BUILD_DIR]
"""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rewrite  # noqa: E402

# The one list of kernel sources the emulated suite compiles (relative to csrc/), and the folder
# rewrite.py rewrites: update these when the CUDA files move.
CSRC = "csrc"
CUDA_DIR = "cuda"
KERNEL_SOURCES = [
    "cuda/stats.cu",
    "cuda/elementwise.cu",
    "cuda/backward_reduce.cu",
    "cuda/finalize.cu",
    "cuda/group_norm.cu",
    "cuda/group_coefficients.cu",
]
# Driver -> the kernel sources it links (all: a launcher's file may move).
DRIVERS = ["batch_norm_kernels", "group_norm_kernels", "emulator_checks"]
DRIVER_DIR = os.path.join("tests", "cuda_emulated")
INCLUDE = os.path.join(ROOT, "tools", "cuda_emulator", "include")
RUNTIME = os.path.join(ROOT, "tools", "cuda_emulator", "runtime.cpp")
DEFAULT_BUILD = os.path.join(ROOT, "build", "cuda_emulated")

# -O0: the kernel files instantiate every activation x dtype x layout x vector width; -O1 took
# minutes per file on 2 cores.
FLAGS = ["-std=c++17", "-O0", "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function"]
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]


def _stale(obj, dep_file):
    if not (os.path.exists(obj) and os.path.exists(dep_file)):
        return True
    with open(dep_file) as f:
        deps = f.read().replace("\\\n", " ").split(":", 1)[1].split()
    built = os.path.getmtime(obj)
    return any(not os.path.exists(d) or os.path.getmtime(d) > built for d in deps)


def _compile(source, obj, flags):
    dep = obj + ".d"
    if not _stale(obj, dep):
        return None
    cmd = ["g++", *flags, "-MMD", "-MF", dep, "-c", source, "-o", obj]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        return f"{' '.join(cmd)}\n{result.stderr}"
    return None


def build(build_dir=DEFAULT_BUILD, sanitize=False, edits=(), drivers=DRIVERS, jobs=2):
    """Builds into build_dir and returns {driver name: executable path}. `edits`: see
    rewrite.copy_tree (the mutation tests). Raises RuntimeError with the compiler's output."""
    src_copy = os.path.join(build_dir, "csrc")
    rewrite.copy_tree(os.path.join(ROOT, CSRC), src_copy, CUDA_DIR, edits)
    flags = FLAGS + (SANITIZE_FLAGS if sanitize else []) + ["-I", src_copy, "-I", INCLUDE]
    objects_dir = os.path.join(build_dir, "obj")
    os.makedirs(objects_dir, exist_ok=True)
    units = [(os.path.join(src_copy, s + ".cpp"), os.path.join(objects_dir, os.path.basename(s) + ".o"))
             for s in KERNEL_SOURCES]
    units.append((RUNTIME, os.path.join(objects_dir, "runtime.o")))
    for d in drivers:
        units.append((os.path.join(ROOT, DRIVER_DIR, d + ".cpp"), os.path.join(objects_dir, d + ".o")))
    # The longest first: two cores finish together.
    units.sort(key=lambda u: -os.path.getsize(u[0]))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        errors = [e for e in pool.map(lambda u: _compile(u[0], u[1], flags), units) if e]
    if errors:
        raise RuntimeError("\n".join(errors))
    kernel_objects = [o for s, o in units[:] if s != RUNTIME and not s.startswith(os.path.join(ROOT, DRIVER_DIR))]
    executables = {}
    for d in drivers:
        exe = os.path.join(build_dir, d)
        inputs = kernel_objects + [os.path.join(objects_dir, "runtime.o"), os.path.join(objects_dir, d + ".o")]
        if not os.path.exists(exe) or any(os.path.getmtime(i) > os.path.getmtime(exe) for i in inputs):
            result = subprocess.run(["g++", *flags, "-o", exe, *inputs], capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(result.stderr)
        executables[d] = exe
    return executables


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--sanitize"]
    print(build(args[0] if args else DEFAULT_BUILD, sanitize="--sanitize" in sys.argv))

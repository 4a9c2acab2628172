"""Builds the emulated CUDA test drivers: csrc is copied through rewrite.py into a build
directory, the kernel files below are compiled with g++ against tools/cuda_emulator/include, and
each driver in tests/cuda_emulated/ is linked with them and the emulator's runtime. Objects are
rebuilt only when one of their dependencies changed (g++ -MMD).

build_backend (--backend) links the same kernel objects with the real host code (csrc/common,
csrc/batch_norm, csrc/group_norm and the CUDA bindings csrc/cuda/*.cpp, registered for CPU
tensors by rewrite.py) into the emulated CUDA backend: a pyfusedbn._C for tests only
(tests/emulated_backend.py loads it).

    python3 tools/cuda_emulator/build.py [--sanitize] [--backend] [BUILD_DIR]
"""
import os
import shutil
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
BATCH_NORM_SOURCES = [
    "cuda/batch_norm_stats.cu",
    "cuda/batch_norm_elementwise.cu",
    "cuda/batch_norm_backward_reduce.cu",
    "cuda/batch_norm_finalize.cu",
]
GROUP_NORM_SOURCES = [
    "cuda/group_norm.cu",
    "cuda/group_norm_finalize.cu",
]
KERNEL_SOURCES = BATCH_NORM_SOURCES + GROUP_NORM_SOURCES
# Driver (tests/cuda_emulated/NAME.cpp) -> the kernel sources it links.
DRIVERS = {
    "batch_norm_kernels": BATCH_NORM_SOURCES,
    "group_norm_kernels": GROUP_NORM_SOURCES,
    "finalize_kernels": ["cuda/batch_norm_finalize.cu"],
    "emulator_checks": [],
}
# The emulated backend's host sources (relative to csrc/): everything of _C but csrc/cpu.
BACKEND_HOST_SOURCES = ["common/*.cpp", "batch_norm/*.cpp", "group_norm/*.cpp", "cuda/*.cpp"]  # the bindings (not the .cu.cpp kernel copies)
# GroupNorm's grid and part limits lowered (as the CPU tests shrink the workspace split), so its
# grid-stride loops and its batch split's part clamp run at small shapes. Paths relative to csrc/ (the
# edits of rewrite.copy_tree); tests/test_cuda_emulated.py and the emulated backend's tests use them.
SHRUNK_LIMITS = [
    ("cuda/group_norm_device_utils.cuh", "kMaxGridX = 2147483647;", "kMaxGridX = 3;"),
    ("cuda/group_norm_finalize.cu", "kSamplesPerPart = 1024;", "kSamplesPerPart = 16;"),
    ("cuda/group_norm_finalize.cu", "kMaxParts = 256;", "kMaxParts = 4;"),
    ("cuda/group_norm_finalize.cu", "kMaxItemBlocks = 65535;", "kMaxItemBlocks = 3;"),
]
DRIVER_DIR = os.path.join("tests", "cuda_emulated")
INCLUDE = os.path.join(ROOT, "tools", "cuda_emulator", "include")
RUNTIME = os.path.join(ROOT, "tools", "cuda_emulator", "runtime.cpp")
DEFAULT_BUILD = os.path.join(ROOT, "build", "cuda_emulated")

# -O0: the kernel files instantiate every activation x dtype x layout x vector width; -O1 took
# minutes per file on 2 cores.
# -fPIC: the same kernel objects link into the drivers and into the emulated backend's library.
FLAGS = ["-std=c++17", "-O0", "-fPIC", "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function"]
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


def build(build_dir=DEFAULT_BUILD, sanitize=False, edits=(), drivers=tuple(DRIVERS), jobs=2):
    """Builds into build_dir and returns {driver name: executable path}. `edits`: see
    rewrite.copy_tree (the mutation tests). Raises RuntimeError with the compiler's output."""
    src_copy = os.path.join(build_dir, "csrc")
    rewrite.copy_tree(os.path.join(ROOT, CSRC), src_copy, CUDA_DIR, edits)
    flags = FLAGS + (SANITIZE_FLAGS if sanitize else []) + ["-I", src_copy, "-I", INCLUDE]
    objects_dir = os.path.join(build_dir, "obj")
    os.makedirs(objects_dir, exist_ok=True)
    sources = sorted({s for d in drivers for s in DRIVERS[d]})
    units = [(os.path.join(src_copy, s + ".cpp"), os.path.join(objects_dir, os.path.basename(s) + ".o"))
             for s in sources]
    units.append((RUNTIME, os.path.join(objects_dir, "runtime.o")))
    for d in drivers:
        units.append((os.path.join(ROOT, DRIVER_DIR, d + ".cpp"), os.path.join(objects_dir, d + ".o")))
    # The longest first: two cores finish together.
    units.sort(key=lambda u: -os.path.getsize(u[0]))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        errors = [e for e in pool.map(lambda u: _compile(u[0], u[1], flags), units) if e]
    if errors:
        raise RuntimeError("\n".join(errors))
    executables = {}
    for d in drivers:
        exe = os.path.join(build_dir, d)
        inputs = [os.path.join(objects_dir, os.path.basename(s) + ".o") for s in DRIVERS[d]]
        inputs += [os.path.join(objects_dir, "runtime.o"), os.path.join(objects_dir, d + ".o")]
        if not os.path.exists(exe) or any(os.path.getmtime(i) > os.path.getmtime(exe) for i in inputs):
            result = subprocess.run(["g++", *flags, "-o", exe, *inputs], capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(result.stderr)
        executables[d] = exe
    return executables


def _torch_flags():
    """Compile and link flags for a torch extension (what torch.utils.cpp_extension passes)."""
    import sysconfig

    import torch
    from torch.utils import cpp_extension

    compile_flags = ["-I", INCLUDE]  # first: its c10/cuda stand-ins shadow torch's
    for path in cpp_extension.include_paths():
        compile_flags += ["-isystem", path]
    compile_flags += ["-isystem", sysconfig.get_paths()["include"],
                      f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
                      "-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H"]
    lib = cpp_extension.library_paths()[0]
    link_flags = ["-shared", "-L", lib, f"-Wl,-rpath,{lib}", "-lc10", "-ltorch_cpu", "-ltorch"]
    return compile_flags, link_flags


def build_backend(build_dir=DEFAULT_BUILD, sanitize=False, edits=(), jobs=2):
    """Builds the emulated CUDA backend into build_dir (sharing the drivers' kernel objects) and
    returns the path of its library, build_dir/backend/_C.so."""
    import glob

    build(build_dir, sanitize=sanitize, edits=edits, drivers=("batch_norm_kernels", "group_norm_kernels"), jobs=jobs)
    src_copy = os.path.join(build_dir, "csrc")
    objects_dir = os.path.join(build_dir, "obj")
    torch_compile, torch_link = _torch_flags()
    flags = FLAGS + (SANITIZE_FLAGS if sanitize else []) + torch_compile + ["-I", src_copy]
    hosts = sorted(p for pattern in BACKEND_HOST_SOURCES for p in glob.glob(os.path.join(src_copy, pattern))
                   if not p.endswith(".cu.cpp"))
    units = [(path, os.path.join(objects_dir, "host_" + os.path.relpath(path, src_copy).replace(os.sep, "_") + ".o"))
             for path in hosts]
    units.append((os.path.join(os.path.dirname(RUNTIME), "backend_ops.cpp"), os.path.join(objects_dir, "backend_ops.o")))
    units.sort(key=lambda u: -os.path.getsize(u[0]))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        errors = [e for e in pool.map(lambda u: _compile(u[0], u[1], flags), units) if e]
    if errors:
        raise RuntimeError("\n".join(errors))
    inputs = [obj for _, obj in units] + [os.path.join(objects_dir, "runtime.o")]
    inputs += [os.path.join(objects_dir, os.path.basename(s) + ".o") for s in KERNEL_SOURCES]
    library = os.path.join(build_dir, "backend", "_C.so")
    os.makedirs(os.path.dirname(library), exist_ok=True)
    if not os.path.exists(library) or any(os.path.getmtime(i) > os.path.getmtime(library) for i in inputs):
        link = ["g++", *FLAGS, *(SANITIZE_FLAGS if sanitize else []), "-o", library, *inputs, *torch_link]
        result = subprocess.run(link, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(result.stderr)
    return library


def _copy_objects(source, target, only=lambda name: True):
    """Copies a build directory's tree (or, where target exists, its objects that `only` names),
    pointing their dependency files at target's copies so that they count as up to date there."""
    if not os.path.isdir(target):
        shutil.copytree(source, target, copy_function=shutil.copy2)
        names = os.listdir(os.path.join(target, "obj"))
    else:
        names = [n for n in os.listdir(os.path.join(source, "obj")) if only(n)]
        for name in names:
            shutil.copy2(os.path.join(source, "obj", name), os.path.join(target, "obj", name))
    objects = os.path.join(target, "obj")
    for dep in names:
        if dep.endswith(".d"):
            path = os.path.join(objects, dep)
            with open(path) as f:
                text = f.read().replace(source + os.sep, target + os.sep)
            with open(path, "w") as f:
                f.write(text)
            os.utime(path, (os.path.getmtime(path[:-2]),) * 2)


def build_backend_variant(name, edits, kernels_from=None, sanitize=False):
    """build_backend with `edits` applied, in build/NAME: a copy of the drivers' variant build
    build/KERNELS_FROM made with the same edits (its kernel objects stay valid) or else of the
    default build, plus the default build's host objects; only what the edits touch recompiles."""
    base = DEFAULT_BUILD + ("_sanitize" if sanitize else "")
    variant = os.path.join(os.path.dirname(DEFAULT_BUILD), name)
    if not os.path.isdir(variant):
        kernels = os.path.join(os.path.dirname(DEFAULT_BUILD), kernels_from) if kernels_from else base
        if os.path.isdir(kernels):
            _copy_objects(kernels, variant)
        if os.path.isdir(base) and kernels != base:
            _copy_objects(base, variant, only=lambda n: n.startswith(("host_", "backend_ops.")))
    return build_backend(variant, sanitize=sanitize, edits=edits)


def build_variant(name, edits, drivers=tuple(DRIVERS), sanitize=False):
    """A build with `edits` applied to the copied sources (rewrite.copy_tree), in build/NAME next
    to the default one, starting from a copy of its objects so that only the files depending on
    the edited ones are recompiled."""
    base = DEFAULT_BUILD + ("_sanitize" if sanitize else "")
    variant = os.path.join(os.path.dirname(DEFAULT_BUILD), name)
    if os.path.isdir(base) and not os.path.isdir(variant):
        _copy_objects(base, variant)
    return build(variant, sanitize=sanitize, edits=edits, drivers=drivers)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a not in ("--sanitize", "--backend")]
    builder = build_backend if "--backend" in sys.argv else build
    print(builder(args[0] if args else DEFAULT_BUILD, sanitize="--sanitize" in sys.argv))

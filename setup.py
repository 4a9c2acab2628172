"""Builds pyfusedbn._C: the C++ kernels always, the CUDA kernels when a CUDA toolchain and a
CUDA build of torch are both present (or PYFUSEDBN_CUDA=1 forces them, =0 leaves them out)."""
import glob
import os

from setuptools import find_packages, setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def host_cpu_flags():
    """Vector ISA flags for the CPU kernels, from what the build machine supports.

    The package is built from source where it runs, so this plays the role of -march=native while
    staying explicit; PYFUSEDBN_CPU_FLAGS overrides it (e.g. "" for a portable build).
    """
    if "PYFUSEDBN_CPU_FLAGS" in os.environ:
        return os.environ["PYFUSEDBN_CPU_FLAGS"].split()
    try:
        with open("/proc/cpuinfo") as f:
            cpu_flags = set(f.read().split())
    except OSError:
        return []
    wanted = [("avx2", "-mavx2"), ("fma", "-mfma"), ("f16c", "-mf16c")]
    flags = [flag for name, flag in wanted if name in cpu_flags]
    # AVX-512 where the CPU has the usual subset, with 512-bit vectors preferred (GCC's generic
    # tuning would stay at 256): torch's own CPU kernels run AVX-512 here, and the exp-based
    # activations and bf16 conversions are ~1.4x faster with it (1 thread, SiLU over L1-sized rows).
    avx512 = ("avx512f", "avx512bw", "avx512vl", "avx512dq")
    if "-mavx2" in flags and all(name in cpu_flags for name in avx512):
        flags += ["-m" + name for name in avx512] + ["-mprefer-vector-width=512"]
    return flags


def libmvec_flags(cpu_flags):
    """glibc's libmvec vectorises exp/tanh/erf/log1p/expm1 loops (see csrc/cpu/vector_math.h).

    Used with AVX2 (and AVX-512) when this glibc has every variant GCC may call (2.35+);
    PYFUSEDBN_LIBMVEC=0 turns it off.
    """
    if os.environ.get("PYFUSEDBN_LIBMVEC", "1") == "0" or "-mavx2" not in cpu_flags:
        return [], []
    import ctypes

    try:
        libmvec = ctypes.CDLL("libmvec.so.1")
    except OSError:
        return [], []
    # The variants GCC may call: SSE (b), AVX2 (d) and, with -mavx512f, AVX-512 (e).
    wide = "-mavx512f" in cpu_flags
    float_variants = ("_ZGVdN8v_", "_ZGVbN4v_") + (("_ZGVeN16v_",) if wide else ())
    double_variants = ("_ZGVdN4v_", "_ZGVbN2v_") + (("_ZGVeN8v_",) if wide else ())
    for fns, variants in ((("expf", "expm1f", "log1pf", "tanhf", "erff"), float_variants),
                          (("exp", "expm1", "log1p", "tanh", "erf"), double_variants)):
        for fn in fns:
            for variant in variants:
                if not hasattr(libmvec, variant + fn):
                    return [], []
    return ["-DPYFUSEDBN_LIBMVEC"], ["-lmvec"]


def codegen_flags():
    """What GCC may do to the CPU kernels' loops (tools/ab_cpu_passes.py builds with these too).

    -fno-trapping-math lets GCC if-convert the activations' piecewise branches (relu's derivative
    would otherwise stay a scalar branchy loop); it changes no result: we never read
    floating-point exception flags. -fno-math-errno likewise (errno is never read).
    -fno-loop-unroll-and-jam: -O3's unroll-and-jam fused pairs of rows of the planar backward
    elementwise pass into a loop it then left scalar and branchy for bfloat16 read in place
    (8x1024x14x14 NCHW 3.3 -> 0.5 ms, 8x2048x7x7 1.8 -> 0.27; 2 threads, an AVX2 Zen 3, the
    pass timer of tools/ab_cpu_passes.py built with and without the flag).
    """
    return ["-fno-trapping-math", "-fno-math-errno", "-fno-loop-unroll-and-jam"]


def want_cuda():
    forced = os.environ.get("PYFUSEDBN_CUDA")
    if forced is not None:
        return forced == "1"
    import torch

    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def extension():
    # csrc/common (shared layer), csrc/batch_norm and csrc/group_norm (schemas, ops, autograd),
    # csrc/cpu (CPU kernels and bindings); csrc/cuda joins them in a CUDA build.
    host_folders = ("common", "batch_norm", "group_norm", "cpu")
    sources = sorted(path for folder in host_folders for path in glob.glob(f"csrc/{folder}/*.cpp"))
    cpu_flags = host_cpu_flags()
    mvec_defines, link_args = libmvec_flags(cpu_flags)
    # -fopenmp: at::parallel_for is a header template whose OpenMP pragma compiles into *our*
    # objects; without the flag every CPU kernel silently runs on one thread.
    # No -std: torch's cpp_extension sets the standard its headers need (C++17, C++20 from 2.14).
    # PYFUSEDBN_OPT_LEVEL: CI's sanitizer build (tools/scratch_test.sh) uses -O0 and its lowest-torch
    # build -O1 (the Makefile): they check behaviour, not speed, and compile 2-3x faster.
    opt_level = os.environ.get("PYFUSEDBN_OPT_LEVEL", "-O3")
    # No debug info unless asked for (PYFUSEDBN_DEBUG_INFO=-g1 or -g): Python's own CFLAGS carry
    # -g, which made the CPU kernels' objects 7x larger and their compile ~40% longer (the batch
    # norm binding: 530 s with -g, 381 s with -g0, one core of an AVX2 Zen 3). torch's wheels ship
    # without it too. The sanitizer build asks for -g1: its reports need file:line.
    debug_info = os.environ.get("PYFUSEDBN_DEBUG_INFO", "-g0")
    cxx_flags = [opt_level, debug_info, "-fopenmp"] + codegen_flags() + cpu_flags + mvec_defines
    link_args = link_args + ["-fopenmp"]
    if not want_cuda():
        return cpp_extension.CppExtension(
            "pyfusedbn._C", sources, extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_args)
    sources += sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu"))
    nvcc_flags = ["-O3", "-lineinfo"]
    return cpp_extension.CUDAExtension(
        "pyfusedbn._C", sources,
        extra_compile_args={"cxx": cxx_flags + ["-DPYFUSEDBN_WITH_CUDA"], "nvcc": nvcc_flags},
        extra_link_args=link_args)


setup(
    name="pyfusedbn",
    version="0.1.0",
    packages=find_packages(include=["pyfusedbn", "pyfusedbn.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)

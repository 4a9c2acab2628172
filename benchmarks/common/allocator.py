"""Page faults per call, and an option to keep freed memory in the process.

On the CPU most of a large training step's time can be page faults, not kernels: glibc's malloc
returns freed memory to the kernel (blocks of 32 MiB or more always, smaller ones when the heap's
free top grows past its trim threshold), so the next step's tensors fault every 4 KiB page in
again. Measured with `python -m benchmarks.group_norm_bench --full` (GroupNorm(32) + SiLU, fwd+bwd,
2 threads, 8x320x64x64 float32): fused 41.0 ms, eager 71.9 ms by default; 11.8 and 17.1 ms with
freed memory kept. How many faults a step takes depends on the process's allocation history, so
it varies from run to run and between contenders (75 to 1100 per step for one layer in one test):
the benchmarks report it per call, and --keep-freed-memory (mallopt: no trimming, no mmap below
glibc's 32 MiB cap) takes most of it out, as the jemalloc or tcmalloc that CPU training setups
often preload would. mallopt cannot raise the mmap threshold past 32 MiB, so tensors of 32 MiB or
more (8x320x64x64 float32) still fault; the environment variable can, before the process starts:
GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296
(the 11.8 / 17.1 ms above).
"""
import ctypes
import ctypes.util
import resource

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's cap on 64-bit


def minor_faults() -> int:
    """The process's minor page faults so far (every thread's)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def keep_freed_memory() -> bool:
    """Tells glibc's malloc to keep freed memory in the process; False where that is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, 1 << 30)) and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX))


def add_allocator_arg(parser) -> None:
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="glibc keeps freed memory (no trimming, no mmap below 32 MiB): kernel time "
                             "without most page faults (benchmarks/common/allocator.py)")


def configure_allocator(args) -> dict:
    """Applies --keep-freed-memory; what was asked and done, for the results file."""
    kept = keep_freed_memory() if args.keep_freed_memory else False
    if args.keep_freed_memory and not kept:
        print("warning: --keep-freed-memory: mallopt unavailable (not glibc?); allocator unchanged")
    return {"keep_freed_memory": bool(args.keep_freed_memory), "applied": kept}

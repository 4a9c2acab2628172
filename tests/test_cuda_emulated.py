"""Every CUDA kernel, run without a GPU: tools/cuda_emulator builds csrc/cuda's kernel files with
g++ against a CUDA execution emulator, and the drivers in tests/cuda_emulated/ run each launcher
on small shapes against float64 references, with 1, 4, 108 and 132 SMs, in three scheduling
orders (whose outputs must be bit-identical: a missing barrier shows as a difference). Also the
emulator's own checks: it stops on what a GPU refuses or hangs on, its shuffles follow CUDA's
width rules, its half and bfloat16 conversions match numpy and torch on every boundary.

PYFUSEDBN_EMU_SANITIZE=1: the same, built with AddressSanitizer + UndefinedBehaviorSanitizer
(its own build directory; `make test-cuda-emulated-sanitize`)."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools", "cuda_emulator"))
import build as emu_build  # noqa: E402

SANITIZE = os.environ.get("PYFUSEDBN_EMU_SANITIZE") == "1"
BUILD_DIR = emu_build.DEFAULT_BUILD + ("_sanitize" if SANITIZE else "")
# Every order at the extreme SM counts (their outputs must agree bit for bit), one random order
# at the others: each run is a few seconds of one core.
ORDERS = ["forward", "reverse", "random:1"]
RUNS = [(1, ORDERS), (4, ["random:2"]), (108, ["random:3"]), (132, ORDERS)]
if SANITIZE:  # several times slower: each driver once at each extreme
    RUNS = [(1, ["random:1"]), (132, ["forward"])]
SANITIZE_ENV = {"ASAN_OPTIONS": "detect_leaks=0", "UBSAN_OPTIONS": "print_stacktrace=1"}
SHRUNK_LIMITS = emu_build.SHRUNK_LIMITS


@pytest.fixture(scope="module")
def drivers():
    try:
        return emu_build.build(BUILD_DIR, sanitize=SANITIZE)
    except RuntimeError as e:
        pytest.fail(f"emulated build failed:\n{e}")


def run(exe, *args, expect_rc=0):
    return finish(start(exe, *args), expect_rc)


def start(exe, *args):
    env = dict(os.environ, **SANITIZE_ENV)
    proc = subprocess.Popen([exe, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    proc.command = f"{os.path.basename(exe)} {' '.join(args)}"
    return proc


def finish(proc, expect_rc=0):
    stdout, stderr = proc.communicate(timeout=600)
    proc.stdout_text, proc.stderr_text = stdout, stderr
    if expect_rc is not None and proc.returncode != expect_rc:
        raise AssertionError(f"{proc.command}: exit {proc.returncode}, expected {expect_rc}\n"
                             f"{stdout[-4000:]}\n{stderr[-4000:]}")
    return proc


LAUNCHED = set()  # every kernel a driver run in this module launched


def digests_in_orders(exe, orders, *args):
    """{order: digest} of runs in the given orders (two at a time), each passing."""
    out = {}
    for i in range(0, len(orders), 2):
        procs = {o: start(exe, "--order", o, *args) for o in orders[i:i + 2]}
        for order, proc in procs.items():
            lines = finish(proc).stdout_text.strip().splitlines()
            assert "0 failures" in lines[-1], proc.stdout_text[-4000:]
            out[order] = lines[-1].split("digest ")[1]
            LAUNCHED.update(lines[-2].split(":", 1)[1].split())
    return out


def global_kernels():
    """The name of every __global__ function under csrc's CUDA folder."""
    folder = os.path.join(ROOT, emu_build.CSRC, emu_build.CUDA_DIR)
    names = set()
    for name in os.listdir(folder):
        if name.endswith((".cu", ".cuh")):
            with open(os.path.join(folder, name)) as f:
                names.update(re.findall(r"__global__\s+void\s+(\w+)", f.read()))
    return names


@pytest.mark.parametrize("driver", ["batch_norm_kernels", "group_norm_kernels", "finalize_kernels"])
@pytest.mark.parametrize("sms,orders", RUNS, ids=[f"{sms}sms" for sms, _ in RUNS])
def test_kernels_match_float64_in_every_order(drivers, driver, sms, orders):
    """Each launcher against float64, and bit-identical outputs in every scheduling order."""
    digests = digests_in_orders(drivers[driver], orders, "--sms", str(sms))
    assert len(set(digests.values())) == 1, f"outputs depend on the scheduling order: {digests}"


def test_group_norm_grid_stride_and_part_clamp():
    """GroupNorm with its grid limit at 3 blocks and its batch split at 16 samples and 4 parts:
    the statistics, reduction, prepare and finalize kernels stride over what the grid leaves."""
    exe = emu_build.build_variant("cuda_emulated_limits" + ("_sanitize" if SANITIZE else ""), SHRUNK_LIMITS,
                                  drivers=["group_norm_kernels"], sanitize=SANITIZE)["group_norm_kernels"]
    digests = digests_in_orders(exe, ["forward", "random:4"], "--sms", "2")
    assert len(set(digests.values())) == 1, digests


def test_every_kernel_is_launched(drivers):
    """No __global__ function in csrc's CUDA files is left out of the emulated runs."""
    if not LAUNCHED:  # run alone: one pass of each driver
        for driver in ("batch_norm_kernels", "group_norm_kernels", "finalize_kernels"):
            digests_in_orders(drivers[driver], ["forward"])
    kernels = global_kernels()
    assert len(kernels) >= 15, kernels
    assert kernels <= LAUNCHED, f"never launched: {sorted(kernels - LAUNCHED)}"


def test_reductions_cap_an_occupancy_of_16(drivers):
    """The workspace holds the partials of at most 8 resident blocks per SM: an occupancy
    answer of 16 must not make the reductions write past it (launch_geometry.h caps it)."""
    run(drivers["batch_norm_kernels"], "--occupancy", "16", "--sms", "1", "--filter", "nchw_1x2x4099")


def test_shuffles_follow_cuda_width_rules(drivers):
    run(drivers["emulator_checks"], "shuffles")


def test_missing_barrier_changes_the_result(drivers):
    totals = {run(drivers["emulator_checks"], "race_with_barrier", "--order", order).stdout_text for order in ORDERS}
    assert totals == {"race: total 2016\n"}
    racy = {run(drivers["emulator_checks"], "race_without_barrier", "--order", order).stdout_text
            for order in ORDERS}
    assert len(racy) > 1, racy


STOPS = {
    "skip_barrier": "__syncthreads skipped by thread (5,0,0)",
    "different_barriers": "threads at different __syncthreads",
    "mask_exited_lane": "mask names exited lane 31",
    "mask_absent_lane": "mask names absent lane 16",
    "deadlock": "deadlock",
    "bad_width": "width 12 is not a power of two",
    "block_too_big": "block of 1025 threads",
    "grid_y_too_big": "grid out of CUDA's limits",
    "shared_too_big": "static shared memory over 48 KiB",
}


@pytest.mark.parametrize("check", sorted(STOPS))
def test_emulator_stops_where_a_gpu_would_fail(drivers, check):
    stderr = run(drivers["emulator_checks"], check, expect_rc=86).stderr_text
    assert STOPS[check] in stderr, stderr
    assert "in kernel check_kernel launched at" in stderr, stderr


def test_half_and_bfloat16_conversions_match_numpy_and_torch(drivers):
    torch = pytest.importorskip("torch")
    lines = run(drivers["emulator_checks"], "halves").stdout_text.split("\n")
    halves = np.array([[int(w, 16) if i else int(w) for i, w in enumerate(line.split()[1:])]
                       for line in lines if line.startswith("h ")], dtype=np.uint64)
    assert len(halves) == 65536
    want = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32).view(np.uint32)
    nan = np.isnan(np.arange(65536, dtype=np.uint16).view(np.float16))
    assert np.array_equal(halves[~nan, 1].astype(np.uint32), want[~nan])
    assert np.isnan(halves[nan, 1].astype(np.uint32).view(np.float32)).all()
    rounded = np.array([[int(w, 16) for w in line.split()[1:]] for line in lines if line.startswith("f ")],
                       dtype=np.uint32)
    floats = rounded[:, 0].view(np.float32)
    with np.errstate(over="ignore"):
        want_half = floats.astype(np.float16).view(np.uint16)
    assert np.array_equal(rounded[:, 1].astype(np.uint16), want_half), "float -> half rounding differs"
    want_bf16 = torch.from_numpy(floats.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(rounded[:, 2].astype(np.uint16), want_bf16), "float -> bfloat16 rounding differs"

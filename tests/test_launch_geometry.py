"""The CUDA kernels' launch geometry, checked on the CPU: tests/geometry_sim.cpp compiles
csrc/cuda/launch_geometry.h (the grid sizes and the loop index functions the kernels call) with
the host C++ compiler and runs every (block, thread) of each launch — statistics, apply,
backward reduce and backward elementwise, with and without a residual — asserting that every
element is visited exactly once with its own channel's coefficients, and that every partial slot
of a reduction is written exactly once, inside the workspace, and merged exactly once.

No GPU and no torch needed: a geometry bug (a clamped grid that the loops do not stride over,
a partial slot indexed past the workspace, a vector width that straddles channels) fails here."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIM_SOURCE = os.path.join(ROOT, "tests", "geometry_sim.cpp")
CSRC = os.path.join(ROOT, "csrc")

NHWC, NCHW = 1, 0
ELEM_BYTES = {"fp32": 4, "bf16": 2, "fp64": 8}
H200_SMS = 132

# (name, (N, C, S), layout, dtypes). S is the product of the spatial sizes; a single spatial
# position is laid out as channels_last (as the ops do).
SHAPES = [
    ("gpu_failure_64x256x56x56", (64, 256, 56 * 56), NHWC, ("fp32", "bf16")),
    ("64x256x56x56", (64, 256, 56 * 56), NCHW, ("fp32",)),
    ("ones", (1, 1, 1), NHWC, ("fp32", "bf16", "fp64")),
    ("one_channel_plane", (1, 1, 2), NCHW, ("fp32",)),
    ("odd_primes", (3, 5, 7), NCHW, ("fp32", "bf16", "fp64")),
    ("odd_primes_nhwc", (3, 5, 7), NHWC, ("fp32", "bf16", "fp64")),
    ("primes_13x11x9", (13, 11, 9 * 7), NHWC, ("fp32", "bf16")),
    ("deep_7x7_2048", (32, 2048, 49), NCHW, ("fp32", "bf16")),
    ("deep_7x7_2048_nhwc", (32, 2048, 49), NHWC, ("fp32", "bf16")),
    ("deep_14x14_1024", (16, 1024, 196), NCHW, ("fp32", "bf16")),
    ("deep_14x14_1024_nhwc", (16, 1024, 196), NHWC, ("fp32", "bf16")),
    ("wide_112x112", (4, 64, 112 * 112), NCHW, ("bf16",)),
    ("c264_nhwc", (4, 264, 4), NHWC, ("fp32", "bf16")),
    ("c12_nhwc", (5, 12, 9), NHWC, ("fp32", "bf16")),
    ("c6_nhwc", (5, 6, 9), NHWC, ("fp32", "bf16", "fp64")),
    ("c70_rows", (33, 70, 1), NHWC, ("fp32", "bf16")),
    ("c2049_nhwc", (3, 2049, 5), NHWC, ("fp32",)),
    # More rows than 65535 blocks x 256 threads cover in one pass: the grid is clamped and the
    # loops must stride over the rest.
    ("rows_beyond_grid_limit", (1, 1, 65535 * 256 + 4097), NHWC, ("fp32",)),
    ("plane_beyond_grid_limit", (1, 1, 65535 * 256 + 4097), NCHW, ("fp32",)),
    ("samples_beyond_grid_limit", (65535 * 128 + 3, 2, 2), NCHW, ("bf16",)),
]

# (SMs, resident blocks per SM the occupancy query may answer, misaligned views)
DEVICES = [
    (H200_SMS, 8, False),
    (H200_SMS, 3, True),
    (108, 1, False),
    (1, 8, False),
    (100000, 8, False),  # a target beyond gridDim.y's limit
]

# Shapes of many millions of elements take a second or so per launch: those run on the H200 only
# (and the grid-limit ones on the device whose target exceeds the limit too).
BIG = 4_000_000


def devices_for(name, shape):
    n, c, s = shape
    if n * c * s <= BIG:
        return DEVICES
    return [DEVICES[0], DEVICES[-1]] if "beyond_grid_limit" in name else [DEVICES[0]]


CASES = [(name, shape, layout, dtype, device)
         for name, shape, layout, dtypes in SHAPES for dtype in dtypes for device in devices_for(name, shape)]


def _compiler():
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def simulator(tmp_path_factory):
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler to build the geometry simulator")
    binary = str(tmp_path_factory.mktemp("geometry") / "geometry_sim")
    subprocess.run([cxx, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-I", CSRC, SIM_SOURCE, "-o",
                    binary], check=True, capture_output=True, text=True)
    return binary


def simulate(binary, lines):
    done = subprocess.run([binary], input="\n".join(lines) + "\n", capture_output=True, text=True,
                          timeout=600)
    return done.returncode, done.stdout


def case_line(shape, layout, dtype, device):
    (n, c, s), (sms, blocks_per_sm, misaligned) = shape, device
    return f"{n} {c} {s} {layout} {ELEM_BYTES[dtype]} {sms} {blocks_per_sm} {int(misaligned)}"


def test_every_launch_covers_each_element_and_slot_once(simulator):
    """All cases in one simulator run (the C++ program checks ~100 launches a second); the
    failure message lists every launch that went wrong and how."""
    lines = [case_line(shape, layout, dtype, device) for _, shape, layout, dtype, device in CASES]
    code, out = simulate(simulator, lines)
    launches = [line for line in out.splitlines() if line.startswith(("ok ", "FAIL "))]
    assert len(launches) == 7 * len(lines), out[-2000:]
    failures = [line for line in out.splitlines() if not line.startswith("ok ")]
    assert code == 0 and not failures, "\n".join(failures[:40])


def test_the_simulator_catches_a_broken_geometry(simulator, tmp_path):
    """The check can fail: the same simulator, built over a geometry whose grid is clamped
    without the loops striding past it, reports the elements it never visits."""
    header = open(os.path.join(CSRC, "cuda", "launch_geometry.h")).read()
    broken = header.replace("w.stride = t.grid_y * t.block_dim_y;", "w.stride = t.block_dim_y;")
    assert broken != header, "launch_geometry.h changed: update the mutation this test applies"
    (tmp_path / "cuda").mkdir()
    (tmp_path / "cuda" / "launch_geometry.h").write_text(broken)
    shutil.copytree(os.path.join(CSRC, "common"), tmp_path / "common")  # the headers it includes
    binary = str(tmp_path / "broken_sim")
    subprocess.run([_compiler(), "-std=c++17", "-O2", "-I", str(tmp_path), SIM_SOURCE, "-o", binary],
                   check=True, capture_output=True, text=True)
    code, out = simulate(binary, [case_line((64, 256, 56 * 56), NHWC, "fp32", (H200_SMS, 8, False))])
    assert code != 0 and "visited twice" in out, out

"""GroupNorm on the emulated CUDA backend (tests/emulated_backend.py) built with its grid limit
at 3 blocks and its batch split at 16 samples and at most 4 parts (build.SHRUNK_LIMITS): the
statistics, reduction, prepare and finalize kernels stride over what the grid leaves, and the
parameter gradients merge split and clamped parts, through the real bindings and autograd.
Its own process, after test_emulated_backend.py: `make test-emulated-backend`."""
import emulated_backend

EMULATOR = emulated_backend.load()

import pytest  # noqa: E402
import torch  # noqa: E402

from pyfusedbn._ops import ops  # noqa: E402
from group_norm_cases import check_against_float64  # noqa: E402

# Batches of 40 (3 parts of 16) and 80 (clamped to 4 parts); planar, channels-last and rows.
CASES = [
    ("nchw_b40", (40, 6, 2, 3), torch.contiguous_format, 3),
    ("nhwc_b80", (80, 6, 2, 2), torch.channels_last, 2),
    ("rows_b80", (80, 12), torch.contiguous_format, 2),
    ("ncl_b24_g1", (24, 4, 5), torch.contiguous_format, 1),
]


def test_built_with_shrunk_limits():
    assert emulated_backend.SHRUNK_LIMITS, "run with PYFUSEDBN_EMU_LIMITS=1 (make test-emulated-backend)"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("order", ["forward", "random:5"])
def test_group_norm_with_shrunk_limits(case, dtype, order, generator):
    EMULATOR.configure(2, 8, order)
    calls = ops.kernel_calls("cuda")
    check_against_float64(case, dtype, "silu", generator)
    assert ops.kernel_calls("cuda") > calls and ops.kernel_calls("cpu") == 0


def test_every_kernel_is_launched(generator):
    """Through the bindings alone, every __global__ function in csrc's CUDA files runs: a
    memory-efficient BatchNorm step (from_output), a GroupNorm step with a split batch."""
    import pyfusedbn
    from test_cuda_emulated import global_kernels

    EMULATOR.configure(4, 8, "forward")
    x = torch.randn(40, 6, 2, 3, generator=generator, requires_grad=True)
    pyfusedbn.BatchNormAct2d(6, activation="leaky_relu", memory_efficient=True)(x).sum().backward()
    pyfusedbn.GroupNormAct(3, 6)(x).sum().backward()
    launched = set(EMULATOR.kernels_launched().split())
    assert global_kernels() <= launched, f"never launched: {sorted(global_kernels() - launched)}"

"""The GroupNorm CUDA kernels against the float64 reference and against torch's nn.GroupNorm +
activation on the GPU. Marked `cuda`: they skip where no GPU is present."""
import pytest
import torch

import pyfusedbn
from pyfusedbn._ops import ops
from group_norm_cases import CASE_IDS, GROUP_CASES, check_against_float64, make_inputs
from helpers import TOLERANCE, assert_close

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


@pytest.mark.parametrize("dtype", CUDA_DTYPES, ids=str)
@pytest.mark.parametrize("case", GROUP_CASES, ids=CASE_IDS)
def test_layouts_and_dtypes(case, dtype, generator, poison_empty):
    check_against_float64(case, dtype, "silu", generator, device="cuda")


@pytest.mark.parametrize("activation", pyfusedbn.ACTIVATION_NAMES)
def test_every_activation(activation, generator):
    check_against_float64(GROUP_CASES[3], torch.float32, activation, generator, device="cuda")


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_unet_shape_matches_nn_group_norm(memory_format):
    x = torch.randn(2, 320, 32, 32, device="cuda").contiguous(memory_format=memory_format)
    fused = pyfusedbn.GroupNormAct(32, 320).cuda()
    ref = torch.nn.functional.silu(torch.nn.GroupNorm(32, 320).cuda()(x))
    before = ops.kernel_calls("cuda")
    assert_close("output", fused(x), ref, 2 * TOLERANCE[torch.float32])
    assert ops.kernel_calls("cuda") - before == 2


def test_opcheck_cuda(generator):
    x, w, b, res, dy = [t.cuda() for t in make_inputs((3, 6, 4, 4), torch.float32, torch.channels_last, generator)]
    torch.library.opcheck(ops.group_norm_act.default, (x, w, b, res, 3, 1e-5, "silu", 0.0))
    _, mean, rstd = ops.group_norm_act(x, w, b, res, 3, 1e-5, "silu", 0.0)
    torch.library.opcheck(ops.group_norm_act_backward.default, (dy, x, mean, rstd, w, b, res, 3, "silu", 0.0))

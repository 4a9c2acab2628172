"""The GroupNorm CUDA kernels against the float64 reference and against torch's nn.GroupNorm +
activation on the GPU. Marked `cuda`: they skip where no GPU is present."""
import pytest
import torch

import pyfusedbn
from pyfusedbn._ops import ops
from group_norm_cases import (CASE_IDS, GROUP_CASES, leaves, leaves64, make_inputs,
                              reference_group_norm_act)
from helpers import TOLERANCE, assert_close

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def check_cuda(case, dtype, activation, generator, residual=True):
    _, shape, memory_format, groups = case
    cpu = make_inputs(shape, dtype, memory_format, generator, residual=residual)
    x, w, b, res, dy = [None if t is None else t.cuda() for t in cpu]
    x_f, w_f, b_f, res_f = leaves(x, w, b, res)
    out = pyfusedbn.group_norm_act(x_f, groups, w_f, b_f, 1e-5, activation, residual=res_f)
    assert out.is_cuda and out.is_contiguous(memory_format=memory_format)
    out.backward(dy)
    x_r, w_r, b_r, res_r = leaves64(*[None if t is None else t.cpu() for t in (x, w, b, res)])
    ref = reference_group_norm_act(x_r, groups, w_r, b_r, 1e-5, activation, None, res_r)
    ref.backward(dy.cpu().double())
    tol = TOLERANCE[dtype]
    assert_close("output", out, ref, tol)
    for name, got, want in (("grad_input", x_f, x_r), ("grad_weight", w_f, w_r),
                            ("grad_bias", b_f, b_r), ("grad_residual", res_f, res_r)):
        if want is not None:
            assert_close(name, got.grad, want.grad, tol)


@pytest.mark.parametrize("dtype", CUDA_DTYPES, ids=str)
@pytest.mark.parametrize("case", GROUP_CASES, ids=CASE_IDS)
def test_layouts_and_dtypes(case, dtype, generator, poison_empty):
    check_cuda(case, dtype, "silu", generator)


@pytest.mark.parametrize("activation", pyfusedbn.ACTIVATION_NAMES)
def test_every_activation(activation, generator):
    check_cuda(GROUP_CASES[3], torch.float32, activation, generator)


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

"""The GroupNorm CUDA kernels against the float64 reference and against torch's nn.GroupNorm +
activation on the GPU. Marked `cuda`: they skip where no GPU is present."""
import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import pyfusedbn
from pyfusedbn._ops import ops
from pyfusedbn.testing import count_ops
from group_norm_cases import (CASE_IDS, EPS, GROUP_CASES, check_against_float64, leaves, leaves64, make_inputs,
                              reference_group_norm_act)
from helpers import TOLERANCE, assert_as_accurate_as, assert_close, low_precision_slack
from test_op_count import GROUP_NORM_LAYER_OPS, PER_CHANNEL_OPS

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


# One GroupNormAct training step on the GPU: forward, the statistics kernel (which also writes
# rstd and the apply pass's scale / shift) and apply; backward, prepare (per-(n, c) rebuild
# coefficients), reduce, finalize (parameter gradients and elementwise coefficients) and the
# elementwise pass. The per-(sample, group) algebra as tensor ops used to add ~30 launches.
GROUP_NORM_STEP_KERNELS = 6


def training_step(layer, x, grad):
    """layer(x).backward(grad) with the gradients reset first (no accumulation kernels)."""
    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).backward(grad)
    return step


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_training_step_launches_six_kernels(memory_format):
    x = torch.randn(8, 16, 4, 4, device="cuda").contiguous(memory_format=memory_format).requires_grad_()
    grad = torch.randn(8, 16, 4, 4, device="cuda").contiguous(memory_format=memory_format)
    step = training_step(pyfusedbn.GroupNormAct(4, 16).cuda(), x, grad)
    step()
    before = ops.kernel_calls("cuda")
    step()
    assert ops.kernel_calls("cuda") - before == GROUP_NORM_STEP_KERNELS
    # What the GPU ran: our kernels only (no torch kernel of a tensor op). At most the count
    # above, not exactly: the profiler can drop kernel records at the start of a session
    # (pytorch/pytorch#192021); the launch counter is the exact pin.
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    device_events = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    ours = [name for name in device_events if "pyfusedbn" in name]
    foreign = [name for name in device_events
               if "pyfusedbn" not in name and "Buffer" not in name and "Overhead" not in name]
    assert not foreign and len(ours) <= GROUP_NORM_STEP_KERNELS, device_events
    # The host ops: the layer op, the two kernel ops and their output / workspace allocations,
    # as on the CPU (tests/test_op_count.py), none of them per-channel algebra.
    total, host_ops = count_ops(step)
    assert not {name for name in PER_CHANNEL_OPS if name in host_ops}, host_ops
    assert total <= GROUP_NORM_LAYER_OPS, host_ops


@pytest.mark.parametrize("shape", [(0, 4, 3, 3), (2, 4, 0, 3)], ids=["no_samples", "no_positions"])
def test_empty_input(shape):
    """No kernel over the input runs; the parameter gradients (the finalize kernel's) are zeros."""
    layer = pyfusedbn.GroupNormAct(2, 4).cuda()
    x = torch.randn(shape, device="cuda", requires_grad=True)
    out = layer(x)
    out.sum().backward()
    assert out.shape == x.shape and x.grad.shape == x.shape
    assert torch.equal(layer.weight.grad, torch.zeros(4, device="cuda"))
    assert torch.equal(layer.bias.grad, torch.zeros(4, device="cuda"))


def round_to(t, dtype):
    """t's values rounded to dtype, kept in t's dtype: both sides then see the same parameters."""
    return None if t is None else t.to(dtype).to(t.dtype)


# Gradients against nn.GroupNorm + SiLU on the GPU (F.group_norm), each side measured against the
# float64 CPU reference. (3000, 64) with one group is LayerNorm2d's row view (a sample per
# position): its batch is split into parts for the parameter gradients (group_coefficients.cu).
TORCH_GROUP_CASES = {
    "nchw": ((4, 32, 6, 5), torch.contiguous_format, 8),
    "nhwc": ((4, 32, 6, 5), torch.channels_last, 8),
    "rows_g1": ((3000, 64), torch.contiguous_format, 1),
}


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", list(TORCH_GROUP_CASES))
def test_gradients_match_nn_group_norm(case, dtype, affine, residual, generator, poison_empty):
    shape, memory_format, groups = TORCH_GROUP_CASES[case]
    x, w, b, res, dy = make_inputs(shape, dtype, memory_format, generator, affine, residual)
    w, b = round_to(w, dtype), round_to(b, dtype)  # torch's GPU GroupNorm takes parameters in x's dtype
    x, w, b, res, dy = [None if t is None else t.cuda() for t in (x, w, b, res, dy)]
    ours = leaves(x, w, b, res)
    out = pyfusedbn.group_norm_act(ours[0], groups, ours[1], ours[2], EPS, "silu", residual=ours[3])
    out.backward(dy)
    theirs = leaves(x, *[None if t is None else t.to(dtype) for t in (w, b)], res)
    z = F.group_norm(theirs[0], groups, theirs[1], theirs[2], EPS)
    torch_out = F.silu(z if res is None else z + theirs[3])
    torch_out.backward(dy)
    truth = leaves64(*[None if t is None else t.cpu() for t in (x, w, b, res)])
    reference = reference_group_norm_act(truth[0], groups, truth[1], truth[2], EPS, "silu", None, truth[3])
    reference.backward(dy.cpu().to(torch.float64))
    results = [("output", out, torch_out, reference)] + [
        (f"grad_{name}", mine.grad, other.grad, true.grad)
        for name, mine, other, true in zip(("input", "weight", "bias", "residual"), ours, theirs, truth)
        if true is not None]
    for name, mine, other, true in results:
        if dtype == torch.float32:
            assert_close(name, mine, other, 2 * TOLERANCE[dtype])
        else:  # torch rounds between ops: held to its accuracy, not to its result
            assert_as_accurate_as(name, mine, other.float(), true, low_precision_slack(dtype))

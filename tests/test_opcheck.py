"""torch.library.opcheck on every op: schema (including the in-place running-stat mutation),
fake kernels (shapes, dtypes, strides), autograd registration and dispatch consistency."""
import pytest
import torch

from pyfusedbn._ops import OP_NAMES, ops
from helpers import random_input

ACT = ("silu", 0.0)


def per_channel(c, generator, dtype=torch.float32, positive=False):
    t = torch.rand(c, generator=generator, dtype=dtype) + 0.5 if positive else \
        torch.randn(c, generator=generator, dtype=dtype)
    return t


def sample_args(name, dtype, memory_format, residual, generator):
    shape = (3, 5, 4, 2)
    x = random_input(shape, dtype, memory_format, generator)
    c = shape[1]
    pdtype = torch.float64 if dtype == torch.float64 else torch.float32
    w, b = per_channel(c, generator, pdtype, True), per_channel(c, generator, pdtype)
    res = random_input(shape, dtype, memory_format, generator, mean=0.0) if residual else None
    mean, invstd = per_channel(c, generator, pdtype), per_channel(c, generator, pdtype, True)
    dy = random_input(shape, dtype, memory_format, generator, mean=0.0)
    if name == "batch_norm_stats":
        return (x,)
    if name == "batch_norm_act_train":
        return (x, w, b, res, per_channel(c, generator, pdtype), per_channel(c, generator, pdtype, True),
                0.1, 1e-5) + ACT
    if name == "batch_norm_act_eval":
        return (x, per_channel(c, generator, pdtype), per_channel(c, generator, pdtype, True), w, b, res,
                1e-5) + ACT
    if name == "batch_norm_act_apply":
        return (x, mean, invstd, w, b, res) + ACT
    if name == "batch_norm_act_backward_reduce":
        return (dy, x, mean, invstd, w, b, res) + ACT
    if name == "batch_norm_act_backward_elemt":
        return (dy, x, mean, invstd, w, b, res, per_channel(c, generator, pdtype),
                per_channel(c, generator, pdtype)) + ACT
    raise AssertionError(name)


# batch_norm_stats has no residual argument; every other op is checked with and without one.
OP_CASES = [(name, residual) for name in OP_NAMES for residual in (False, True)
            if not (name == "batch_norm_stats" and residual)]


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last],
                         ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("name,residual", OP_CASES,
                         ids=[f"{n}-{'residual' if r else 'plain'}" for n, r in OP_CASES])
def test_opcheck(name, residual, dtype, memory_format, generator):
    args = sample_args(name, dtype, memory_format, residual, generator)
    torch.library.opcheck(getattr(ops, name).default, args)


def test_opcheck_memory_saving_backward(generator):
    args = sample_args("batch_norm_act_backward_elemt", torch.float32, torch.channels_last, True, generator)
    args = args[:-2] + ("leaky_relu", 0.1)
    torch.library.opcheck(ops.batch_norm_act_backward_elemt.default, args, {"from_output": True})
    args = sample_args("batch_norm_act_backward_reduce", torch.float64, torch.contiguous_format, False, generator)
    args = args[:-2] + ("elu", 1.0)
    torch.library.opcheck(ops.batch_norm_act_backward_reduce.default, args, {"from_output": True})

"""The CPU kernels' bulk 16-bit conversions (csrc/cpu/convert.h: 16 values per vector, the rest
under a mask) round exactly as torch does, on rows whose length is not a multiple of the vector
width (3, 17, 33 channels channels_last; odd planes NCHW), including NaN, infinities, overflow
and subnormals.

batch_norm_act_apply with mean 0, bias 0 and weight 1 computes x * invstd in float32 and rounds
it to the input dtype: with invstd = 3 the product is exact in float32, so the only rounding is
the conversion back, and the result must equal torch's (x.float() * 3).to(dtype) bit for bit.
"""
import pytest
import torch

import pyfusedbn  # noqa: F401  (loads the ops)

SHAPES = [(2, 3, 5, 7), (3, 17, 3, 3), (2, 33, 1, 5), (1, 16, 4, 4), (5, 1, 1, 1), (2, 40, 9, 1)]


def special_values(dtype):
    info = torch.finfo(dtype)
    return torch.tensor([float("nan"), float("inf"), -float("inf"), info.max, -info.max, info.tiny,
                         info.smallest_normal / 4, -info.smallest_normal / 8, 0.0, -0.0], dtype=dtype)


def inputs(shape, dtype, channels_last, generator):
    x = torch.randn(shape, generator=generator) * torch.exp2(torch.randint(-20, 20, shape, generator=generator))
    x = x.to(dtype)
    flat = x.view(-1)
    specials = special_values(dtype)
    count = min(flat.numel(), specials.numel())
    positions = torch.randperm(flat.numel(), generator=generator)[:count]
    flat[positions] = specials[:count]
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_apply_rounds_like_torch(shape, channels_last, dtype):
    generator = torch.Generator().manual_seed(sum(shape) + 7 * channels_last)
    x = inputs(shape, dtype, channels_last, generator)
    channels = shape[1]
    mean, invstd = torch.zeros(channels), torch.full((channels,), 3.0)
    weight, bias = torch.ones(channels, dtype=dtype), torch.zeros(channels, dtype=dtype)
    out = torch.ops.pyfusedbn.batch_norm_act_apply(x, mean, invstd, weight, bias, None, "identity", 0.0)
    expected = (x.float() * 3.0).to(dtype)
    same = (out == expected) | (out.isnan() & expected.isnan())
    assert same.all(), (f"{(~same).sum().item()} values differ, first at {(~same).nonzero()[0].tolist()}: "
                        f"{out[~same][0].item()} vs torch {expected[~same][0].item()}")

"""torch.amp.autocast: like nn.BatchNorm*d, the fused modules are not autocast ops; they run in
their input's dtype (what the convolution before them produced: bfloat16 or float16) with float32
parameters and running statistics, and give the numbers of BatchNorm + activation under autocast."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pyfusedbn
from example_models import (MODELS, RESNET_FUSED_LAYERS, assert_same_state, fused_layers,
                            kernel_calls, seeded, step)
from helpers import TOLERANCE, assert_as_accurate_as

# (device, dtype) pairs: CPU bfloat16 always; CUDA float16 and bfloat16 where there is a GPU.
CUDA = torch.cuda.is_available() and pyfusedbn.backends()["cuda"]
NEEDS_CUDA = [pytest.mark.cuda,
              pytest.mark.skipif(not CUDA, reason="needs CUDA and pyfusedbn's CUDA kernels")]
CASES = [pytest.param("cpu", torch.bfloat16, id="cpu-bf16")] + [
    pytest.param("cuda", dtype, id=f"cuda-{str(dtype)[6:]}", marks=NEEDS_CUDA)
    for dtype in (torch.float16, torch.bfloat16)]


def conv_bn_conv():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.SiLU(),
                         nn.Conv2d(8, 4, 1))


def assert_as_accurate(actual, expected, truth, dtype):
    """Deep in a network the low-precision gradients of a small batch are far from the float32
    ones for torch itself (10-20% here: BatchNorm's backward cancels); the fused model must be as
    close to float32 as torch is: error <= 2 * torch's error + dtype's tolerance."""
    for name, value in truth.items():
        if value is not None:
            assert_as_accurate_as(f"{name} vs float32", actual[name], expected[name], value,
                                  TOLERANCE[dtype], factor=2)


def autocast_steps(model, reference, x, device, dtype, direct):
    """A train-mode step then an eval-mode step under autocast, against the reference under
    autocast: directly at dtype's tolerance (direct=True), or by distance to float32. Returns how
    many of pyfusedbn's kernels model's steps ran."""
    truth_model = copy.deepcopy(model)
    calls = 0
    for training in (True, False):
        for m in (model, reference, truth_model):
            m.train(training), m.zero_grad()
        truth = step(truth_model, x)
        with torch.autocast(device, dtype=dtype):
            before = kernel_calls(device)
            actual = step(model, x)
            calls += kernel_calls(device) - before
            expected = step(reference, x)
        assert actual["output"].dtype == expected["output"].dtype == dtype
        if direct:
            assert_same_state(actual, expected, TOLERANCE[dtype])
        else:
            assert_as_accurate(actual, expected, truth, dtype)
    return calls


@pytest.mark.parametrize("device,dtype", CASES)
def test_fused_module_under_autocast(device, dtype):
    reference = seeded(conv_bn_conv).to(device)
    fused = pyfusedbn.convert(reference, trace=False)
    assert isinstance(fused[1], pyfusedbn.BatchNormAct2d) and fused[1].weight.dtype == torch.float32
    autocast_steps(fused, reference, torch.randn(4, 3, 6, 6, device=device), device, dtype,
                   direct=True)


@pytest.mark.parametrize("device,dtype", CASES)
def test_converted_resnet_under_autocast(device, dtype):
    factory, shape = MODELS["resnet"]
    original = seeded(factory).to(device)
    converted = pyfusedbn.convert(original)
    assert fused_layers(converted) == len(converted.pyfusedbn_report.fused) == RESNET_FUSED_LAYERS
    calls = autocast_steps(converted, original, torch.randn(shape, device=device), device, dtype,
                           direct=False)
    assert calls > 0, "the converted model ran none of pyfusedbn's kernels"


class FloatShortcut(nn.Module):
    """relu(bn(conv(x)) + x): under autocast the BatchNorm sees the convolution's low-precision
    output, the shortcut is the float32 input, and the sum is float32."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)) + x)


@pytest.mark.parametrize("device,dtype", CASES)
def test_float32_residual_is_promoted_under_autocast(device, dtype):
    original = seeded(FloatShortcut).to(device)
    converted = pyfusedbn.convert(original)
    assert "add(" in converted.pyfusedbn_report.fused[0][1]
    x = torch.randn(4, 4, 6, 6, device=device)
    for training in (True, False):
        original.train(training), converted.train(training)
        original.zero_grad(), converted.zero_grad()
        with torch.autocast(device, dtype=dtype):
            actual, expected = step(converted, x), step(original, x)
        assert actual["output"].dtype == expected["output"].dtype == torch.float32
        # torch rounds the BatchNorm output to dtype before the add; the fused op does not.
        assert_same_state(actual, expected, TOLERANCE[dtype])
    with pytest.raises(TypeError, match="dtype"):  # outside autocast a mismatch is an error
        converted.bn(x.to(dtype), residual=x)

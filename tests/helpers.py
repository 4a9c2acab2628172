"""Shared by the tests: tolerances per dtype, random inputs, the torch reference, comparisons.

One source of truth: every test file imports its tolerances and reference from here.
"""
import torch
import torch.nn.functional as F

from pyfusedbn.activations import torch_activation

# Tolerances against a float64 reference, relative to the reference's largest magnitude.
# float64: the kernels accumulate in float64, errors are ~1e-15; 1e-9 leaves room for
#   reductions over thousands of elements. float32: ~1e-7 per op, reductions in float32 blocks
#   summed in double; 1e-5 of scale. bfloat16 / float16: the output and gradients are rounded
#   once to 8 / 11 mantissa bits (2^-9 ~ 2e-3 and 2^-12 ~ 2.4e-4 relative), inputs already are;
#   the tolerance is a few of those roundings through the backward's cancellation.
TOLERANCE = {
    torch.float64: 1e-9,
    torch.float32: 1e-5,
    torch.bfloat16: 2e-2,
    torch.float16: 4e-3,
}

# Comparing low-precision results with another implementation (torch's module): each side is
# measured against float64 math on the same rounded inputs, and pyfusedbn's error may exceed the
# other's by at most this much of scale. Torch's bfloat16/float16 path rounds between ops, so its
# error is the yardstick, not its result; the slack is two units in the last place of the dtype
# (finfo.eps: 2^-7 bfloat16, 2^-10 float16): the final rounding of each side's result (half an
# ulp each) plus float32 accumulation in a different order. float32 and float64 results are
# compared directly (rounding between ops costs torch nothing visible there).
LOW_PRECISION_SLACK_ULPS = 2


def low_precision_slack(dtype):
    return LOW_PRECISION_SLACK_ULPS * torch.finfo(dtype).eps


# Where an activation's derivative jumps. Within rounding of these points, which side the
# derivative takes depends on how an implementation rounded the pre-activation, so gradients are
# compared only away from them.
KINKS = {"relu": (0.0,), "relu6": (0.0, 6.0), "leaky_relu": (0.0,), "elu": (0.0,),
         "hardswish": (-3.0, 3.0)}


def near_kink(activation, z, relative_margin):
    """Elements of the pre-activation z within relative_margin * (1 + |z|) of a kink."""
    margin = relative_margin * (1 + z.abs())
    near = torch.zeros_like(z, dtype=torch.bool)
    for kink in KINKS.get(activation, ()):
        near |= (z - kink).abs() <= margin
    return near


DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

# (name, input shape, memory format): every rank, and channels_last where torch has one.
LAYOUTS = {
    "2d": ((9, 5), torch.contiguous_format),
    "3d": ((3, 5, 7), torch.contiguous_format),
    "4d": ((3, 5, 4, 6), torch.contiguous_format),
    "4d_channels_last": ((3, 5, 4, 6), torch.channels_last),
    "5d": ((2, 5, 3, 2, 4), torch.contiguous_format),
    "5d_channels_last_3d": ((2, 5, 3, 2, 4), torch.channels_last_3d),
}


def param_dtype(dtype):
    """Parameters and running statistics: float32, or float64 with float64 input (as torch)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def random_input(shape, dtype, memory_format=torch.contiguous_format, generator=None,
                 mean=1.5, scale=2.0):
    """Fresh random values with a non-zero mean and a per-channel spread of scales."""
    c = shape[1]
    channel_scale = torch.linspace(0.5, 2.0, c, dtype=torch.float64).reshape((1, c) + (1,) * (len(shape) - 2))
    x = (torch.randn(shape, dtype=torch.float64, generator=generator) * scale * channel_scale + mean)
    return x.to(dtype).contiguous(memory_format=memory_format)


def reference_batch_norm_act(x, running_mean, running_var, weight, bias, training, momentum,
                             eps, activation, activation_param, residual=None):
    """torch.nn.functional.batch_norm + residual + the torch.nn.functional activation."""
    z = F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    if residual is not None:
        z = z + residual
    return torch_activation(activation, activation_param)(z)


def assert_close(name, actual, expected, tol, scale=0.0):
    """Compares with absolute tolerance tol * max(1, max|expected|, scale); says which tensor and
    where. scale: the magnitude of the terms a result cancels from, where it exceeds the result's."""
    assert actual is not None and expected is not None, f"{name}: missing ({actual}, {expected})"
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a = actual.detach().cpu().to(torch.float64)
    e = expected.detach().cpu().to(torch.float64)
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    assert torch.equal(nan_a, nan_e), f"{name}: NaN pattern differs ({int(nan_a.sum())} vs {int(nan_e.sum())} NaNs)"
    a, e = a[~nan_e], e[~nan_e]
    if a.numel() == 0:
        return
    limit = tol * max(1.0, e.abs().max().item(), scale)
    diff = (a - e).abs()
    worst = diff.argmax().item()
    assert diff.max().item() <= limit, (
        f"{name}: max |diff| {diff.max().item():.3e} > {limit:.3e} (tol {tol:g}); "
        f"at flat index {worst}: got {a[worst].item():.6g}, expected {e[worst].item():.6g}")


def max_error(actual, truth):
    """max |actual - truth| in float64, and the scale max(1, max|truth|) tolerances are relative to."""
    a = actual.detach().cpu().to(torch.float64)
    t = truth.detach().cpu().to(torch.float64)
    return (a - t).abs().max().item() if t.numel() else 0.0, max(1.0, t.abs().max().item() if t.numel() else 0.0)


def assert_as_accurate_as(name, actual, other, truth, slack, factor=1.0):
    """actual's error against truth is at most factor * other's error + slack * scale: pyfusedbn
    held to another implementation's accuracy instead of to its rounded result."""
    assert actual.shape == other.shape == truth.shape, (
        f"{name}: shapes {tuple(actual.shape)}, {tuple(other.shape)}, {tuple(truth.shape)}")
    error, scale = max_error(actual, truth)
    other_error, _ = max_error(other, truth)
    limit = factor * other_error + slack * scale
    assert error <= limit, (
        f"{name}: error {error:.3e} against float64 > {limit:.3e} "
        f"({factor:g} x the other implementation's {other_error:.3e} + slack {slack:g} x scale {scale:.3g})")

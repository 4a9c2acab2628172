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


def assert_close(name, actual, expected, tol):
    """Compares with absolute tolerance tol * max(1, max|expected|); says which tensor and where."""
    assert actual is not None and expected is not None, f"{name}: missing ({actual}, {expected})"
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a = actual.detach().cpu().to(torch.float64)
    e = expected.detach().cpu().to(torch.float64)
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    assert torch.equal(nan_a, nan_e), f"{name}: NaN pattern differs ({int(nan_a.sum())} vs {int(nan_e.sum())} NaNs)"
    a, e = a[~nan_e], e[~nan_e]
    if a.numel() == 0:
        return
    limit = tol * max(1.0, e.abs().max().item())
    diff = (a - e).abs()
    worst = diff.argmax().item()
    assert diff.max().item() <= limit, (
        f"{name}: max |diff| {diff.max().item():.3e} > {limit:.3e} (tol {tol:g}); "
        f"at flat index {worst}: got {a[worst].item():.6g}, expected {e[worst].item():.6g}")

"""Property-based tests (hypothesis): BatchNormAct*d against a float64 composite of torch ops
(var_mean, normalise, affine, residual, the activation; autograd for the gradients) over random
ranks 2-5, sizes made of 1s and odd primes, every dtype and activation, train/eval, residual,
affine or not, momentum None, and input layouts the kernels must handle: contiguous,
channels_last, non-contiguous views, views at a storage offset (misaligned for vector loads), and
expanded (stride-0) or non-contiguous gradients. CPU always, CUDA where present.

Budget and determinism come from the hypothesis profile (tests/conftest.py): "ci" by default,
`--hypothesis-profile long` to hunt.
"""
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import pyfusedbn
from helpers import DTYPES, TOLERANCE, assert_close, near_kink, param_dtype
from pyfusedbn.activations import ACTIVATIONS, torch_activation
from test_parity import MODULES

CUDA = torch.cuda.is_available() and pyfusedbn.backends()["cuda"]
DEVICES = ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs CUDA and pyfusedbn's CUDA kernels")])]
SIZES = (1, 1, 2, 3, 5, 7, 11, 13)
MAX_NUMEL = 4096
LAYOUTS = ("contiguous", "channels_last", "strided", "transposed", "offset")
GRAD_LAYOUTS = LAYOUTS + ("expanded",)
# Gradients near an activation's kink are excluded channel by channel: the kernel computes the
# pre-activation in float32 (float64 for float64), the reference in float64; this margin (a few
# float32 roundings through the normalisation) covers both sides.
KINK_MARGIN = {torch.float64: 1e-12}
DEFAULT_KINK_MARGIN = 1e-5
# Ranges of each activation's parameter, where it has one (softplus: beta of either sign).
PARAM_RANGES = {"leaky_relu": (0.0, 0.5), "elu": (0.1, 2.0), "softplus": (0.25, 3.0)}


@st.composite
def shapes(draw):
    """Rank 2-5, each size 1 or an odd prime (or 2), at most MAX_NUMEL elements in all."""
    rank = draw(st.integers(2, 5))
    shape, total = [], 1
    for _ in range(rank):
        size = draw(st.sampled_from([s for s in SIZES if total * s <= MAX_NUMEL]))
        shape.append(size)
        total *= size
    return tuple(shape)


def lay_out(values, layout, offset):
    """values (a contiguous tensor) copied into a tensor of the given memory layout."""
    shape, rank = values.shape, values.dim()
    if layout == "channels_last" and rank in (4, 5):
        fmt = torch.channels_last if rank == 4 else torch.channels_last_3d
        return values.contiguous(memory_format=fmt)
    if layout == "strided":  # every other element of a wider last dimension
        wide = values.new_empty(shape[:-1] + (2 * shape[-1],))
        view = wide[..., ::2]
    elif layout == "transposed":  # memory order (C, N, ...): neither NCHW nor channels_last
        view = values.new_empty((shape[1], shape[0]) + shape[2:]).transpose(0, 1)
    elif layout == "offset":  # storage offset of 1-3 elements: no vector-aligned start
        flat = values.new_empty(values.numel() + offset)
        view = flat[offset:].view(shape)
    elif layout == "expanded":  # stride 0 along the batch dimension
        return values[:1].expand(shape)
    else:
        return values.contiguous()
    view.copy_(values)
    return view


@st.composite
def activations(draw):
    """(activation, its parameter or None), the parameter from PARAM_RANGES."""
    activation = draw(st.sampled_from(sorted(ACTIVATIONS)))
    param = None
    if activation in PARAM_RANGES:
        low, high = PARAM_RANGES[activation]
        param = draw(st.floats(low, high))
        if activation == "softplus" and draw(st.booleans()):
            param = -param
    return activation, param


@st.composite
def cases(draw):
    shape = draw(shapes())
    training = draw(st.booleans())
    if training and shape[0] * _spatial(shape) == 1:
        shape = (2,) + shape[1:]  # training needs more than one value per channel
    activation, param = draw(activations())
    return {
        "shape": shape, "training": training, "activation": activation, "param": param,
        "dtype": draw(st.sampled_from(DTYPES)),
        "layout": draw(st.sampled_from(LAYOUTS)),
        "grad_layout": draw(st.sampled_from(GRAD_LAYOUTS)),
        "residual": draw(st.sampled_from((None,) + LAYOUTS)),
        "affine": draw(st.booleans()),
        "momentum": draw(st.sampled_from((None, 0.1, 0.7))),
        "offset": draw(st.integers(1, 3)),
        "seed": draw(st.integers(0, 2 ** 31 - 1)),
        "steps": draw(st.integers(1, 2)),
    }


# Training subtracts the batch mean, rounded to float32, from x: the normalised value carries an
# error of ~eps * |x| * invstd, the input's magnitude in units of its spread (torch's float32 path
# alike). A batch whose spread is tiny against its mean (two nearly equal values) loses digits in
# any float32 implementation: float32 cases are held to the float32 tolerance only while this
# stays below MAX_CANCELLATION (at most ~20 * eps * |w| * act' ~ 4e-6 of error), the lost digits
# being float32's, not a kernel's. test_numerics checks large means with a sound spread.
MAX_CANCELLATION = 20


def cancellation(x):
    x64 = x.detach().cpu().double().movedim(1, 0).flatten(1)
    var, _ = torch.var_mean(x64, dim=1, unbiased=False)
    return (x64.abs().amax(dim=1) * torch.rsqrt(var + 1e-5)).max().item()


def _spatial(shape):
    total = 1
    for size in shape[2:]:
        total *= size
    return total


def reference(x, residual, weight, bias, running_mean, running_var, training, momentum, eps,
              activation, param):
    """float64 composite: output, pre-activation, and the running statistics after the call."""
    dims = [0] + list(range(2, x.dim()))
    view = (1, -1) + (1,) * (x.dim() - 2)
    if training:
        var, mean = torch.var_mean(x, dim=dims, unbiased=False)
        count = x.numel() // x.shape[1]
        running_mean = (1 - momentum) * running_mean + momentum * mean.detach()
        running_var = (1 - momentum) * running_var + momentum * var.detach() * count / (count - 1)
    else:
        mean, var = running_mean, running_var
    invstd = torch.rsqrt(var + eps)
    z = (x - mean.reshape(view)) * invstd.reshape(view)
    if weight is not None:
        z = z * weight.reshape(view) + bias.reshape(view)
    if residual is not None:
        z = z + residual
    return torch_activation(activation, param)(z), z, invstd.detach(), running_mean, running_var


# Largest |derivative| of any activation over the parameter ranges (elu's alpha up to 2).
MAX_SLOPE = 2.0


def term_scales(x, residual, weight, bias, invstd, dy):
    """Magnitudes of the terms each result is a sum of (float64, per tensor): a result that
    cancels to near 0 (two samples: grad input = w * invstd * (g - mean_g - x_hat * mean_g_xhat)
    is ~0) still carries the rounding of its terms, as in any float implementation."""
    channels = x.shape[1]
    view = (1, -1) + (1,) * (x.dim() - 2)
    w = weight.detach().abs() if weight is not None else torch.ones(channels, dtype=torch.float64)
    b = bias.detach().abs() if bias is not None else torch.zeros(channels, dtype=torch.float64)
    mean = x.detach().mean(dim=[0] + list(range(2, x.dim())))
    x_hat = ((x.detach() - mean.reshape(view)) * invstd.reshape(view)).abs()
    g = dy.abs() * MAX_SLOPE
    pre = x_hat * w.reshape(view) + b.reshape(view) + (residual.detach().abs() if residual is not None else 0)
    dims = [0] + list(range(2, x.dim()))
    return {
        "output": MAX_SLOPE * pre.max().item(),
        "grad input": 3 * ((w * invstd).reshape(view) * g.amax(dim=dims, keepdim=True)).max().item(),
        "grad weight": (g * x_hat).sum(dim=dims).max().item(),
        "grad bias": g.sum(dim=dims).max().item(),
    }


def check(case, device):
    shape, dtype, rank = case["shape"], case["dtype"], len(case["shape"])
    g = torch.Generator().manual_seed(case["seed"])
    channels = shape[1]
    module = MODULES[rank](channels, momentum=case["momentum"], affine=case["affine"],
                           activation=case["activation"], activation_param=case["param"],
                           dtype=param_dtype(dtype))
    with torch.no_grad():
        if case["affine"]:
            module.weight.copy_(torch.rand(channels, generator=g) * 1.5 + 0.25)
            module.bias.copy_(torch.randn(channels, generator=g))
        module.running_mean.copy_(torch.randn(channels, generator=g))
        module.running_var.copy_(torch.rand(channels, generator=g) + 0.25)
    module.to(device).train(case["training"])

    def values(mean=0.0):
        return (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + mean).to(dtype).to(device)

    for step in range(case["steps"]):
        where = f"step {step} of {case}"
        x = lay_out(values(mean=1.0), case["layout"], case["offset"]).requires_grad_()
        if case["training"] and dtype == torch.float32:
            assume(cancellation(x) <= MAX_CANCELLATION)
        residual = None
        if case["residual"] is not None:
            residual = lay_out(values(), case["residual"], case["offset"]).requires_grad_()
        dy = lay_out(values(), case["grad_layout"], case["offset"])
        state = [t.detach().cpu().double().clone() if t is not None else None
                 for t in (module.weight, module.bias, module.running_mean, module.running_var)]
        momentum = case["momentum"]
        if momentum is None:  # cumulative average: 1 / batches seen, this one included
            momentum = 1.0 / float(module.num_batches_tracked + 1)

        y = module(x, residual)
        y.backward(dy)

        x64 = x.detach().cpu().double().requires_grad_()
        res64 = residual.detach().cpu().double().requires_grad_() if residual is not None else None
        w64, b64, rm64, rv64 = state
        if w64 is not None:
            w64.requires_grad_(), b64.requires_grad_()
        y64, z64, invstd64, rm_ref, rv_ref = reference(x64, res64, w64, b64, rm64, rv64, case["training"],
                                             momentum if case["training"] else 0.0, module.eps,
                                             case["activation"], case["param"])
        y64.backward(dy.cpu().double())
        scale = term_scales(x64, res64, w64, b64, invstd64, dy.cpu().double())

        tol = TOLERANCE[dtype]
        stats_tol = TOLERANCE[param_dtype(dtype)]
        assert y.dtype == dtype, where
        assert_close(f"{where}: output", y, y64, tol, scale["output"])
        assert_close(f"{where}: running_mean", module.running_mean, rm_ref, stats_tol)
        assert_close(f"{where}: running_var", module.running_var, rv_ref, stats_tol)
        # Channels with an element at a kink: which side it takes is a matter of rounding.
        margin = KINK_MARGIN.get(dtype, DEFAULT_KINK_MARGIN)
        dims = [0] + list(range(2, rank))
        near = near_kink(case["activation"], z64.detach(), margin).amax(dim=dims)
        keep = ~near
        assert_close(f"{where}: grad input", x.grad.movedim(1, 0)[keep], x64.grad.movedim(1, 0)[keep], tol,
                     scale["grad input"])
        if residual is not None:
            assert_close(f"{where}: grad residual", residual.grad.movedim(1, 0)[keep],
                         res64.grad.movedim(1, 0)[keep], tol)
        if w64 is not None:
            assert_close(f"{where}: grad weight", module.weight.grad[keep.to(device)], w64.grad[keep], tol,
                         scale["grad weight"])
            assert_close(f"{where}: grad bias", module.bias.grad[keep.to(device)], b64.grad[keep], tol,
                         scale["grad bias"])
            module.weight.grad = module.bias.grad = None


@pytest.mark.parametrize("device", DEVICES)
@given(case=cases())
def test_matches_float64_composite(device, case):
    check(case, device)

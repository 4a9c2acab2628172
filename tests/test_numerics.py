"""Numerical edge cases: NaN propagation, large means, empty batches, dtypes of results,
state_dict compatibility and repr."""
import math

import pytest
import torch
import torch.nn as nn

import pyfusedbn
from pyfusedbn.activations import torch_activation
from helpers import TOLERANCE, assert_close, random_input, reference_batch_norm_act


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("activation", ["relu", "silu", "tanh"])
def test_nan_in_nan_out(activation, memory_format, generator):
    x = random_input((3, 4, 5, 5), torch.float32, memory_format, generator)
    x[1, 2, 3, 1] = math.nan
    module = pyfusedbn.BatchNormAct2d(4, activation=activation)
    y = module(x)
    expected = reference_batch_norm_act(x, torch.zeros(4), torch.ones(4), None, None, True, 0.1, 1e-5,
                                        activation, None)
    assert torch.isnan(y[:, 2]).all(), "the NaN channel must be NaN everywhere"
    assert not torch.isnan(y[:, [0, 1, 3]]).any(), "other channels must be finite"
    assert torch.isnan(module.running_mean[2]) and torch.isnan(module.running_var[2])
    assert_close("output", y, expected, TOLERANCE[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_large_mean_variance_is_stable(dtype, memory_format, generator):
    """A mean of 1e4 over a std of 1: sum-of-squares would lose every digit in float32."""
    x = random_input((16, 3, 32, 32), dtype, memory_format, generator, mean=1e4, scale=1.0)
    mean, var = torch.ops.pyfusedbn.batch_norm_stats(x)
    var_ref, mean_ref = torch.var_mean(x.double(), dim=(0, 2, 3), unbiased=False)
    assert_close("mean", mean, mean_ref, TOLERANCE[dtype])
    # Relative to the variance itself (~1), not to the mean.
    assert (var.double() - var_ref).abs().max() < (1e-4 if dtype == torch.float32 else 1e-10)


def test_reduction_over_many_elements_float32(generator):
    """One channel, 2**21 values: blocked float32 sums merged in double keep ~1e-6 accuracy."""
    x = random_input((8, 1, 512, 512), torch.float32, generator=generator)
    x.requires_grad_()
    y = pyfusedbn.batch_norm_act(x, None, None, training=True, activation="identity")
    dy = torch.randn(y.shape, generator=generator)
    y.backward(dy)
    x64 = x.detach().double().requires_grad_()
    reference_batch_norm_act(x64, None, None, None, None, True, 0.1, 1e-5, "identity", None).backward(dy.double())
    assert_close("grad input", x.grad, x64.grad, TOLERANCE[torch.float32])


def test_empty_batch_matches_torch():
    ours, theirs = pyfusedbn.BatchNormAct2d(3, activation="identity"), nn.BatchNorm2d(3)
    x1 = torch.randn(0, 3, 4, 4, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    y1, y2 = ours(x1), theirs(x2)
    assert y1.shape == y2.shape
    y1.sum().backward()
    y2.sum().backward()
    assert torch.equal(ours.running_mean, theirs.running_mean)
    assert torch.equal(ours.running_var, theirs.running_var)
    assert ours.num_batches_tracked == theirs.num_batches_tracked
    assert torch.equal(ours.weight.grad, theirs.weight.grad)
    assert x1.grad.shape == x2.grad.shape


@pytest.mark.parametrize("input_dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("param_dtype", [torch.float32, "same"], ids=["fp32_params", "same_params"])
def test_low_precision_result_dtypes(input_dtype, param_dtype, generator):
    """Output in the input dtype; gradients in their parameter's dtype; stats stay in theirs."""
    dtype = input_dtype if param_dtype == "same" else param_dtype
    module = pyfusedbn.BatchNormAct2d(4, dtype=dtype)
    x = random_input((4, 4, 3, 3), input_dtype, generator=generator).requires_grad_()
    y = module(x)
    y.float().sum().backward()
    assert y.dtype == input_dtype and x.grad.dtype == input_dtype
    assert module.weight.grad.dtype == dtype and module.running_var.dtype == dtype
    reference = nn.BatchNorm2d(4, dtype=torch.float64)
    x64 = x.detach().double()
    expected = torch.relu(reference(x64))
    assert_close("output", y, expected, TOLERANCE[input_dtype])
    assert_close("running_var", module.running_var, reference.running_var, TOLERANCE[dtype])


def test_state_dict_loads_both_ways():
    ours = pyfusedbn.BatchNormAct2d(5, activation="silu")
    theirs = nn.BatchNorm2d(5)
    with torch.no_grad():
        theirs.weight.uniform_()
        theirs.running_mean.normal_()
        theirs.num_batches_tracked.fill_(7)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    assert torch.equal(ours.weight, theirs.weight) and int(ours.num_batches_tracked) == 7
    back = nn.BatchNorm2d(5)
    back.load_state_dict(ours.state_dict())
    assert torch.equal(back.running_mean, theirs.running_mean)


def test_repr_shows_activation():
    text = repr(pyfusedbn.BatchNormAct2d(8, activation="leaky_relu", activation_param=0.2))
    torch_text = repr(nn.BatchNorm2d(8))
    assert text == "BatchNormAct" + torch_text[len("BatchNorm"):-1] + \
        ", activation=leaky_relu, activation_param=0.2)"


def test_bias_false_like_torch():
    """torch's keyword-only bias=False: a weight but no bias, same state_dict keys as torch."""
    kwargs = {"bias": False}
    ours = pyfusedbn.BatchNormAct2d(3, **kwargs)
    assert ours.bias is None and ours.weight is not None
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    ours(x).sum().backward()
    assert x.grad is not None and ours.weight.grad is not None
    try:
        theirs = nn.BatchNorm2d(3, **kwargs)
    except TypeError:  # torch versions before the bias argument
        return
    assert list(ours.state_dict()) == list(theirs.state_dict())


def test_python_and_kernel_activation_lists_agree():
    """The C++ parser lists its names when it rejects one: it must list exactly ours."""
    with pytest.raises(ValueError) as info:
        torch.ops.pyfusedbn.batch_norm_act_eval(torch.randn(2, 3), torch.zeros(3), torch.ones(3), None,
                                                None, None, 1e-5, "not-an-activation", 0.0)
    listed = str(info.value).split("expected one of: ")[1].split("\n")[0].strip()
    assert tuple(name.strip() for name in listed.split(",")) == pyfusedbn.ACTIVATION_NAMES


@pytest.mark.parametrize("shape", [(4, 0, 3, 3), (0, 3, 3, 3), (5, 3, 0, 2)])
def test_empty_shapes_forward_backward(shape):
    """No samples, no channels or no positions: empty results, no kernel launched on nothing."""
    module = pyfusedbn.BatchNormAct2d(shape[1])
    x = torch.randn(shape, requires_grad=True)
    y = module(x)
    y.sum().backward()
    assert y.shape == x.shape and x.grad.shape == x.shape
    assert torch.equal(module.running_mean, torch.zeros(shape[1]))



# Pre-activations where exp over- or underflows, runs into subnormals (below -87.3) or is exact,
# plus random ones: the CPU kernels' inline exp (csrc/common/activations.h, AVX-512 builds) must
# be as accurate there as torch's own float32 kernels, forward and backward. (GELU's exp is not
# the part that limits it: its erf-form derivative cancels below z = -4 whatever the exp.)
# -88.3 ... -88.72: exp(-z) is finite but above 2^127 (fbn_one_plus_exp's 2^(n - 1) step). NaN must pass
# the clamps before the exp (one vminps / vmaxps each, the bound first).
EXTREME_PRE_ACTIVATIONS = (-math.inf, -200.0, -104.5, -103.9, -100.0, -95.0, -90.0, -88.73, -88.72, -88.7, -88.3,
                           -88.0, -87.4, -87.3, -50.0, -13.3, -1e-3, -0.0, math.nan, 0.0, 1e-30, 1e-3, 0.5, 13.3,
                           50.0, 88.3, 88.7, 88.72, 88.73, 89.0, 100.0, math.inf)


def assert_elementwise_as_accurate(name, z, actual, torch_result, truth):
    """Each element within 2x torch's float32 error of the float64 truth, plus 1e-5 relative and
    a few subnormal spacings; where the truth is infinite or NaN, exactly it."""
    a, o, t = (v.detach().to(torch.float64).flatten() for v in (actual, torch_result, truth))
    special = ~torch.isfinite(t)
    wrong = special & ~((a == t) | (a.isnan() & t.isnan()))
    limit = 2 * (o - t).abs().nan_to_num(nan=0.0) + 1e-5 * t.abs() + 1e-43
    wrong |= ~special & ~((a - t).abs() <= limit)
    bad = wrong.nonzero().flatten().tolist()
    assert not bad, f"{name}: {len(bad)} elements off, e.g. " + ", ".join(
        f"z={z.flatten()[i].item():.6g}: got {a[i].item():.8g}, torch {o[i].item():.8g}, float64 {t[i].item():.8g}"
        for i in bad[:4])


@pytest.mark.parametrize("activation", ["silu", "sigmoid", "elu", "softplus", "mish"])
def test_exp_activations_at_extreme_pre_activations(activation, generator):
    z = torch.cat([torch.tensor(EXTREME_PRE_ACTIVATIONS, dtype=torch.float32),
                   torch.randn(997, generator=generator) * 30]).reshape(-1, 1)
    # Eval mode with mean 0, variance 1 and eps below float32's resolution at 1: z passes unchanged
    # (1 + 1e-10 rounds to 1), so the activation sees exactly these values.
    module = pyfusedbn.BatchNormAct1d(1, eps=1e-10, affine=False, activation=activation).eval()
    dy = torch.rand(z.shape, generator=generator) + 0.5
    results = {}
    for name, x, fn in (("pyfusedbn", z.clone(), module), ("torch", z.clone(), torch_activation(activation)),
                        ("float64", z.to(torch.float64), torch_activation(activation))):
        x.requires_grad_()
        y = fn(x)
        results[name] = (y, torch.autograd.grad(y, x, dy.to(x.dtype))[0])
    (y, dx), (y_torch, dx_torch), (y_64, dx_64) = results.values()
    assert_elementwise_as_accurate("output", z, y, y_torch, y_64)
    # Gradients at finite z: at +-inf the eval-mode backward's x - mean term makes inf * 0 = NaN
    # whatever the exp (noted in the issue-20 closing note).
    finite = torch.isfinite(z)
    assert_elementwise_as_accurate("gradient", z[finite], dx[finite], dx_torch[finite], dx_64[finite])

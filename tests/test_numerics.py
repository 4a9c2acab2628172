"""Numerical edge cases: NaN propagation, large means, empty batches, dtypes of results,
state_dict compatibility and repr."""
import math

import pytest
import torch
import torch.nn as nn

import pyfusedbn
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

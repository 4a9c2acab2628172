"""What the fused layer keeps for backward with a residual, and that its gradients stay torch's.

For identity, relu and leaky_relu with a slope >= 0, act'(z) is the same function of y = act(z),
so the C++ autograd saves the output (the next layer's input, which it keeps anyway) instead of
the residual (in ResNet's downsampling blocks the shortcut BatchNorm's output, which nothing else
keeps). The other activations still save the residual. Both paths must give torch's gradients,
in training and eval, and stay twice differentiable.
"""
import pytest
import torch
from torch.autograd import gradgradcheck

import pyfusedbn
from helpers import assert_close, random_input, reference_batch_norm_act

# (activation, activation_param, whether the residual is saved)
CASES = [
    ("identity", None, False),
    ("relu", None, False),
    ("leaky_relu", 0.1, False),
    ("leaky_relu", 0.0, False),
    ("leaky_relu", -0.2, True),  # negative slope: y > 0 no longer says z > 0
    ("relu6", None, True),
    ("silu", None, True),
]
SHAPE = (4, 3, 5, 6)


def make(generator, dtype=torch.float64, memory_format=torch.contiguous_format):
    x = random_input(SHAPE, dtype, memory_format, generator).requires_grad_()
    res = random_input(SHAPE, dtype, memory_format, generator, mean=0.0, scale=1.0).requires_grad_()
    weight = (torch.rand(SHAPE[1], dtype=dtype, generator=generator) + 0.5).requires_grad_()
    bias = torch.randn(SHAPE[1], dtype=dtype, generator=generator).requires_grad_()
    return x, res, weight, bias


def saved_pointers(fn):
    """data_ptr of every tensor autograd saves while fn() runs, and fn's result."""
    pointers = []

    def pack(t):
        pointers.append(t.data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return pointers, out


@pytest.mark.parametrize("activation,param,saves_residual", CASES, ids=[f"{a}-{p}" for a, p, _ in CASES])
def test_saves_output_or_residual(activation, param, saves_residual, generator):
    x, res, weight, bias = make(generator, torch.float32)
    pointers, out = saved_pointers(lambda: pyfusedbn.batch_norm_act(
        x, None, None, weight, bias, training=True, activation=activation, activation_param=param, residual=res))
    assert (res.data_ptr() in pointers) == saves_residual, pointers
    saves_output = not saves_residual and activation != "identity"
    assert (out.data_ptr() in pointers) == saves_output, pointers


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("activation,param,saves_residual", CASES, ids=[f"{a}-{p}" for a, p, _ in CASES])
def test_gradients_match_torch(activation, param, saves_residual, training, memory_format, generator):
    x, res, weight, bias = make(generator, torch.float64, memory_format)
    running_mean = torch.randn(SHAPE[1], dtype=torch.float64, generator=generator)
    running_var = torch.rand(SHAPE[1], dtype=torch.float64, generator=generator) + 0.5
    grad = torch.randn(SHAPE, dtype=torch.float64, generator=generator)
    inputs = (x, res, weight, bias)

    out = pyfusedbn.batch_norm_act(x, running_mean.clone(), running_var.clone(), weight, bias, training=training,
                                   activation=activation, activation_param=param, residual=res)
    ours = torch.autograd.grad(out, inputs, grad)
    expected_out = reference_batch_norm_act(x, running_mean.clone(), running_var.clone(), weight, bias, training,
                                            0.1, 1e-5, activation, param, residual=res)
    theirs = torch.autograd.grad(expected_out, inputs, grad)
    assert_close("out", out, expected_out, 1e-10)
    for name, a, b in zip(("grad_input", "grad_residual", "grad_weight", "grad_bias"), ours, theirs):
        assert_close(name, a, b, 1e-9)


@pytest.mark.parametrize("activation,param", [("relu", None), ("leaky_relu", 0.1), ("identity", None)])
def test_gradgradcheck_from_output(activation, param, generator):
    x, res, weight, bias = make(generator)

    def fn(x, res, weight, bias):
        return pyfusedbn.batch_norm_act(x, None, None, weight, bias, training=True, activation=activation,
                                        activation_param=param, residual=res)

    assert gradgradcheck(fn, (x, res, weight, bias), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_residual_without_grad(generator):
    """A residual that needs no gradient gets none; x, weight and bias still get theirs."""
    x, res, weight, bias = make(generator)
    res = res.detach()
    out = pyfusedbn.batch_norm_act(x, None, None, weight, bias, training=True, activation="relu", residual=res)
    grads = torch.autograd.grad(out.sum(), (x, weight, bias))
    expected = torch.autograd.grad(
        reference_batch_norm_act(x, None, None, weight, bias, True, 0.1, 1e-5, "relu", None, residual=res).sum(),
        (x, weight, bias))
    for name, a, b in zip(("grad_input", "grad_weight", "grad_bias"), grads, expected):
        assert_close(name, a, b, 1e-9)

"""gradcheck (the fused backward kernels) and gradgradcheck (double backward) in float64."""
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import pyfusedbn
from helpers import random_input

# Away from kinks: finite differences across relu's or hardswish's corner are not derivatives.
SMOOTH_OFFSET = 1e-3


def make_args(generator, channels_last, residual, affine=True):
    shape = (3, 4, 3, 2)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = random_input(shape, torch.float64, fmt, generator).requires_grad_()
    weight = (torch.rand(4, dtype=torch.float64, generator=generator) + 0.5).requires_grad_() if affine else None
    bias = (torch.randn(4, dtype=torch.float64, generator=generator)).requires_grad_() if affine else None
    res = random_input(shape, torch.float64, fmt, generator, mean=0.0, scale=1.0).requires_grad_() \
        if residual else None
    return x, weight, bias, res


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("activation", pyfusedbn.ACTIVATION_NAMES)
def test_gradcheck(activation, training, generator):
    x, weight, bias, res = make_args(generator, channels_last=training, residual=True)
    running_mean = torch.randn(4, dtype=torch.float64, generator=generator)
    running_var = torch.rand(4, dtype=torch.float64, generator=generator) + 0.5

    def fn(x, weight, bias, res):
        # Running statistics are read (eval) but never written: each call sees the same function.
        return pyfusedbn.batch_norm_act(x, None if training else running_mean,
                                        None if training else running_var, weight, bias,
                                        training=training, activation=activation, residual=res)

    assert gradcheck(fn, (x, weight, bias, res), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("activation", ["identity", "silu", "gelu", "tanh", "elu", "softplus", "mish"])
def test_gradgradcheck(activation, residual, generator):
    x, weight, bias, res = make_args(generator, channels_last=False, residual=residual)
    inputs = (x, weight, bias) + ((res,) if residual else ())

    def fn(x, weight, bias, res=None):
        return pyfusedbn.batch_norm_act(x, None, None, weight, bias, training=True,
                                        activation=activation, residual=res)

    assert gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gradgradcheck_eval_no_affine(generator):
    x, _, _, _ = make_args(generator, channels_last=True, residual=False, affine=False)
    running_mean = torch.randn(4, dtype=torch.float64, generator=generator)
    running_var = torch.rand(4, dtype=torch.float64, generator=generator) + 0.5
    fn = lambda x: pyfusedbn.batch_norm_act(x, running_mean, running_var, activation="gelu_tanh")
    assert gradgradcheck(fn, (x,), eps=1e-6, atol=1e-5, rtol=1e-4)

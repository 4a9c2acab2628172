"""The one-call ops of the autograd path, batch_norm_act (the layer, autograd in C++),
batch_norm_act_backward and batch_norm_act_eval_for_backward: opcheck, output_mask, agreement with the two-pass ops the
synchronised BatchNorm uses, and the per-channel finalize step's dtype classes (weight/bias and
running buffers in the input's half/bfloat16 type or in float32) against a float64 reference."""
import pytest
import torch

import pyfusedbn
from helpers import TOLERANCE, assert_close, random_input, reference_batch_norm_act
from pyfusedbn._ops import ops

SHAPE = (3, 5, 4, 2)
ACT = ("silu", 0.0)
# (input, weight, bias, residual) -> which gradients are wanted
MASKS = [(True, True, True, True), (True, False, False, False), (False, True, True, False),
         (False, False, False, True), (False, True, False, False), (False, False, False, False)]


def per_channel(generator, dtype, positive=False):
    t = torch.rand(SHAPE[1], generator=generator, dtype=torch.float64) + 0.5 if positive else \
        torch.randn(SHAPE[1], generator=generator, dtype=torch.float64)
    return t.to(dtype)


def backward_args(dtype, memory_format, residual, generator):
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = random_input(SHAPE, dtype, memory_format, generator)
    dy = random_input(SHAPE, dtype, memory_format, generator, mean=0.0)
    res = random_input(SHAPE, dtype, memory_format, generator, mean=0.0) if residual else None
    return (dy, x, per_channel(generator, acc), per_channel(generator, acc, True),
            per_channel(generator, acc, True), per_channel(generator, acc), res)


@pytest.mark.parametrize("mask", MASKS, ids=lambda m: "".join("1" if b else "0" for b in m))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype,memory_format", [(torch.float32, torch.channels_last),
                                                 (torch.bfloat16, torch.contiguous_format),
                                                 (torch.float64, torch.contiguous_format)], ids=str)
def test_opcheck_backward(mask, training, dtype, memory_format, generator):
    args = backward_args(dtype, memory_format, True, generator)
    torch.library.opcheck(ops.batch_norm_act_backward.default, args + (training,) + ACT + (False, list(mask)))


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_opcheck_eval_for_backward(residual, dtype, generator):
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = random_input(SHAPE, dtype, torch.channels_last, generator)
    res = random_input(SHAPE, dtype, torch.channels_last, generator, mean=0.0) if residual else None
    args = (x, per_channel(generator, acc), per_channel(generator, acc, True), per_channel(generator, acc, True),
            per_channel(generator, acc), res, 1e-5) + ACT
    torch.library.opcheck(ops.batch_norm_act_eval_for_backward.default, args)


def test_opcheck_memory_saving_backward(generator):
    args = backward_args(torch.float32, torch.channels_last, True, generator)
    torch.library.opcheck(ops.batch_norm_act_backward.default,
                          args + (True, "leaky_relu", 0.1, True, [True, True, True, True]))


@pytest.mark.parametrize("mask", MASKS, ids=lambda m: "".join("1" if b else "0" for b in m))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_backward_equals_the_two_pass_ops(mask, training, generator, poison_empty):
    """Same numbers as reduce + elementwise (the synchronised BatchNorm's path), float64; the
    gradients not asked for are None."""
    dy, x, mean, invstd, w, b, res = backward_args(torch.float64, torch.contiguous_format, True, generator)
    grads = ops.batch_norm_act_backward(dy, x, mean, invstd, w, b, res, training, *ACT, False, mask)
    sum_g, sum_g_xhat = ops.batch_norm_act_backward_reduce(dy, x, mean, invstd, w, b, res, *ACT)
    count = x.numel() // x.shape[1]
    means = (sum_g / count, sum_g_xhat / count) if training else (None, None)
    grad_input, grad_residual = ops.batch_norm_act_backward_elemt(dy, x, mean, invstd, w, b, res, *means, *ACT)
    for name, got, expected, wanted in zip(("grad_input", "grad_weight", "grad_bias", "grad_residual"), grads,
                                           (grad_input, sum_g_xhat, sum_g, grad_residual), mask):
        if not wanted:
            assert got is None, name
        else:
            assert_close(name, got, expected, TOLERANCE[torch.float64])


def test_backward_absent_parameters_give_none(generator):
    dy, x, mean, invstd, _, _, _ = backward_args(torch.float32, torch.contiguous_format, False, generator)
    grads = ops.batch_norm_act_backward(dy, x, mean, invstd, None, None, None, True, *ACT, False, [True] * 4)
    assert grads[0] is not None and grads[1:] == (None, None, None)


def test_backward_of_an_empty_batch(generator):
    x = torch.empty(0, 5, 3, 3)
    w, b = per_channel(generator, torch.float32, True), per_channel(generator, torch.float32)
    grads = ops.batch_norm_act_backward(x, x, torch.zeros(5), torch.ones(5), w, b, None, True, *ACT, False,
                                        [True, True, True, False])
    assert grads[0].shape == x.shape
    assert torch.equal(grads[1], torch.zeros(5)) and torch.equal(grads[2], torch.zeros(5))


# (input dtype, weight/bias dtype, running-buffer dtype): each class the finalize step reads and
# writes itself, and one mix it converts on the host (float64 parameters for float32 input).
DTYPE_CLASSES = [
    (torch.bfloat16, torch.bfloat16, torch.bfloat16),
    (torch.bfloat16, torch.float32, torch.bfloat16),
    (torch.float16, torch.float16, torch.float32),
    (torch.float16, torch.float32, torch.float32),
    (torch.float32, torch.float64, torch.float64),
]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype,pdtype,rdtype", DTYPE_CLASSES, ids=str)
def test_parameter_and_buffer_dtypes(dtype, pdtype, rdtype, training, generator):
    """Output, gradients (in the parameters' dtype) and the running statistics (updated in their
    own dtype, from the accumulate type rounded once) against float64 torch."""
    x = random_input(SHAPE, dtype, torch.contiguous_format, generator).requires_grad_()
    weight = per_channel(generator, pdtype, True).requires_grad_()
    bias = per_channel(generator, pdtype).requires_grad_()
    running = (per_channel(generator, rdtype), per_channel(generator, rdtype, True))
    dy = random_input(SHAPE, dtype, torch.contiguous_format, generator, mean=0.0)
    mean, var = running[0].clone(), running[1].clone()
    out = pyfusedbn.batch_norm_act(x, mean, var, weight, bias, training, 0.3, 1e-5, "elu", None)
    grads = torch.autograd.grad(out, (x, weight, bias), dy)

    ref_x, ref_w, ref_b = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    ref_mean, ref_var = running[0].double(), running[1].double()
    ref_out = reference_batch_norm_act(ref_x, ref_mean, ref_var, ref_w, ref_b, training, 0.3, 1e-5, "elu", None)
    ref_grads = torch.autograd.grad(ref_out, (ref_x, ref_w, ref_b), dy.double())

    tol = TOLERANCE[dtype]
    assert out.dtype == dtype and grads[1].dtype == pdtype and grads[2].dtype == pdtype
    assert mean.dtype == rdtype and var.dtype == rdtype
    assert_close("out", out, ref_out, tol)
    for name, got, expected in zip(("grad_input", "grad_weight", "grad_bias"), grads, ref_grads):
        assert_close(name, got, expected, max(tol, TOLERANCE[pdtype]))
    # The update is rounded once into the buffer's dtype: within one rounding of the reference.
    assert_close("running_mean", mean, ref_mean.to(rdtype), max(tol, TOLERANCE[rdtype]))
    assert_close("running_var", var, ref_var.to(rdtype), max(tol, TOLERANCE[rdtype]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_running_buffers_are_rounded_once(dtype, generator):
    """Half/bfloat16 running buffers are updated in float32 and rounded once: within one rounding
    step of the float64 update. (torch's own CPU kernel rounds the batch mean to bfloat16 first
    and can be several steps off near 0.)"""
    x = random_input((16, 5, 3, 3), dtype, torch.contiguous_format, generator)
    running = (per_channel(generator, dtype), per_channel(generator, dtype, True))
    mean, var = (t.clone() for t in running)
    ops.batch_norm_act_train(x, None, None, None, mean, var, 0.1, 1e-5, "identity", 0.0)
    batch_var, batch_mean = torch.var_mean(x.double(), dim=(0, 2, 3), unbiased=True)
    expected = (0.9 * running[0].double() + 0.1 * batch_mean, 0.9 * running[1].double() + 0.1 * batch_var)
    for name, got, exact in (("running_mean", mean, expected[0]), ("running_var", var, expected[1])):
        step = torch.finfo(dtype).eps * exact.abs() + torch.finfo(dtype).tiny
        diff = (got.double() - exact).abs()
        assert (diff <= step).all(), f"{name}: {got} vs float64 {exact}"


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_opcheck_layer_op(training, residual, generator):
    """The layer op with its C++ autograd: schema (running statistics and num_batches_tracked
    mutated), fake kernel, autograd registration, AOT dispatch."""
    x = random_input(SHAPE, torch.float32, torch.channels_last, generator).requires_grad_()
    res = random_input(SHAPE, torch.float32, torch.channels_last, generator, mean=0.0) if residual else None
    w = per_channel(generator, torch.float32, True).requires_grad_()
    args = (x, w, per_channel(generator, torch.float32), res, per_channel(generator, torch.float32),
            per_channel(generator, torch.float32, True), training, 0.1, 1e-5) + ACT
    torch.library.opcheck(ops.batch_norm_act.default, args + (torch.zeros((), dtype=torch.long),))


def test_layer_op_counts_batches(generator):
    counter = torch.zeros((), dtype=torch.long)
    x = random_input(SHAPE, torch.float32, torch.contiguous_format, generator)
    for expected in (1, 2):
        ops.batch_norm_act(x, None, None, None, torch.zeros(5), torch.ones(5), True, 0.1, 1e-5, *ACT, counter)
        assert counter.item() == expected
    empty = torch.empty(0, 5, 2, 2)  # an empty batch still counts, as in torch's _BatchNorm
    ops.batch_norm_act(empty, None, None, None, torch.zeros(5), torch.ones(5), True, 0.1, 1e-5, *ACT, counter)
    assert counter.item() == 3

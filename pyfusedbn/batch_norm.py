"""batch_norm_act: y = act(BatchNorm(x) + residual) as one fused op, and the fake kernels of the
BatchNorm ops. The autograd torch.compile and torch.export trace: batch_norm_autograd.py."""
from typing import Optional

import torch
from torch import Tensor

from ._common import (acc_dtype, check_devices, checked_float, like_input, promoted_under_autocast,
                      resolved_activation)
from ._ops import ops
from .batch_norm_autograd import BatchNormActFunction
from .memory_efficient import apply_memory_efficient, check_memory_efficient


def batch_norm_act(
    input: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    activation: str = "relu",
    activation_param: Optional[float] = None,
    residual: Optional[Tensor] = None,
    *,
    memory_efficient: bool = False,
    inplace: bool = False,
) -> Tensor:
    """`act(F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    + residual)`, computed in one pass forward and two passes backward.

    Arguments mean what they mean for torch.nn.functional.batch_norm; running statistics are
    updated in place when training. `activation` names a torch.nn.functional activation (see
    pyfusedbn.ACTIVATION_NAMES) and `activation_param` its one parameter (torch's default if None).

    memory_efficient=True saves the output instead of the input for backward (invertible
    activations only: identity, leaky_relu, elu; |weight| clamped to >= MIN_WEIGHT); inplace=True
    also writes the result into input's storage. See pyfusedbn/memory_efficient.py.
    """
    activation, activation_param = resolved_activation(activation, activation_param)
    check_memory_efficient(memory_efficient, inplace, activation, activation_param)
    if not isinstance(input, Tensor):
        raise TypeError(f"batch_norm_act: input must be a Tensor, got {type(input).__name__}")
    momentum = checked_float("batch_norm_act", "momentum", momentum)
    eps = checked_float("batch_norm_act", "eps", eps)
    if not training and (running_mean is None or running_var is None):
        raise RuntimeError("batch_norm_act: running_mean and running_var must be defined in "
                           "evaluation mode (training=False)")
    return fused_batch_norm_act(input, running_mean, running_var, weight, bias, bool(training),
                                momentum, eps, activation, activation_param,
                                residual, bool(memory_efficient), bool(inplace))


# The layer op's C++ entry point, looked up once: torch.ops attribute access resolves it on every
# call, and OpOverload.__call__ only forwards to it.
LAYER_OP = ops.batch_norm_act.default._op


def fused_batch_norm_act(input, running_mean, running_var, weight, bias, training, momentum, eps,
                         activation, activation_param, residual, memory_efficient, inplace,
                         num_batches_tracked=None):
    """batch_norm_act on checked arguments (activation resolved, memory_efficient/inplace
    validated, training a bool, momentum and eps floats): the modules' per-call path.
    num_batches_tracked, when given, is incremented by one (by the op itself in eager mode)."""
    # (inplace writes into input's storage, which keeps its dtype)
    if residual is not None and not inplace:
        input, residual = promoted_under_autocast(input, residual)
    if memory_efficient or torch.compiler.is_compiling() or torch.compiler.is_exporting():
        if num_batches_tracked is not None:
            num_batches_tracked.add_(1)
        if memory_efficient:
            return apply_memory_efficient(input, weight, bias, residual, running_mean, running_var,
                                          training, momentum, eps, activation, activation_param,
                                          inplace)
        # Dynamo and export trace this Python autograd.Function into their graphs.
        return BatchNormActFunction.apply(input, weight, bias, residual, running_mean,
                                          running_var, training, momentum, eps, activation,
                                          activation_param)
    # Eager: one op whose autograd is registered in C++ (csrc/batch_norm/autograd.cpp), so
    # neither direction runs Python.
    return LAYER_OP(input, weight, bias, residual, running_mean, running_var, training, momentum,
                    eps, activation, activation_param, num_batches_tracked)


def _per_channel(input):
    return input.new_empty((input.shape[1],), dtype=acc_dtype(input.dtype))


@torch.library.register_fake("pyfusedbn::batch_norm_stats")
def _stats_fake(input):
    return _per_channel(input), _per_channel(input)


@torch.library.register_fake("pyfusedbn::batch_norm_act_train")
def _train_fake(input, weight, bias, residual, running_mean, running_var, momentum, eps,
                activation, activation_param, num_batches_tracked=None):
    check_devices("batch_norm_act_train", input, weight=weight, bias=bias, residual=residual,
                  running_mean=running_mean, running_var=running_var,
                  num_batches_tracked=num_batches_tracked)
    return like_input(input), _per_channel(input), _per_channel(input)


@torch.library.register_fake("pyfusedbn::batch_norm_act_eval")
def _eval_fake(input, running_mean, running_var, weight, bias, residual, eps, activation,
               activation_param):
    check_devices("batch_norm_act_eval", input, weight=weight, bias=bias, residual=residual,
                  running_mean=running_mean, running_var=running_var)
    return like_input(input)


@torch.library.register_fake("pyfusedbn::batch_norm_act")
def _layer_fake(input, weight, bias, residual, running_mean, running_var, training, momentum, eps,
                activation, activation_param, num_batches_tracked=None):
    check_devices("batch_norm_act", input, weight=weight, bias=bias, residual=residual,
                  running_mean=running_mean, running_var=running_var,
                  num_batches_tracked=num_batches_tracked)
    return like_input(input)


@torch.library.register_fake("pyfusedbn::batch_norm_act_eval_for_backward")
def _eval_for_backward_fake(input, running_mean, running_var, weight, bias, residual, eps,
                            activation, activation_param):
    check_devices("batch_norm_act_eval_for_backward", input, weight=weight, bias=bias,
                  residual=residual, running_mean=running_mean, running_var=running_var)
    return like_input(input), _per_channel(input), _per_channel(input)


@torch.library.register_fake("pyfusedbn::batch_norm_act_apply")
def _apply_fake(input, mean, invstd, weight, bias, residual, activation, activation_param):
    check_devices("batch_norm_act_apply", input, mean=mean, invstd=invstd, weight=weight, bias=bias,
                  residual=residual)
    return like_input(input)


@torch.library.register_fake("pyfusedbn::batch_norm_act_backward_reduce")
def _reduce_fake(grad_out, saved, mean, invstd, weight, bias, residual, activation,
                 activation_param, from_output=False):
    check_devices("batch_norm_act_backward_reduce", saved, grad_out=grad_out, mean=mean,
                  invstd=invstd, weight=weight, bias=bias, residual=residual)
    return _per_channel(saved), _per_channel(saved)


@torch.library.register_fake("pyfusedbn::batch_norm_act_backward_elemt")
def _elemt_fake(grad_out, saved, mean, invstd, weight, bias, residual, mean_g, mean_g_xhat,
                activation, activation_param, from_output=False):
    check_devices("batch_norm_act_backward_elemt", saved, grad_out=grad_out, mean=mean,
                  invstd=invstd, weight=weight, bias=bias, residual=residual, mean_g=mean_g,
                  mean_g_xhat=mean_g_xhat)
    grad_residual = like_input(saved) if residual is not None else saved.new_empty((0,))
    return like_input(saved), grad_residual


@torch.library.register_fake("pyfusedbn::batch_norm_act_backward")
def _backward_fake(grad_out, saved, mean, invstd, weight, bias, residual, training, activation,
                   activation_param, from_output, output_mask):
    check_devices("batch_norm_act_backward", saved, grad_out=grad_out, mean=mean, invstd=invstd,
                  weight=weight, bias=bias, residual=residual)
    need_input, need_weight, need_bias, need_residual = output_mask
    # Parameter gradients in the parameter's dtype (the C++ op computes them there).
    return (like_input(saved) if need_input else None,
            torch.empty_like(weight, memory_format=torch.contiguous_format)
            if need_weight and weight is not None else None,
            torch.empty_like(bias, memory_format=torch.contiguous_format)
            if need_bias and bias is not None else None,
            like_input(saved) if need_residual and residual is not None else None)

"""batch_norm_act: y = act(BatchNorm(x) + residual) as one fused op, and its autograd."""
import numbers
from typing import Optional

import torch
from torch import Tensor

from ._composite import composite_grads
from ._ops import ops
from .activations import resolve_activation
from .memory_efficient import apply_memory_efficient, check_memory_efficient

# torch.compiler.is_exporting() also answers True inside torch.compile before torch 2.13 (seen on
# 2.11), where taking the export-only path would leave backward without statistics: there the
# eval forward always keeps them when a backward may follow, under export too.
_EXPORT_FLAG_RELIABLE = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 13)


def _is_exporting() -> bool:
    return _EXPORT_FLAG_RELIABLE and torch.compiler.is_exporting()


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
    activation, activation_param = _resolved_activation(activation, activation_param)
    check_memory_efficient(memory_efficient, inplace, activation, activation_param)
    if not isinstance(input, Tensor):
        raise TypeError(f"batch_norm_act: input must be a Tensor, got {type(input).__name__}")
    momentum, eps = checked_float("momentum", momentum), checked_float("eps", eps)
    if not training and (running_mean is None or running_var is None):
        raise RuntimeError("batch_norm_act: running_mean and running_var must be defined in "
                           "evaluation mode (training=False)")
    return fused_batch_norm_act(input, running_mean, running_var, weight, bias, bool(training),
                                momentum, eps, activation, activation_param,
                                residual, bool(memory_efficient), bool(inplace))


def checked_float(name, value):
    """float(value), or a TypeError naming the argument unless it is a real number (not a bool)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"batch_norm_act: {name} must be a float, got {value!r}")
    return float(value)


# The layer op, looked up once (torch.ops attribute access resolves it on every call).
_LAYER_OP = ops.batch_norm_act.default


def fused_batch_norm_act(input, running_mean, running_var, weight, bias, training, momentum, eps,
                         activation, activation_param, residual, memory_efficient, inplace,
                         num_batches_tracked=None):
    """batch_norm_act on checked arguments (activation resolved, memory_efficient/inplace
    validated, training a bool, momentum and eps floats): the modules' per-call path.
    num_batches_tracked, when given, is incremented by one (by the op itself in eager mode)."""
    if (residual is not None and residual.dtype != input.dtype and not inplace
            and torch.is_autocast_enabled(input.device.type)):
        # Under autocast `batch_norm(x) + residual` promotes (e.g. a bfloat16 convolution output
        # plus a float32 shortcut gives float32); so does the fused op, so that convert() keeps
        # such models running. Outside autocast a dtype mismatch stays an error.
        dtype = torch.promote_types(input.dtype, residual.dtype)
        input, residual = input.to(dtype), residual.to(dtype)
    tracing = torch.compiler.is_compiling() or torch.compiler.is_exporting()
    if memory_efficient or tracing:
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
    # Eager: one op whose autograd is registered in C++ (csrc/batch_norm_act_autograd.cpp), so
    # neither direction runs Python.
    return _LAYER_OP(input, weight, bias, residual, running_mean, running_var, training, momentum,
                     eps, activation, activation_param, num_batches_tracked)


# resolve_activation's answers (per layer call, its checks cost as much host time as a kernel
# dispatch): keyed by the parameter's type too, so that True (refused) is never 1.0 (accepted).
_RESOLVED_ACTIVATIONS = {}


def _resolved_activation(activation, activation_param):
    if torch.compiler.is_compiling():  # a graph resolves once; guarding on the cache would recompile
        return resolve_activation(activation, activation_param)
    key = (activation, type(activation_param), activation_param)
    try:
        return _RESOLVED_ACTIVATIONS[key]
    except (KeyError, TypeError):  # TypeError: an unhashable argument, which resolve refuses
        resolved = resolve_activation(activation, activation_param)
        if len(_RESOLVED_ACTIVATIONS) < 1024:
            _RESOLVED_ACTIVATIONS[key] = resolved
        return resolved


class BatchNormActFunction(torch.autograd.Function):
    """The autograd of batch_norm_act under torch.compile and torch.export (eager runs the C++
    one, which does the same). Forward: one op (statistics, running-stat update, normalise/affine/residual/activation).
    Backward: one op (reduce, per-channel finalize, elementwise pass). Saves input, mean and
    invstd (and residual when given: the activation's derivative needs the full pre-activation
    value)."""

    @staticmethod
    def forward(ctx, input, weight, bias, residual, running_mean, running_var, training,
                momentum, eps, activation, activation_param):
        out, mean, invstd = _fused_forward(input, weight, bias, residual, running_mean,
                                           running_var, training, momentum, eps, activation,
                                           activation_param, any(ctx.needs_input_grad[:4]))
        ctx.save_for_backward(input, weight, bias, residual, mean, invstd)
        ctx.training = training
        ctx.eps = eps
        ctx.activation = activation
        ctx.activation_param = activation_param
        return out

    @staticmethod
    def backward(ctx, grad_out):
        input, weight, bias, residual, mean, invstd = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True (double backward): differentiate a composite of torch ops instead.
            grads = composite_grads(grad_out, input, weight, bias, residual, mean, invstd,
                                    ctx.training, ctx.eps, ctx.activation, ctx.activation_param,
                                    ctx.needs_input_grad[:4])
        else:
            grads = _fused_backward(ctx, grad_out, input, weight, bias, residual, mean, invstd)
        return grads + (None,) * 7


def _fused_forward(input, weight, bias, residual, running_mean, running_var, training, momentum,
                   eps, activation, activation_param, need_backward=True):
    """(output, mean, invstd), each one op: the training op (batch statistics) or an eval op
    (running ones). In eval mode without backward (inference, export) mean and invstd are None:
    not computed."""
    if training:
        return ops.batch_norm_act_train(input, weight, bias, residual, running_mean, running_var,
                                        momentum, eps, activation, activation_param)
    # torch.export traces the forward only: nothing will read the statistics.
    if need_backward and not _is_exporting():
        # Copies of the statistics: the buffers may be updated in place before backward runs.
        return ops.batch_norm_act_eval_for_backward(input, running_mean, running_var, weight, bias,
                                                    residual, eps, activation, activation_param)
    out = ops.batch_norm_act_eval(input, running_mean, running_var, weight, bias, residual, eps,
                                  activation, activation_param)
    return out, None, None


def _fused_backward(ctx, grad_out, input, weight, bias, residual, mean, invstd, from_output=False):
    """(grad_input, grad_weight, grad_bias, grad_residual) from the one backward op, None where
    ctx.needs_input_grad says no. `input` is what forward saved: its input, or with
    from_output=True its output (the memory-saving mode rebuilds the pre-activation from it)."""
    return tuple(ops.batch_norm_act_backward(
        grad_out, input, mean, invstd, weight, bias, residual, ctx.training, ctx.activation,
        ctx.activation_param, from_output, ctx.needs_input_grad[:4]))


def _memory_format(t):
    from torch._prims_common import suggest_memory_format

    return suggest_memory_format(t)

"""batch_norm_act: y = act(BatchNorm(x) + residual) as one fused op, and its autograd.Function."""
import numbers
from typing import Optional

import torch
from torch import Tensor

from ._ops import acc_dtype, ops
from .activations import ACTIVATIONS, resolve_activation
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
    activation, activation_param = resolve_activation(activation, activation_param)
    check_memory_efficient(memory_efficient, inplace, activation, activation_param)
    if not isinstance(input, Tensor):
        raise TypeError(f"batch_norm_act: input must be a Tensor, got {type(input).__name__}")
    if not isinstance(momentum, numbers.Real) or isinstance(momentum, bool):
        raise TypeError(f"batch_norm_act: momentum must be a float, got {momentum!r}")
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool):
        raise TypeError(f"batch_norm_act: eps must be a float, got {eps!r}")
    if not training and (running_mean is None or running_var is None):
        raise RuntimeError("batch_norm_act: running_mean and running_var must be defined in "
                           "evaluation mode (training=False)")
    if (isinstance(residual, Tensor) and residual.dtype != input.dtype and not inplace
            and torch.is_autocast_enabled(input.device.type)):
        # Under autocast `batch_norm(x) + residual` promotes (e.g. a bfloat16 convolution output
        # plus a float32 shortcut gives float32); so does the fused op, so that convert() keeps
        # such models running. Outside autocast a dtype mismatch stays an error.
        dtype = torch.promote_types(input.dtype, residual.dtype)
        input, residual = input.to(dtype), residual.to(dtype)
    if memory_efficient:
        return apply_memory_efficient(input, weight, bias, residual, running_mean, running_var,
                                      bool(training), float(momentum), float(eps), activation,
                                      activation_param, bool(inplace))
    return BatchNormActFunction.apply(input, weight, bias, residual, running_mean, running_var,
                                      bool(training), float(momentum), float(eps), activation,
                                      activation_param)


class BatchNormActFunction(torch.autograd.Function):
    """Forward: one op (statistics, running-stat update, normalise/affine/residual/activation).
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
            grads = _composite_backward(ctx, grad_out, input, weight, bias, residual)
            grads = tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad))
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
    if need_backward and not torch.compiler.is_exporting():
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


def _composite_backward(ctx, grad_out, input, weight, bias, residual):
    """Gradients through a torch-op composite of the same forward, so they are themselves
    differentiable (gradgradcheck). Only used when backward runs with create_graph=True."""
    diff = [t for t in (input, weight, bias, residual) if t is not None and t.requires_grad]
    with torch.enable_grad():
        out = composite_batch_norm_act(input, weight, bias, residual, ctx.training, ctx.eps,
                                       ctx.activation, ctx.activation_param,
                                       None if ctx.training else ctx.saved_tensors[4:6])
        grads = iter(torch.autograd.grad(out, diff, grad_out, create_graph=True, allow_unused=True)
                     if diff else ())
    return tuple(next(grads) if t is not None and t.requires_grad else None
                 for t in (input, weight, bias, residual))


def composite_batch_norm_act(input, weight, bias, residual, training, eps, activation,
                             activation_param, eval_stats=None):
    """The forward in plain torch ops (no running-stat update). eval_stats: (mean, invstd)."""
    shape = (1, -1) + (1,) * (input.dim() - 2)
    acc = acc_dtype(input.dtype)
    x = input.to(acc)
    if training:
        dims = [0] + list(range(2, input.dim()))
        var, mean = torch.var_mean(x, dim=dims, unbiased=False)
        invstd = torch.rsqrt(var + eps)
    else:
        mean, invstd = eval_stats
    z = (x - mean.reshape(shape)) * invstd.reshape(shape)
    if weight is not None:
        z = z * weight.to(acc).reshape(shape)
    if bias is not None:
        z = z + bias.to(acc).reshape(shape)
    if residual is not None:
        z = z + residual.to(acc)
    # activation_param is already resolved (0.0 for parameter-free activations).
    return ACTIVATIONS[activation].torch_fn(z, activation_param).to(input.dtype)

"""group_norm_act's autograd under torch.compile and torch.export, which trace this Python
autograd.Function (eager runs the C++ one, csrc/group_norm/autograd.cpp). The two share one
definition: both save what group_norm_act returns beside its output and its inputs, and both
differentiate with the op group_norm_act_layer_backward (tests/test_autograd_paths.py compares
them)."""
import torch

from . import composite  # noqa: F401  (registers the composite that backward differentiates under create_graph=True)
from ._ops import ops


class GroupNormActFunction(torch.autograd.Function):
    """Forward: one op (statistics, normalise/affine/residual/activation). Backward:
    group_norm_act_layer_backward (the fused backward op, or the differentiable composite under
    create_graph=True). Saves input, weight, bias, residual, mean and rstd."""

    @staticmethod
    def forward(ctx, input, weight, bias, residual, num_groups, eps, activation, activation_param):
        out, mean, rstd = ops.group_norm_act(input, weight, bias, residual, num_groups, eps,
                                             activation, activation_param)
        ctx.save_for_backward(input, weight, bias, residual, mean, rstd)
        # mean and rstd are returned for InstanceNorm's running statistics, not differentiated.
        ctx.mark_non_differentiable(mean, rstd)
        ctx.num_groups, ctx.eps = num_groups, eps
        ctx.activation, ctx.activation_param = activation, activation_param
        return out, mean, rstd

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_rstd):
        input, weight, bias, residual, mean, rstd = ctx.saved_tensors
        grads = ops.group_norm_act_layer_backward(
            grad_out, input, weight, bias, residual, mean, rstd, ctx.num_groups, ctx.eps,
            ctx.activation, ctx.activation_param, ctx.needs_input_grad[:4])
        return tuple(grads) + (None,) * 4

"""batch_norm_act's autograd under torch.compile and torch.export, which trace this Python
autograd.Function (eager runs the C++ one, csrc/batch_norm/autograd.cpp, with no Python in
either direction). The two share one definition: both ask the op batch_norm_act_saves what to
save, and both differentiate with the op batch_norm_act_layer_backward, so they cannot drift
(tests/test_autograd_paths.py compares them). Also the forward ops the memory-saving mode
(memory_efficient.py) reuses."""
import torch

from . import composite  # noqa: F401  (registers the composite that backward differentiates under create_graph=True)
from ._ops import ops

# torch.compiler.is_exporting() also answers True inside torch.compile before torch 2.13 (seen on
# 2.11), where taking the export-only path would leave backward without statistics: there the
# eval forward always keeps them when a backward may follow, under export too.
EXPORT_FLAG_RELIABLE = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 13)


def is_exporting() -> bool:
    return EXPORT_FLAG_RELIABLE and torch.compiler.is_exporting()


@torch.compiler.assume_constant_result
def saves(has_residual: bool, activation: str, activation_param: float):
    """(whether the residual is saved, whether the output is): the C++ autograd's rule, from its
    op. A constant for dynamo, which then traces no call of a tensorless op."""
    save_residual, save_output = ops.batch_norm_act_saves(has_residual, activation,
                                                          activation_param)
    return bool(save_residual), bool(save_output)


class BatchNormActFunction(torch.autograd.Function):
    """Forward: one op (statistics, running-stat update, normalise/affine/residual/activation).
    Backward: batch_norm_act_layer_backward (the fused backward op, or the differentiable
    composite under create_graph=True). Saves input, weight, bias, mean and invstd, and the
    residual or the output as batch_norm_act_saves says."""

    @staticmethod
    def forward(ctx, input, weight, bias, residual, running_mean, running_var, training,
                momentum, eps, activation, activation_param):
        out, mean, invstd = fused_forward(input, weight, bias, residual, running_mean,
                                          running_var, training, momentum, eps, activation,
                                          activation_param, any(ctx.needs_input_grad[:4]))
        save_residual, save_output = saves(residual is not None, activation, activation_param)
        ctx.save_for_backward(input, weight, bias, residual if save_residual else None, mean,
                              invstd, out if save_output else None)
        ctx.has_residual = residual is not None
        ctx.training, ctx.eps = training, eps
        ctx.activation, ctx.activation_param = activation, activation_param
        return out

    @staticmethod
    def backward(ctx, grad_out):
        input, weight, bias, residual, mean, invstd, output = ctx.saved_tensors
        grads = ops.batch_norm_act_layer_backward(
            grad_out, input, weight, bias, residual, mean, invstd, output, ctx.has_residual,
            ctx.training, ctx.eps, ctx.activation, ctx.activation_param, ctx.needs_input_grad[:4])
        return tuple(grads) + (None,) * 7


def fused_forward(input, weight, bias, residual, running_mean, running_var, training, momentum,
                  eps, activation, activation_param, need_backward=True):
    """(output, mean, invstd), each one op: the training op (batch statistics) or an eval op
    (running ones). In eval mode without backward (inference, export) mean and invstd are None:
    not computed."""
    if training:
        return ops.batch_norm_act_train(input, weight, bias, residual, running_mean, running_var,
                                        momentum, eps, activation, activation_param)
    # torch.export traces the forward only: nothing will read the statistics.
    if need_backward and not is_exporting():
        # Copies of the statistics: the buffers may be updated in place before backward runs.
        return ops.batch_norm_act_eval_for_backward(input, running_mean, running_var, weight, bias,
                                                    residual, eps, activation, activation_param)
    out = ops.batch_norm_act_eval(input, running_mean, running_var, weight, bias, residual, eps,
                                  activation, activation_param)
    return out, None, None


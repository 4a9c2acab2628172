"""The memory-saving mode of batch_norm_act ("In-Place Activated BatchNorm", Rota Bulo et al.,
CVPR 2018): backward from the output y alone, so the input x need not stay alive.

The normal mode saves x for backward; the output y is usually saved anyway by whatever consumes
it (the next convolution saves its input). For an invertible activation the backward kernels
rebuild the pre-activation z = act^-1(y) and x - mean = (z - residual - bias) / (weight * invstd)
(csrc/common/kernel_args.h, rebuild_pre_activation), so this mode saves y instead of x: one
activation-sized tensor less per layer.

Invertible here: identity, leaky_relu with negative_slope > 0, elu with alpha > 0. Sigmoid, tanh
and softplus are invertible on paper but their inverses lose all precision where they saturate
(y rounds to 0, 1 or -1), so they are refused, as are the non-injective ones (relu, silu, ...).

Weight clamp: the division by weight * invstd amplifies the rounding error of y by 1 / |weight|.
As the paper does, the forward uses weight_used = sign(weight) * max(|weight|, MIN_WEIGHT)
(sign(0) = +1). For |weight| >= MIN_WEIGHT nothing changes; for smaller |weight| the output and
every gradient are those of the layer with the clamped weight, and the weight's gradient is passed
straight through (d weight_used / d weight taken as 1, not 0), so a weight stuck near 0 still
learns its way out. The error left in the rebuilt x_hat is about machine-epsilon * |bias| /
|weight_used| (float32 at |weight| = MIN_WEIGHT: ~1e-2 * |bias|); float64 is unaffected in practice.

Double backward (create_graph=True) is not supported in this mode (x is gone, and the composite
the normal mode differentiates needs it): backward raises a RuntimeError saying so.
"""
from typing import Optional

import torch
from torch import Tensor

from ._ops import ops
from .batch_norm_autograd import fused_forward

# The activations the backward can invert, and the one whose parameter must be positive for it.
INVERTIBLE_ACTIVATIONS = ("identity", "leaky_relu", "elu")
_POSITIVE_PARAM = {"leaky_relu": "negative_slope", "elu": "alpha"}
# |weight| floor of the forward in this mode (the value inplace_abn uses for its eps).
MIN_WEIGHT = 1e-5


def check_memory_efficient(memory_efficient: bool, inplace: bool, activation: str,
                           activation_param: float) -> None:
    """ValueError unless (memory_efficient, inplace) can run with this resolved activation."""
    if inplace and not memory_efficient:
        raise ValueError("batch_norm_act: inplace=True needs memory_efficient=True (the normal "
                         "backward reads the input, so it cannot be overwritten)")
    if not memory_efficient:
        return
    valid = ("identity, leaky_relu (negative_slope > 0), elu (alpha > 0); sigmoid, tanh and "
             "softplus are refused: their inverse loses precision where they saturate")
    if activation not in INVERTIBLE_ACTIVATIONS:
        raise ValueError(f"batch_norm_act: memory_efficient=True needs an invertible activation, "
                         f"got '{activation}'; valid: {valid}")
    if activation in _POSITIVE_PARAM and not activation_param > 0:
        raise ValueError(f"batch_norm_act: memory_efficient=True needs {_POSITIVE_PARAM[activation]}"
                         f" > 0 for '{activation}' (else it is not invertible), got "
                         f"{activation_param}; valid: {valid}")


def clamp_weight(weight: Optional[Tensor]) -> Optional[Tensor]:
    """sign(weight) * max(|weight|, MIN_WEIGHT), with sign(0) = +1 (a NaN weight stays NaN)."""
    if weight is None:
        return None
    magnitude = weight.abs().clamp_min(MIN_WEIGHT)
    return torch.where(weight < 0, -magnitude, magnitude)


class MemoryEfficientBatchNormActFunction(torch.autograd.Function):
    """Forward: the same ops as the normal mode, with the clamped weight (and, with inplace, the
    result copied into input's storage). Saves the output, mean, invstd, the clamped weight, bias
    and residual, never the input. Backward: the two backward ops with from_output=True."""

    @staticmethod
    def forward(ctx, input, weight, bias, residual, running_mean, running_var, training,
                momentum, eps, activation, activation_param, inplace):
        weight_used = clamp_weight(weight)
        out, mean, invstd = fused_forward(
            input, weight_used, bias, residual, running_mean, running_var, training, momentum,
            eps, activation, activation_param)
        if inplace:
            # The ops allocate their output; copying it back is what makes the result live in
            # input's storage (the kernel's buffer is freed on return).
            ctx.mark_dirty(input)
            out = input.copy_(out)
        ctx.save_for_backward(out, weight_used, bias, residual, mean, invstd)
        ctx.training = training
        ctx.activation = activation
        ctx.activation_param = activation_param
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "batch_norm_act: double backward (create_graph=True) is not supported with "
                "memory_efficient=True (the input was not kept); use memory_efficient=False")
        output, weight_used, bias, residual, mean, invstd = ctx.saved_tensors
        # grad_weight is the clamped weight's gradient, passed straight through to the weight.
        grads = ops.batch_norm_act_backward(
            grad_out, output, mean, invstd, weight_used, bias, residual, ctx.training,
            ctx.activation, ctx.activation_param, True, ctx.needs_input_grad[:4])
        return tuple(grads) + (None,) * 8


def apply_memory_efficient(input, weight, bias, residual, running_mean, running_var, training,
                           momentum, eps, activation, activation_param, inplace):
    """Checked entry point for batch_norm_act(memory_efficient=True); arguments already resolved."""
    if inplace and torch.is_grad_enabled() and input.requires_grad and input.is_leaf:
        raise RuntimeError(
            "batch_norm_act: inplace=True overwrites input, which is a leaf tensor that requires "
            "grad; autograd forbids that. Pass inplace=False, or an input computed by an "
            "earlier op (e.g. a convolution's output)")
    if inplace and residual is not None and _shares_storage(input, residual):
        raise ValueError("batch_norm_act: inplace=True with a residual that shares input's "
                         "storage; backward needs the residual unchanged")
    return MemoryEfficientBatchNormActFunction.apply(
        input, weight, bias, residual, running_mean, running_var, training, momentum, eps,
        activation, activation_param, inplace)


def _shares_storage(a: Tensor, b: Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


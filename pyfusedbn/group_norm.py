"""group_norm_act: y = act(GroupNorm(x) + residual) as one fused op, its autograd.Function and
the fake kernels of the GroupNorm ops. InstanceNorm (num_groups = C) and timm's LayerNorm2d
(num_groups = 1 over an (N*H*W, C) view) run on the same ops (pyfusedbn/group_norm_modules.py)."""
import math
import numbers
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch._prims_common import suggest_memory_format

from ._ops import _check_devices, _like_input, acc_dtype, ops
from .activations import ACTIVATIONS, resolve_activation

# The ops with device kernels, and all of them (the layer op is composite over the first).
GROUP_KERNEL_OPS = ("group_norm_act", "group_norm_act_backward")
GROUP_OP_NAMES = GROUP_KERNEL_OPS + ("group_norm_act_layer",)


def group_norm_act(
    input: Tensor,
    num_groups: int,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    activation: str = "silu",
    activation_param: Optional[float] = None,
    residual: Optional[Tensor] = None,
) -> Tensor:
    """`act(F.group_norm(input, num_groups, weight, bias, eps) + residual)` in one pass forward
    and two passes backward. `activation` names a torch.nn.functional activation (see
    pyfusedbn.ACTIVATION_NAMES), `activation_param` its one parameter (torch's default if None)."""
    if isinstance(input, Tensor) and isinstance(num_groups, int):
        check_values_per_group(input, num_groups)
    return checked_group_norm_act(input, num_groups, weight, bias, eps, activation, activation_param, residual)


def check_values_per_group(input: Tensor, num_groups: int) -> None:
    """F.group_norm's own check, same type and words: a batch of one sample whose groups are one
    value each (N * C / G * spatial == 1) is refused."""
    if input.dim() < 2 or num_groups <= 0:
        return  # the op says what is wrong
    size = [input.shape[0] * input.shape[1] // num_groups, num_groups] + list(input.shape[2:])
    if math.prod(size[:1] + size[2:]) == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {size}")


def checked_group_norm_act(input, num_groups, weight, bias, eps, activation, activation_param, residual):
    """group_norm_act without F.group_norm's values-per-group check (LayerNormAct2d's rows of one
    channel are fine for F.layer_norm)."""
    activation, activation_param = resolve_activation(activation, activation_param)
    if not isinstance(input, Tensor):
        raise TypeError(f"group_norm_act: input must be a Tensor, got {type(input).__name__}")
    if not isinstance(num_groups, int) or isinstance(num_groups, bool):
        raise TypeError(f"group_norm_act: num_groups must be an int, got {num_groups!r}")
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool):
        raise TypeError(f"group_norm_act: eps must be a float, got {eps!r}")
    if (isinstance(residual, Tensor) and residual.dtype != input.dtype
            and torch.is_autocast_enabled(input.device.type)):
        # As batch_norm_act: under autocast `norm(x) + residual` promotes.
        dtype = torch.promote_types(input.dtype, residual.dtype)
        input, residual = input.to(dtype), residual.to(dtype)
    return group_norm_act_with_stats(input, weight, bias, residual, num_groups, float(eps),
                                     activation, activation_param)[0]


# The layer op, looked up once (torch.ops attribute access resolves it on every call).
_LAYER_OP = ops.group_norm_act_layer.default


def group_norm_act_with_stats(input, weight, bias, residual, num_groups, eps, activation,
                              activation_param):
    """(out, mean, rstd) on checked arguments. Eager: one op whose autograd is C++
    (csrc/group_norm_act_autograd.cpp); torch.compile and export trace the autograd.Function."""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return GroupNormActFunction.apply(input, weight, bias, residual, num_groups, eps,
                                          activation, activation_param)
    return _LAYER_OP(input, weight, bias, residual, num_groups, eps, activation, activation_param)


class GroupNormActFunction(torch.autograd.Function):
    """The autograd of group_norm_act under torch.compile and torch.export (eager runs the C++
    one, which does the same). Forward: one op (statistics, normalise/affine/residual/activation).
    Backward: one op (reduce then elementwise kernels). Saves input, mean and rstd (and residual
    when given: the activation's derivative needs the full pre-activation value)."""

    @staticmethod
    def forward(ctx, input, weight, bias, residual, num_groups, eps, activation, activation_param):
        out, mean, rstd = ops.group_norm_act(input, weight, bias, residual, num_groups, eps,
                                             activation, activation_param)
        ctx.save_for_backward(input, weight, bias, residual, mean, rstd)
        # mean and rstd are returned for InstanceNorm's running statistics, not differentiated.
        ctx.mark_non_differentiable(mean, rstd)
        # Decided here: torch.compile traces backward in a strict mode that bans `Tensor.layout`.
        ctx.memory_format = suggest_memory_format(input)
        ctx.num_groups, ctx.eps = num_groups, eps
        ctx.activation, ctx.activation_param = activation, activation_param
        return out, mean, rstd

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_rstd):
        input, weight, bias, residual, mean, rstd = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True (double backward): differentiate a composite of torch ops instead.
            grads = composite_grads(grad_out, input, weight, bias, residual, ctx.num_groups,
                                    ctx.eps, ctx.activation, ctx.activation_param,
                                    ctx.needs_input_grad[:4])
        else:
            grad_out = grad_out.contiguous(memory_format=ctx.memory_format)
            grad_input, grad_weight, grad_bias, grad_residual = ops.group_norm_act_backward(
                grad_out, input, mean, rstd, weight, bias, residual, ctx.num_groups,
                ctx.activation, ctx.activation_param)
            grads = (grad_input, grad_weight.to(weight.dtype) if weight is not None else None,
                     grad_bias.to(bias.dtype) if bias is not None else None,
                     grad_residual if residual is not None else None)
        needed = ctx.needs_input_grad[:4]
        return tuple(g if need else None for g, need in zip(grads, needed)) + (None,) * 4


def composite_grads(grad_out, input, weight, bias, residual, num_groups, eps, activation,
                    activation_param, output_mask):
    """(grad_input, grad_weight, grad_bias, grad_residual) through a composite of torch ops of the
    same forward, with create_graph=True so they are themselves differentiable (gradgradcheck);
    None where output_mask says no or the argument is None. Only used under create_graph=True."""
    tensors = (input, weight, bias, residual)
    wanted = [t is not None and need for t, need in zip(tensors, output_mask)]
    diff = [t for t, want in zip(tensors, wanted) if want]
    with torch.enable_grad():
        out = composite_group_norm_act(input, num_groups, weight, bias, eps, activation,
                                       activation_param, residual)
        grads = iter(torch.autograd.grad(out, diff, grad_out, create_graph=True, allow_unused=True)
                     if diff else ())
    return tuple(next(grads) if want else None for want in wanted)


# What the C++ autograd's backward calls under create_graph=True.
torch.library.impl("pyfusedbn::group_norm_act_composite_backward", "CompositeImplicitAutograd")(
    composite_grads)


def composite_group_norm_act(input, num_groups, weight, bias, eps, activation, activation_param,
                             residual=None):
    """The forward in plain torch ops, accumulating in float32 (float64 for float64 input)."""
    acc = acc_dtype(input.dtype)
    to_acc = lambda t: None if t is None else t.to(acc)
    z = F.group_norm(input.to(acc), num_groups, to_acc(weight), to_acc(bias), eps)
    if residual is not None:
        z = z + residual.to(acc)
    # activation_param is already resolved (0.0 for parameter-free activations).
    return ACTIVATIONS[activation].torch_fn(z, activation_param).to(input.dtype)


def _per_group(input, num_groups):
    return input.new_empty((input.shape[0], num_groups), dtype=acc_dtype(input.dtype))


@torch.library.register_fake("pyfusedbn::group_norm_act")
def _group_norm_act_fake(input, weight, bias, residual, num_groups, eps, activation, activation_param):
    _check_devices("group_norm_act", input, weight=weight, bias=bias, residual=residual)
    return _like_input(input), _per_group(input, num_groups), _per_group(input, num_groups)


@torch.library.register_fake("pyfusedbn::group_norm_act_layer")
def _group_norm_act_layer_fake(input, weight, bias, residual, num_groups, eps, activation,
                               activation_param):
    _check_devices("group_norm_act_layer", input, weight=weight, bias=bias, residual=residual)
    return _like_input(input), _per_group(input, num_groups), _per_group(input, num_groups)


@torch.library.register_fake("pyfusedbn::group_norm_act_backward")
def _group_norm_act_backward_fake(grad_out, input, mean, rstd, weight, bias, residual, num_groups,
                                  activation, activation_param):
    _check_devices("group_norm_act_backward", input, grad_out=grad_out, mean=mean, rstd=rstd,
                   weight=weight, bias=bias, residual=residual)
    per_channel = input.new_empty((input.shape[1],), dtype=acc_dtype(input.dtype))
    grad_residual = _like_input(input) if residual is not None else input.new_empty((0,))
    return _like_input(input), per_channel, per_channel.new_empty(per_channel.shape), grad_residual

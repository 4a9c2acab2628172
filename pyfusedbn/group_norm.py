"""group_norm_act: y = act(GroupNorm(x) + residual) as one fused op; instance_norm_act and
layer_norm_act_2d on the same ops (InstanceNorm: num_groups = C; timm's LayerNorm2d:
num_groups = 1 over rows of C values); the fake kernels of the GroupNorm ops. The autograd
torch.compile and torch.export trace: group_norm_autograd.py."""
import math
from typing import Optional

import torch
from torch import Tensor

from ._common import (acc_dtype, check_devices, checked_float, like_input, promoted_under_autocast,
                      resolved_activation)
from ._ops import ops
from .batch_norm import batch_norm_act
from .group_norm_autograd import GroupNormActFunction

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
    activation, activation_param = resolved_activation(activation, activation_param)
    if not isinstance(input, Tensor):
        raise TypeError(f"group_norm_act: input must be a Tensor, got {type(input).__name__}")
    if not isinstance(num_groups, int) or isinstance(num_groups, bool):
        raise TypeError(f"group_norm_act: num_groups must be an int, got {num_groups!r}")
    eps = checked_float("group_norm_act", "eps", eps)
    input, residual = promoted_under_autocast(input, residual)
    return group_norm_act_with_stats(input, weight, bias, residual, num_groups, eps, activation,
                                     activation_param)[0]


# The layer op, looked up once (torch.ops attribute access resolves it on every call).
_LAYER_OP = ops.group_norm_act_layer.default


def group_norm_act_with_stats(input, weight, bias, residual, num_groups, eps, activation,
                              activation_param):
    """(out, mean, rstd) on checked arguments. Eager: one op whose autograd is C++
    (csrc/group_norm/autograd.cpp); torch.compile and export trace the autograd.Function."""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return GroupNormActFunction.apply(input, weight, bias, residual, num_groups, eps,
                                          activation, activation_param)
    return _LAYER_OP(input, weight, bias, residual, num_groups, eps, activation, activation_param)


def instance_norm_act(
    input: Tensor,
    running_mean: Optional[Tensor] = None,
    running_var: Optional[Tensor] = None,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    activation: str = "relu",
    activation_param: Optional[float] = None,
    residual: Optional[Tensor] = None,
) -> Tensor:
    """`act(F.instance_norm(input, running_mean, running_var, weight, bias, use_input_stats,
    momentum, eps) + residual)`. With use_input_stats the running statistics (when given) are
    updated in place as torch does: the batch average of each instance's mean and unbiased var."""
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise ValueError("instance_norm_act: running_mean and running_var must be defined "
                             "when use_input_stats is False")
        # Statistics per channel, shared by every instance: BatchNorm's eval op computes exactly that.
        return batch_norm_act(input, running_mean, running_var, weight, bias, False, 0.0, eps,
                              activation, activation_param, residual)
    if not isinstance(input, Tensor) or input.dim() < 3:
        raise ValueError("instance_norm_act: expected input of rank 3 to 5 (N, C, ...), got "
                         f"{getattr(input, 'shape', type(input).__name__)}")
    spatial = input[0, 0].numel()
    if spatial <= 1:  # torch's check (_verify_spatial_size), same type and wording
        raise ValueError(f"Expected more than 1 spatial element when training, got input size {list(input.shape)}")
    if running_mean is None:
        return group_norm_act(input, input.shape[1], weight, bias, eps, activation, activation_param,
                              residual)
    activation, activation_param = resolved_activation(activation, activation_param)
    out, mean, rstd = group_norm_act_with_stats(input, weight, bias, residual, input.shape[1],
                                                float(eps), activation, activation_param)
    with torch.no_grad():
        # var = 1 / rstd^2 - eps, Bessel-corrected over each instance's positions as torch stores it.
        var = (rstd.double().pow(-2) - eps) * (spatial / (spatial - 1))
        running_mean.mul_(1 - momentum).add_(mean.mean(0).to(running_mean.dtype), alpha=momentum)
        running_var.mul_(1 - momentum).add_(var.mean(0).to(running_var.dtype), alpha=momentum)
    return out


def layer_norm_act_2d(
    input: Tensor,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    activation: str = "relu",
    activation_param: Optional[float] = None,
    residual: Optional[Tensor] = None,
) -> Tensor:
    """timm's LayerNorm2d + activation: `act(F.layer_norm(x.permute(0, 2, 3, 1), (C,), weight,
    bias, eps).permute(0, 3, 1, 2) + residual)` for x of shape (N, C, H, W). The result has the
    channels_last memory layout (free for channels_last input; NCHW input is transposed once)."""
    if not isinstance(input, Tensor) or input.dim() != 4:
        raise ValueError("layer_norm_act_2d: expected input of shape (N, C, H, W), got "
                         f"{getattr(input, 'shape', type(input).__name__)}")
    if residual is not None and residual.shape != input.shape:
        raise ValueError(f"layer_norm_act_2d: residual must have the input's shape {tuple(input.shape)}, "
                         f"got {tuple(residual.shape)}")
    n, c, h, w = input.shape
    to_rows = lambda t: t.permute(0, 2, 3, 1).reshape(n * h * w, c)
    rows = checked_group_norm_act(to_rows(input), 1, weight, bias, eps, activation, activation_param,
                          None if residual is None else to_rows(residual))
    return rows.view(n, h, w, c).permute(0, 3, 1, 2)


def _per_group(input, num_groups):
    return input.new_empty((input.shape[0], num_groups), dtype=acc_dtype(input.dtype))


@torch.library.register_fake("pyfusedbn::group_norm_act")
def _group_norm_act_fake(input, weight, bias, residual, num_groups, eps, activation, activation_param):
    check_devices("group_norm_act", input, weight=weight, bias=bias, residual=residual)
    return like_input(input), _per_group(input, num_groups), _per_group(input, num_groups)


@torch.library.register_fake("pyfusedbn::group_norm_act_layer")
def _group_norm_act_layer_fake(input, weight, bias, residual, num_groups, eps, activation,
                               activation_param):
    check_devices("group_norm_act_layer", input, weight=weight, bias=bias, residual=residual)
    return like_input(input), _per_group(input, num_groups), _per_group(input, num_groups)


@torch.library.register_fake("pyfusedbn::group_norm_act_backward")
def _group_norm_act_backward_fake(grad_out, input, mean, rstd, weight, bias, residual, num_groups,
                                  activation, activation_param):
    check_devices("group_norm_act_backward", input, grad_out=grad_out, mean=mean, rstd=rstd,
                  weight=weight, bias=bias, residual=residual)
    per_channel = input.new_empty((input.shape[1],), dtype=acc_dtype(input.dtype))
    grad_residual = like_input(input) if residual is not None else input.new_empty((0,))
    return like_input(input), per_channel, per_channel.new_empty(per_channel.shape), grad_residual

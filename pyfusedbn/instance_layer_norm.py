"""instance_norm_act and layer_norm_act_2d: the functional InstanceNorm and timm-LayerNorm2d forms,
both on the fused GroupNorm op (num_groups = C, and num_groups = 1 over rows of C values)."""
from typing import Optional

import torch
from torch import Tensor

from .functional import batch_norm_act
from .group_norm import checked_group_norm_act, group_norm_act, group_norm_act_with_stats
from .activations import resolve_activation


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
    activation, activation_param = resolve_activation(activation, activation_param)
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

"""GroupNormAct, InstanceNormAct1d/2d/3d and LayerNormAct2d: drop-in torch norm + activation
modules on the fused GroupNorm op, with an optional residual in forward.

Each subclasses the torch module it replaces (nn.GroupNorm, _InstanceNorm, nn.LayerNorm), so
parameters, buffers, defaults and state_dict keys are exactly torch's: a state_dict loads both
ways. Their functional forms: pyfusedbn/group_norm.py.
"""
import warnings
from typing import Optional

from torch import Tensor, nn
from torch.nn.modules.instancenorm import _InstanceNorm

from ._common import ActivationRepr
from .activations import resolve_activation
from .group_norm import group_norm_act, instance_norm_act, layer_norm_act_2d


class _ActivationMixin(ActivationRepr):
    """The activation's two attributes, validated at construction, shown in repr."""

    def _set_activation(self, activation, activation_param):
        resolve_activation(activation, activation_param)  # ValueError naming the valid choices
        self.activation = activation
        self.activation_param = activation_param


class GroupNormAct(_ActivationMixin, nn.GroupNorm):
    """nn.GroupNorm + activation (default SiLU, the diffusion-UNet pairing): input (N, C, ...)."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 activation: str = "silu", activation_param: Optional[float] = None, device=None,
                 dtype=None) -> None:
        super().__init__(num_groups, num_channels, eps, affine, device=device, dtype=dtype)
        self._set_activation(activation, activation_param)

    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        return group_norm_act(input, self.num_groups, self.weight, self.bias, self.eps,
                              self.activation, self.activation_param, residual)


class _InstanceNormAct(_ActivationMixin, _InstanceNorm):
    """nn.InstanceNorm*d + activation: torch's defaults (affine=False, track_running_stats=False),
    running statistics used in eval only when tracked, unbatched input accepted."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = False, track_running_stats: bool = False, activation: str = "relu",
                 activation_param: Optional[float] = None, device=None, dtype=None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device,
                         dtype=dtype)
        self._set_activation(activation, activation_param)

    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        self._check_input_dim(input)
        feature_dim = input.dim() - self._get_no_batch_dim()
        if input.size(feature_dim) != self.num_features:
            # torch's own check and wording (_InstanceNorm.forward).
            if self.affine:
                raise ValueError(f"expected input's size at dim={feature_dim} to match num_features"
                                 f" ({self.num_features}), but got: {input.size(feature_dim)}.")
            warnings.warn(f"input's size at dim={feature_dim} does not match num_features. "
                          "You can silence this warning by not passing in num_features, "
                          "which is not used because affine=False")
        unbatched = input.dim() == self._get_no_batch_dim()
        if unbatched:
            input = input.unsqueeze(0)
            residual = residual.unsqueeze(0) if residual is not None else None
        out = instance_norm_act(
            input, self.running_mean, self.running_var, self.weight, self.bias,
            self.training or not self.track_running_stats,
            self.momentum if self.momentum is not None else 0.0, self.eps, self.activation,
            self.activation_param, residual)
        return out.squeeze(0) if unbatched else out


class InstanceNormAct1d(_InstanceNormAct):
    """nn.InstanceNorm1d + activation: input (N, C, L) or unbatched (C, L)."""

    def _get_no_batch_dim(self):
        return 2

    def _check_input_dim(self, input):
        if input.dim() not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {input.dim()}D input)")


class InstanceNormAct2d(_InstanceNormAct):
    """nn.InstanceNorm2d + activation: input (N, C, H, W) or unbatched (C, H, W)."""

    def _get_no_batch_dim(self):
        return 3

    def _check_input_dim(self, input):
        if input.dim() not in (3, 4):
            raise ValueError(f"expected 3D or 4D input (got {input.dim()}D input)")


class InstanceNormAct3d(_InstanceNormAct):
    """nn.InstanceNorm3d + activation: input (N, C, D, H, W) or unbatched (C, D, H, W)."""

    def _get_no_batch_dim(self):
        return 4

    def _check_input_dim(self, input):
        if input.dim() not in (4, 5):
            raise ValueError(f"expected 4D or 5D input (got {input.dim()}D input)")


class LayerNormAct2d(_ActivationMixin, nn.LayerNorm):
    """timm's LayerNormAct2d: LayerNorm over the channels of each position of an (N, C, H, W)
    map (NCHW or channels_last), then the activation. Parameters as nn.LayerNorm(num_channels)."""

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 activation: str = "relu", activation_param: Optional[float] = None, device=None,
                 dtype=None) -> None:
        super().__init__(num_channels, eps=eps, elementwise_affine=affine, device=device, dtype=dtype)
        self._set_activation(activation, activation_param)

    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        return layer_norm_act_2d(input, self.weight, self.bias, self.eps, self.activation,
                                 self.activation_param, residual)

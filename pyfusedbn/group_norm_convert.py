"""The GroupNorm family's part of convert / revert: which torch norm becomes which fused module,
and the swap both ways with shared state. convert's passes (pyfusedbn/_fx_passes.py,
_module_swap.py) consult NORM_TO_FUSED next to their BatchNorm table: a pattern
"norm module -> activation (-> after an add)" is fused by fused_from_norm(norm, activation, param)
and restored by norm_from_fused(fused). There is no fold: these norms use per-sample statistics
(InstanceNorm with tracked running statistics in eval is BatchNorm-like, but rare; left alone).
"""
from torch import nn

from ._torch_activations import activation_module
from .group_norm_modules import GroupNormAct, InstanceNormAct1d, InstanceNormAct2d, InstanceNormAct3d

NORM_TO_FUSED = {nn.GroupNorm: GroupNormAct, nn.InstanceNorm1d: InstanceNormAct1d,
                 nn.InstanceNorm2d: InstanceNormAct2d, nn.InstanceNorm3d: InstanceNormAct3d}
FUSED_TO_NORM = {fused: norm for norm, fused in NORM_TO_FUSED.items()}


def is_plain_group_family_norm(module) -> bool:
    """Exact type: a subclass may override forward, so it is left alone (as for BatchNorm)."""
    return type(module) in NORM_TO_FUSED


def is_fused_group_family_norm(module) -> bool:
    return type(module) in FUSED_TO_NORM


def _options(module):
    if isinstance(module, nn.GroupNorm):
        return dict(num_groups=module.num_groups, num_channels=module.num_channels, eps=module.eps,
                    affine=module.affine, device="meta")
    return dict(num_features=module.num_features, eps=module.eps, momentum=module.momentum,
                affine=module.affine, track_running_stats=module.track_running_stats, device="meta")


def _move_state(src, dst):
    """dst takes src's parameter and buffer objects (an optimizer built on them keeps working),
    every one its class has (None where src has none), and its training mode."""
    for name in dst._parameters:
        dst._parameters[name] = src._parameters.get(name)
    for name in dst._buffers:
        dst._buffers[name] = src._buffers.get(name)
    dst.train(src.training)
    return dst


def fused_from_norm(norm, activation: str, activation_param=None):
    fused = NORM_TO_FUSED[type(norm)](activation=activation, activation_param=activation_param,
                                      **_options(norm))
    return _move_state(norm, fused)


def norm_from_fused(fused):
    """(plain torch norm sharing fused's state, the activation as a torch module)."""
    plain = FUSED_TO_NORM[type(fused)](**_options(fused))
    return _move_state(fused, plain), activation_module(fused.activation, fused.activation_param)


"""Module-level pieces shared by convert/revert/fold: which norm layers are fused into which
class, BatchNorm <-> BatchNormAct with shared state, Conv/Linear + BatchNorm folding. The passes
that use them: _fx_passes (traced models) and _sequential_passes (module order)."""
import torch
from torch import nn

from ._foreign_layers import (TIMM_BATCH_NORM_ACT, class_name, is_frozen_batch_norm, is_identity,
                              is_timm_batch_norm_act, trailing_layers)
from ._torch_activations import NotFusable, activation_module, module_activation
from .group_norm_convert import (fused_from_norm, is_fused_group_family_norm,
                                 is_plain_group_family_norm, norm_from_fused)
from .modules import BatchNormAct1d, BatchNormAct2d, BatchNormAct3d, _BatchNormAct

# The norm layers convert fuses -> the fused class, by exact class (torch's) or qualified class
# name (other libraries', not imported here). Another norm (GroupNorm, ...) is one more entry.
BN_TO_FUSED = {nn.BatchNorm1d: BatchNormAct1d, nn.BatchNorm2d: BatchNormAct2d,
               nn.BatchNorm3d: BatchNormAct3d}
NAMED_NORM_TO_FUSED = {name: BatchNormAct2d for name in TIMM_BATCH_NORM_ACT}
FUSED_TO_BN = {fused: bn for bn, fused in BN_TO_FUSED.items()}
FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# A fused layer converted from another library's class records it here: (that class, the
# activation module it held, or None if its activation came from the graph). revert uses it.
SOURCE_ATTRIBUTE = "_pyfusedbn_source"


def is_plain_batch_norm(module):
    return type(module) in BN_TO_FUSED


def is_convertible_norm(module):
    """A norm layer convert replaces by a fused one: torch's BatchNorm, GroupNorm or InstanceNorm,
    or timm's BatchNormAct2d."""
    return (is_plain_batch_norm(module) or class_name(type(module)) in NAMED_NORM_TO_FUSED
            or is_plain_group_family_norm(module))


def is_foldable_norm(module):
    """Only the BatchNorm kind folds: GroupNorm/InstanceNorm use each sample's own statistics."""
    if is_plain_group_family_norm(module) or is_fused_group_family_norm(module):
        return False
    return is_convertible_norm(module) or is_fused(module) or is_frozen_batch_norm(module)


def is_fused(module):
    return isinstance(module, _BatchNormAct) or is_fused_group_family_norm(module)


def inner_activation(norm):
    """(activation, activation_param, the module) a norm layer applies itself (timm's
    BatchNormAct2d: its `act`), or None; NotFusable when it cannot be fused."""
    if not is_timm_batch_norm_act(norm) or is_identity(norm.act):
        return None
    if not is_identity(norm.drop):
        raise NotFusable(f"its drop layer {type(norm.drop).__name__} runs between the BatchNorm "
                         f"and its activation {type(norm.act).__name__}; fusing would reorder them")
    try:
        activation, param = module_activation(norm.act)
    except NotFusable as e:
        raise NotFusable(f"its activation: {e}") from None
    reason = hook_reason(norm.act)
    if reason:
        raise NotFusable(reason)
    return activation, param, norm.act


def _move_state(src, dst):
    """dst takes src's parameter and buffer objects (not copies: an optimizer built on the
    original parameters keeps working) and its training mode."""
    for name in ("weight", "bias"):
        dst._parameters[name] = src._parameters[name]
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        dst._buffers[name] = src._buffers[name]
    dst.train(src.training)
    return dst


def _options(bn):
    return dict(num_features=bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                track_running_stats=bn.track_running_stats, device="meta")


def fused_from_batch_norm(bn, activation, activation_param, inner_act=None):
    """The fused layer taking bn's state; inner_act: the activation module bn applied itself."""
    if is_plain_group_family_norm(bn):
        return fused_from_norm(bn, activation, activation_param)
    fused_class = BN_TO_FUSED.get(type(bn)) or NAMED_NORM_TO_FUSED[class_name(type(bn))]
    fused = fused_class(activation=activation, activation_param=activation_param, **_options(bn))
    if not is_plain_batch_norm(bn):
        setattr(fused, SOURCE_ATTRIBUTE, (type(bn), inner_act))
    return _move_state(bn, fused)


def batch_norm_from_fused(fused):
    """(plain BatchNorm sharing fused's state, the activation as a torch module). A
    SyncBatchNormAct becomes an nn.SyncBatchNorm on the same process group."""
    from .sync_batchnorm import SyncBatchNormAct  # late: sync_batchnorm imports torch.distributed

    if is_fused_group_family_norm(fused):
        return norm_from_fused(fused)
    source = getattr(fused, SOURCE_ATTRIBUTE, None)
    if source is not None:
        # Its own class: timm's BatchNormAct2d builds an act (replaced) and no drop.
        source_class, inner_act = source
        bn = source_class(**_options(fused))
        bn.act, bn.drop = inner_act or nn.Identity(), _drop_of(fused)
        if inner_act is not None:  # its activation is inside the layer: none to add after it
            return _move_state(fused, bn), nn.Identity()
    elif isinstance(fused, SyncBatchNormAct):
        bn = nn.SyncBatchNorm(process_group=fused.process_group, **_options(fused))
    else:
        # The nearest torch class: a subclass of BatchNormAct2d becomes an nn.BatchNorm2d.
        bn_class = next(FUSED_TO_BN[c] for c in type(fused).__mro__ if c in FUSED_TO_BN)
        bn = bn_class(**_options(fused))
    return (_move_state(fused, bn),
            activation_module(fused.activation, fused.activation_param))


def _drop_of(fused):
    """A fused layer's own drop layer (TimmBatchNormAct2d has one), else nn.Identity."""
    drop = fused._modules.get("drop")
    return nn.Identity() if drop is None else drop


def hook_reason(*modules):
    for module in modules:
        if (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks):
            return f"{type(module).__name__} has hooks, which fusing would bypass"
    return None


def fold_reason(layer, bn):
    """Why bn cannot be folded into the Conv/Linear before it (None if it can)."""
    if type(layer) not in FOLDABLE:
        return f"its input comes from {type(layer).__name__}, not Conv1d/2d/3d or Linear"
    if bn.training and not is_frozen_batch_norm(bn):
        return "BatchNorm is in training mode (fold is for inference: call model.eval() first)"
    if bn.running_mean is None or bn.running_var is None:
        return "BatchNorm has no running statistics (track_running_stats=False)"
    channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if channels != bn.running_mean.numel():
        return (f"{type(layer).__name__} has {channels} outputs, "
                f"BatchNorm {bn.running_mean.numel()} features")
    return hook_reason(layer, bn)


def after_fold(norm):
    """What remains of a norm layer folded into the layer before it: its activation (and
    timm's drop layer), or nn.Identity."""
    if is_fused(norm):
        return activation_module(norm.activation, norm.activation_param)
    return trailing_layers(norm)


@torch.no_grad()
def fold_into(layer, bn):
    """Rescales layer's weight and bias so that layer(x) == bn(old layer(x)) in eval mode.
    Computed in float64, stored in the layer's dtype; a missing bias is created."""
    weight = layer.weight.to(torch.float64)
    out_channels = weight.shape[0]
    scale = torch.rsqrt(bn.running_var.to(torch.float64) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(torch.float64)
    shift = -bn.running_mean.to(torch.float64) * scale
    if bn.bias is not None:
        shift = shift + bn.bias.to(torch.float64)
    bias = (layer.bias.to(torch.float64) if layer.bias is not None
            else torch.zeros(out_channels, dtype=torch.float64, device=weight.device))
    dtype, requires_grad = layer.weight.dtype, layer.weight.requires_grad
    per_channel = (-1,) + (1,) * (weight.dim() - 1)
    layer.weight = nn.Parameter((weight * scale.reshape(per_channel)).to(dtype), requires_grad)
    layer.bias = nn.Parameter((bias * scale + shift).to(dtype), requires_grad)

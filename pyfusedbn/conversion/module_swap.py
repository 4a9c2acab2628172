"""The module swaps of convert/revert: which norm layer becomes which fused class (one table for
every norm), the swap both ways sharing parameter and buffer objects, and what a norm applies
itself (timm's BatchNormAct2d). The passes that use them: fx_passes (traced models) and
sequential (module order); fold's own pieces are in folding.py."""
from torch import nn

from ..batch_norm_modules import BatchNormAct1d, BatchNormAct2d, BatchNormAct3d, BatchNormActBase
from ..group_norm_modules import GroupNormAct, InstanceNormAct1d, InstanceNormAct2d, InstanceNormAct3d
from .foreign_layers import TIMM_BATCH_NORM_ACT, class_name, is_identity, is_timm_batch_norm_act
from .torch_activations import NotFusable, activation_module, module_activation

# The norm layers convert fuses -> the fused class, by exact class (torch's: a subclass may
# override forward) or by qualified class name (other libraries', not imported here).
NORM_TO_FUSED = {nn.BatchNorm1d: BatchNormAct1d, nn.BatchNorm2d: BatchNormAct2d,
                 nn.BatchNorm3d: BatchNormAct3d, nn.GroupNorm: GroupNormAct,
                 nn.InstanceNorm1d: InstanceNormAct1d, nn.InstanceNorm2d: InstanceNormAct2d,
                 nn.InstanceNorm3d: InstanceNormAct3d}
NAMED_NORM_TO_FUSED = {name: BatchNormAct2d for name in TIMM_BATCH_NORM_ACT}
FUSED_TO_NORM = {fused: norm for norm, fused in NORM_TO_FUSED.items()}
# GroupNorm and InstanceNorm use each sample's own statistics: there is nothing to fold.
PER_SAMPLE_NORMS = (nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
# A fused layer converted from another library's class records it here: (that class, the
# activation module it held, or None if its activation came from the graph). revert uses it.
SOURCE_ATTRIBUTE = "_pyfusedbn_source"


def is_convertible_norm(module):
    """A norm layer convert replaces by a fused one: torch's BatchNorm, GroupNorm or InstanceNorm,
    or timm's BatchNormAct2d."""
    return type(module) in NORM_TO_FUSED or class_name(type(module)) in NAMED_NORM_TO_FUSED


def is_fused(module):
    return isinstance(module, BatchNormActBase) or type(module) in FUSED_TO_NORM


def is_per_sample_norm(module):
    """GroupNorm / InstanceNorm, plain or fused (exact classes)."""
    return type(module) in PER_SAMPLE_NORMS or FUSED_TO_NORM.get(type(module)) in PER_SAMPLE_NORMS

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


def move_state(src, dst):
    """dst takes src's parameter and buffer objects (not copies: an optimizer built on the
    original parameters keeps working), every one its class has (None where src has none), and
    its training mode."""
    for name in dst._parameters:
        dst._parameters[name] = src._parameters.get(name)
    for name in dst._buffers:
        dst._buffers[name] = src._buffers.get(name)
    dst.train(src.training)
    return dst


def options(norm):
    """The constructor arguments that rebuild norm as another class of its kind, on meta."""
    if isinstance(norm, nn.GroupNorm):
        return dict(num_groups=norm.num_groups, num_channels=norm.num_channels, eps=norm.eps,
                    affine=norm.affine, device="meta")
    return dict(num_features=norm.num_features, eps=norm.eps, momentum=norm.momentum,
                affine=norm.affine, track_running_stats=norm.track_running_stats, device="meta")


def fused_from_norm(norm, activation, activation_param=None, inner_act=None):
    """The fused layer taking norm's state; inner_act: the activation module norm applied itself."""
    fused_class = NORM_TO_FUSED.get(type(norm)) or NAMED_NORM_TO_FUSED[class_name(type(norm))]
    fused = fused_class(activation=activation, activation_param=activation_param, **options(norm))
    if type(norm) not in NORM_TO_FUSED:
        setattr(fused, SOURCE_ATTRIBUTE, (type(norm), inner_act))
    return move_state(norm, fused)


def norm_from_fused(fused):
    """(plain norm sharing fused's state, the activation as a torch module). A SyncBatchNormAct
    becomes an nn.SyncBatchNorm on the same process group."""
    from ..sync_batchnorm import SyncBatchNormAct  # late: sync_batchnorm imports torch.distributed

    source = getattr(fused, SOURCE_ATTRIBUTE, None)
    if source is not None:
        # Its own class: timm's BatchNormAct2d builds an act (replaced) and no drop.
        source_class, inner_act = source
        norm = source_class(**options(fused))
        norm.act, norm.drop = inner_act or nn.Identity(), _drop_of(fused)
        if inner_act is not None:  # its activation is inside the layer: none to add after it
            return move_state(fused, norm), nn.Identity()
    elif isinstance(fused, SyncBatchNormAct):
        norm = nn.SyncBatchNorm(process_group=fused.process_group, **options(fused))
    else:
        # The nearest torch class: a subclass of BatchNormAct2d becomes an nn.BatchNorm2d.
        norm_class = next(FUSED_TO_NORM[c] for c in type(fused).__mro__ if c in FUSED_TO_NORM)
        norm = norm_class(**options(fused))
    return move_state(fused, norm), activation_module(fused.activation, fused.activation_param)


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

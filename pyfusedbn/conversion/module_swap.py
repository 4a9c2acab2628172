"""The module swaps of convert/revert: which norm layer becomes which fused class (one table for
every norm), the swap both ways sharing parameter and buffer objects, and what a norm applies
itself (timm's BatchNormAct2d). The passes that use them: fx_passes (traced models) and
sequential (module order); fold's own pieces are in folding.py."""
import copy

from torch import nn
from torch.nn.modules.instancenorm import _InstanceNorm

from ..batch_norm_modules import BatchNormAct1d, BatchNormAct2d, BatchNormAct3d, BatchNormActBase
from ..group_norm_modules import (GroupNormAct, InstanceNormAct1d, InstanceNormAct2d,
                                  InstanceNormAct3d, LayerNormAct2d)
from .foreign_layers import (FROZEN_BATCH_NORM, GROUP_NORMS, LAYER_NORMS_2D, TIMM_BATCH_NORM_ACT,
                             class_name, has_own_activation, is_identity)
from .torch_activations import NotFusable, activation_module, module_activation

# The norm layers convert fuses -> the fused class, by class (torch's, and their subclasses that
# keep torch's forward) or by qualified class name (other libraries', not imported here).
NORM_TO_FUSED = {nn.BatchNorm1d: BatchNormAct1d, nn.BatchNorm2d: BatchNormAct2d,
                 nn.BatchNorm3d: BatchNormAct3d, nn.GroupNorm: GroupNormAct,
                 nn.InstanceNorm1d: InstanceNormAct1d, nn.InstanceNorm2d: InstanceNormAct2d,
                 nn.InstanceNorm3d: InstanceNormAct3d}
NAMED_NORM_TO_FUSED = {**{name: BatchNormAct2d for name in TIMM_BATCH_NORM_ACT},
                       **{name: GroupNormAct for name in GROUP_NORMS},
                       **{name: LayerNormAct2d for name in LAYER_NORMS_2D}}
FUSED_TO_NORM = {fused: norm for norm, fused in NORM_TO_FUSED.items()}
# GroupNorm, InstanceNorm and LayerNorm use each sample's own statistics: nothing to fold.
PER_SAMPLE_NORMS = (nn.GroupNorm, _InstanceNorm, nn.LayerNorm)
# Every norm layer convert reports on, fused or not (besides the named foreign ones).
NORM_BASES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
# A fused layer converted from another library's class records it here: (that class, the
# activation module it held, or None if its activation came from the graph). revert uses it.
SOURCE_ATTRIBUTE = "_pyfusedbn_source"


def fused_class(module):
    """The fused class convert replaces a norm layer by, or None."""
    cls = type(module)
    if cls in NORM_TO_FUSED:
        return NORM_TO_FUSED[cls]
    if class_name(cls) in NAMED_NORM_TO_FUSED:
        return None if getattr(module, "_fast_norm", False) else NAMED_NORM_TO_FUSED[class_name(cls)]
    if is_fused(module):
        return None
    return next((fused for norm, fused in NORM_TO_FUSED.items()
                 if isinstance(module, norm) and cls.forward is norm.forward), None)


def is_convertible_norm(module):
    """A norm layer convert replaces by a fused one: torch's BatchNorm, GroupNorm or InstanceNorm
    (or a subclass keeping torch's forward), timm's and torchvision's norms of NAMED_NORM_TO_FUSED."""
    return fused_class(module) is not None


def is_norm_layer(module):
    """Every norm layer convert reports on (not the fused ones)."""
    return not is_fused(module) and (isinstance(module, NORM_BASES)
                                     or class_name(type(module)) in NAMED_NORM_TO_FUSED
                                     or class_name(type(module)) in FROZEN_BATCH_NORM)


def unconvertible_reason(module):
    """Why convert leaves a norm layer (one is_norm_layer accepts) alone, or None."""
    cls, name = type(module), class_name(type(module))
    if is_convertible_norm(module):
        return None
    if name in NAMED_NORM_TO_FUSED:
        return f"{cls.__name__} has timm's fast_norm on (another kernel): left as it is"
    if name in FROZEN_BATCH_NORM:
        return f"{cls.__name__} is an eval-only (frozen) BatchNorm: pyfusedbn.fold folds it"
    base = next((b for b in NORM_TO_FUSED if isinstance(module, b)), None)
    if base is not None:
        return (f"{cls.__name__} subclasses nn.{base.__name__} but overrides forward; fusing "
                f"would bypass its forward")
    if isinstance(module, nn.LayerNorm):
        return (f"{cls.__name__} normalises the last dimension(s); pyfusedbn fuses LayerNorm over "
                f"the channels of (N, C, H, W) maps only (timm's / torchvision's LayerNorm2d)")
    return f"{cls.__name__}: pyfusedbn has no fused class for it"


def is_fused(module):
    return (isinstance(module, BatchNormActBase) or type(module) in FUSED_TO_NORM
            or type(module) is LayerNormAct2d)


def is_per_sample_norm(module):
    """GroupNorm / InstanceNorm / LayerNorm, plain or fused."""
    return isinstance(module, PER_SAMPLE_NORMS)

def inner_activation(norm):
    """(activation, activation_param, the module) a norm layer applies itself (timm's
    BatchNormAct2d: its `act`), or None; NotFusable when it cannot be fused."""
    if not has_own_activation(norm) or is_identity(norm.act):
        return None
    if not is_identity(norm.drop):
        kind = "BatchNorm" if isinstance(norm, nn.modules.batchnorm._BatchNorm) else "norm"
        raise NotFusable(f"its drop layer {type(norm.drop).__name__} runs between the {kind} "
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
    if isinstance(norm, nn.LayerNorm):
        return dict(num_channels=norm.normalized_shape[0], eps=norm.eps,
                    affine=norm.elementwise_affine, device="meta")
    return dict(num_features=norm.num_features, eps=norm.eps, momentum=norm.momentum,
                affine=norm.affine, track_running_stats=norm.track_running_stats, device="meta")


def fused_from_norm(norm, activation, activation_param=None, inner_act=None):
    """The fused layer taking norm's state; inner_act: the activation module norm applied itself."""
    fused = fused_class(norm)(activation=activation, activation_param=activation_param,
                              **options(norm))
    if type(norm) not in NORM_TO_FUSED:
        setattr(fused, SOURCE_ATTRIBUTE, (type(norm), inner_act, _stateless_copy(norm)))
    return move_state(norm, fused)


def _stateless_copy(module):
    """module without its state (parameters, buffers, submodules: None): what revert rebuilds a
    class whose constructor it does not know from (every attribute but the state)."""
    clone = copy.copy(module)
    clone.__dict__ = dict(module.__dict__)
    for slot in ("_parameters", "_buffers", "_modules"):
        clone.__dict__[slot] = dict.fromkeys(module.__dict__[slot])
    return clone


def norm_from_fused(fused):
    """(plain norm sharing fused's state, the activation as a torch module). A SyncBatchNormAct
    becomes an nn.SyncBatchNorm on the same process group."""
    from ..sync_batchnorm import SyncBatchNormAct  # late: sync_batchnorm imports torch.distributed

    source = getattr(fused, SOURCE_ATTRIBUTE, None)
    if source is not None:
        # Its own class, from the copy convert kept (else its constructor: timm_compat's);
        # timm's norms with their own activation get it (or nn.Identity) and their drop back.
        source_class, inner_act = source[:2]
        norm = (_stateless_copy(source[2]) if len(source) > 2
                else source_class(**options(fused)))
        if has_own_activation(norm):
            norm.act, norm.drop = inner_act or nn.Identity(), _drop_of(fused)
        if inner_act is not None:  # its activation is inside the layer: none to add after it
            return move_state(fused, norm), nn.Identity()
    elif isinstance(fused, SyncBatchNormAct):
        norm = nn.SyncBatchNorm(process_group=fused.process_group, **options(fused))
    else:
        # The nearest torch class: a subclass of BatchNormAct2d becomes an nn.BatchNorm2d.
        norm_class = next((FUSED_TO_NORM[c] for c in type(fused).__mro__ if c in FUSED_TO_NORM),
                          None)
        if norm_class is None:
            raise NotFusable(f"no torch class computes {type(fused).__name__}'s norm")
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

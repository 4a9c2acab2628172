"""Module-level pieces shared by convert/revert/fold: BatchNorm <-> BatchNormAct with shared
state, Conv/Linear + BatchNorm folding, and the nn.Sequential (module order) passes used when a
model does not trace with torch.fx."""
from collections import Counter

import torch
from torch import nn

from ._foreign_layers import (TIMM_BATCH_NORM_ACT, class_name, is_frozen_batch_norm, is_identity,
                              is_timm_batch_norm_act, trailing_layers)
from ._torch_activations import NotFusable, activation_module, module_activation
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
    """A norm layer convert replaces by a fused one: torch's BatchNorm or timm's BatchNormAct2d."""
    return is_plain_batch_norm(module) or class_name(type(module)) in NAMED_NORM_TO_FUSED


def is_foldable_norm(module):
    return is_convertible_norm(module) or is_fused(module) or is_frozen_batch_norm(module)


def is_fused(module):
    return isinstance(module, _BatchNormAct)


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
    fused_class = BN_TO_FUSED.get(type(bn)) or NAMED_NORM_TO_FUSED[class_name(type(bn))]
    fused = fused_class(activation=activation, activation_param=activation_param, **_options(bn))
    if not is_plain_batch_norm(bn):
        setattr(fused, SOURCE_ATTRIBUTE, (type(bn), inner_act))
    return _move_state(bn, fused)


def batch_norm_from_fused(fused):
    """(plain BatchNorm sharing fused's state, the activation as a torch module). A
    SyncBatchNormAct becomes an nn.SyncBatchNorm on the same process group."""
    from .sync_batchnorm import SyncBatchNormAct  # late: sync_batchnorm imports torch.distributed

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


def _sequentials(model):
    """(qualified name, module) of every nn.Sequential that runs its children in order."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward]


def _qualified(prefix, key):
    return f"{prefix}.{key}" if prefix else key


def _shared(model):
    return Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))


def sequential_pass(model, report, rewrite, wanted, untraced_reason, alone=None):
    """Calls rewrite(seq, keys, i) -> "what it did" (or raises NotFusable) for each module
    seq[keys[i]] satisfying wanted() inside an nn.Sequential, and alone(parent, key) -> what it
    did, or None, for those outside any; reports every wanted module."""
    uses = _shared(model)
    seen = set()
    for prefix, seq in _sequentials(model):
        keys = list(seq._modules)
        for i, key in enumerate(keys):
            module = seq._modules[key]
            if not wanted(module) or id(module) in seen:
                continue
            seen.add(id(module))
            try:
                neighbours = [seq._modules[k] for k in keys[max(i - 1, 0):i + 2]]
                if any(uses[id(m)] > 1 for m in neighbours if m is not None):
                    raise NotFusable("it or a neighbour is registered under more than one name")
                report.fused.append((_qualified(prefix, key), rewrite(seq, keys, i)))
            except NotFusable as e:
                report.skipped.append((_qualified(prefix, key), str(e)))
    for name, module in list(model.named_modules()):
        if wanted(module) and id(module) not in seen:
            seen.add(id(module))
            why = f"not inside an nn.Sequential ({untraced_reason})"
            try:
                what = _alone(model, name, alone) if uses[id(module)] == 1 else None
            except NotFusable as e:
                what, why = None, str(e)
            if what:
                report.fused.append((name, what))
            else:
                report.skipped.append((name, why))


def _alone(model, name, alone):
    if alone is None:
        return None
    parent_name, _, key = name.rpartition(".")
    return alone(model.get_submodule(parent_name), key)


def convert_alone(parent, key):
    """Fuses a norm layer that applies its activation itself, wherever it is; None otherwise."""
    bn = parent._modules[key]
    inner = inner_activation(bn)
    if inner is None:
        return None
    reason = hook_reason(bn)
    if reason:
        raise NotFusable(reason)
    activation, param, act = inner
    parent._modules[key] = fused_from_batch_norm(bn, activation, param, act)
    return f"{type(bn).__name__} with its {type(act).__name__} -> activation={activation!r}"


def convert_in_sequential(seq, keys, i):
    done = convert_alone(seq, keys[i])
    if done:
        return done
    bn = seq._modules[keys[i]]
    if is_timm_batch_norm_act(bn) and not is_identity(bn.drop):
        raise NotFusable(f"its drop layer {type(bn.drop).__name__} runs after the BatchNorm")
    if i + 1 == len(keys):
        raise NotFusable("last module of its nn.Sequential, no activation follows")
    nxt = seq._modules[keys[i + 1]]
    activation, param = module_activation(nxt)
    reason = hook_reason(bn, nxt)
    if reason:
        raise NotFusable(reason)
    fused = fused_from_batch_norm(bn, activation, param)
    seq._modules[keys[i]] = fused
    # nn.Identity keeps the indices (and so the state_dict keys) of the later modules.
    seq._modules[keys[i + 1]] = nn.Identity()
    return f"{type(bn).__name__} + {type(nxt).__name__} -> {type(fused).__name__}"


def revert_alone(parent, key):
    """Restores a fused layer converted from a layer that applied its activation itself
    (timm's BatchNormAct2d), wherever it is; None otherwise."""
    fused = parent._modules[key]
    source = getattr(fused, SOURCE_ATTRIBUTE, None)
    if source is None or source[1] is None:
        return None
    parent._modules[key], _ = batch_norm_from_fused(fused)
    return f"{type(fused).__name__} -> {source[0].__name__} with its {type(source[1]).__name__}"


def revert_in_sequential(seq, keys, i):
    done = revert_alone(seq, keys[i])
    if done:
        return done
    fused = seq._modules[keys[i]]
    bn, act = batch_norm_from_fused(fused)
    if type(act) is not nn.Identity:
        if i + 1 == len(keys) or type(seq._modules[keys[i + 1]]) is not nn.Identity:
            raise NotFusable("not followed by nn.Identity, so there is no slot for the activation")
        seq._modules[keys[i + 1]] = act
    seq._modules[keys[i]] = bn
    return f"{type(fused).__name__} -> {type(bn).__name__} + {type(act).__name__}"


def fold_in_sequential(seq, keys, i):
    bn = seq._modules[keys[i]]
    if i == 0:
        raise NotFusable("first module of its nn.Sequential, no Conv/Linear before it")
    layer = seq._modules[keys[i - 1]]
    reason = fold_reason(layer, bn)
    if reason:
        raise NotFusable(reason)
    fold_into(layer, bn)
    act = after_fold(bn)
    seq._modules[keys[i]] = act
    return f"folded into {type(layer).__name__} {keys[i - 1]}, keeps {type(act).__name__}"

"""Module-level pieces shared by convert/revert/fold: BatchNorm <-> BatchNormAct with shared
state, Conv/Linear + BatchNorm folding, and the nn.Sequential (module order) passes used when a
model does not trace with torch.fx."""
from collections import Counter

import torch
from torch import nn

from ._torch_activations import NotFusable, activation_module, module_activation
from .modules import BatchNormAct1d, BatchNormAct2d, BatchNormAct3d, _BatchNormAct

BN_TO_FUSED = {nn.BatchNorm1d: BatchNormAct1d, nn.BatchNorm2d: BatchNormAct2d,
               nn.BatchNorm3d: BatchNormAct3d}
FUSED_TO_BN = {fused: bn for bn, fused in BN_TO_FUSED.items()}
FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def is_plain_batch_norm(module):
    return type(module) in BN_TO_FUSED


def is_fused(module):
    return isinstance(module, _BatchNormAct)


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


def fused_from_batch_norm(bn, activation, activation_param):
    fused = BN_TO_FUSED[type(bn)](activation=activation, activation_param=activation_param,
                                  **_options(bn))
    return _move_state(bn, fused)


def batch_norm_from_fused(fused):
    """(plain BatchNorm sharing fused's state, the activation as a torch module). A
    SyncBatchNormAct becomes an nn.SyncBatchNorm on the same process group."""
    from .sync_batchnorm import SyncBatchNormAct  # late: sync_batchnorm imports torch.distributed

    if isinstance(fused, SyncBatchNormAct):
        bn = nn.SyncBatchNorm(process_group=fused.process_group, **_options(fused))
    else:
        bn = FUSED_TO_BN[type(fused)](**_options(fused))
    return (_move_state(fused, bn),
            activation_module(fused.activation, fused.activation_param))


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
    if bn.training:
        return "BatchNorm is in training mode (fold is for inference: call model.eval() first)"
    if bn.running_mean is None or bn.running_var is None:
        return "BatchNorm has no running statistics (track_running_stats=False)"
    channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if channels != bn.num_features:
        return (f"{type(layer).__name__} has {channels} outputs, "
                f"BatchNorm {bn.num_features} features")
    return hook_reason(layer, bn)


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


def sequential_pass(model, report, rewrite, wanted, untraced_reason):
    """Calls rewrite(seq, keys, i) -> "what it did" (or raises NotFusable) for each module
    seq[keys[i]] satisfying wanted() inside an nn.Sequential; reports every wanted module,
    including those outside any nn.Sequential."""
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
    for name, module in model.named_modules():
        if wanted(module) and id(module) not in seen:
            seen.add(id(module))
            report.skipped.append((name, f"not inside an nn.Sequential ({untraced_reason})"))


def convert_in_sequential(seq, keys, i):
    bn = seq._modules[keys[i]]
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


def revert_in_sequential(seq, keys, i):
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
    act = batch_norm_from_fused(bn)[1] if is_fused(bn) else nn.Identity()
    seq._modules[keys[i]] = act
    return f"folded into {type(layer).__name__} {keys[i - 1]}, keeps {type(act).__name__}"

"""fold: each eval-mode BatchNorm whose input comes straight from a Conv/Linear module is folded
into it; what the norm applied after normalising stays, as modules. The torch.fx pass is here;
the module-order pass (conversion/sequential.py) uses the same pieces."""
import operator

import torch
from torch import fx, nn

from .foreign_layers import is_frozen_batch_norm, is_identity, trailing_layers
from .fx_passes import describe, residual_of, rewrite_each, set_module, single_user
from .module_swap import hook_reason, is_convertible_norm, is_fused, is_per_sample_norm
from .torch_activations import NotFusable, activation_module

FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def is_foldable_norm(module):
    """Only the BatchNorm kind folds: GroupNorm/InstanceNorm use each sample's own statistics."""
    if is_per_sample_norm(module):
        return False
    return is_convertible_norm(module) or is_fused(module) or is_frozen_batch_norm(module)




def fold_graph(gm, report):
    rewrite_each(gm, report, is_foldable_norm, _fold)


def _fold(gm, bn_node, modules, calls):
    bn = modules[bn_node.target]
    layer_node = bn_node.args[0] if bn_node.args else None
    if not isinstance(layer_node, fx.Node) or layer_node.op != "call_module":
        source = describe(layer_node) if isinstance(layer_node, fx.Node) else repr(layer_node)
        raise NotFusable(f"its input comes from {source}, not a Conv/Linear module")
    layer = modules[layer_node.target]
    if calls[bn_node.target] > 1 or calls[layer_node.target] > 1:
        raise NotFusable("it or the layer before it is called more than once in forward")
    single_user(layer_node, f"the output of {layer_node.target}")
    reason = fold_reason(layer, bn)
    if reason:
        raise NotFusable(reason)
    fold_into(layer, bn)
    what = f"folded into {layer_node.target}"
    residual = residual_of(bn_node) if is_fused(bn) else None
    value = layer_node
    if residual is not None:
        with gm.graph.inserting_before(bn_node):
            value = gm.graph.call_function(operator.add, (layer_node, residual))
    rest = after_fold(bn)
    if is_identity(rest):
        bn_node.replace_all_uses_with(value)
        gm.graph.erase_node(bn_node)
        return what + (", then add" if residual is not None else "")
    set_module(gm, bn_node.target, rest)  # the activation takes the BatchNorm's name
    bn_node.args, bn_node.kwargs = (value,), {}
    added = ", then add" if residual is not None else ""
    return f"{what}{added}, then {type(rest).__name__}"


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

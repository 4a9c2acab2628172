"""fold's torch.fx pass: each eval-mode norm layer whose input comes straight from a Conv/Linear
module is folded into it; what the norm applied after normalising stays, as modules."""
import operator

from torch import fx

from ._foreign_layers import is_identity
from ._fx_passes import _describe, _residual_of, _rewrite_each, _set_module, _single_user
from ._module_swap import after_fold, fold_into, fold_reason, is_foldable_norm, is_fused
from ._torch_activations import NotFusable


def fold_graph(gm, report):
    _rewrite_each(gm, report, is_foldable_norm, _fold)


def _fold(gm, bn_node, modules, calls):
    bn = modules[bn_node.target]
    layer_node = bn_node.args[0] if bn_node.args else None
    if not isinstance(layer_node, fx.Node) or layer_node.op != "call_module":
        source = _describe(layer_node) if isinstance(layer_node, fx.Node) else repr(layer_node)
        raise NotFusable(f"its input comes from {source}, not a Conv/Linear module")
    layer = modules[layer_node.target]
    if calls[bn_node.target] > 1 or calls[layer_node.target] > 1:
        raise NotFusable("it or the layer before it is called more than once in forward")
    _single_user(layer_node, f"the output of {layer_node.target}")
    reason = fold_reason(layer, bn)
    if reason:
        raise NotFusable(reason)
    fold_into(layer, bn)
    what = f"folded into {layer_node.target}"
    residual = _residual_of(bn_node) if is_fused(bn) else None
    value = layer_node
    if residual is not None:
        with gm.graph.inserting_before(bn_node):
            value = gm.graph.call_function(operator.add, (layer_node, residual))
    rest = after_fold(bn)
    if is_identity(rest):
        bn_node.replace_all_uses_with(value)
        gm.graph.erase_node(bn_node)
        return what + (", then add" if residual is not None else "")
    _set_module(gm, bn_node.target, rest)  # the activation takes the BatchNorm's name
    bn_node.args, bn_node.kwargs = (value,), {}
    added = ", then add" if residual is not None else ""
    return f"{what}{added}, then {type(rest).__name__}"

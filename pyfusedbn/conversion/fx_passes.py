"""torch.fx passes for convert/revert (fold's is in folding.py; tracing in tracing.py): find the
patterns in a traced graph and rewrite it.

The GraphModule keeps every module at its qualified name, so state_dict keys do not change.
"""
import operator
from collections import Counter

import torch
from torch import fx
from torch.fx.operator_schemas import normalize_function

from .foreign_layers import is_identity, has_own_activation
from .module_swap import (fused_from_norm, hook_reason, inner_activation, is_convertible_norm,
                          is_fused, norm_from_fused)
from .torch_activations import (NotFusable, function_activation, method_activation,
                                module_activation)


def _call_counts(graph):
    return Counter(n.target for n in graph.nodes if n.op == "call_module")


def set_module(gm, target, module):
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent), name, module)


def describe(node):
    if node.op == "call_module":
        module = node.graph.owning_module.get_submodule(node.target)
        return f"{node.target} ({type(module).__name__})"
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return node.op


def single_user(node, what):
    users = list(node.users)
    if len(users) != 1:
        names = ", ".join(describe(u) for u in users) or "none"
        raise NotFusable(f"{what} has {len(users)} users ({names}); fusing needs exactly one")
    return users[0]


def _call_kwargs(node):
    """A call_function node's arguments by name, as in the function's signature."""
    if len(node.args) == 1 and not node.kwargs:
        return {"input": node.args[0]}
    try:
        pair = normalize_function(node.target, node.args, node.kwargs,
                                  normalize_to_only_use_kwargs=True)
    except Exception:  # ambiguous or unknown signature
        pair = None
    if pair is None:
        raise NotFusable(f"could not read the arguments of {describe(node)}")
    return pair.kwargs


def _activation(node, value, modules):
    """(activation, param) of node applied to value, or NotFusable."""
    if node.op == "call_module":
        module = modules[node.target]
        if node.args[:1] != (value,):
            raise NotFusable("the value is passed to it as another argument (e.g. a residual)")
        if node.args != (value,) or node.kwargs:
            raise NotFusable("it is called with other arguments")
        reason = hook_reason(module)
        if reason:
            raise NotFusable(reason)
        return module_activation(module)
    if node.op == "call_function":
        kwargs = _call_kwargs(node)
        if kwargs.get("input") is not value:
            raise NotFusable(f"the value is not the input of {describe(node)}")
        return function_activation(node.target, kwargs)
    if node.op == "call_method" and node.args == (value,) and not node.kwargs:
        return method_activation(node.target)
    raise NotFusable("not a supported activation")


# add node target -> whether it writes into its first operand.
_FUNCTION_ADDS = {operator.add: False, operator.iadd: True, torch.add: False}
_METHOD_ADDS = {"add": False, "add_": True}


def _residual_operand(add, value):
    """The other operand of `value + other` in node add, or None if add is not such an add."""
    table = {"call_function": _FUNCTION_ADDS, "call_method": _METHOD_ADDS}.get(add.op, {})
    if add.target not in table:
        return None
    if len(add.args) != 2 or set(add.kwargs) - {"alpha"} or add.kwargs.get("alpha", 1) != 1:
        raise NotFusable(f"{describe(add)} with alpha or extra arguments is not a plain add")
    first, second = add.args
    other = second if first is value else first
    if table[add.target] and first is not value:
        raise NotFusable("the in-place add writes into the other operand, not the norm's output")
    if not isinstance(other, fx.Node) or other is value:
        raise NotFusable("the add's other operand is not a separate tensor")
    return other


def _may_mutate(node, modules):
    if node.op == "call_module":
        return getattr(modules.get(node.target), "inplace", False)
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return (node.kwargs.get("inplace", False) or name.endswith("_") and not name.endswith("__")
            or node.target in (operator.iadd, operator.isub, operator.imul, operator.itruediv))


def rewrite_each(gm, report, wanted, rewrite):
    """rewrite(gm, node, modules, calls) -> what it did (or NotFusable: why not), for each call
    of a module that satisfies wanted()."""
    modules = dict(gm.named_modules())
    calls = _call_counts(gm.graph)
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not wanted(modules[node.target]):
            continue
        try:
            report.fused.append((node.target, rewrite(gm, node, modules, calls)))
        except NotFusable as e:
            report.skipped.append((node.target, str(e)))
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()


def convert_graph(gm, report):
    rewrite_each(gm, report, is_convertible_norm, _fuse)


def revert_graph(gm, report):
    rewrite_each(gm, report, is_fused, _unfuse)


def residual_of(fused_node):
    args = fused_node.args
    return fused_node.kwargs.get("residual", args[1] if len(args) > 1 else None)


def _fuse(gm, bn_node, modules, calls):
    bn = modules[bn_node.target]
    if calls[bn_node.target] > 1:
        raise NotFusable(f"the module is called {calls[bn_node.target]} times in forward")
    if len(bn_node.args) != 1 or bn_node.kwargs:
        raise NotFusable("called with more than one argument")
    reason = hook_reason(bn)
    if reason:
        raise NotFusable(reason)
    inner = inner_activation(bn)
    if inner is not None:  # timm's BatchNormAct2d: its own activation, nothing to find after it
        activation, param, act = inner
        set_module(gm, bn_node.target, fused_from_norm(bn, activation, param, act))
        return f"{type(bn).__name__} with its {type(act).__name__} -> activation={activation!r}"
    if has_own_activation(bn) and not is_identity(bn.drop):
        return _fuse_keeping_drop(gm, bn_node, bn)
    _skip_identities(gm, bn_node, modules)
    user = single_user(bn_node, f"the {type(bn).__name__} output")
    if user.op == "call_module" and is_fused(gm.get_submodule(user.target)) \
            and bn_node is residual_of(user):
        raise NotFusable(f"its output is the residual of {describe(user)}, fused with that add")
    residual = _residual_operand(user, bn_node)
    if residual is None:
        act_node = user
        try:
            activation, param = _activation(act_node, bn_node, modules)
        except NotFusable as e:
            raise NotFusable(f"followed by {describe(act_node)}: {e}") from None
    else:
        act_node, activation, param = _activation_after_add(user, modules)
    (x,) = bn_node.args
    added = f" + add({describe(residual)})" if residual is not None else ""
    then = f" + {describe(act_node)}" if act_node is not None else ""
    done = f"{type(bn).__name__}{added}{then} -> activation={activation!r}"
    if residual is not None:
        # The fused op runs where the add was: check nothing in between writes into x.
        between = _nodes_between(bn_node, user)
        if any(u in between and _may_mutate(u, modules) for u in x.users):
            raise NotFusable(f"the {type(bn).__name__} input may be modified in place before "
                             f"the add")
    set_module(gm, bn_node.target, fused_from_norm(bn, activation, param))
    if residual is None:
        act_node.replace_all_uses_with(bn_node)
        gm.graph.erase_node(act_node)
        return done
    with gm.graph.inserting_before(user):
        fused_node = gm.graph.call_module(bn_node.target, (x,), {"residual": residual})
    last = act_node if act_node is not None else user
    last.replace_all_uses_with(fused_node)
    for node in (act_node, user, bn_node):
        if node is not None:
            gm.graph.erase_node(node)
    return done


def _activation_after_add(add, modules):
    """(activation node or None, activation, param) for the add's output: its one user if that
    is a supported activation, else "identity" (the add alone is fused: the linear bottleneck
    of inverted-residual blocks)."""
    if len(add.users) == 1:
        (act_node,) = add.users
        try:
            return (act_node,) + _activation(act_node, add, modules)
        except NotFusable:
            pass
    return None, "identity", None


def _skip_identities(gm, node, modules):
    """Removes nn.Identity calls on node's output (timm's DropPath with rate 0 is one, between a
    BatchNorm and its residual add): they return their input."""
    while len(node.users) == 1:
        (user,) = node.users
        module = modules.get(user.target) if user.op == "call_module" else None
        if not (is_identity(module) and user.args == (node,) and not user.kwargs
                and not hook_reason(module)):
            return
        user.replace_all_uses_with(node)
        gm.graph.erase_node(user)


def _fuse_keeping_drop(gm, bn_node, bn):
    """timm's BatchNormAct2d with no activation and a drop layer: the fused layer, then the
    drop layer as its own module (in the same order)."""
    set_module(gm, bn_node.target, fused_from_norm(bn, "identity", None))
    drop_name = _free_name(gm, bn_node.target + "_drop")
    gm.add_submodule(drop_name, bn.drop)
    with gm.graph.inserting_after(bn_node):
        drop_node = gm.graph.call_module(drop_name, (bn_node,))
    bn_node.replace_all_uses_with(drop_node, delete_user_cb=lambda user: user is not drop_node)
    return f"{type(bn).__name__} -> activation='identity', then its {type(bn.drop).__name__}"


def _nodes_between(first, last):
    nodes, node = set(), first.next
    while node is not last:
        nodes.add(node)
        node = node.next
    return nodes


def _unfuse(gm, node, modules, calls):
    fused = modules[node.target]
    bn, act = norm_from_fused(fused)
    set_module(gm, node.target, bn)
    users = list(node.users)
    residual = residual_of(node)
    node.args, node.kwargs = node.args[:1], {}
    last = node
    if residual is not None:
        with gm.graph.inserting_after(last):
            last = gm.graph.call_function(operator.add, (last, residual))
    if type(act) is not torch.nn.Identity:
        act_name = _free_name(gm, node.target + "_act")
        gm.add_submodule(act_name, act)
        with gm.graph.inserting_after(last):
            last = gm.graph.call_module(act_name, (last,))
    for user in users:
        user.replace_input_with(node, last)
    added = " + add" if residual is not None else ""
    return f"{type(fused).__name__} -> {type(bn).__name__}{added} + {type(act).__name__}"


def _free_name(gm, name):
    taken = dict(gm.named_modules())
    candidate, i = name, 1
    while candidate in taken:
        candidate, i = f"{name}{i}", i + 1
    return candidate

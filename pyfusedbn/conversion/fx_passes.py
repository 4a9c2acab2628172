"""torch.fx passes for convert/revert (fold's is in folding.py): trace, find the patterns, rewrite
the graph.

The GraphModule keeps every module at its qualified name, so state_dict keys do not change.
"""
import inspect
import operator
from collections import Counter

import torch
from torch import fx
from torch.fx.operator_schemas import normalize_function

from .foreign_layers import is_identity, is_kept_whole_when_tracing, has_own_activation
from .module_swap import (fused_from_norm, hook_reason, inner_activation, is_convertible_norm,
                          is_fused, norm_from_fused)
from .torch_activations import (NotFusable, function_activation, method_activation,
                                module_activation)


# A module convert fused with one graph per None pattern of its arguments (none_patterns.py) has a
# class recording the class it replaced, here: tracing it would freeze one pattern.
ORIGINAL_CLASS = "_pyfusedbn_original_class"


def is_dispatching(module):
    return ORIGINAL_CLASS in vars(type(module))


class _Tracer(fx.Tracer):
    """leaves: ids of modules called as they are (those that do not trace themselves)."""

    def __init__(self, leaves=frozenset()):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, module, qualified_name):
        # Norm layers are kept whole (not traced into F.batch_norm) so they can be fused.
        return (id(module) in self.leaves or is_dispatching(module) or is_fused(module)
                or is_kept_whole_when_tracing(module)
                or is_convertible_norm(module)
                or super().is_leaf_module(module, qualified_name))


def _without_varargs(cls):
    """A subclass of cls whose forward takes forward's named arguments only (*args and **kwargs
    are passed empty): diffusers' blocks take `*args, **kwargs` only to warn about deprecated
    ones, and `len(args)` on a traced *args does not trace. The traced module then takes the
    named arguments only; None if forward has no *args / **kwargs."""
    signature = inspect.signature(cls.forward)
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    if not any(p.kind in variadic for p in signature.parameters.values()):
        return None
    named = [p for p in signature.parameters.values() if p.kind not in variadic]
    if any(p.kind is inspect.Parameter.KEYWORD_ONLY for p in named):
        return None
    names = [p.name for p in named]
    defaults = {p.name: p.default for p in named if p.default is not inspect.Parameter.empty}
    header = ", ".join(n + (f"=_defaults[{n!r}]" if n in defaults else "") for n in names)
    source = (f"def forward({header}):\n"
              f"    return _forward({', '.join(names[:1] + [f'{n}={n}' for n in names[1:]])})\n")
    scope = {"_defaults": defaults, "_forward": cls.forward}
    exec(source, scope)  # fx reads the arguments from the code object: they must be real
    return type(cls.__name__, (cls,), {"forward": scope["forward"]})


def trace(model, concrete_args=None, whole_state=True, leaves=frozenset()):
    """(GraphModule, None), or (None, why not). The model is traced in train and in eval mode:
    a forward that branches on self.training would be frozen into one mode by tracing.
    concrete_args: arguments traced as these values (None: a caller's None). whole_state: the
    graph must use every parameter and buffer (the GraphModule then replaces the model).
    leaves: ids of submodules called as they are, not traced into."""
    modes = {m: m.training for m in model.modules()}
    cls, named_only = type(model), _without_varargs(type(model))
    try:
        graphs = []
        if named_only is not None:
            model.__class__ = named_only
        for training in (True, False):
            model.train(training)
            graphs.append(_Tracer(leaves).trace(model, concrete_args=concrete_args))
    except Exception as e:  # fx raises many types; any of them means "does not trace"
        first_line = (str(e).strip().splitlines() or [""])[0]
        return None, f"torch.fx could not trace it: {type(e).__name__}: {first_line}"
    finally:
        model.__class__ = cls
        for m, training in modes.items():
            m.training = training
    if _source_without_contiguous(graphs[0]) != _source_without_contiguous(graphs[1]):
        return None, "its forward depends on self.training, which tracing would freeze"
    gm = fx.GraphModule(model, graphs[1], type(model).__name__)
    if whole_state and set(gm.state_dict()) != set(model.state_dict()):
        return None, "its traced graph does not use every parameter and buffer"
    for name, m in gm.named_modules():
        try:
            m.training = model.get_submodule(name).training
        except AttributeError:  # a container fx created for the path: keep the model's mode
            m.training = model.training
    return gm, None


def trace_for_any_inputs(module, leaves=frozenset()):
    """(trace(module)'s GraphModule, None) if its graph holds whatever its callers pass, else
    (None, why not). A submodule's callers may pass None (diffusers' Decoder calls ResnetBlock2D
    with temb=None): tracing sees a tensor there, and `temb is not None` is then always true. So
    the graph must be the same with each argument after the first concretely None."""
    gm, why = trace(module, leaves=leaves)
    if gm is None:
        return None, why
    cls, named_only = type(module), _without_varargs(type(module))
    names = [n.target for n in gm.graph.nodes if n.op == "placeholder"][1:]
    try:
        if named_only is not None:
            module.__class__ = named_only
        for name in names:
            try:
                graph = _Tracer(leaves).trace(module, concrete_args={name: None})
            except Exception as e:  # the tensor's graph would be a guess for a caller's None
                return None, f"it does not trace with {name} None: {type(e).__name__}: {e}"
            if _operations(graph) != _operations(gm.graph, none=name):
                return None, f"its traced graph depends on whether {name} is None"
    finally:
        module.__class__ = cls
    return gm, None


def _operations(graph, none=None):
    """What a graph computes, without its inputs (a concrete input adds assertion nodes): each
    node's op, target and arguments (nodes by position, inputs by name; the input named `none`
    as None, as a concretely None input appears in the graph traced with it)."""
    kept = [n for n in graph.nodes
            if n.op not in ("placeholder", "output") and "assert" not in str(n.target)]
    position = {n: i for i, n in enumerate(kept)}

    def name(node):
        if node.op == "placeholder":
            return None if node.target == none else f"input {node.target}"
        return position.get(node, node.op)

    return [(n.op, str(n.target), repr(fx.node.map_arg((n.args, n.kwargs), name)))
            for n in kept] + [repr(fx.node.map_arg(graph.output_node().args, name))]


def _source_without_contiguous(graph):
    """The graph's code with plain x.contiguous() calls removed (they change no value; diffusers'
    ResnetBlock2D makes its shortcut's input contiguous in training only)."""
    for node in list(graph.nodes):
        if node.op == "call_method" and node.target == "contiguous" and len(node.args) == 1 \
                and not node.kwargs:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    return graph.python_code("self").src


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

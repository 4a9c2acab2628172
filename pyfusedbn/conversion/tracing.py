"""torch.fx tracing for convert/revert: a model (or submodule) traced in both modes, norm layers
kept whole, and whether a submodule's graph holds for every caller (arguments None or not).
"""
import inspect

from torch import fx

from .foreign_layers import is_kept_whole_when_tracing
from .module_swap import is_convertible_norm, is_fused


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

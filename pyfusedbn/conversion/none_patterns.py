"""convert for a module whose traced graph depends on which of its arguments are None (diffusers'
ResnetBlock2D adds its `temb` only when it is not None; its Decoder passes None, the UNet a
tensor): one graph per None pattern, each traced and fused alike. The module keeps its state,
attributes and class (now a subclass whose forward runs the graph of the pattern it is called
with). A call no graph covers (extra *args / **kwargs, a pattern that did not trace) runs the
class's own forward on the original norms, rebuilt from the fused layers' state for that call."""
import inspect
import itertools
from types import SimpleNamespace

from .fx_passes import set_module
from .tracing import ORIGINAL_CLASS, is_dispatching, trace
from .module_swap import norm_from_fused

# At most 2**MAX_OPTIONAL graphs per module: arguments after the first that may be None.
MAX_OPTIONAL = 4
# The dispatching class records the class it replaced (ORIGINAL_CLASS) and its fused layers.
FUSED_TARGETS = "_pyfusedbn_fused_targets"


def convert_per_pattern(module, graph_pass, leaves=frozenset()):
    """Fuses module in place, one graph per None pattern; (fused, skipped) lists of (name, what)
    as in a ConversionReport, or None (module unchanged) if no pattern traces or nothing is
    fused. A norm layer is fused as in the first pattern that fuses it (all arguments given
    first); a pattern where it is left, or fused otherwise, keeps no graph (that call runs the
    class's own forward)."""
    parameters = list(inspect.signature(type(module).forward).parameters.values())[1:]
    names = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind is p.KEYWORD_ONLY for p in parameters) \
            or not 1 < len(names) <= MAX_OPTIONAL + 1:
        return None
    parts = {}
    for pattern in itertools.product((False, True), repeat=len(names) - 1):
        concrete = {name: None for name, none in zip(names[1:], pattern) if none}
        gm, _ = trace(module, concrete or None, whole_state=False, leaves=leaves)
        if gm is not None:  # else that call runs the class's own forward
            part = SimpleNamespace(fused=[], skipped=[])
            graph_pass(gm, part)
            parts[pattern] = (gm, dict(part.fused), dict(part.skipped))
    fused = {}
    for gm, done, _ in parts.values():
        for target, what in done.items():
            fused.setdefault(target, (what, gm.get_submodule(target)))
    graphs = {pattern: gm for pattern, (gm, done, left) in parts.items()
              if all(done.get(t, what) == what and t not in left
                     for t, (what, _) in fused.items())
              and _resolves(module, gm, fused)}
    if not fused or not graphs:
        return None
    for target, (_, layer) in fused.items():
        set_module(module, target, layer)
    functions = {pattern: _compiled(gm) for pattern, gm in graphs.items()}
    module.__class__ = _dispatching_class(type(module), names, functions, sorted(fused))
    how = f" (one graph per None pattern of {', '.join(names[1:])})"
    skipped = {t: why for _, _, left in parts.values() for t, why in left.items()
               if t not in fused}
    return [(t, what + how) for t, (what, _) in fused.items()], list(skipped.items())


def _resolves(module, gm, fused):
    """Every module and attribute gm's graph names exists in module once fused is swapped in."""
    for node in gm.graph.nodes:
        if node.op in ("call_module", "get_attr") and node.target not in fused:
            try:
                module.get_submodule(node.target) if node.op == "call_module" \
                    else _get_attr(module, node.target)
            except AttributeError:
                return False
    return True


def _get_attr(module, target):
    for part in target.split("."):
        module = getattr(module, part)
    return module


def _compiled(gm):
    """gm's forward as a function of (self, *arguments) for any module with gm's layout."""
    code = gm.graph.python_code(root_module="self")
    scope = dict(code.globals)
    exec(compile(code.src, f"<pyfusedbn {type(gm).__name__}>", "exec"), scope)
    return scope["forward"]


def _dispatching_class(cls, names, functions, fused):
    signature = inspect.signature(cls.forward)
    variadic = [p.name for p in signature.parameters.values()
                if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def forward(self, *args, **kwargs):
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError:
            bound = None
        if bound is not None:
            bound.apply_defaults()
            values = bound.arguments
            function = None if any(values.get(n) for n in variadic) or values[names[0]] is None \
                else functions.get(tuple(values[n] is None for n in names[1:]))
            if function is not None:
                return function(self, *(values[n] for n in names))
        return _original_forward(self, args, kwargs)

    forward.__doc__ = cls.forward.__doc__
    return type(cls.__name__, (cls,), {"forward": forward, ORIGINAL_CLASS: cls,
                                       FUSED_TARGETS: tuple(fused),
                                       "__module__": cls.__module__})


def _original_forward(module, args, kwargs):
    fused = {t: module.get_submodule(t) for t in getattr(module, FUSED_TARGETS)}
    try:
        for target, layer in fused.items():
            set_module(module, target, norm_from_fused(layer)[0])
        return getattr(module, ORIGINAL_CLASS).forward(module, *args, **kwargs)
    finally:
        for target, layer in fused.items():
            set_module(module, target, layer)


def revert_dispatching(module):
    """Undoes convert_per_pattern: the norms (sharing the fused layers' state) and the class back.
    [(name, what)]."""
    done = []
    for target in getattr(module, FUSED_TARGETS):
        layer = module.get_submodule(target)
        norm, _ = norm_from_fused(layer)
        set_module(module, target, norm)
        done.append((target, f"{type(layer).__name__} -> {type(norm).__name__} (its forward "
                             f"applies the activation)"))
    module.__class__ = getattr(module, ORIGINAL_CLASS)
    return done

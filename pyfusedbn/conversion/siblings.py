"""convert where torch.fx cannot trace a forward at all (diffusers' UNet2DModel ends with
`sample = self.conv_norm_out(sample)` then `sample = self.conv_act(sample)`): the forward's
source is read instead. A norm child and an activation child are fused when two consecutive
statements apply them to the same variable, `v = self.norm(v)` then `v = self.act(v)`, and the
class's source names neither anywhere else: whoever calls the module then gets the same values.
The norm becomes the fused layer, the activation nn.Identity (its name and state_dict keys stay);
revert puts both back."""
import ast
import functools
import inspect
import textwrap

from torch import nn

from .module_swap import fused_from_norm, hook_reason, is_convertible_norm, norm_from_fused
from .torch_activations import NotFusable, module_activation

# The fused layer records the activation it took over: (its attribute name, the module).
SIBLING_ATTRIBUTE = "_pyfusedbn_sibling_activation"


def _class_sources(cls):
    """The parsed source of cls and its bases up to torch's own classes ([] if unavailable)."""
    trees = [_parsed(base) for base in cls.__mro__
             if not base.__module__.startswith("torch.") and base is not object]
    return [] if any(tree is None for tree in trees) else trees


@functools.lru_cache(maxsize=None)
def _parsed(cls):
    try:
        return ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return None


def _self_call(statement):
    """(variable, attribute) of `variable = self.attribute(variable)`, else None."""
    if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Name)):
        return None
    call = statement.value
    if not (isinstance(call, ast.Call) and len(call.args) == 1 and not call.keywords
            and isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name)
            and call.func.value.id == "self" and isinstance(call.args[0], ast.Name)
            and call.args[0].id == statement.targets[0].id):
        return None
    return statement.targets[0].id, call.func.attr


def _pairs(forward_tree):
    """(norm attribute, activation attribute) of consecutive `v = self.a(v)`, `v = self.b(v)`."""
    for node in ast.walk(forward_tree):
        for field in ("body", "orelse", "finalbody"):
            statements = getattr(node, field, None)
            if not isinstance(statements, list):
                continue
            calls = [_self_call(s) for s in statements]
            for first, second in zip(calls, calls[1:]):
                if first and second and first[0] == second[0]:
                    yield first[1], second[1]


def _uses(trees, name):
    """How often the class's source reads self.<name> (or getattr(self, "<name>")) other than
    to assign it or test it (`if self.name:`, `self.name is None`): each such read could call it."""
    harmless = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.If, ast.IfExp, ast.While)):
                harmless.add(id(node.test))
            if isinstance(node, ast.Compare) and all(isinstance(op, (ast.Is, ast.IsNot))
                                                     for op in node.ops):
                harmless.update(id(n) for n in [node.left] + node.comparators)
    return sum((isinstance(n, ast.Attribute) and n.attr == name
                and isinstance(n.ctx, ast.Load) and id(n) not in harmless)
               or (isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                   and n.func.id in ("getattr", "setattr") and len(n.args) > 1
                   and isinstance(n.args[1], ast.Constant) and n.args[1].value == name)
               for tree in trees for n in ast.walk(tree))


def convert_siblings(module, uses):
    """Fuses module's norm + activation children as its forward applies them (see the module
    docstring); [(norm attribute, what was done)]. uses: id -> names registered (registrations)."""
    children = [m for m in module._modules.values() if m is not None]
    if not (any(is_convertible_norm(m) for m in children)
            and any(_is_activation(m) for m in children)):
        return []  # nothing to pair: the source is not read
    owner = next(base for base in type(module).__mro__ if "forward" in vars(base))
    trees = _class_sources(type(module))
    if owner.__module__.startswith("torch.") or not trees:
        return []
    forward = next((n for n in ast.walk(_parsed(owner))
                    if isinstance(n, ast.FunctionDef) and n.name == "forward"), None)
    done = []
    for norm_name, act_name in _pairs(forward) if forward is not None else ():
        norm, act = module._modules.get(norm_name), module._modules.get(act_name)
        if not (is_convertible_norm(norm) and isinstance(act, nn.Module)):
            continue
        if _uses(trees, norm_name) != 1 or _uses(trees, act_name) != 1:
            continue  # read elsewhere: fusing would change what that use computes
        if uses[id(norm)] > 1 or uses[id(act)] > 1 or hook_reason(norm, act) \
                or any(True for _ in act.parameters()) or any(True for _ in act.buffers()):
            continue
        try:
            activation, param = module_activation(act)
        except NotFusable:
            continue
        fused = fused_from_norm(norm, activation, param)
        setattr(fused, SIBLING_ATTRIBUTE, (act_name, act))
        module._modules[norm_name], module._modules[act_name] = fused, nn.Identity()
        done.append((norm_name, f"{type(norm).__name__} + {act_name} ({type(act).__name__}) -> "
                                f"activation={activation!r} (found in the source of "
                                f"{owner.__name__}.forward; {act_name} is now nn.Identity)"))
    return done


def _is_activation(module):
    try:
        module_activation(module)
    except NotFusable:
        return False
    return True


def revert_siblings(model):
    """Undoes convert_siblings everywhere in model; [(name, what was done)]."""
    done = []
    for name, module in list(model.named_modules()):
        for key, fused in list(module._modules.items()):
            sibling = getattr(fused, SIBLING_ATTRIBUTE, None)
            if sibling is None:
                continue
            act_name, act = sibling
            module._modules[key], _ = norm_from_fused(fused)
            module._modules[act_name] = act
            done.append((f"{name}.{key}" if name else key,
                         f"{type(fused).__name__} -> {type(module._modules[key]).__name__} + "
                         f"{act_name} ({type(act).__name__})"))
    return done

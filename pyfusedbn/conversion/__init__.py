"""convert / revert / fold: adopt pyfusedbn in an existing model by changing one line.

    model = pyfusedbn.convert(model)        # BatchNorm (+ add) + activation -> BatchNormAct
    print(model.pyfusedbn_report)           # what was fused, what was left and why

Patterns are found with torch.fx where the model traces (the result is then a
torch.fx.GraphModule with the same parameters, buffers and state_dict keys). Where it does not:
in its largest traceable submodules (with their untraceable descendants called whole), with one
graph per None pattern of a submodule's arguments where its graph depends on them
(none_patterns.py), in the source of an untraceable forward for norm + activation children
applied one after the other (siblings.py), and by module order inside nn.Sequential (the model
keeps its classes). Each function returns the model and attaches a ConversionReport to it as
`model.pyfusedbn_report`.
"""
import copy
from dataclasses import dataclass, field
from typing import List, Tuple

from torch import nn

from . import folding, fx_passes, module_swap, none_patterns, sequential, siblings, tracing

REPORT_ATTRIBUTE = "pyfusedbn_report"


@dataclass
class ConversionReport:
    """What convert/revert/fold changed (`fused`) and left alone (`skipped`), each a list of
    (qualified module name, what was done / why not)."""

    operation: str
    method: str = ""
    fused: List[Tuple[str, str]] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        done = {"convert": "fused", "revert": "restored", "fold": "folded"}[self.operation]
        lines = [f"pyfusedbn.{self.operation}: {len(self.fused)} {done}, "
                 f"{len(self.skipped)} left unchanged; {self.method}"]
        width = max((len(name) for name, _ in self.fused + self.skipped), default=0)
        lines += [f"  {done:<8} {name:<{width}}  {what}" for name, what in self.fused]
        lines += [f"  {'left':<8} {name:<{width}}  {why}" for name, why in self.skipped]
        return "\n".join(lines)


def _run(operation, model, inplace, trace, graph_pass, sequential_rewrite, wanted, alone=None):
    if not isinstance(model, nn.Module):
        raise TypeError(f"pyfusedbn.{operation}: model must be an nn.Module, "
                        f"got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    report = ConversionReport(operation)
    norms = ([(name, m) for name, m in model.named_modules() if module_swap.is_norm_layer(m)]
             if operation == "convert" else [])
    if operation == "revert":
        _revert_dispatching(model, report)
    gm, untraced = tracing.trace(model) if trace else (None, "trace=False")
    if gm is not None:
        report.method = "found with torch.fx; the model is now a torch.fx.GraphModule"
        graph_pass(gm, report)
        model = gm
    else:
        untraceable = {}
        traced = (_traced_parts(operation, model, graph_pass, report, untraceable)
                  if trace else set())
        if operation == "convert":
            _convert_siblings(model, report, untraceable)
        report.method = (f"found with torch.fx in its largest traceable submodules (now "
                         f"torch.fx.GraphModules where fused) and by module order inside "
                         f"nn.Sequential elsewhere ({untraced})")
        sequential.sequential_pass(model, report, sequential_rewrite,
                                   lambda m: wanted(m) and id(m) not in traced,
                                   _untraced_reason(untraceable, untraced, trace), alone)
    _report_the_rest(report, norms)
    setattr(model, REPORT_ATTRIBUTE, report)
    return model


def _traced_parts(operation, model, graph_pass, report, untraceable, prefix=""):
    """Where the model does not trace: its largest traceable submodules (recursively), each
    rewritten as a GraphModule where the pass changed something; a submodule whose own forward
    traces once its untraceable descendants are called whole is rewritten so too (or, for
    convert, one graph per None pattern of its arguments: none_patterns). The ids of the modules
    whose norms the pass saw; untraceable collects id(module) -> (name, why not) of the rest."""
    traced = set()
    uses = sequential.registrations(model)
    for name, child in list(model.named_children()):
        if uses[id(child)] > 1 or not any(True for _ in child.children()):
            continue  # shared: replacing it would split it; a leaf holds no pattern
        if type(child) is nn.Sequential:  # module order handles it, as before
            traced |= _traced_parts(operation, child, graph_pass, report, untraceable,
                                    f"{prefix}{name}.")
            continue
        leaves = frozenset()
        gm, why = tracing.trace_for_any_inputs(child)
        if gm is None:
            traced |= _traced_parts(operation, child, graph_pass, report, untraceable,
                                    f"{prefix}{name}.")
            leaves = frozenset(i for i in untraceable if i in {id(m) for m in child.modules()})
            gm, _ = tracing.trace_for_any_inputs(child, leaves) if leaves else (None, why)
        part = ConversionReport(operation)
        if gm is None:
            per_pattern = (none_patterns.convert_per_pattern(child, graph_pass, leaves)
                           if operation == "convert" else None)
            if per_pattern is None:
                untraceable[id(child)] = (f"{prefix}{name}", why)
                continue
            part.fused, part.skipped = per_pattern
        else:
            graph_pass(gm, part)
        called_whole = {id(m) for leaf in child.modules() if id(leaf) in leaves
                        for m in leaf.modules()}
        traced |= {id(m) for m in child.modules()} - called_whole
        seen = {n for n, _ in report.fused + report.skipped}
        report.fused += [(f"{prefix}{name}.{n}", what) for n, what in part.fused
                         if f"{prefix}{name}.{n}" not in seen]
        report.skipped += [(f"{prefix}{name}.{n}", why) for n, why in part.skipped
                           if f"{prefix}{name}.{n}" not in seen]
        if gm is not None and part.fused:
            traced |= {id(m) for m in gm.modules()} - called_whole
            _keep_what_callers_read(child, gm)
            setattr(model, name, gm)
    return traced


def _untraced_reason(untraceable, model_reason, traced):
    """name -> why a norm layer that no traced graph holds was not fused: the nearest module
    around it that torch.fx could not trace (else the model), with why."""
    reasons = dict(untraceable.values())

    def reason(norm_name):
        if not traced:
            return ("in no nn.Sequential where module order would show an activation after it "
                    "(trace=False: torch.fx was not used)")
        around = max((n for n in reasons if norm_name.startswith(n + ".")), key=len, default=None)
        who, why = (around, reasons[around]) if around else ("the model", model_reason)
        return (f"inside {who} ({why}), and in no nn.Sequential where module order would show "
                f"an activation after it")
    return reason


def _convert_siblings(model, report, untraceable):
    """In the forward of the model and of each module that does not trace: norm + activation
    children applied one after the other (siblings.py)."""
    uses = sequential.registrations(model)
    for name, module in list(model.named_modules()):
        if module is model or id(module) in untraceable:
            report.fused += [(f"{name}.{n}" if name else n, what)
                             for n, what in siblings.convert_siblings(module, uses)]


def _revert_dispatching(model, report):
    """The modules convert fused one graph per None pattern, or by reading their forward's
    source, get their norms, activations and class back."""
    report.fused += siblings.revert_siblings(model)
    for name, module in list(model.named_modules()):
        if none_patterns.is_dispatching(module):
            report.fused += [(f"{name}.{n}" if name else n, what)
                             for n, what in none_patterns.revert_dispatching(module)]


def _keep_what_callers_read(child, gm):
    """The parent's forward may read the child's attributes (diffusers' has_cross_attention,
    len(block.resnets)): gm keeps them, and its ModuleLists / ModuleDicts (fx leaves plain
    Modules on the paths to the modules it calls), holding gm's modules where it has them."""
    for key, value in vars(child).items():
        if not key.startswith("_") and key not in vars(gm):
            setattr(gm, key, value)
    containers = [(path, m) for path, m in child.named_modules()
                  if isinstance(m, (nn.ModuleList, nn.ModuleDict))]
    for path, container in sorted(containers, key=lambda item: -item[0].count(".")):
        items = {key: _submodule_or_none(gm, f"{path}.{key}") or item
                 for key, item in container._modules.items()}
        rebuilt = type(container)(list(items.values()) if isinstance(container, nn.ModuleList)
                                  else items)
        fx_passes.set_module(gm, path, rebuilt) if _submodule_or_none(gm, path.rpartition(".")[0]) \
            is not None else gm.add_submodule(path, rebuilt)


def _submodule_or_none(module, path):
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def _report_the_rest(report, norms):
    """Every norm layer of the model is in the report: those the pass did not see, with why."""
    seen = {name for name, _ in report.fused + report.skipped}
    for name, norm in norms:
        if name not in seen:
            report.skipped.append((name, module_swap.unconvertible_reason(norm)
                                   or "not called as a module in the traced forward"))


def convert(model: nn.Module, inplace: bool = False, trace: bool = True) -> nn.Module:
    """Replaces nn.BatchNorm{1,2,3}d followed by an activation (a module such as nn.ReLU, or a
    function such as F.relu / torch.relu_ / x.relu(), in place or not), and BatchNorm -> add ->
    activation, by BatchNormAct{1,2,3}d holding the same parameters, buffers, momentum, eps and
    training mode. The result computes the same outputs and gradients.

    With torch.fx (if the model traces, and `trace` is true) every pattern in forward is found and
    the result is a torch.fx.GraphModule; otherwise only BatchNorm + activation modules that are
    neighbours in an nn.Sequential are fused (the activation becomes nn.Identity, so indices and
    state_dict keys do not move). A BatchNorm is fused only when its output (and the add's) has no
    other user. The returned model carries `pyfusedbn_report` (a ConversionReport).

    inplace=False works on a deep copy. inplace=True shares the parameter and buffer objects with
    `model` (an optimizer built on them keeps working); use the returned model, not `model`.
    """
    return _run("convert", model, inplace, trace, fx_passes.convert_graph,
                sequential.convert_in_sequential, module_swap.is_convertible_norm,
                sequential.convert_alone)


def revert(model: nn.Module, inplace: bool = False, trace: bool = True) -> nn.Module:
    """Replaces each BatchNormAct by nn.BatchNorm{1,2,3}d (+ add) + the torch activation module,
    sharing the same state: the inverse of convert. Outside a traceable forward, only BatchNormAct
    followed by nn.Identity in an nn.Sequential can be restored (as convert leaves them)."""
    return _run("revert", model, inplace, trace, fx_passes.revert_graph,
                sequential.revert_in_sequential, module_swap.is_fused,
                sequential.revert_alone)


def fold(model: nn.Module, inplace: bool = False, trace: bool = True) -> nn.Module:
    """For inference: folds each eval-mode BatchNorm (plain or BatchNormAct) whose input comes
    straight from a Conv1d/2d/3d or Linear into that layer's weight and bias (creating the bias if
    absent), leaving the activation (and the residual add) as plain torch. Outputs are the same in
    eval mode; BatchNorms in training mode are left alone. A Linear is assumed to see (N, features)
    input, as nn.BatchNorm1d after it normalises dimension 1."""
    return _run("fold", model, inplace, trace, folding.fold_graph,
                sequential.fold_in_sequential, folding.is_foldable_norm)

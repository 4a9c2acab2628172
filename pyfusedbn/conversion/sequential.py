"""The module-order passes of convert/revert/fold, used when a model does not trace with
torch.fx: neighbours inside an nn.Sequential, and layers that need no neighbour (timm's
BatchNormAct2d applies its activation itself) wherever they are."""
from collections import Counter

from torch import nn

from .folding import after_fold, fold_into, fold_reason
from .foreign_layers import is_identity, has_own_activation
from .module_swap import (SOURCE_ATTRIBUTE, fused_from_norm, hook_reason, inner_activation,
                          norm_from_fused)
from .torch_activations import NotFusable, module_activation


def _sequentials(model):
    """(qualified name, module) of every nn.Sequential that runs its children in order."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward]


def _qualified(prefix, key):
    return f"{prefix}.{key}" if prefix else key


def registrations(model):
    """id(module) -> how many names it is registered under in model."""
    return Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))


def sequential_pass(model, report, rewrite, wanted, untraced_reason, alone=None):
    """Calls rewrite(seq, keys, i) -> "what it did" (or raises NotFusable) for each module
    seq[keys[i]] satisfying wanted() inside an nn.Sequential, and alone(parent, key) -> what it
    did, or None, for those outside any; reports every wanted module (untraced_reason(name): why
    one outside any is left)."""
    uses = registrations(model)
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
            why = untraced_reason(name)
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
    parent._modules[key] = fused_from_norm(bn, activation, param, act)
    return f"{type(bn).__name__} with its {type(act).__name__} -> activation={activation!r}"


def convert_in_sequential(seq, keys, i):
    done = convert_alone(seq, keys[i])
    if done:
        return done
    bn = seq._modules[keys[i]]
    if has_own_activation(bn) and not is_identity(bn.drop):
        raise NotFusable(f"its drop layer {type(bn.drop).__name__} runs after the BatchNorm")
    if i + 1 == len(keys):
        raise NotFusable("last module of its nn.Sequential, no activation follows")
    nxt = seq._modules[keys[i + 1]]
    activation, param = module_activation(nxt)
    reason = hook_reason(bn, nxt)
    if reason:
        raise NotFusable(reason)
    fused = fused_from_norm(bn, activation, param)
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
    parent._modules[key], _ = norm_from_fused(fused)
    return f"{type(fused).__name__} -> {source[0].__name__} with its {type(source[1]).__name__}"


def revert_in_sequential(seq, keys, i):
    done = revert_alone(seq, keys[i])
    if done:
        return done
    fused = seq._modules[keys[i]]
    bn, act = norm_from_fused(fused)
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

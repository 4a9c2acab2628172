"""timm's and torchvision's norm layers and activations, as convert/revert/fold see them.

Classes are recognised by their qualified name, so pyfusedbn never imports timm or torchvision
(a model that holds one of these layers has already imported its library). Matching is by exact
class: a subclass may override forward, so it is left alone.
"""
from torch import nn

# timm moved its layers from timm.models.layers to timm.layers (0.9); both paths are matched.
_TIMM_LAYER_MODULES = ("timm.layers", "timm.models.layers")


def _timm_names(module, *classes):
    return {f"{prefix}.{module}.{cls}" for prefix in _TIMM_LAYER_MODULES for cls in classes}


# nn.BatchNorm2d subclass applying `drop` then `act` (two submodules) inside its forward.
TIMM_BATCH_NORM_ACT = _timm_names("norm_act", "BatchNormAct2d")
# Every timm norm that applies `drop` then `act` itself, by the fused family it becomes.
TIMM_GROUP_NORM_ACT = _timm_names("norm_act", "GroupNormAct", "GroupNorm1Act")
TIMM_LAYER_NORM_ACT_2D = _timm_names("norm_act", "LayerNormAct2d")
TIMM_NORM_ACT = TIMM_BATCH_NORM_ACT | TIMM_GROUP_NORM_ACT | TIMM_LAYER_NORM_ACT_2D
# Norms computing F.group_norm, or F.layer_norm over the channels of an (N, C, H, W) map (as
# pyfusedbn's LayerNormAct2d), with no activation of their own. timm's compute it unless its
# fast_norm is on (`_fast_norm`: another kernel, autocast to float32).
GROUP_NORMS = _timm_names("norm", "GroupNorm", "GroupNorm1") | TIMM_GROUP_NORM_ACT
LAYER_NORMS_2D = (_timm_names("norm", "LayerNorm2d") | TIMM_LAYER_NORM_ACT_2D
                  | {"torchvision.models.convnext.LayerNorm2d"})
# Eval-only BatchNorms holding weight, bias, running_mean, running_var as buffers: fold only.
# timm's also applies `drop` then `act`.
FROZEN_BATCH_NORM = (_timm_names("norm_act", "FrozenBatchNormAct2d")
                     | {"torchvision.ops.misc.FrozenBatchNorm2d"})

# Modules whose forward branches on self.training (drop layers: identity in eval mode), which
# would make a traced graph differ between modes: the tracer keeps them whole, as calls.
TRAINING_DEPENDENT = ({"torchvision.ops.stochastic_depth.StochasticDepth"}
                      | _timm_names("drop", "DropPath", "DropBlock2d"))

# timm.layers activation class -> pyfusedbn activation. Each computes torch's function of the
# same name (Swish is x * sigmoid(x), HardSwish x * relu6(x + 3) / 6, GELU F.gelu, ...); the
# "Me" variants are the same functions with a hand-written backward. None takes a parameter.
TIMM_ACTIVATION_CLASSES = {
    "Swish": "silu", "SwishMe": "silu",
    "Mish": "mish", "MishMe": "mish",
    "HardSwish": "hardswish", "HardSwishMe": "hardswish",
    "GELU": "gelu", "GELUTanh": "gelu_tanh",
    "Sigmoid": "sigmoid", "Tanh": "tanh",
}
TIMM_ACTIVATIONS = {name: activation
                    for cls, activation in TIMM_ACTIVATION_CLASSES.items()
                    for module in ("activations", "activations_me")
                    for name in _timm_names(module, cls)}


def class_name(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def is_timm_batch_norm_act(module):
    return class_name(type(module)) in TIMM_BATCH_NORM_ACT


def has_own_activation(module):
    """A timm norm layer applying its `drop` and `act` submodules after normalising."""
    return class_name(type(module)) in TIMM_NORM_ACT


def is_frozen_batch_norm(module):
    return class_name(type(module)) in FROZEN_BATCH_NORM


def is_kept_whole_when_tracing(module):
    name = class_name(type(module))
    return (name in TIMM_NORM_ACT or name in GROUP_NORMS or name in LAYER_NORMS_2D
            or name in FROZEN_BATCH_NORM or name in TRAINING_DEPENDENT)


def timm_activation(module_type):
    """The pyfusedbn activation a timm activation class computes, or None."""
    return TIMM_ACTIVATIONS.get(class_name(module_type))


def is_identity(module):
    return type(module) is nn.Identity


def trailing_layers(norm):
    """What a norm layer applies after normalising (timm's drop then act), as one module:
    nn.Identity for a plain or torchvision norm."""
    layers = [m for m in (getattr(norm, "drop", None), getattr(norm, "act", None))
              if m is not None and not is_identity(m)]
    if not layers:
        return nn.Identity()
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)

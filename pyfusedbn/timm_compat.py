"""pyfusedbn inside timm: a BatchNormAct2d that timm builds wherever it builds its own.

    from pyfusedbn.timm_compat import TimmBatchNormAct2d
    model = timm.create_model("efficientnet_b0", norm_layer=TimmBatchNormAct2d)

TimmBatchNormAct2d takes timm.layers.BatchNormAct2d's constructor arguments (apply_act,
act_layer, act_kwargs, inplace, drop_layer) and computes the same thing with the fused op.
Importing this module registers the class with timm's norm+act factory (get_norm_act_layer), so
timm passes each layer the model's act_layer, as it does for its own BatchNormAct2d. Converting a
timm model with pyfusedbn.convert gives the same layers; pyfusedbn.revert gives timm's class back.
"""
from typing import Any, Dict, Optional

from torch import nn

from .batch_norm_modules import BatchNormAct2d
from .conversion.foreign_layers import is_identity
from .conversion.module_swap import SOURCE_ATTRIBUTE
from .conversion.torch_activations import NotFusable, module_activation


def _activation_module(act_layer, act_kwargs, inplace):
    """The activation module timm would build (its create_act_layer when timm is there: names
    such as "swish" are timm's), or None for no activation."""
    kwargs = dict(act_kwargs or {})
    try:
        from timm.layers.create_act import create_act_layer
    except ImportError:
        if isinstance(act_layer, str):
            raise ValueError(f"act_layer {act_layer!r}: a name needs timm installed; "
                             "pass the activation class") from None
        if act_layer is None:
            return None
        try:
            return act_layer(inplace=inplace, **kwargs)
        except TypeError:  # as timm: an activation without an inplace argument
            return act_layer(**kwargs)
    return create_act_layer(act_layer, inplace=inplace, **kwargs)


class TimmBatchNormAct2d(BatchNormAct2d):
    """timm.layers.BatchNormAct2d's interface on the fused op. `inplace` is the activation's
    in-place flag in timm, which a fused op has no use for: it is accepted and ignored (the fused
    layer's own `inplace` stays False). A drop layer (timm applies it between the norm and the
    activation) is supported only with apply_act=False, where it runs after the layer."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, apply_act: bool = True,
                 act_layer: Any = nn.ReLU, act_kwargs: Optional[Dict[str, Any]] = None,
                 inplace: bool = True, drop_layer: Optional[type] = None, device=None,
                 dtype=None) -> None:
        act = _activation_module(act_layer, act_kwargs, inplace) if apply_act else None
        if act is None or is_identity(act):
            act, activation, param = None, "identity", None
        else:
            try:
                activation, param = module_activation(act)
            except NotFusable as e:
                raise ValueError(f"act_layer: {e}") from None
        if drop_layer is not None and act is not None:
            raise ValueError(f"drop_layer ({getattr(drop_layer, '__name__', drop_layer)}) runs "
                             "between the norm and the activation in timm, which the fused op "
                             "cannot do: use apply_act=False or no drop_layer")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, activation,
                         param, device, dtype)
        self.drop = drop_layer() if drop_layer is not None else nn.Identity()
        timm_class = _timm_batch_norm_act()
        if timm_class is not None:  # what revert gives back
            setattr(self, SOURCE_ATTRIBUTE, (timm_class, act))

    def forward(self, input, residual=None):
        return self.drop(super().forward(input, residual))


def _timm_batch_norm_act():
    try:
        from timm.layers import BatchNormAct2d as timm_class
    except ImportError:
        return None
    return timm_class


def register():
    """Tells timm's get_norm_act_layer that TimmBatchNormAct2d is a norm+act layer taking
    act_layer (done on import; True if timm is installed). timm keeps these in module-level
    sets, the same ones its own layers are in."""
    try:
        from timm.layers import create_norm_act
    except ImportError:
        return False
    create_norm_act._NORM_ACT_TYPES.add(TimmBatchNormAct2d)
    create_norm_act._NORM_ACT_REQUIRES_ARG.add(TimmBatchNormAct2d)
    return True


register()

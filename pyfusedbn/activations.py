"""The activations pyfusedbn fuses: names, their one parameter's default, and the
torch.nn.functional function each must match.

The kernels' math lives in csrc/common/activations.h; this table is the Python side of the same list
(tests check that the two agree name for name).
"""
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Activation:
    name: str
    torch_fn: Callable[[torch.Tensor, Optional[float]], torch.Tensor]
    param_name: Optional[str] = None  # the torch keyword the parameter stands for
    default_param: Optional[float] = None


_TABLE = [
    Activation("identity", lambda z, p: z),
    Activation("relu", lambda z, p: F.relu(z)),
    Activation("relu6", lambda z, p: F.relu6(z)),
    Activation("leaky_relu", lambda z, p: F.leaky_relu(z, p), "negative_slope", 0.01),
    Activation("elu", lambda z, p: F.elu(z, p), "alpha", 1.0),
    Activation("silu", lambda z, p: F.silu(z)),
    Activation("gelu", lambda z, p: F.gelu(z)),
    Activation("gelu_tanh", lambda z, p: F.gelu(z, approximate="tanh")),
    Activation("sigmoid", lambda z, p: torch.sigmoid(z)),
    Activation("tanh", lambda z, p: torch.tanh(z)),
    Activation("softplus", lambda z, p: F.softplus(z, beta=p), "beta", 1.0),
    Activation("softsign", lambda z, p: F.softsign(z)),
    Activation("mish", lambda z, p: F.mish(z)),
    Activation("hardswish", lambda z, p: F.hardswish(z)),
]

ACTIVATIONS = {a.name: a for a in _TABLE}
ACTIVATION_NAMES = tuple(ACTIVATIONS)


def resolve_activation(activation: str, activation_param: Optional[float] = None):
    """Returns (name, param as float) with torch's default filled in; ValueError if unknown."""
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(
            f"activation must be one of {', '.join(ACTIVATION_NAMES)}; got {activation!r}")
    spec = ACTIVATIONS[activation]
    if spec.param_name is None:
        if activation_param is not None:
            raise ValueError(
                f"activation '{activation}' takes no activation_param; got {activation_param!r}")
        return activation, 0.0
    param = spec.default_param if activation_param is None else activation_param
    if isinstance(param, bool) or not isinstance(param, (int, float)) or not math.isfinite(param):
        raise ValueError(
            f"activation_param ({spec.param_name} of '{activation}') must be a finite number; "
            f"got {activation_param!r}")
    if activation == "softplus" and param == 0:
        raise ValueError("activation_param (beta of 'softplus') must be non-zero")
    return activation, float(param)


def torch_activation(activation: str, activation_param: Optional[float] = None):
    """The torch.nn.functional equivalent, as a one-argument callable."""
    name, param = resolve_activation(activation, activation_param)
    fn = ACTIVATIONS[name].torch_fn
    return lambda z: fn(z, param)

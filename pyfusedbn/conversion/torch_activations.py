"""Which torch activations (modules, functions, Tensor methods) are pyfusedbn activations, with
which parameter; and back, the torch module for a pyfusedbn activation. Used by convert/revert/fold.

Matching is by exact type or function: a subclass may override forward, so it is left alone.
"""
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from ..activations import resolve_activation
from .foreign_layers import timm_activation


class NotFusable(Exception):
    """Why a pattern cannot be fused; the message goes into the conversion report."""


def _gelu_name(approximate):
    if approximate == "none":
        return "gelu"
    if approximate == "tanh":
        return "gelu_tanh"
    raise NotFusable(f"GELU approximate={approximate!r} is not supported")


def _softplus_checked(threshold):
    # The kernels hard-code torch's default threshold (x * beta > 20 -> x).
    if threshold != 20:
        raise NotFusable(f"Softplus threshold={threshold} is not supported "
                         "(only 20, torch's default)")


def _softplus_module(m):
    _softplus_checked(m.threshold)
    return "softplus", m.beta


# nn module type -> (module -> (activation, activation_param)).
_MODULES = {
    nn.ReLU: lambda m: ("relu", None),
    nn.ReLU6: lambda m: ("relu6", None),
    nn.LeakyReLU: lambda m: ("leaky_relu", m.negative_slope),
    nn.ELU: lambda m: ("elu", m.alpha),
    nn.SiLU: lambda m: ("silu", None),
    nn.GELU: lambda m: (_gelu_name(m.approximate), None),
    nn.Sigmoid: lambda m: ("sigmoid", None),
    nn.Tanh: lambda m: ("tanh", None),
    nn.Softplus: _softplus_module,
    nn.Softsign: lambda m: ("softsign", None),
    nn.Mish: lambda m: ("mish", None),
    nn.Hardswish: lambda m: ("hardswish", None),
}

# function -> (activation, keyword of its parameter). In-place variants compute the same values.
_FUNCTIONS = {
    F.relu: ("relu", None), torch.relu: ("relu", None), torch.relu_: ("relu", None),
    F.relu6: ("relu6", None),
    F.leaky_relu: ("leaky_relu", "negative_slope"), F.leaky_relu_: ("leaky_relu", "negative_slope"),
    F.elu: ("elu", "alpha"), F.elu_: ("elu", "alpha"),
    F.silu: ("silu", None),
    F.gelu: ("gelu", None),
    F.sigmoid: ("sigmoid", None), torch.sigmoid: ("sigmoid", None),
    torch.sigmoid_: ("sigmoid", None),
    F.tanh: ("tanh", None), torch.tanh: ("tanh", None), torch.tanh_: ("tanh", None),
    F.softplus: ("softplus", "beta"),
    F.softsign: ("softsign", None),
    F.mish: ("mish", None),
    F.hardswish: ("hardswish", None),
}

# Tensor method name -> activation (none of these take a parameter).
_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid",
            "tanh": "tanh", "tanh_": "tanh"}


def _checked(name, param, what):
    if param is not None and (isinstance(param, bool) or not isinstance(param, numbers.Real)):
        raise NotFusable(f"{what}: parameter {param!r} is not a constant number")
    try:
        resolve_activation(name, param)
    except ValueError as e:
        raise NotFusable(f"{what}: {e}") from None
    return name, None if param is None else float(param)


def module_activation(module):
    """(activation, activation_param) for an activation module (torch's, or timm's by class
    name); NotFusable otherwise."""
    rule = _MODULES.get(type(module))
    if rule is None and timm_activation(type(module)) is not None:
        return timm_activation(type(module)), None
    if rule is None:
        raise NotFusable(f"{type(module).__name__} is not a supported activation")
    return _checked(*rule(module), type(module).__name__)


def function_activation(fn, kwargs):
    """(activation, activation_param) for a call `fn(**kwargs)` with arguments named as in fn's
    signature (`input` the tensor); NotFusable otherwise."""
    fn_name = getattr(fn, "__name__", repr(fn))
    if fn not in _FUNCTIONS:
        raise NotFusable(f"{fn_name} is not a supported activation")
    name, param_keyword = _FUNCTIONS[fn]
    extra = {k: v for k, v in kwargs.items() if k not in ("input", "inplace")}
    param = extra.pop(param_keyword, None) if param_keyword else None
    if name == "gelu":
        name = _gelu_name(extra.pop("approximate", "none"))
    if name == "softplus":
        _softplus_checked(extra.pop("threshold", 20))
    if name == "elu" and (extra.pop("scale", 1) != 1 or extra.pop("input_scale", 1) != 1):
        raise NotFusable(f"{fn_name} with scale or input_scale other than 1 is not supported")
    if extra:
        raise NotFusable(f"{fn_name} called with unsupported arguments {sorted(extra)}")
    return _checked(name, param, fn_name)


def method_activation(method_name):
    if method_name not in _METHODS:
        raise NotFusable(f"Tensor.{method_name} is not a supported activation")
    return _METHODS[method_name], None


# activation -> (activation_param -> torch module); the inverse of _MODULES (a test checks it).
_CONSTRUCTORS = {
    "identity": lambda p: nn.Identity(),
    "relu": lambda p: nn.ReLU(),
    "relu6": lambda p: nn.ReLU6(),
    "leaky_relu": lambda p: nn.LeakyReLU(p),
    "elu": lambda p: nn.ELU(p),
    "silu": lambda p: nn.SiLU(),
    "gelu": lambda p: nn.GELU(),
    "gelu_tanh": lambda p: nn.GELU(approximate="tanh"),
    "sigmoid": lambda p: nn.Sigmoid(),
    "tanh": lambda p: nn.Tanh(),
    "softplus": lambda p: nn.Softplus(beta=p),
    "softsign": lambda p: nn.Softsign(),
    "mish": lambda p: nn.Mish(),
    "hardswish": lambda p: nn.Hardswish(),
}


def activation_module(activation, activation_param=None):
    """The torch module computing a pyfusedbn activation (nn.Identity for "identity")."""
    name, param = resolve_activation(activation, activation_param)
    return _CONSTRUCTORS[name](param)

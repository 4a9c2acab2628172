"""What the BatchNorm and GroupNorm families share on the Python side: accumulate dtypes, the
fake kernels' device check and output shapes, argument checks, autocast promotion of a residual,
the resolved-activation cache and the activation part of a module's repr. The activation table
itself is pyfusedbn/activations.py."""
import numbers

import torch
from torch._prims_common import suggest_memory_format

from .activations import resolve_activation


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of per-channel statistics and accumulation, as torch's opmath type."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_devices(op, input, **tensors):
    """The C++ ops check this; fake kernels must too, or a meta tensor among CPU ones would make
    the dispatcher run only the fake kernel and return a meta result without complaint."""
    for name, t in tensors.items():
        if t is not None and t.device != input.device:
            raise RuntimeError(f"{op}: {name} is on {t.device} but input is on {input.device}; "
                               "expected all tensors on one device")


def like_input(input):
    """An empty tensor shaped and laid out as the ops' outputs for this input."""
    return torch.empty_like(input, memory_format=suggest_memory_format(input))


def checked_float(op, name, value):
    """float(value), or a TypeError naming the argument unless it is a real number (not a bool)."""
    if type(value) is float:  # the usual case, without numbers.Real's ABC check (per layer call)
        return value
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be a float, got {value!r}")
    return float(value)


def promoted_under_autocast(input, residual):
    """(input, residual) in their promoted dtype when autocast is on and the dtypes differ: under
    autocast `norm(x) + residual` promotes (e.g. a bfloat16 convolution output plus a float32
    shortcut gives float32), so the fused op does too and convert() keeps such models running.
    Outside autocast a dtype mismatch stays an error (the op's)."""
    if (isinstance(residual, torch.Tensor) and residual.dtype != input.dtype
            and torch.is_autocast_enabled(input.device.type)):
        dtype = torch.promote_types(input.dtype, residual.dtype)
        return input.to(dtype), residual.to(dtype)
    return input, residual


# resolve_activation's answers (per layer call, its checks cost as much host time as a kernel
# dispatch): keyed by the parameter's type too, so that True (refused) is never 1.0 (accepted).
_RESOLVED_ACTIVATIONS = {}


def resolved_activation(activation, activation_param):
    """resolve_activation, cached."""
    if torch.compiler.is_compiling():  # a graph resolves once; guarding on the cache would recompile
        return resolve_activation(activation, activation_param)
    key = (activation, type(activation_param), activation_param)
    try:
        return _RESOLVED_ACTIVATIONS[key]
    except (KeyError, TypeError):  # TypeError: an unhashable argument, which resolve refuses
        resolved = resolve_activation(activation, activation_param)
        if len(_RESOLVED_ACTIVATIONS) < 1024:
            _RESOLVED_ACTIVATIONS[key] = resolved
        return resolved


class ActivationRepr:
    """A fused module's repr: its torch norm's, then the activation (and its parameter if set)."""

    def extra_repr(self) -> str:
        text = super().extra_repr() + f", activation={self.activation}"
        if self.activation_param is not None:
            text += f", activation_param={self.activation_param}"
        return text

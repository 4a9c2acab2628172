"""Loads the compiled library (loudly: there is no Python fallback) and registers the fake
kernels that let torch.compile and torch.export trace the ops."""
import torch
from torch._prims_common import suggest_memory_format

try:
    from . import _C  # noqa: F401  (registers torch.ops.pyfusedbn.*)
except ImportError as e:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "pyfusedbn: the compiled kernels (pyfusedbn._C) could not be loaded: "
        f"{e}. pyfusedbn has no pure-Python fallback. Build it in place with "
        "`pip install --no-build-isolation -e .` (or `make test`), against the same torch "
        f"version you run (this is torch {torch.__version__})."
    ) from e

ops = torch.ops.pyfusedbn

OP_NAMES = (
    "batch_norm_stats",
    "batch_norm_act_train",
    "batch_norm_act_eval",
    "batch_norm_act_apply",
    "batch_norm_act_backward_reduce",
    "batch_norm_act_backward_elemt",
)
# The one-call forms the autograd path uses (the ops above stay for SyncBatchNormAct, which
# communicates between the passes).
FUSED_OP_NAMES = (
    "batch_norm_act",
    "batch_norm_act_eval_for_backward",
    "batch_norm_act_backward",
)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of per-channel statistics and accumulation, as torch's opmath type."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def backends() -> dict:
    """Which compiled kernels are registered, e.g. {"cpu": True, "cuda": False}."""
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    return {dev: has(f"pyfusedbn::{OP_NAMES[1]}", key) for dev, key in (("cpu", "CPU"), ("cuda", "CUDA"))}


def _check_devices(op, input, **tensors):
    """The C++ ops check this; fake kernels must too, or a meta tensor among CPU ones would make
    the dispatcher run only the fake kernel and return a meta result without complaint."""
    for name, t in tensors.items():
        if t is not None and t.device != input.device:
            raise RuntimeError(f"{op}: {name} is on {t.device} but input is on {input.device}; "
                               "expected all tensors on one device")


def _like_input(input):
    return torch.empty_like(input, memory_format=suggest_memory_format(input))


def _per_channel(input):
    return input.new_empty((input.shape[1],), dtype=acc_dtype(input.dtype))


@torch.library.register_fake("pyfusedbn::batch_norm_stats")
def _stats_fake(input):
    return _per_channel(input), _per_channel(input)


@torch.library.register_fake("pyfusedbn::batch_norm_act_train")
def _train_fake(input, weight, bias, residual, running_mean, running_var, momentum, eps,
                activation, activation_param, num_batches_tracked=None):
    _check_devices("batch_norm_act_train", input, weight=weight, bias=bias, residual=residual,
                   running_mean=running_mean, running_var=running_var,
                   num_batches_tracked=num_batches_tracked)
    return _like_input(input), _per_channel(input), _per_channel(input)


@torch.library.register_fake("pyfusedbn::batch_norm_act_eval")
def _eval_fake(input, running_mean, running_var, weight, bias, residual, eps, activation,
               activation_param):
    _check_devices("batch_norm_act_eval", input, weight=weight, bias=bias, residual=residual,
                   running_mean=running_mean, running_var=running_var)
    return _like_input(input)


@torch.library.register_fake("pyfusedbn::batch_norm_act")
def _layer_fake(input, weight, bias, residual, running_mean, running_var, training, momentum, eps,
                activation, activation_param, num_batches_tracked=None):
    _check_devices("batch_norm_act", input, weight=weight, bias=bias, residual=residual,
                   running_mean=running_mean, running_var=running_var,
                   num_batches_tracked=num_batches_tracked)
    return _like_input(input)


@torch.library.register_fake("pyfusedbn::batch_norm_act_eval_for_backward")
def _eval_for_backward_fake(input, running_mean, running_var, weight, bias, residual, eps,
                            activation, activation_param):
    _check_devices("batch_norm_act_eval_for_backward", input, weight=weight, bias=bias,
                   residual=residual, running_mean=running_mean, running_var=running_var)
    return _like_input(input), _per_channel(input), _per_channel(input)


@torch.library.register_fake("pyfusedbn::batch_norm_act_apply")
def _apply_fake(input, mean, invstd, weight, bias, residual, activation, activation_param):
    _check_devices("batch_norm_act_apply", input, mean=mean, invstd=invstd, weight=weight, bias=bias,
                   residual=residual)
    return _like_input(input)


@torch.library.register_fake("pyfusedbn::batch_norm_act_backward_reduce")
def _reduce_fake(grad_out, saved, mean, invstd, weight, bias, residual, activation,
                 activation_param, from_output=False):
    _check_devices("batch_norm_act_backward_reduce", saved, grad_out=grad_out, mean=mean,
                   invstd=invstd, weight=weight, bias=bias, residual=residual)
    return _per_channel(saved), _per_channel(saved)


@torch.library.register_fake("pyfusedbn::batch_norm_act_backward_elemt")
def _elemt_fake(grad_out, saved, mean, invstd, weight, bias, residual, mean_g, mean_g_xhat,
                activation, activation_param, from_output=False):
    _check_devices("batch_norm_act_backward_elemt", saved, grad_out=grad_out, mean=mean,
                   invstd=invstd, weight=weight, bias=bias, residual=residual, mean_g=mean_g,
                   mean_g_xhat=mean_g_xhat)
    grad_residual = _like_input(saved) if residual is not None else saved.new_empty((0,))
    return _like_input(saved), grad_residual


@torch.library.register_fake("pyfusedbn::batch_norm_act_backward")
def _backward_fake(grad_out, saved, mean, invstd, weight, bias, residual, training, activation,
                   activation_param, from_output, output_mask):
    _check_devices("batch_norm_act_backward", saved, grad_out=grad_out, mean=mean, invstd=invstd,
                   weight=weight, bias=bias, residual=residual)
    need_input, need_weight, need_bias, need_residual = output_mask
    # Parameter gradients in the parameter's dtype (the C++ op computes them there).
    return (_like_input(saved) if need_input else None,
            torch.empty_like(weight, memory_format=torch.contiguous_format)
            if need_weight and weight is not None else None,
            torch.empty_like(bias, memory_format=torch.contiguous_format)
            if need_bias and bias is not None else None,
            _like_input(saved) if need_residual and residual is not None else None)

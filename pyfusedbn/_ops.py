"""Loads the compiled library, loudly: there is no Python fallback. The ops' fake kernels (for
torch.compile and torch.export) live beside each norm's functional form: batch_norm.py,
group_norm.py."""
import torch

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

# BatchNorm's ops with device kernels (GroupNorm's: group_norm.GROUP_KERNEL_OPS).
OP_NAMES = (
    "batch_norm_stats",
    "batch_norm_act_train",
    "batch_norm_act_eval",
    "batch_norm_act_apply",
    "batch_norm_act_backward_reduce",
    "batch_norm_act_backward_elemt",
)


def backends() -> dict:
    """Which compiled kernels are registered, e.g. {"cpu": True, "cuda": False}."""
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    return {dev: has(f"pyfusedbn::{OP_NAMES[1]}", key) for dev, key in (("cpu", "CPU"), ("cuda", "CUDA"))}

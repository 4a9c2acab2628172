"""BatchNormAct1d/2d/3d: drop-in nn.BatchNorm*d + activation modules on the fused op.

They subclass torch's _BatchNorm, so parameters, buffers and state_dict keys are exactly those of
nn.BatchNorm*d (a state_dict loads both ways); forward takes an optional residual.
"""
import inspect
from typing import Optional

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from ._common import ActivationRepr, checked_float, resolved_activation
from .activations import resolve_activation
from .batch_norm import LAYER_OP, fused_batch_norm_act
from .memory_efficient import check_memory_efficient


# torch added a keyword-only `bias` to BatchNorm (affine weight without bias); older versions lack it.
TORCH_HAS_BN_BIAS = "bias" in inspect.signature(_BatchNorm.__init__).parameters


def _member(module, members, name):
    """module.<name>, read from its parameter or buffer dict `members` when it is there:
    nn.Module.__getattr__ costs ~0.3 us per access, and a layer reads five per call. Anything
    else (a parametrization's property, weight_norm's plain attribute) is looked up as usual."""
    return members[name] if name in members else getattr(module, name, None)


class BatchNormActBase(ActivationRepr, _BatchNorm):
    """What BatchNormAct1d/2d/3d and SyncBatchNormAct share: torch's _BatchNorm bookkeeping, the
    activation and the memory-saving options."""

    # Class defaults too, so modules pickled before these options existed still run.
    memory_efficient = False
    inplace = False

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, activation: str = "relu",
                 activation_param: Optional[float] = None, device=None, dtype=None, *,
                 bias: bool = True, memory_efficient: bool = False, inplace: bool = False) -> None:
        if TORCH_HAS_BN_BIAS:
            super().__init__(num_features, eps, momentum, affine, track_running_stats,
                             device=device, dtype=dtype, bias=bias)
        else:  # older torch: emulate its later keyword-only bias=False
            super().__init__(num_features, eps, momentum, affine, track_running_stats,
                             device=device, dtype=dtype)
            if not bias:
                self.register_parameter("bias", None)
        # Validate now (ValueError naming the valid choices); keep what the user passed.
        check_memory_efficient(memory_efficient, inplace,
                               *resolve_activation(activation, activation_param))
        self.activation = activation
        self.activation_param = activation_param
        # Plain attributes (not state_dict): how backward is computed, not what the layer holds.
        self.memory_efficient = memory_efficient
        self.inplace = inplace

    def extra_repr(self) -> str:
        text = super().extra_repr()
        for option in ("memory_efficient", "inplace"):
            if getattr(self, option):
                text += f", {option}=True"
        return text

    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        # The per-call host path, kept as thin as eager's (benchmarks/host_overhead.py): in eager
        # mode without a residual one call into the layer op, the rest inline.
        self._check_input_dim(input)
        # torch's _BatchNorm.forward bookkeeping, so momentum=None (cumulative average),
        # num_batches_tracked and track_running_stats=False behave identically. `counter` is
        # num_batches_tracked when the op should count this batch (the op increments it, sparing
        # a host op), None when there is nothing to count or it was counted here (momentum=None
        # needs the new count now).
        buffers = self._buffers
        running_mean = _member(self, buffers, "running_mean")
        running_var = _member(self, buffers, "running_var")
        training, counter = self.training, None
        momentum = 0.0 if self.momentum is None else self.momentum
        if training and self.track_running_stats:
            batches = _member(self, buffers, "num_batches_tracked")
            if batches is not None:
                if self.momentum is None:
                    batches.add_(1)
                    momentum = 1.0 / float(batches)
                else:
                    counter = batches
        bn_training = training or (running_mean is None and running_var is None)
        if training and not self.track_running_stats:
            running_mean = running_var = None
        activation, activation_param = resolved_activation(self.activation, self.activation_param)
        memory_efficient, inplace = bool(self.memory_efficient), bool(self.inplace)
        if memory_efficient or inplace:  # (neither: nothing to check)
            check_memory_efficient(memory_efficient, inplace, activation, activation_param)
        if not bn_training and (running_mean is None or running_var is None):
            raise RuntimeError("batch_norm_act: running_mean and running_var must be defined in "
                               "evaluation mode (training=False)")
        parameters = self._parameters
        weight = _member(self, parameters, "weight")
        bias = _member(self, parameters, "bias")
        momentum = checked_float("batch_norm_act", "momentum", momentum)
        eps = checked_float("batch_norm_act", "eps", self.eps)
        if (residual is None and not memory_efficient and not torch.compiler.is_compiling()
                and not torch.compiler.is_exporting()):
            # fused_batch_norm_act's eager path without the call: the layer op, its autograd in C++.
            return LAYER_OP(input, weight, bias, None, running_mean, running_var, bn_training,
                            momentum, eps, activation, activation_param, counter)
        return fused_batch_norm_act(input, running_mean, running_var, weight, bias, bn_training,
                                    momentum, eps, activation, activation_param, residual,
                                    memory_efficient, inplace, counter)


class BatchNormAct1d(BatchNormActBase):
    """nn.BatchNorm1d + activation: input (N, C) or (N, C, L)."""

    def _check_input_dim(self, input):
        if input.dim() != 2 and input.dim() != 3:
            raise ValueError(f"expected 2D or 3D input (got {input.dim()}D input)")


class BatchNormAct2d(BatchNormActBase):
    """nn.BatchNorm2d + activation: input (N, C, H, W), contiguous or channels_last."""

    def _check_input_dim(self, input):
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")


class BatchNormAct3d(BatchNormActBase):
    """nn.BatchNorm3d + activation: input (N, C, D, H, W), contiguous or channels_last_3d."""

    def _check_input_dim(self, input):
        if input.dim() != 5:
            raise ValueError(f"expected 5D input (got {input.dim()}D input)")

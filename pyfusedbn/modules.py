"""BatchNormAct1d/2d/3d: drop-in nn.BatchNorm*d + activation modules on the fused op.

They subclass torch's _BatchNorm, so parameters, buffers and state_dict keys are exactly those of
nn.BatchNorm*d (a state_dict loads both ways); forward takes an optional residual.
"""
import inspect
from typing import Optional

from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from .activations import resolve_activation
from .functional import batch_norm_act
from .memory_efficient import check_memory_efficient


# torch added a keyword-only `bias` to BatchNorm (affine weight without bias); older versions lack it.
_TORCH_HAS_BN_BIAS = "bias" in inspect.signature(_BatchNorm.__init__).parameters


class _BatchNormAct(_BatchNorm):
    # Class defaults too, so modules pickled before these options existed still run.
    memory_efficient = False
    inplace = False

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, activation: str = "relu",
                 activation_param: Optional[float] = None, device=None, dtype=None, *,
                 bias: bool = True, memory_efficient: bool = False, inplace: bool = False) -> None:
        if _TORCH_HAS_BN_BIAS:
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
        text = super().extra_repr() + f", activation={self.activation}"
        if self.activation_param is not None:
            text += f", activation_param={self.activation_param}"
        for option in ("memory_efficient", "inplace"):
            if getattr(self, option):
                text += f", {option}=True"
        return text

    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        self._check_input_dim(input)
        bn_training, momentum, running_mean, running_var = self._batch_norm_arguments()
        return batch_norm_act(
            input, running_mean, running_var, self.weight, self.bias, bn_training, momentum,
            self.eps, self.activation, self.activation_param, residual,
            memory_efficient=self.memory_efficient, inplace=self.inplace)

    def _batch_norm_arguments(self):
        """(training, momentum, running_mean, running_var) for this call, counting the batch in
        num_batches_tracked: the same bookkeeping as torch's _BatchNorm.forward, so momentum=None
        (cumulative average), num_batches_tracked and track_running_stats=False behave
        identically."""
        exponential_average_factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                exponential_average_factor = 1.0 / float(self.num_batches_tracked)
            else:
                exponential_average_factor = self.momentum
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_running = not self.training or self.track_running_stats
        return (bn_training, exponential_average_factor,
                self.running_mean if use_running else None,
                self.running_var if use_running else None)


class BatchNormAct1d(_BatchNormAct):
    """nn.BatchNorm1d + activation: input (N, C) or (N, C, L)."""

    def _check_input_dim(self, input):
        if input.dim() != 2 and input.dim() != 3:
            raise ValueError(f"expected 2D or 3D input (got {input.dim()}D input)")


class BatchNormAct2d(_BatchNormAct):
    """nn.BatchNorm2d + activation: input (N, C, H, W), contiguous or channels_last."""

    def _check_input_dim(self, input):
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")


class BatchNormAct3d(_BatchNormAct):
    """nn.BatchNorm3d + activation: input (N, C, D, H, W), contiguous or channels_last_3d."""

    def _check_input_dim(self, input):
        if input.dim() != 5:
            raise ValueError(f"expected 5D input (got {input.dim()}D input)")

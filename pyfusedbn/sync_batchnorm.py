"""SyncBatchNormAct: batch_norm_act with statistics over the global batch of a process group.

Forward: each rank's (count, mean, M2) from the stats op, ONE all-gather of that small per-channel
tensor, Chan's parallel merge of the world's partials, then the apply op. Backward: the reduce op,
ONE all-reduce of (sum_g, sum_g_xhat), then the elementwise op. Ranks with zero samples take part
in both collectives with count 0. Not distributed, world size 1 or eval mode: the local op.
"""
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch._prims_common import suggest_memory_format
from torch.nn.modules.batchnorm import _BatchNorm

from ._common import acc_dtype
from ._ops import ops
from .activations import resolve_activation
from .batch_norm import batch_norm_act
from .batch_norm_modules import TORCH_HAS_BN_BIAS, BatchNormActBase


class SyncBatchNormAct(BatchNormActBase):
    """nn.SyncBatchNorm + activation (+ residual): input (N, C, ...), any rank >= 2.

    process_group: the group whose ranks share statistics (None: the default WORLD group).
    Like nn.SyncBatchNorm, each rank's weight/bias gradients are its local contributions (DDP
    averages them); the input gradient accounts for the whole global batch.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, activation: str = "relu",
                 activation_param: Optional[float] = None, process_group=None, device=None,
                 dtype=None, *, bias: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, activation,
                         activation_param, device=device, dtype=dtype, bias=bias)
        self.process_group = process_group

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        self._check_input_dim(input)
        if input.size(1) == 0:
            raise ValueError("SyncBatchNormAct: number of input channels should be non-zero")
        # The bookkeeping of torch's _BatchNorm / SyncBatchNorm forward, so momentum=None
        # (cumulative average), num_batches_tracked and track_running_stats=False match.
        if input.dim() > 5:
            # The kernels take ranks 2 to 5; nn.SyncBatchNorm takes any: flatten trailing dims.
            flat = self.forward(input.flatten(2),
                                None if residual is None else residual.flatten(2))
            return flat.view(input.shape)
        exponential_average_factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                exponential_average_factor = 1.0 / float(self.num_batches_tracked)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_running = not self.training or self.track_running_stats
        running_mean = self.running_mean if use_running else None
        running_var = self.running_var if use_running else None

        process_group, world_size = None, 1
        # Eval mode never communicates (running statistics, or local batch statistics when the
        # buffers are None: what nn.SyncBatchNorm does).
        if bn_training and self.training and dist.is_available() and dist.is_initialized():
            process_group = self.process_group or dist.group.WORLD
            world_size = dist.get_world_size(process_group)
        if world_size <= 1:
            return batch_norm_act(input, running_mean, running_var, self.weight, self.bias,
                                  bn_training, exponential_average_factor, self.eps,
                                  self.activation, self.activation_param, residual)
        activation, activation_param = resolve_activation(self.activation, self.activation_param)
        return SyncBatchNormActFunction.apply(
            input, self.weight, self.bias, residual, running_mean, running_var,
            float(exponential_average_factor), float(self.eps), activation, activation_param,
            process_group, world_size)


def _all_gather(partial: Tensor, process_group, world_size: int) -> Tensor:
    """(world_size, len(partial)): every rank's partial, in rank order."""
    gathered = partial.new_empty((world_size * partial.numel(),))
    if dist.get_backend(process_group) == "gloo":
        # The list form, which every torch's gloo supports; one collective all the same.
        dist.all_gather(list(gathered.chunk(world_size)), partial, group=process_group)
    else:
        # nccl's single-buffer gather (named all_gather_into_tensor before torch 2.13).
        gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        gather_single(gathered, partial, group=process_group)
    return gathered.view(world_size, -1)


def _global_stats(input: Tensor, process_group, world_size: int):
    """(mean, var, count) of the global batch: local stats op, one all-gather of
    [count, mean(C), M2(C)] per rank, and Chan's merge over ranks in closed form:
    mean = sum(n_r m_r) / n,  M2 = sum(M2_r) + sum(n_r (m_r - mean)^2)."""
    channels = input.shape[1]
    local_count = input.numel() // channels
    mean, var = ops.batch_norm_stats(input)  # zeros for an empty input: count 0 weighs nothing
    # Merged in float64 (a few values per channel): counts stay exact past float32's 2^24.
    mean, var = mean.double(), var.double()
    partial = torch.cat([mean.new_full((1,), float(local_count)), mean, var * local_count])
    gathered = _all_gather(partial, process_group, world_size)
    counts, means, m2s = gathered[:, :1], gathered[:, 1:channels + 1], gathered[:, channels + 1:]
    count = counts.sum()
    global_mean = (counts * means).sum(0) / count.clamp(min=1)
    m2 = m2s.sum(0) + (counts * (means - global_mean).square()).sum(0)
    acc = acc_dtype(input.dtype)
    return global_mean.to(acc), (m2 / count.clamp(min=1)).to(acc), int(count.item())


class SyncBatchNormActFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, residual, running_mean, running_var, momentum, eps,
                activation, activation_param, process_group, world_size):
        mean, var, count = _global_stats(input, process_group, world_size)
        if count <= 1:  # every rank sees the same count, so every rank raises
            raise ValueError("SyncBatchNormAct: expected more than 1 value per channel when "
                             f"training, got {count} over {world_size} ranks")
        invstd = torch.rsqrt(var + eps)
        if running_mean is not None:
            # As torch's batch_norm_gather_stats_with_counts: unbiased with the global count.
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        if running_var is not None:
            unbiased = var * (count / (count - 1))
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        if input.numel() > 0:
            out = ops.batch_norm_act_apply(input, mean, invstd, weight, bias, residual,
                                           activation, activation_param)
        else:
            out = torch.empty_like(input)
        ctx.save_for_backward(input, weight, bias, residual, mean, invstd)
        ctx.memory_format = suggest_memory_format(input)
        ctx.count = count
        ctx.activation, ctx.activation_param = activation, activation_param
        ctx.process_group = process_group
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        input, weight, bias, residual, mean, invstd = ctx.saved_tensors
        need_input, need_weight, need_bias, need_residual = ctx.needs_input_grad[:4]
        act, param = ctx.activation, ctx.activation_param
        grad_out = grad_out.contiguous(memory_format=ctx.memory_format)
        if input.numel() > 0:
            sum_g, sum_g_xhat = ops.batch_norm_act_backward_reduce(
                grad_out, input, mean, invstd, weight, bias, residual, act, param)
        else:
            sum_g, sum_g_xhat = torch.zeros_like(mean), torch.zeros_like(mean)
        # Local contributions, as nn.SyncBatchNorm returns them: DDP averages across ranks.
        grad_weight = sum_g_xhat.to(weight.dtype) if need_weight else None
        grad_bias = sum_g.to(bias.dtype) if need_bias else None
        grad_input = grad_residual = None
        # needs_input_grad is the same on every rank, so all of them join this all-reduce.
        if need_input or need_residual:
            channels = mean.numel()
            combined = torch.cat([sum_g, sum_g_xhat])
            dist.all_reduce(combined, dist.ReduceOp.SUM, group=ctx.process_group)
            mean_g, mean_g_xhat = (combined / ctx.count).split(channels)
            if input.numel() > 0:
                grad_input, grad_residual = ops.batch_norm_act_backward_elemt(
                    grad_out, input, mean, invstd, weight, bias, residual, mean_g, mean_g_xhat,
                    act, param)
            else:
                grad_input = torch.empty_like(input)
                grad_residual = torch.empty_like(residual) if residual is not None else None
        return (grad_input if need_input else None, grad_weight, grad_bias,
                grad_residual if need_residual else None) + (None,) * 8


def convert_sync_batchnorm(module: torch.nn.Module, process_group=None) -> torch.nn.Module:
    """Replaces every BatchNorm layer (nn.BatchNorm*d, nn.SyncBatchNorm: activation "identity";
    pyfusedbn's BatchNormAct*: activation kept) with a SyncBatchNormAct sharing its parameters
    and buffers, as nn.SyncBatchNorm.convert_sync_batchnorm does. Returns the converted module
    (a new one when `module` itself is a BatchNorm layer). memory_efficient/inplace options of
    BatchNormAct layers are not carried over: the synchronised layer saves its input."""
    converted = module
    if isinstance(module, _BatchNorm):
        if isinstance(module, BatchNormActBase):
            activation, activation_param = module.activation, module.activation_param
        else:
            activation, activation_param = "identity", None
        kwargs = {"bias": module.bias is not None} if TORCH_HAS_BN_BIAS else {}
        converted = SyncBatchNormAct(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats, activation, activation_param, process_group, **kwargs)
        if module.affine:
            with torch.no_grad():
                converted.weight = module.weight
                converted.bias = module.bias
        converted.running_mean = module.running_mean
        converted.running_var = module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.training = module.training
        if hasattr(module, "qconfig"):
            converted.qconfig = module.qconfig
    for name, child in module.named_children():
        converted.add_module(name, convert_sync_batchnorm(child, process_group))
    return converted

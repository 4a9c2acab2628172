"""The training loop pieces the training benchmark and the study share: seeded batches, one step,
evaluation, per-layer gradient norms, and memory measurement."""
import contextlib
import random
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .models import weight_layers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int,
            drop_last: bool = True) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """One epoch in an order fixed by `seed` (same seed, same order, whichever model trains);
    drop_last keeps every batch the same size (BatchNorm of a 1-sample batch is undefined)."""
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    stop = x.shape[0] - (x.shape[0] % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        index = order[start:start + batch_size]
        yield x[index], y[index]


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, xb: torch.Tensor,
               yb: torch.Tensor, clip_grad_norm: Optional[float] = None) -> torch.Tensor:
    """One optimiser step; returns the loss as a tensor (no device sync forced here)."""
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(xb), yb)
    loss.backward()
    if clip_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    optimizer.step()
    return loss.detach()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
             batch_size: int = 1000, memory_format=torch.contiguous_format) -> Dict[str, float]:
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size].to(device).contiguous(memory_format=memory_format)
        yb = y[start:start + batch_size].to(device)
        logits = model(xb)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    model.train(was_training)
    count = max(x.shape[0], 1)
    return {"accuracy": correct / count, "loss": loss_sum / count}


def layer_grad_norms(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> List[dict]:
    """The L2 norm of each weight layer's gradient on one batch, input to output, without taking a
    step: the vanishing/exploding-gradient picture at the start of training."""
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(xb), yb).backward()
    norms = [{"layer": name, "grad_norm": layer.weight.grad.norm().item(),
              "weight_std": layer.weight.std().item()} for name, layer in weight_layers(model)]
    model.zero_grad(set_to_none=True)
    return norms


@contextlib.contextmanager
def saved_tensor_bytes():
    """Counts the bytes autograd keeps for backward inside the block (each storage once): the
    activation memory a fused layer saves, measurable on CPU where no allocator statistics exist.
    Yields a dict whose 'bytes' is filled in when the block exits."""
    storages, result = {}, {"bytes": 0}

    def pack(t):
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield result
    result["bytes"] = sum(storages.values())


def memory_probe(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor,
                 device: torch.device) -> Dict[str, Optional[int]]:
    """Memory of one training step (forward + backward, no optimiser step): the bytes autograd
    saved, and on CUDA the allocator's peak."""
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    with saved_tensor_bytes() as saved:
        loss = F.cross_entropy(model(xb), yb)
    loss.backward()
    peak = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    model.zero_grad(set_to_none=True)
    return {"saved_for_backward_bytes": saved["bytes"], "cuda_peak_bytes": peak}

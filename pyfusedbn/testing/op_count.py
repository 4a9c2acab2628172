"""How many ops a call dispatches (on a GPU each is at least one kernel launch), counted with the
torch profiler on the CPU."""
import collections
from typing import Callable, Dict, Tuple

import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile

from .. import BatchNormAct2d

OP_PREFIXES = ("aten::", "pyfusedbn::")
# The input of layer_steps: a small late layer, where the op count, not the bandwidth, sets the
# step time.
LAYER_SHAPE = (8, 16, 4, 4)


def count_ops(fn: Callable[[], object], warmup: int = 2) -> Tuple[int, Dict[str, int]]:
    """(total, {op name: count}) of the aten:: and pyfusedbn:: ops one call of fn dispatches,
    after `warmup` calls; nested ops count (an op that calls another counts twice: both are
    dispatches)."""
    for _ in range(warmup):
        fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    counts = collections.Counter({e.key: e.count for e in prof.key_averages()
                                  if e.key.startswith(OP_PREFIXES)})
    return sum(counts.values()), dict(counts.most_common())


def layer_steps(seed: int = 0) -> Dict[str, Callable[[], None]]:
    """One training forward+backward of BatchNormAct2d(16, relu) ("fused") and of nn.BatchNorm2d
    + nn.ReLU ("eager") on the same fresh LAYER_SHAPE input."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(LAYER_SHAPE, generator=generator, requires_grad=True)
    grad = torch.randn(LAYER_SHAPE, generator=generator)
    channels = LAYER_SHAPE[1]
    fused = BatchNormAct2d(channels, activation="relu")
    eager = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU())
    return {"fused": lambda: fused(x).backward(grad),
            "eager": lambda: eager(x).backward(grad)}

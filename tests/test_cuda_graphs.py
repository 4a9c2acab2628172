"""A whole training step of a converted model (forward, backward, SGD step) captured with
torch.cuda.graph and replayed: same loss, outputs, gradients, parameters, running statistics and
num_batches_tracked as the same steps run eagerly on a copy of the model. Capture fails on a host
sync (.item(), a Python number read from a GPU tensor) or a launch off the capturing stream, so
this also guards the fused layers' host code. Marked `cuda`: skipped without a GPU.

Warm-up follows torch's documented recipe (a few steps on a side stream before capture); autocast
runs with cache_enabled=False, as torch requires inside a graph.
"""
import contextlib
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pyfusedbn
from helpers import TOLERANCE, assert_close

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

BATCH, CHANNELS, SIZE, CLASSES = 8, 8, 12, 5
WARMUP, REPLAYS = 3, 3


class Net(nn.Module):
    """conv -> BN -> act, then a residual block whose second BN is fused with the add."""

    def __init__(self, act):
        super().__init__()
        self.stem = nn.Conv2d(3, CHANNELS, 3, padding=1, bias=False)
        self.bn0, self.act0 = nn.BatchNorm2d(CHANNELS), act()
        self.conv1 = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1, bias=False)
        self.bn1, self.act1 = nn.BatchNorm2d(CHANNELS), act()
        self.conv2 = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1, bias=False)
        self.bn2, self.act2 = nn.BatchNorm2d(CHANNELS), act()
        self.head = nn.Linear(CHANNELS, CLASSES)

    def forward(self, x):
        x = self.act0(self.bn0(self.stem(x)))
        h = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(h)) + x)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# (activation module, memory_efficient, autocast dtype or None)
CASES = {
    "relu-fp32": (nn.ReLU, False, None),
    "relu-bf16-autocast": (nn.ReLU, False, torch.bfloat16),
    "leaky_relu-memory_efficient": (nn.LeakyReLU, True, None),
}


def make_model(act, memory_efficient):
    torch.manual_seed(0)
    model = pyfusedbn.convert(Net(act))
    fused = [m for m in model.modules() if isinstance(m, pyfusedbn.BatchNormAct2d)]
    assert len(fused) == 3, model.pyfusedbn_report  # bn2 with the residual add too
    for module in fused:
        module.memory_efficient = memory_efficient
    return model.cuda().to(memory_format=torch.channels_last).train()


def make_step(model, autocast_dtype):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(x, y):
        # Zeroed in place, not set to None: the captured step then writes the same gradient
        # tensors on every replay, and the test can poison them first.
        optimizer.zero_grad(set_to_none=False)
        with (torch.autocast("cuda", dtype=autocast_dtype, cache_enabled=False)
              if autocast_dtype else contextlib.nullcontext()):
            out = model(x)
            loss = F.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
        return out, loss
    return step


def batch(generator):
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=generator).cuda()
    y = torch.randint(0, CLASSES, (BATCH,), generator=generator).cuda()
    return x.contiguous(memory_format=torch.channels_last), y


def state(model):
    """Everything a step changes: parameters, their gradients, buffers (running statistics and
    num_batches_tracked)."""
    tensors = {f"param {n}": p for n, p in model.named_parameters()}
    tensors.update({f"grad {n}": p.grad for n, p in model.named_parameters()})
    tensors.update({f"buffer {n}": b for n, b in model.named_buffers()})
    return tensors


@pytest.mark.parametrize("case", CASES.keys())
def test_training_step_captures_and_replays_like_eager(case, generator, monkeypatch):
    act, memory_efficient, autocast_dtype = CASES[case]
    # Same algorithms in the graph and eagerly, so the comparison needs no slack for cuDNN.
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    graphed = make_model(act, memory_efficient)
    eager = copy.deepcopy(graphed)
    graphed_step, eager_step = make_step(graphed, autocast_dtype), make_step(eager, autocast_dtype)
    initial = {n: p.detach().clone() for n, p in eager.named_parameters()}
    static_x, static_y = batch(generator)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP):
            graphed_step(static_x, static_y)
    torch.cuda.current_stream().wait_stream(side)
    for _ in range(WARMUP):
        eager_step(static_x, static_y)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out, static_loss = graphed_step(static_x, static_y)

    tol = TOLERANCE[autocast_dtype or torch.float32]
    for replay in range(REPLAYS):
        x, y = batch(generator)
        static_x.copy_(x)
        static_y.copy_(y)
        # Poison what the replay must write, so a skipped kernel shows up as NaN.
        static_out.fill_(float("nan"))
        for p in graphed.parameters():
            p.grad.fill_(float("nan"))
        graph.replay()
        out, loss = eager_step(x, y)
        torch.cuda.synchronize()
        assert_close(f"replay {replay}: loss", static_loss, loss, tol)
        assert_close(f"replay {replay}: output", static_out, out, tol)
        expected = state(eager)
        for name, actual in state(graphed).items():
            assert_close(f"replay {replay}: {name}", actual, expected[name], tol)
    tracked = [b.item() for n, b in graphed.named_buffers() if n.endswith("num_batches_tracked")]
    assert tracked == [WARMUP + REPLAYS] * 3
    # The steps did train: a graph that replayed nothing would leave the weights where they were.
    moved = max((p.detach() - initial[n]).abs().max().item() for n, p in graphed.named_parameters())
    assert moved > 1e-3

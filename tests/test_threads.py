"""Concurrent forward calls from several Python threads (an inference server; or per-thread
training-mode calls without shared buffers) give exactly the results of the same calls made one
after another."""
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import pyfusedbn
from helpers import random_input
from test_parity import make_module

THREADS = 6
CALLS_PER_THREAD = 8
SHAPES = [((4, 16, 12, 12), torch.contiguous_format), ((4, 16, 12, 12), torch.channels_last),
          ((64, 24), torch.contiguous_format), ((2, 8, 3, 5, 7), torch.channels_last_3d)]


def eval_call(modules, inputs, residuals, i):
    with torch.no_grad():
        return modules[i % len(modules)](inputs[i], residuals[i])


def train_call(modules, inputs, residuals, i):
    """Training-mode statistics of the call's own batch (no running buffers are shared)."""
    module = modules[i % len(modules)]
    return pyfusedbn.batch_norm_act(inputs[i], None, None, module.weight, module.bias, training=True,
                                    activation=module.activation, residual=residuals[i])


@pytest.mark.parametrize("call", [eval_call, train_call], ids=["eval", "train"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_concurrent_forward_matches_sequential(call, dtype, generator):
    modules = [make_module(len(shape), shape[1], dtype, generator, activation=activation).eval()
               for (shape, _), activation in zip(SHAPES, ("relu", "silu", "gelu", "elu"))]
    count = THREADS * CALLS_PER_THREAD
    inputs = [random_input(SHAPES[i % len(SHAPES)][0], dtype, SHAPES[i % len(SHAPES)][1], generator)
              for i in range(count)]
    residuals = [torch.randn_like(x) if i % 2 else None for i, x in enumerate(inputs)]
    sequential = [call(modules, inputs, residuals, i) for i in range(count)]

    start = threading.Barrier(THREADS)

    def worker(thread):
        start.wait()  # all threads call at once
        return {i: call(modules, inputs, residuals, i) for i in range(thread, count, THREADS)}

    with ThreadPoolExecutor(THREADS) as pool:
        results = {}
        for part in pool.map(worker, range(THREADS)):
            results.update(part)
    assert sorted(results) == list(range(count))
    for i in range(count):
        assert torch.equal(results[i], sequential[i]), (
            f"call {i} (shape {tuple(inputs[i].shape)}): concurrent result differs from the "
            f"sequential one by {(results[i].double() - sequential[i].double()).abs().max():.3e}")

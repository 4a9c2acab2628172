"""torch.compile(fullgraph=True) of models using the fused modules: no graph breaks, in train and
eval mode, and the same outputs, gradients and running statistics as eager.

Compiling is slow on a small CPU (tens of seconds per graph), so the models are tiny and the
inductor case runs once per mode; the converted ResNet runs on the cheaper aot_eager backend,
which still traces the fake kernels and the registered autograd."""
import copy

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import pyfusedbn
from example_models import (MODELS, RESNET_FUSED_LAYERS, ResidualPair, assert_same_state,
                            fused_layers, kernel_calls, seeded, step)
from helpers import TOLERANCE

TOL = TOLERANCE[torch.float32]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def assert_compiled_matches_eager(model, x, backend, steps):
    """`steps` train-mode steps then one eval-mode step, compiled vs an eager copy. Returns how
    many of pyfusedbn's CPU kernels the compiled model ran."""
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    calls = 0

    def compiled_step(seed):
        nonlocal calls
        before = kernel_calls("cpu")
        state = step(compiled, x, seed=seed)
        calls += kernel_calls("cpu") - before
        return state

    for i in range(steps):
        assert_same_state(compiled_step(i), step(eager, x, seed=i), TOL)
        model.zero_grad(), eager.zero_grad()
    model.eval(), eager.eval()
    assert_same_state(compiled_step(1), step(eager, x), TOL)
    assert not counters["graph_break"], dict(counters["graph_break"])
    return calls


def test_inductor_train_and_eval():
    model = seeded(ResidualPair)
    # Two training steps: the second reuses the compiled graph with updated running statistics.
    assert_compiled_matches_eager(model, torch.randn(2, 3, 6, 6), "inductor", steps=2)
    assert counters["stats"]["unique_graphs"] == 2  # one per mode, no break


def test_converted_resnet_aot_eager():
    factory, shape = MODELS["resnet"]
    model = pyfusedbn.convert(seeded(factory))
    assert fused_layers(model) == len(model.pyfusedbn_report.fused) == RESNET_FUSED_LAYERS
    calls = assert_compiled_matches_eager(model, torch.randn(shape), "aot_eager", steps=1)
    assert calls > 0, "the compiled model ran none of pyfusedbn's kernels"


def test_explain_reports_no_graph_break():
    model = seeded(ResidualPair)
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 6, 6))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1

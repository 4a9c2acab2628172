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
from example_models import MODELS, ResidualPair, assert_same_state, seeded, step
from helpers import TOLERANCE

TOL = TOLERANCE[torch.float32]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def assert_compiled_matches_eager(model, x, backend, steps):
    """`steps` train-mode steps then one eval-mode step, compiled vs an eager copy."""
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    for i in range(steps):
        assert_same_state(step(compiled, x, seed=i), step(eager, x, seed=i), TOL)
        model.zero_grad(), eager.zero_grad()
    model.eval(), eager.eval()
    assert_same_state(step(compiled, x), step(eager, x), TOL)
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_inductor_train_and_eval():
    model = seeded(ResidualPair)
    # Two training steps: the second reuses the compiled graph with updated running statistics.
    assert_compiled_matches_eager(model, torch.randn(2, 3, 6, 6), "inductor", steps=2)
    assert counters["stats"]["unique_graphs"] == 2  # one per mode, no break


def test_converted_resnet_aot_eager():
    factory, shape = MODELS["resnet"]
    model = pyfusedbn.convert(seeded(factory))
    assert_compiled_matches_eager(model, torch.randn(shape), "aot_eager", steps=1)


def test_explain_reports_no_graph_break():
    model = seeded(ResidualPair)
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 6, 6))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1

"""torch.export.export of eval-mode models using the fused modules: the exported program holds
the fused op and runs with the eager model's numbers."""
import pytest
import torch

import pyfusedbn
from pyfusedbn.batch_norm_autograd import EXPORT_FLAG_RELIABLE
from example_models import MODELS, ResidualPair, seeded
from helpers import TOLERANCE, assert_close

TOL = TOLERANCE[torch.float32]


def trained_eval(model, shape):
    for _ in range(2):  # running statistics away from their initial values
        model(torch.randn(shape))
    return model.eval()


@pytest.mark.parametrize("name", ["residual_pair", "converted_resnet", "converted_mlp"])
def test_export_eval_runs_with_same_numbers(name):
    if name == "residual_pair":
        model, shape = seeded(ResidualPair), (2, 3, 6, 6)
    else:
        factory, shape = MODELS[name.removeprefix("converted_")]
        model = pyfusedbn.convert(seeded(factory))
    model = trained_eval(model, shape)
    x = torch.randn(shape)
    program = torch.export.export(model, (x,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    # Before torch 2.13 the export flag can't be told from torch.compile's, so the eval forward
    # keeps its statistics (pyfusedbn.batch_norm_autograd.EXPORT_FLAG_RELIABLE).
    eval_op = ("pyfusedbn.batch_norm_act_eval.default" if EXPORT_FLAG_RELIABLE
               else "pyfusedbn.batch_norm_act_eval_for_backward.default")
    assert eval_op in targets, targets
    with torch.no_grad():
        expected = model(x)
        assert_close("exported output", program.module()(x), expected, TOL)
        other = torch.randn(shape)  # not specialised to the example input's values
        assert_close("exported output, new input", program.module()(other), model(other), TOL)

"""pyfusedbn.fold: eval-mode BatchNorm (plain or fused) folded into the Conv/Linear before it;
the activation and residual add stay; outputs are those of the original in eval mode."""
import pytest
import torch
import torch.nn as nn

import pyfusedbn
from example_models import MODELS, seeded
from helpers import TOLERANCE, assert_close
from pyfusedbn.batch_norm_modules import BatchNormActBase

TOL = TOLERANCE[torch.float32]

# BatchNorms after a Conv/Linear: the traced models fold all of them; the untraceable ResNet
# folds those whose Conv is just before them in an nn.Sequential (all, in this model).
FOLDED = {"resnet": 12, "resnet_untraceable": 13, "mlp": 2}


def trained(name):
    """The model after two training steps (running statistics away from 0 and 1), in eval mode."""
    factory, shape = MODELS[name]
    model = seeded(factory)
    for _ in range(2):
        model(torch.randn(shape) * 3 + 1)
    return model.eval(), torch.randn(shape) * 3 + 1


def batch_norms(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("converted", [False, True], ids=["plain", "converted"])
@pytest.mark.parametrize("name", list(MODELS))
def test_fold_matches_eval_outputs(name, converted):
    model, x = trained(name)
    source = pyfusedbn.convert(model) if converted else model
    folded = pyfusedbn.fold(source)
    report = folded.pyfusedbn_report
    assert len(report.fused) == FOLDED[name], report
    assert not batch_norms(folded), report
    with torch.no_grad():
        assert_close("output", folded(x), model(x), TOL)


def test_fold_keeps_activation_and_residual():
    model, x = trained("resnet")
    folded = pyfusedbn.fold(pyfusedbn.convert(model))
    modules = dict(folded.named_modules())
    assert type(modules["layer1.0.bn3"]) is nn.ReLU  # the activation took the BatchNorm's name
    assert modules["layer1.0.conv3"].bias is not None  # created: the conv had none
    assert "add" in dict(folded.pyfusedbn_report.fused)["layer1.0.bn3"]


def test_training_mode_batch_norm_is_left():
    model, x = trained("mlp")
    model[4].train()
    folded = pyfusedbn.fold(model)
    skipped = dict(folded.pyfusedbn_report.skipped)
    assert list(skipped) == ["4"] and "training mode" in skipped["4"]
    assert [type(m) for m in batch_norms(folded)] == [nn.BatchNorm1d]


@pytest.mark.parametrize("trace", [True, False])
def test_fold_sequential_conv_fused_and_unfoldable(trace):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        pyfusedbn.BatchNormAct2d(4, activation="leaky_relu", activation_param=0.2),
        nn.MaxPool2d(2), nn.BatchNorm2d(4))
    model.train()
    model(torch.randn(2, 3, 8, 8))
    model.eval()
    folded = pyfusedbn.fold(model, trace=trace)
    report = folded.pyfusedbn_report
    assert [n for n, _ in report.fused] == ["1"]
    assert "not Conv" in dict(report.skipped)["3"], report
    assert type(folded.get_submodule("1")) is nn.LeakyReLU
    assert not any(isinstance(m, BatchNormActBase) for m in folded.modules())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert_close("output", folded(x), model(x), TOL)

"""timm's layers through convert / revert / fold, and pyfusedbn.timm_compat as timm's norm_layer.
Needs timm (and torchvision, which timm imports): `make test-zoo` installs them."""
import copy
import functools

import pytest
import torch
import torch.nn as nn
from torch import fx

import pyfusedbn
from pyfusedbn.testing import zoo as zoo_models
from example_models import assert_same_state, seeded, step
from helpers import TOLERANCE
from pyfusedbn.conversion.foreign_layers import TIMM_ACTIVATION_CLASSES

LIBRARIES = zoo_models.import_libraries()
if isinstance(LIBRARIES["timm"], str):
    pytest.skip(LIBRARIES["timm"], allow_module_level=True)

import timm.layers as tl  # noqa: E402
from torchvision.ops.misc import FrozenBatchNorm2d  # noqa: E402

from pyfusedbn.timm_compat import TimmBatchNormAct2d  # noqa: E402

TOL = TOLERANCE[torch.float32]


def fused_modules(model):
    return [m for m in model.modules() if isinstance(m, pyfusedbn.batch_norm_modules.BatchNormActBase)]


def assert_same_training(model, reference, x, steps=2, tol=TOL):
    for i in range(steps):
        torch.manual_seed(i)  # the same draws for drop layers on both sides
        actual = step(model, x, seed=i)
        torch.manual_seed(i)
        assert_same_state(actual, step(reference, x, seed=i), tol)
        model.zero_grad(), reference.zero_grad()
    model.eval(), reference.eval()
    assert_same_state(step(model, x), step(reference, x), tol)


class ConvNorm(nn.Module):
    """conv -> norm (timm's BatchNormAct2d, ...); then(norm output, block input)."""

    def __init__(self, norm, then=lambda y, x: y):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.norm = norm
        self.drop_path = nn.Identity()  # timm's DropPath at rate 0, before the residual add
        self.then = then

    def forward(self, x):
        return self.then(self.drop_path(self.norm(self.conv(x))), x)


def _convert_and_check(norm, then=lambda y, x: y, trace=True):
    original = seeded(lambda: ConvNorm(norm, then))
    converted = pyfusedbn.convert(original, trace=trace)
    assert_same_training(converted, original, torch.randn(3, 4, 5, 5))
    return converted


# Every timm activation class pyfusedbn maps, by the name it has in timm.layers.
TIMM_ACTIVATIONS = [(cls, activation) for cls, activation in TIMM_ACTIVATION_CLASSES.items()
                    if hasattr(tl, cls) or hasattr(tl.activations_me, cls)]


@pytest.mark.parametrize("cls,activation", TIMM_ACTIVATIONS, ids=[c for c, _ in TIMM_ACTIVATIONS])
@pytest.mark.parametrize("trace", [True, False])
def test_batch_norm_act_with_timm_activation_fuses(cls, activation, trace):
    act_layer = getattr(tl, cls, None) or getattr(tl.activations_me, cls)
    converted = _convert_and_check(tl.BatchNormAct2d(4, act_layer=act_layer), trace=trace)
    (fused,) = fused_modules(converted)
    assert fused.activation == activation, converted.pyfusedbn_report
    assert isinstance(converted, fx.GraphModule) == trace


@pytest.mark.parametrize("act_layer,expected", [
    (nn.ReLU, ("relu", None)), ("silu", ("silu", None)), ("hard_swish", ("hardswish", None)),
    (functools.partial(nn.LeakyReLU, 0.2), ("leaky_relu", 0.2)), (nn.GELU, ("gelu", None))])
def test_batch_norm_act_with_torch_activation_fuses(act_layer, expected):
    converted = _convert_and_check(tl.BatchNormAct2d(4, act_layer=act_layer))
    (fused,) = fused_modules(converted)
    assert (fused.activation, fused.activation_param) == expected


@pytest.mark.parametrize("cls", ["PReLU", "HardSigmoid", "QuickGELU", "HardMish", "CELU"])
def test_unsupported_timm_activation_is_reported_by_class_name(cls):
    act_layer = getattr(tl, cls, None) or getattr(nn, cls)
    converted = _convert_and_check(tl.BatchNormAct2d(4, act_layer=act_layer))
    assert not fused_modules(converted)
    [(name, why)] = converted.pyfusedbn_report.skipped
    assert name == "norm" and f"{cls} is not a supported activation" in why, why


@pytest.mark.parametrize("then,expected", [
    (lambda y, x: y + x, "identity"),                      # the linear bottleneck
    (lambda y, x: torch.relu(y + x), "relu"),
    (lambda y, x: nn.functional.silu(y), "silu"),
])
def test_apply_act_false_fuses_what_follows(then, expected):
    converted = _convert_and_check(tl.BatchNormAct2d(4, apply_act=False), then)
    (fused,) = fused_modules(converted)
    assert fused.activation == expected, converted.pyfusedbn_report


def test_drop_layer_before_activation_is_refused():
    norm = tl.BatchNormAct2d(4, drop_layer=functools.partial(tl.DropBlock2d, 0.5, 3))
    converted = _convert_and_check(norm)
    [(_, why)] = converted.pyfusedbn_report.skipped
    assert "DropBlock2d runs between the BatchNorm and its activation" in why


def test_drop_layer_without_activation_is_kept_after_the_fused_layer():
    norm = tl.BatchNormAct2d(4, apply_act=False,
                             drop_layer=functools.partial(tl.DropBlock2d, 0.5, 3))
    converted = _convert_and_check(norm, lambda y, x: torch.relu(y + x))
    (fused,) = fused_modules(converted)
    assert fused.activation == "identity"
    assert isinstance(converted.norm_drop, tl.DropBlock2d)


@pytest.mark.parametrize("apply_act", [True, False])
def test_revert_gives_timm_class_back(apply_act):
    original = seeded(lambda: ConvNorm(tl.BatchNormAct2d(4, act_layer=tl.Swish,
                                                         apply_act=apply_act),
                                       lambda y, x: torch.relu(y + x)))
    converted = pyfusedbn.convert(original)
    assert len(fused_modules(converted)) == 1
    reverted = pyfusedbn.revert(converted)
    assert type(reverted.norm) is tl.BatchNormAct2d
    assert type(reverted.norm.act) is (tl.Swish if apply_act else nn.Identity)
    assert set(reverted.state_dict()) == set(original.state_dict())
    assert_same_training(reverted, original, torch.randn(3, 4, 5, 5))


def _conv_then(norm):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), norm)


@pytest.mark.parametrize("make_norm,rest", [
    (lambda: FrozenBatchNorm2d(4), nn.Identity),
    (lambda: tl.FrozenBatchNormAct2d(4, act_layer=nn.SiLU), nn.SiLU),
    (lambda: tl.BatchNormAct2d(4, act_layer=nn.ReLU), nn.ReLU),
])
@pytest.mark.parametrize("trace", [True, False])
def test_fold_frozen_and_timm_norms(make_norm, rest, trace):
    original = seeded(lambda: _conv_then(make_norm()))
    with torch.no_grad():  # statistics away from the defaults, so that folding changes numbers
        for name in ("weight", "bias", "running_mean"):
            getattr(original[1], name).copy_(torch.randn(4))
        original[1].running_var.copy_(torch.rand(4) + 0.5)
    original.eval()
    folded = pyfusedbn.fold(original, trace=trace)
    assert len(folded.pyfusedbn_report.fused) == 1, folded.pyfusedbn_report
    assert not any(zoo_models.is_batch_norm(m) for m in folded.modules())
    assert any(type(m) is rest for m in folded.modules()) or rest is nn.Identity
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        assert torch.allclose(folded(x), original(x), atol=1e-5, rtol=1e-5)


class Untraceable(nn.Module):
    """timm's BatchNormAct2d as attributes of a block fx cannot trace (a branch on a value)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1, bias=False)
        self.bn1 = tl.BatchNormAct2d(4, act_layer=nn.SiLU)
        self.bn2 = tl.BatchNormAct2d(4, apply_act=False)

    def forward(self, x):
        y = self.bn1(self.conv(x))
        return self.bn2(y) if y.sum() > 0 else y


def test_untraceable_model_fuses_self_contained_layers_anywhere():
    original = seeded(Untraceable)
    converted = pyfusedbn.convert(original)
    report = converted.pyfusedbn_report
    assert [name for name, _ in report.fused] == ["bn1"], report
    assert [name for name, _ in report.skipped] == ["bn2"], report
    assert "inside the model (torch.fx could not trace it" in report.skipped[0][1]
    x = torch.randn(3, 4, 5, 5)
    with torch.no_grad():
        assert torch.allclose(converted(x), original(x), atol=1e-6)
    assert type(pyfusedbn.revert(converted, trace=False).bn1) is tl.BatchNormAct2d


# --- TimmBatchNormAct2d: pyfusedbn as timm's norm_layer ----------------------------------------

TIMM_ARGUMENTS = [
    dict(),
    dict(act_layer=nn.SiLU, inplace=False),
    dict(act_layer="swish"),
    dict(act_layer=nn.LeakyReLU, act_kwargs=dict(negative_slope=0.3)),
    dict(act_layer=None),
    dict(apply_act=False, eps=1e-3, momentum=0.01),
    dict(apply_act=False, drop_layer=functools.partial(tl.DropBlock2d, 0.5, 3)),
]


@pytest.mark.parametrize("kwargs", TIMM_ARGUMENTS, ids=[str(k) for k in TIMM_ARGUMENTS])
def test_adapter_matches_timm_batch_norm_act(kwargs):
    reference = seeded(lambda: ConvNorm(tl.BatchNormAct2d(4, **copy.deepcopy(kwargs))))
    ours = seeded(lambda: ConvNorm(TimmBatchNormAct2d(4, **copy.deepcopy(kwargs))))
    ours.load_state_dict(reference.state_dict())
    assert_same_training(ours, reference, torch.randn(3, 4, 5, 5))
    reverted = pyfusedbn.revert(ours)
    assert type(reverted.norm) is tl.BatchNormAct2d
    assert type(reverted.norm.drop) is type(reference.norm.drop)


@pytest.mark.parametrize("kwargs,words", [
    (dict(act_layer=nn.PReLU), "act_layer: PReLU is not a supported activation"),
    (dict(drop_layer=tl.DropBlock2d), "drop_layer (DropBlock2d) runs between"),
])
def test_adapter_errors_name_the_argument(kwargs, words):
    with pytest.raises(ValueError) as error:
        TimmBatchNormAct2d(4, **kwargs)
    assert words in str(error.value)


def test_adapter_as_create_model_norm_layer():
    reference = seeded(lambda: LIBRARIES["timm"].create_model("efficientnet_b0"))
    ours = seeded(lambda: LIBRARIES["timm"].create_model("efficientnet_b0",
                                                         norm_layer=TimmBatchNormAct2d))
    norms = [m for m in ours.modules() if zoo_models.is_batch_norm(m)]
    assert norms and all(type(m) is TimmBatchNormAct2d for m in norms)
    timm_acts = {type(m.act).__name__ for m in reference.modules()
                 if isinstance(m, tl.BatchNormAct2d)}
    assert timm_acts == {"SiLU", "Identity"}  # the model's own act_layer reaches our layers
    assert {m.activation for m in norms} == {"silu", "identity"}
    ours.load_state_dict(reference.state_dict())
    # float64: a deep model's later BatchNorms see few values per channel at this size, which
    # amplifies float32 rounding differences far beyond one layer's tolerance.
    assert_same_training(ours.double(), reference.double(),
                         torch.randn(2, 3, 32, 32, dtype=torch.float64), steps=1,
                         tol=TOLERANCE[torch.float64])

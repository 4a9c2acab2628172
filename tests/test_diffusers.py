"""convert on diffusers' UNet2DModel, UNet2DConditionModel and AutoencoderKL from small configs
(random init, nothing downloaded): torch.fx cannot trace them whole, so convert traces their
largest traceable submodules whose graph holds for any caller (the same with an argument None);
ResnetBlock2D, whose graph depends on temb being None, gets one graph per None pattern, and the
top-level conv_norm_out + conv_act are found in forward's source: every GroupNorm + SiLU pair is
fused (the ResnetBlock2D's `nonlinearity` module stays for the time embedding), every norm layer
is in the report, a float64 training step and a float32 eval forward match the original's, the
state_dicts load both ways and revert restores the original. Needs diffusers (`make test-zoo`)."""
import contextlib
import copy
import importlib

import pytest
import torch
from torch import nn

import pyfusedbn
from pyfusedbn.conversion.module_swap import is_norm_layer
from pyfusedbn.testing import zoo as zoo_models
from helpers import TOLERANCE

LIBRARIES = zoo_models.import_libraries()  # diffusers imports torchvision when it is installed
pytest.importorskip("diffusers")

# model name -> GroupNorms fused: every one followed by SiLU.
FUSED = {"UNet2DModel": 17, "UNet2DConditionModel": 17, "AutoencoderKL": 22}
# Left: the attention blocks' GroupNorm (followed by a reshape, no activation) and transformer
# LayerNorms (last dimension): no GroupNorm followed by an activation.
LEFT = ("attentions.",)
_no_warning = contextlib.nullcontext


@pytest.mark.parametrize("name", list(FUSED))
def test_diffusers_model_converts_exactly(name):
    torch.manual_seed(0)
    original = zoo_models.build(LIBRARIES, "diffusers", name)
    converted = pyfusedbn.convert(original)
    report = converted.pyfusedbn_report
    assert zoo_models.count_norms(converted)[0] == len(report.fused) == FUSED[name], report
    norms = [n for n, m in original.named_modules() if is_norm_layer(m)]
    assert sorted(n for n, _ in report.fused + report.skipped) == sorted(norms), report
    for norm_name, why in report.skipped:
        assert any(part in norm_name for part in LEFT), (norm_name, why)
    x = torch.randn(2, zoo_models.in_channels(original), 16, 16,
                    generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        name_, diff = zoo_models.largest_difference(
            {"output": copy.deepcopy(converted).eval()(x)},
            {"output": copy.deepcopy(original).eval()(x)})
    assert diff <= TOLERANCE[torch.float32], (name_, diff)
    actual = zoo_models.train_step(converted.double(), x.double())
    expected = zoo_models.train_step(original.double(), x.double())
    name_, diff = zoo_models.largest_difference(actual, expected)
    assert diff <= TOLERANCE[torch.float64], (name_, diff)
    _check_state_dicts_and_revert(original, converted, x.double())


def _check_state_dicts_and_revert(original, converted, x):
    # Sorted: a GraphModule registers its modules in the order its graph calls them.
    assert sorted(converted.state_dict()) == sorted(original.state_dict())
    original.load_state_dict(converted.state_dict())
    converted.load_state_dict(original.state_dict())
    reverted = pyfusedbn.revert(converted)
    assert zoo_models.count_norms(reverted)[0] == 0, reverted.pyfusedbn_report
    assert [type(m) for m in reverted.modules() if is_norm_layer(m)] == \
        [type(m) for m in original.modules() if is_norm_layer(m)]
    with torch.no_grad():
        name_, diff = zoo_models.largest_difference(
            {"output": reverted.eval()(x)}, {"output": original.eval()(x)})
    assert diff <= TOLERANCE[torch.float64], (name_, diff)


class _Resnets(nn.Module):
    """A ResnetBlock2D called with and without temb (added as it is: no time_emb_proj) by a
    forward fx cannot trace."""

    def __init__(self):
        super().__init__()
        self.resnet = importlib.import_module("diffusers.models.resnet").ResnetBlock2D(
            in_channels=16, out_channels=16, temb_channels=None, groups=4)

    def forward(self, x, temb, **kwargs):
        if x.sum() > -1e9:  # a branch on a value: the model does not trace
            return self.resnet(x, temb, **kwargs) + self.resnet(x, None, **kwargs)
        return x


@pytest.mark.parametrize("kwargs", [{}, {"scale": 1.0}], ids=["graphs", "deprecated_kwarg"])
def test_resnet_block_per_none_pattern_matches_original(kwargs):
    """Both temb patterns run their own fused graph; an extra argument (diffusers' deprecated
    `scale`) runs ResnetBlock2D's own forward on the original norms."""
    torch.manual_seed(0)
    original = _Resnets().double()
    converted = pyfusedbn.convert(original)
    assert sorted(n for n, _ in converted.pyfusedbn_report.fused) == \
        ["resnet.norm1", "resnet.norm2"], converted.pyfusedbn_report
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 6, 6, generator=g, dtype=torch.float64)
    temb = torch.randn(2, 16, 1, 1, generator=g, dtype=torch.float64)

    def step(model):
        return zoo_models.train_step(_Args(model, temb, kwargs), x)
    with pytest.warns(FutureWarning) if kwargs else _no_warning():
        name_, diff = zoo_models.largest_difference(step(converted), step(original))
    assert diff <= TOLERANCE[torch.float64], (name_, diff)


class _Args(nn.Module):
    def __init__(self, model, temb, kwargs):
        super().__init__()
        self.model, self.temb, self.kwargs = model, temb, kwargs

    def forward(self, x):
        return self.model(x, self.temb, **self.kwargs)

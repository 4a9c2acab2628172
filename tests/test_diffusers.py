"""convert on diffusers' UNet2DModel, UNet2DConditionModel and AutoencoderKL from small configs
(random init, nothing downloaded): torch.fx cannot trace them whole, so convert traces their
largest traceable submodules whose graph holds for any caller (the same with an argument None);
inside those the ResnetBlock2D's GroupNorm + SiLU pairs are fused (its `nonlinearity` module is
shared with the time embedding), every norm layer is in the report, and a float64 training step
and a float32 eval forward match the original's. Needs diffusers (`make test-zoo` installs it).
Not yet fused (issue 20 item 1 open): ResnetBlock2Ds called directly by an untraceable block,
whose graph depends on temb being None, and conv_norm_out + conv_act of the top level."""
import copy

import pytest
import torch
from torch import nn

import pyfusedbn
from pyfusedbn.conversion.module_swap import is_norm_layer
from pyfusedbn.testing import zoo as zoo_models
from helpers import TOLERANCE

zoo_models.import_libraries()  # diffusers imports torchvision when it is installed
diffusers = pytest.importorskip("diffusers")

_SMALL = dict(block_out_channels=(32, 64), norm_num_groups=8)
# name -> (build, inputs besides the image, image channels, fused GroupNorms).
CASES = {
    "UNet2DModel": (lambda: diffusers.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), **_SMALL),
        lambda x: (torch.tensor([3.0], dtype=x.dtype),), 3, 16),
    "UNet2DConditionModel": (lambda: diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
        attention_head_dim=8, **_SMALL),
        lambda x: (torch.tensor([3.0], dtype=x.dtype),
                   torch.randn(x.shape[0], 5, 16, generator=torch.Generator().manual_seed(2),
                               dtype=x.dtype)), 4, 16),
    "AutoencoderKL": (lambda: diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, **_SMALL),
        lambda x: (), 3, 22),
}
# Left: the attention blocks' GroupNorm (followed by a reshape, no activation), transformer
# LayerNorms (last dimension), conv_norm_out, whose SiLU is called by the untraceable top-level
# forward, and the resnets not traced (see the module docstring).
LEFT = ("attentions.", "conv_norm_out", "resnets.")


class _Sample(nn.Module):
    """The model's output tensor (diffusers returns a dataclass) for fixed extra inputs."""

    def __init__(self, model, extra):
        super().__init__()
        self.model, self.extra = model, extra

    def forward(self, x):
        return self.model(x, *self.extra(x)).sample


@pytest.mark.parametrize("name", list(CASES))
def test_diffusers_model_converts_exactly(name):
    build, extra, channels, fused = CASES[name]
    torch.manual_seed(0)
    original = build()
    converted = pyfusedbn.convert(original)
    report = converted.pyfusedbn_report
    assert zoo_models.count_norms(converted)[0] == len(report.fused) == fused, report
    norms = [n for n, m in original.named_modules() if is_norm_layer(m)]
    assert sorted(n for n, _ in report.fused + report.skipped) == sorted(norms), report
    for norm_name, why in report.skipped:
        assert any(part in norm_name for part in LEFT), (norm_name, why)
    x = torch.randn(2, channels, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        name_, diff = zoo_models.largest_difference(
            {"output": _Sample(copy.deepcopy(converted), extra).eval()(x)},
            {"output": _Sample(copy.deepcopy(original), extra).eval()(x)})
    assert diff <= TOLERANCE[torch.float32], (name_, diff)
    actual = zoo_models.train_step(_Sample(converted, extra).double(), x.double())
    expected = zoo_models.train_step(_Sample(original, extra).double(), x.double())
    name_, diff = zoo_models.largest_difference(actual, expected)
    assert diff <= TOLERANCE[torch.float64], (name_, diff)

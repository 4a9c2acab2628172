"""convert on real GroupNorm / LayerNorm models (timm, torchvision; random init, nothing
downloaded, 32x32 inputs): how many norm layers it fuses, that every other norm layer is in the
report with its reason, and that a float64 training step and a float32 eval forward match the
original's. `make test-zoo` installs the libraries."""
import copy
import re
from collections import Counter

import pytest
import torch

import pyfusedbn
from pyfusedbn.conversion.module_swap import is_norm_layer
from pyfusedbn.testing import zoo as zoo_models
from helpers import TOLERANCE

LIBRARIES = zoo_models.import_libraries()

# (library, model) -> (norm layers fused, all norm layers) after convert, and what the left
# ones say: a norm followed by a convolution (ConvNeXt's LayerNorm2d before its MLP / the
# downsample), feeding two users, the residual already fused into another norm's add, or
# nn.LayerNorm over the last dimension (torchvision's ConvNeXt blocks).
CASES = {
    ("timm", "convnext_atto"): (0, 17),
    ("timm", "resnet50_gn"): (49, 53),
    ("timm", "resnetv2_50x1_bit"): (49, 49),
    ("torchvision", "convnext_tiny"): (0, 23),
}
LEFT_BECAUSE = re.compile(r"followed by \S+ \((Conv2d|Flatten)\)|the BatchNorm output has 2 users |"
                          r"its output is the residual of |LayerNorm normalises the last dimension")


def _case_id(case):
    return f"{case[0]}-{case[1]}"


def _build(case):
    library, name = case
    if isinstance(LIBRARIES[library], str):
        pytest.skip(LIBRARIES[library])
    torch.manual_seed(0)
    return zoo_models.build(LIBRARIES, library, name)


def test_cases_are_the_zoo_table():
    assert list(CASES) == zoo_models.NORM_ZOO


@pytest.mark.parametrize("case", list(CASES), ids=_case_id)
def test_norm_model_converts_exactly_and_reports_every_norm(case):
    original = _build(case)
    converted = pyfusedbn.convert(original)
    report = converted.pyfusedbn_report
    assert zoo_models.count_norms(converted) == CASES[case], report
    names = [name for name, m in original.named_modules() if is_norm_layer(m)]
    assert sorted(name for name, _ in report.fused + report.skipped) == sorted(names), report
    for name, why in report.skipped:
        assert LEFT_BECAUSE.match(why), (name, why)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    # float32 eval: 49 norm layers deep, rounding differences add up past one layer's
    # tolerance, so the converted model's error against the float64 result is held to the
    # original float32 model's (twice it) or one layer's tolerance, whichever is larger.
    with torch.no_grad():
        exact = {"output": copy.deepcopy(original).double().eval()(x.double())}
        errors = [zoo_models.largest_difference({"output": copy.deepcopy(m).eval()(x)}, exact)[1]
                  for m in (converted, original)]
    assert errors[0] <= max(2 * errors[1], TOLERANCE[torch.float32]), errors
    actual = zoo_models.train_step(copy.deepcopy(converted).double(), x.double())
    expected = zoo_models.train_step(original.double(), x.double())
    name, diff = zoo_models.largest_difference(actual, expected)
    assert diff <= TOLERANCE[torch.float64], (name, diff)


def test_bit_resnet_reverts_to_timm_group_norm_act():
    original = _build(("timm", "resnetv2_50x1_bit"))
    reverted = pyfusedbn.revert(pyfusedbn.convert(original))
    classes = lambda model: Counter(type(m).__name__ for m in model.modules()  # noqa: E731
                                    if is_norm_layer(m))
    assert classes(reverted) == classes(original) == {"GroupNormAct": 49}
    assert set(reverted.state_dict()) == set(original.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(reverted.eval()(x), original.eval()(x), atol=1e-5)

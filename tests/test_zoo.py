"""convert on real torchvision and timm models (random init, small inputs): BatchNorm classifiers
and GroupNorm / LayerNorm models (every norm layer in the report), what it fuses, why it leaves
the rest, and that a training step and an eval forward match the original's.
The full zoo with timings is benchmarks/model_zoo.py. `make test-zoo` installs the libraries."""
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

# (library, model) -> BatchNorms fused / total (benchmarks/model_zoo.py runs all 18). Every
# BatchNorm followed by an activation or by a residual add that it alone feeds is fused.
SUBSET = {
    ("torchvision", "resnet18"): (17, 20),            # residual adds + ReLU
    ("torchvision", "mobilenet_v3_small"): (29, 34),  # linear bottleneck adds, Hardswish
    ("timm", "efficientnet_b0"): (42, 49),            # timm BatchNormAct2d (SiLU / apply_act=False)
    ("timm", "regnety_002"): (40, 44),                # timm ConvNormAct, downsample shortcuts
}

# Why the others are left: the other operand of an add already fused into another BatchNorm
# (a downsample shortcut), an output that also feeds the next block (2 users), or a convolution
# or stochastic depth after it.
LEFT_BECAUSE = re.compile(r"its output is the residual of |the \w+ output has 2 users |"
                          r"followed by \S+ \((Conv2d|StochasticDepth)\)")


def _case_id(case):
    return f"{case[0]}-{case[1]}"


def _build(case):
    library, name = case
    if isinstance(LIBRARIES[library], str):
        pytest.skip(LIBRARIES[library])
    torch.manual_seed(0)
    return zoo_models.build(LIBRARIES, library, name)


@pytest.mark.parametrize("case", list(SUBSET), ids=_case_id)
def test_zoo_model_converts_exactly(case):
    original = _build(case)
    converted = pyfusedbn.convert(original)
    report = converted.pyfusedbn_report
    fused = sum(isinstance(m, pyfusedbn.batch_norm_modules.BatchNormActBase) for m in converted.modules())
    assert (fused, zoo_models.count_batch_norms(original)) == SUBSET[case], report
    for name, why in report.skipped:
        assert LEFT_BECAUSE.match(why), (name, why)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        name, diff = zoo_models.largest_difference(
            {"output": copy.deepcopy(converted).eval()(x)},
            {"output": copy.deepcopy(original).eval()(x)})
    assert diff <= TOLERANCE[torch.float32], (name, diff)
    actual = zoo_models.train_step(copy.deepcopy(converted).double(), x.double())
    expected = zoo_models.train_step(copy.deepcopy(original).double(), x.double())
    name, diff = zoo_models.largest_difference(actual, expected)
    assert diff <= TOLERANCE[torch.float64], (name, diff)


@pytest.mark.parametrize("case", [c for c in SUBSET if c[0] == "timm"][:2], ids=_case_id)
def test_timm_model_reverts_to_timm_classes(case):
    original = _build(case)
    reverted = pyfusedbn.revert(pyfusedbn.convert(original))
    classes = lambda model: sorted(type(m).__name__ for m in model.modules()  # noqa: E731
                                   if zoo_models.is_batch_norm(m))
    assert classes(reverted) == classes(original)
    assert set(reverted.state_dict()) == set(original.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(reverted.eval()(x), original.eval()(x), atol=1e-5)


def test_zoo_benchmark_runs_on_one_small_model(tmp_path):
    if isinstance(LIBRARIES["torchvision"], str):
        pytest.skip(LIBRARIES["torchvision"])
    from benchmarks import model_zoo, report

    rows = model_zoo.main(["--models", "torchvision/mobilenet_v3_small", "--batch", "2",
                           "--size", "32", "--repeats", "1", "--out", str(tmp_path)])
    (row,) = rows
    assert (row["fused"], row["total"]) == SUBSET[("torchvision", "mobilenet_v3_small")]
    assert row["exactness"]["train_float64"][1] <= TOLERANCE[torch.float64]
    with open(report.write_report(str(tmp_path), plots=False)) as f:
        text = f.read()
    assert "## Model zoo" in text and "torchvision mobilenet_v3_small | 29/34" in text


# GroupNorm / LayerNorm models (zoo.NORM_ZOO).
# (library, model) -> (norm layers fused, all norm layers) after convert, and what the left
# ones say: a norm followed by a convolution (ConvNeXt's LayerNorm2d before its MLP / the
# downsample), feeding two users, the residual already fused into another norm's add, or
# nn.LayerNorm over the last dimension (torchvision's ConvNeXt blocks).
NORM_CASES = {
    ("timm", "convnext_atto"): (0, 17),
    ("timm", "resnet50_gn"): (49, 53),
    ("timm", "resnetv2_50x1_bit"): (49, 49),
    ("torchvision", "convnext_tiny"): (0, 23),
}
NORM_LEFT_BECAUSE = re.compile(r"followed by \S+ \((Conv2d|Flatten)\)|the \w+ output has 2 users |"
                               r"its output is the residual of |LayerNorm normalises the last dimension")


def test_norm_cases_are_the_zoo_table():
    assert list(NORM_CASES) == zoo_models.NORM_ZOO


@pytest.mark.parametrize("case", list(NORM_CASES), ids=_case_id)
def test_norm_model_converts_exactly_and_reports_every_norm(case):
    original = _build(case)
    converted = pyfusedbn.convert(original)
    report = converted.pyfusedbn_report
    assert zoo_models.count_norms(converted) == NORM_CASES[case], report
    names = [name for name, m in original.named_modules() if is_norm_layer(m)]
    assert sorted(name for name, _ in report.fused + report.skipped) == sorted(names), report
    for name, why in report.skipped:
        assert NORM_LEFT_BECAUSE.match(why), (name, why)
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

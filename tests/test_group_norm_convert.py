"""The GroupNorm family's entries of convert/revert's norm table: a torch norm + activation becomes the fused
module with the same parameter objects and outputs, and back."""
import pytest
import torch
from torch import nn

import pyfusedbn

from pyfusedbn.conversion.module_swap import (FUSED_TO_NORM, NORM_TO_FUSED, fused_from_norm,
                                             is_convertible_norm, is_fused, is_per_sample_norm,
                                             norm_from_fused)
from helpers import TOLERANCE, assert_close

NORMS = [
    ("group", lambda: nn.GroupNorm(3, 6), (2, 6, 4, 4)),
    ("group_no_affine", lambda: nn.GroupNorm(2, 6, affine=False), (2, 6, 5)),
    ("instance1d", lambda: nn.InstanceNorm1d(6), (2, 6, 7)),
    ("instance2d_tracked", lambda: nn.InstanceNorm2d(6, affine=True, track_running_stats=True), (2, 6, 4, 4)),
    ("instance3d", lambda: nn.InstanceNorm3d(6, momentum=0.2), (2, 6, 3, 3, 2)),
]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("make,shape", [n[1:] for n in NORMS], ids=[n[0] for n in NORMS])
def test_convert_and_revert_keep_state_and_outputs(make, shape, training):
    torch.manual_seed(0)
    norm = make().train(training)
    if norm.weight is not None:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_()
    reference = nn.Sequential(make(), nn.GELU(approximate="tanh"))
    reference[0].load_state_dict(norm.state_dict())
    reference.train(training)
    assert is_convertible_norm(norm) and is_per_sample_norm(norm) and not is_fused(norm)
    params = dict(norm.named_parameters())
    fused = fused_from_norm(norm, "gelu_tanh")
    assert type(fused) is NORM_TO_FUSED[type(norm)] and is_fused(fused) and is_per_sample_norm(fused)
    assert fused.training == training
    for name, p in fused.named_parameters():
        assert p is params[name]
    x = torch.randn(shape)
    assert_close("output", fused(x), reference(x), TOLERANCE[torch.float32])
    plain, act = norm_from_fused(fused)
    assert type(plain) is FUSED_TO_NORM[type(fused)] and isinstance(act, nn.GELU)
    assert plain.state_dict().keys() == norm.state_dict().keys()
    assert_close("reverted output", act(plain(x)), reference(x), TOLERANCE[torch.float32])


class _TorchForwardGroupNorm(nn.GroupNorm):
    """A subclass that keeps torch's forward: it computes nn.GroupNorm."""


class _OwnForwardGroupNorm(nn.GroupNorm):
    def forward(self, x):
        return super().forward(x) * 2


@pytest.mark.parametrize("trace", [True, False])
def test_subclass_keeping_torch_forward_fuses_and_reverts_to_its_class(trace):
    model = nn.Sequential(nn.Conv2d(4, 4, 1), _TorchForwardGroupNorm(2, 4), nn.SiLU(),
                          _OwnForwardGroupNorm(2, 4), nn.SiLU())
    x = torch.randn(2, 4, 3, 3)
    converted = pyfusedbn.convert(model, trace=trace)
    report = converted.pyfusedbn_report
    assert [name for name, _ in report.fused] == ["1"], report
    ((name, why),) = report.skipped
    assert name == "3" and "_OwnForwardGroupNorm" in why and "overrides forward" in why, report
    assert_close("output", converted(x), model(x), TOLERANCE[torch.float32])
    reverted = pyfusedbn.revert(converted, trace=trace)
    assert type(reverted.get_submodule("1")) is _TorchForwardGroupNorm
    assert_close("reverted output", reverted(x), model(x), TOLERANCE[torch.float32])


class _UNetBlock(nn.Module):
    """conv -> GroupNorm -> SiLU, conv -> GroupNorm -> (+ skip) -> SiLU: a diffusion UNet's
    residual block, traced by torch.fx."""

    def __init__(self, channels=8, groups=4):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm1 = nn.GroupNorm(groups, channels)
        self.act1 = nn.SiLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.act2 = nn.SiLU()
        self.conv3 = nn.Conv2d(channels, channels, 1)
        self.norm3 = nn.InstanceNorm2d(channels, affine=True)

    def forward(self, x):
        h = self.act1(self.norm1(self.conv1(x)))
        h = self.act2(self.norm2(self.conv2(h)) + x)
        return torch.relu(self.norm3(self.conv3(h)))


@pytest.mark.parametrize("trace", [True, False], ids=["fx", "module_order"])
def test_pyfusedbn_convert_fuses_group_norms(trace):
    """pyfusedbn.convert/revert on a model: GroupNorm (+ add) + SiLU and InstanceNorm + relu become
    the fused modules (traced), outputs and gradients unchanged, and revert restores torch's."""
    import pyfusedbn
    from pyfusedbn.group_norm_modules import GroupNormAct, InstanceNormAct2d

    torch.manual_seed(0)
    model = _UNetBlock().double()
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    converted = pyfusedbn.convert(model, trace=trace)
    fused = [type(m) for m in converted.modules() if isinstance(m, (GroupNormAct, InstanceNormAct2d))]
    if trace:
        assert fused.count(GroupNormAct) == 2 and fused.count(InstanceNormAct2d) == 1, \
            converted.pyfusedbn_report
    else:  # not an nn.Sequential: module order finds nothing, and says why
        assert fused == [] and "nn.Sequential" in converted.pyfusedbn_report.method
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected, got = model(x1), converted(x2)
    assert_close("output", got, expected, TOLERANCE[torch.float64])
    expected.sum().backward()
    got.sum().backward()
    assert_close("grad input", x2.grad, x1.grad, TOLERANCE[torch.float64])
    if trace:
        reverted = pyfusedbn.revert(converted)
        assert not any(isinstance(m, (GroupNormAct, InstanceNormAct2d)) for m in reverted.modules())
        assert sum(isinstance(m, nn.GroupNorm) for m in reverted.modules()) == 2
        assert_close("reverted output", reverted(x), expected.detach(), TOLERANCE[torch.float64])
